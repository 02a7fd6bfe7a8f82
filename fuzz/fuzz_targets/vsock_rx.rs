//! The vsock device's RX queue: a host connects (the `CONNECT` handshake)
//! and the guest offers receive buffers of any shape.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use firedoor_fuzz::{fuzzed_queue, guest_memory, Input};
use firedoor_vmm::devices::virtio::vsock::Vsock;
use firedoor_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("firedoor-fuzz-vsock-rx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let uds = dir.join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let mut dev = Vsock::new(3, uds.clone(), irq).expect("vsock device");
    let mem = guest_memory();
    let mut input = Input(data);
    // The host's handshake line comes from the input too.
    let line = input.take(32).to_vec();
    let rx = fuzzed_queue(&mem, 0x1_0000, 0, &mut input);
    let tx = fuzzed_queue(&mem, 0x2_0000, 0x1_0000, &mut input);
    let ev = fuzzed_queue(&mem, 0x3_0000, 0x2_0000, &mut input);
    if dev.activate(mem.clone(), vec![rx, tx, ev]).is_err() {
        return;
    }
    let Ok(mut host) = UnixStream::connect(&uds) else {
        return;
    };
    let _ = host.write_all(&line);
    let _ = host.write_all(b"CONNECT 1024\n");
    for _ in 0..3 {
        dev.process_backend();
        dev.process_tx();
    }
});
