//! virtio-mmio register accesses in any order, width and value (feature
//! negotiation, queue setup with any ring addresses, status changes,
//! activation, reset, configuration space), on a block device; whatever
//! gets activated then serves its queue.
#![no_main]

use std::sync::{Arc, Mutex};

use firedoor_fuzz::{guest_memory, Input};
use firedoor_vmm::devices::virtio::block::Block;
use firedoor_vmm::devices::virtio::mmio::MmioTransport;
use firedoor_vmm::devices::virtio::VirtioInterrupt;
use firedoor_vmm::devices::{lock, BusDevice};
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
    let mut input = Input(data);
    while !input.is_empty() {
        let op = input.u8();
        // Mostly inside the 4 KiB window, now and then anywhere.
        let offset = if op & 0x80 != 0 {
            input.u64()
        } else {
            u64::from(input.u16() % 0x200)
        };
        let width = [1usize, 2, 4, 8][usize::from(op >> 1 & 3)];
        if op & 1 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        } else {
            let value = input.u64().to_le_bytes();
            transport.write(offset, &value[..width]);
        }
        if op & 0x40 != 0 {
            lock(&dev).process_queue();
        }
    }
});
