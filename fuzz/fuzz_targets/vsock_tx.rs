//! The vsock device's TX queue (and the RX replies it causes): descriptor
//! chains of any shape, headers and payloads from a hostile guest.
#![no_main]

use std::sync::Arc;

use firedoor_fuzz::{fuzzed_queue, guest_memory, Input};
use firedoor_vmm::devices::virtio::vsock::Vsock;
use firedoor_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("firedoor-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let uds = dir.join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let mut dev = Vsock::new(3, uds, irq).expect("vsock device");
    let mem = guest_memory();
    let mut input = Input(data);
    let tx = fuzzed_queue(&mem, 0x1_0000, 0, &mut input);
    let rx = fuzzed_queue(&mem, 0x2_0000, 0x1_0000, &mut input);
    let ev = fuzzed_queue(&mem, 0x3_0000, 0x2_0000, &mut input);
    if dev.activate(mem.clone(), vec![rx, tx, ev]).is_err() {
        return;
    }
    for _ in 0..3 {
        dev.process_tx();
        dev.process_rx();
    }
    dev.reset();
});
