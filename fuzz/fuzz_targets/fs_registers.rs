//! The virtio-fs device (a vhost-user frontend) under virtio-mmio register
//! accesses in any order, width and value: feature negotiation against
//! what the backend offers, the tag in the configuration space, and the
//! ring addresses the guest programs, which the VMM validates before it
//! hands them to the backend. The backend (virtiofsd) is a stand-in that
//! answers the handshake; the rings themselves are the backend's to walk.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use firedoor_fuzz::{drive_mmio_registers, guest_memory, Input};
use firedoor_vmm::devices::virtio::fs::Fs;
use firedoor_vmm::devices::virtio::mmio::MmioTransport;
use firedoor_vmm::devices::virtio::VirtioInterrupt;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

/// VERSION_1 | INDIRECT_DESC | EVENT_IDX, no protocol features: the
/// handshake is SET_OWNER and GET_FEATURES.
const BACKEND_FEATURES: u64 = (1 << 32) | (1 << 28) | (1 << 29);
const GET_FEATURES: u32 = 1;

/// A stand-in backend serving one connection at a time (each run's device
/// hangs up when dropped): it answers GET_FEATURES and reads the rest.
fn backend_socket() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("firedoor-fuzz-fs-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("backend socket");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut hdr = [0u8; 12];
                while conn.read_exact(&mut hdr).is_ok() {
                    let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
                    let mut body = vec![0u8; word(8) as usize];
                    if conn.read_exact(&mut body).is_err() {
                        break;
                    }
                    if word(0) == GET_FEATURES {
                        let mut reply = GET_FEATURES.to_le_bytes().to_vec();
                        reply.extend(0x5u32.to_le_bytes()); // version 1 | REPLY
                        reply.extend(8u32.to_le_bytes());
                        reply.extend(BACKEND_FEATURES.to_le_bytes());
                        if conn.write_all(&reply).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let fs = Fs::connect(backend_socket(), "shared", irq).expect("stand-in backend");
    let dev = Arc::new(Mutex::new(fs));
    let Ok(mut transport) = MmioTransport::new(guest_memory(), dev) else {
        return;
    };
    drive_mmio_registers(&mut transport, &mut Input(data), |_| {});
});
