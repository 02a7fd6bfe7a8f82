//! The vsock connection state machine: any sequence of packets a guest can
//! send (requests, data, credit, shutdown, reset, to ports with and without
//! a host listener), interleaved with the host side's events and RX.
#![no_main]

use std::os::unix::net::UnixListener;

use firedoor_fuzz::Input;
use firedoor_vmm::devices::virtio::vsock::unix::VsockMuxer;
use firedoor_vmm::devices::virtio::vsock::VsockHeader;
use libfuzzer_sys::fuzz_target;
use vm_memory::VolatileSlice;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("firedoor-fuzz-conn-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let uds = dir.join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let listen = dir.join("v.sock_5000");
    let _ = std::fs::remove_file(&listen);
    let listener = UnixListener::bind(&listen).ok();
    let Ok(mut muxer) = VsockMuxer::new(3, uds) else {
        return;
    };
    let mut input = Input(data);
    let mut rx_buf = vec![0u8; 4096];
    let mut payload = vec![0u8; 4096];
    while !input.is_empty() {
        match input.u8() % 4 {
            0 | 1 => {
                let hdr = VsockHeader {
                    src_cid: if input.u8() & 1 == 0 { 3 } else { input.u64() },
                    dst_cid: if input.u8() & 1 == 0 { 2 } else { input.u64() },
                    src_port: u32::from(input.u8()) + 1000,
                    dst_port: if input.u8() & 1 == 0 {
                        5000
                    } else {
                        input.u32()
                    },
                    len: u32::from(input.u16()) % 4097,
                    type_: u16::from(input.u8() % 3),
                    op: u16::from(input.u8() % 9),
                    flags: u32::from(input.u8() % 4),
                    buf_alloc: input.u32(),
                    fwd_cnt: input.u32(),
                };
                let n = (hdr.len as usize).min(payload.len());
                let bytes = input.take(n).to_vec();
                payload[..bytes.len()].copy_from_slice(&bytes);
                let slice = VolatileSlice::from(&mut payload[..n]);
                muxer.send_to_host(&hdr, (n > 0).then_some(&slice));
            }
            2 => {
                if let Some(l) = &listener {
                    l.set_nonblocking(true).unwrap();
                    let _ = l.accept();
                }
                muxer.process_events();
            }
            _ => {
                let n = usize::from(input.u16()) % (rx_buf.len() + 1);
                let slice = VolatileSlice::from(&mut rx_buf[..n]);
                if let Some(hdr) = muxer.fill_rx((n > 0).then_some(&slice)) {
                    assert!(hdr.len as usize <= n, "RX packet larger than its buffer");
                }
            }
        }
    }
    muxer.reset();
    assert_eq!(muxer.connection_count(), 0);
});
