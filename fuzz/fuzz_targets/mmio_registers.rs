//! virtio-mmio register accesses in any order, width and value (feature
//! negotiation, queue setup with any ring addresses, status changes,
//! activation, reset, configuration space), on a block device; whatever
//! gets activated then serves its queue.
#![no_main]

use std::sync::{Arc, Mutex};

use firedoor_fuzz::{drive_mmio_registers, guest_memory, Input};
use firedoor_vmm::devices::virtio::block::Block;
use firedoor_vmm::devices::virtio::mmio::MmioTransport;
use firedoor_vmm::devices::virtio::VirtioInterrupt;
use firedoor_vmm::devices::lock;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("firedoor-fuzz-mmio-{}.img", std::process::id()));
    if std::fs::write(&path, vec![0u8; 8 * 512]).is_err() {
        return;
    }
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let dev = Arc::new(Mutex::new(Block::new(&path, false, irq).expect("disk")));
    let mem = guest_memory();
    let Ok(mut transport) = MmioTransport::new(mem, dev.clone()) else {
        return;
    };
    drive_mmio_registers(&mut transport, &mut Input(data), |op| {
        if op & 0x40 != 0 {
            lock(&dev).process_queue();
        }
    });
});
