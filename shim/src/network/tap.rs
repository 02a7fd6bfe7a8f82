//! Tap devices on /dev/net/tun.

use std::{
    fs::OpenOptions,
    io,
    os::fd::{AsRawFd, OwnedFd},
};

/// Creates the tap `name` in the calling thread's network namespace and
/// returns its descriptor (close-on-exec). Not persistent: the device goes
/// away with its last descriptor. Frames without packet information or a
/// virtio-net header, as both backends read them (`IFF_TAP | IFF_NO_PI`).
pub fn open(name: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?} is empty or too long"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // The flag values fit a short (0x0002 | 0x1000).
    request.ifr_ifru.ifru_flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI)
        .map_err(|_| io::Error::other("IFF_TAP | IFF_NO_PI overflow a short"))?;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `request`
    // is, on a descriptor of /dev/net/tun that `file` keeps open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}
