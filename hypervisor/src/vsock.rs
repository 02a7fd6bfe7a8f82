//! Host side of hybrid vsock (the Firecracker convention, which
//! vhost-device-vsock and firedoor-vmm both speak): connect to the VM's Unix
//! socket, send `CONNECT <port>\n`, and read `OK <host_port>\n` once the
//! guest has accepted. If nothing listens on the guest port, the VMM closes
//! the connection instead.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// The way in to one VM's guest vsock: its hybrid-vsock Unix socket.
/// Cheap to clone, so that streams can be opened without holding the VM.
#[derive(Debug, Clone)]
pub struct GuestVsock {
    uds: PathBuf,
}

impl GuestVsock {
    pub(crate) fn new(uds: PathBuf) -> Self {
        GuestVsock { uds }
    }

    /// Opens one stream to guest `port`; see [`connect`].
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
        connect(&self.uds, port, timeout)
    }
}

/// The longest reply we accept: "OK " + a u32 + "\n" fits easily.
const MAX_REPLY: usize = 32;

/// Why a hybrid-vsock connection did not open.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket is not there yet, or the guest port has no listener (yet):
    /// worth retrying while the guest boots.
    #[error("guest port {port} is not accepting connections: {reason}")]
    NotListening { port: u32, reason: String },
    /// The reply did not come within the timeout.
    #[error("no reply to CONNECT {port} within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    /// The VMM answered something other than `OK <port>`.
    #[error("unexpected reply to CONNECT {port}: {reply:?}")]
    Protocol { port: u32, reply: String },
}

/// Opens one stream to `port` in the guest through `uds`. On success the
/// stream is blocking and has no timeouts, ready for ttrpc or raw data.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let not_listening = |e: io::Error| ConnectError::NotListening {
        port,
        reason: e.to_string(),
    };
    let mut stream = UnixStream::connect(uds).map_err(not_listening)?;
    let timeout = timeout.max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(timeout))
        .map_err(not_listening)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(not_listening)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(not_listening)?;

    // Byte by byte: whatever follows the newline is the guest's data and must
    // stay in the socket for the stream's user.
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8];
    while reply.last() != Some(&b'\n') {
        if reply.len() == MAX_REPLY {
            return Err(protocol_error(port, &reply));
        }
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(ConnectError::NotListening {
                    port,
                    reason: "connection closed (no listener in the guest)".into(),
                })
            }
            Ok(_) => reply.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnectError::Timeout { port, timeout })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(not_listening(e)),
        }
    }
    let text = std::str::from_utf8(&reply).map_err(|_| protocol_error(port, &reply))?;
    let host_port = text
        .strip_prefix("OK ")
        .and_then(|rest| rest.trim_end().parse::<u32>().ok());
    if host_port.is_none() {
        return Err(protocol_error(port, &reply));
    }
    stream.set_read_timeout(None).map_err(not_listening)?;
    stream.set_write_timeout(None).map_err(not_listening)?;
    Ok(stream)
}

fn protocol_error(port: u32, reply: &[u8]) -> ConnectError {
    ConnectError::Protocol {
        port,
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead, os::unix::net::UnixListener, thread};

    use super::*;

    /// A fake VMM socket that answers one connection with `reply`, then
    /// echoes one line so we can check that no byte was swallowed.
    fn fake_vmm(
        reply: &'static [u8],
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut stream = reader.into_inner();
            stream.write_all(reply).unwrap();
            line
        });
        (dir, path, handle)
    }

    #[test]
    fn ok_reply_leaves_following_bytes_in_the_stream() {
        let (_dir, path, vmm) = fake_vmm(b"OK 1073741824\nhello");
        let mut stream = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
    }

    #[test]
    fn closed_connection_means_not_listening() {
        let (_dir, path, _vmm) = fake_vmm(b"");
        let err = connect(&path, 7, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, ConnectError::NotListening { port: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_overlong_replies_are_rejected() {
        let (_dir, path, _vmm) = fake_vmm(b"NOPE\n");
        assert!(matches!(
            connect(&path, 1, Duration::from_secs(5)),
            Err(ConnectError::Protocol { .. })
        ));
        let (_dir, path, _vmm) = fake_vmm(&[b'9'; 100]);
        assert!(matches!(
            connect(&path, 1, Duration::from_secs(5)),
            Err(ConnectError::Protocol { .. })
        ));
    }

    #[test]
    fn silent_vmm_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = connect(&path, 1, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
    }

    #[test]
    fn missing_socket_means_not_listening() {
        let err = connect(Path::new("/nonexistent/v.sock"), 1, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ConnectError::NotListening { .. }));
    }
}
