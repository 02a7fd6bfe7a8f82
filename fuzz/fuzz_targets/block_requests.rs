//! virtio-blk requests: chains of any shape, any header (type, sector),
//! reads and writes past the end, on a small read-write disk.
#![no_main]

use std::sync::Arc;

use firedoor_fuzz::{fuzzed_queue, guest_memory, Input};
use firedoor_vmm::devices::virtio::block::Block;
use firedoor_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("firedoor-fuzz-disk-{}.img", std::process::id()));
    if std::fs::write(&path, vec![0u8; 16 * 512]).is_err() {
        return;
    }
    let mut input = Input(data);
    let read_only = input.u8() & 1 == 1;
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let mut dev = Block::new(&path, read_only, irq).expect("disk");
    let mem = guest_memory();
    let queue = fuzzed_queue(&mem, 0x1_0000, 0, &mut input);
    if dev.activate(mem.clone(), vec![queue]).is_ok() {
        dev.process_queue();
    }
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 16 * 512, "the guest changed the disk's size");
});
