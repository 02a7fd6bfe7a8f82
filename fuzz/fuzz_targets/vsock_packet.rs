//! Reading one vsock packet (header, then payload) out of a TX chain laid
//! over any descriptors: at most one header and MAX_PKT_DATA bytes copied.
#![no_main]

use firedoor_fuzz::{fuzzed_queue, guest_memory, Input};
use firedoor_vmm::devices::virtio::vsock::defs::MAX_PKT_DATA;
use firedoor_vmm::devices::virtio::vsock::packet::{gather_tx_packet, VsockHeader};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueOwnedT;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let raw: [u8; 44] = input.take(44).try_into().unwrap_or([0; 44]);
    let hdr = VsockHeader::from_bytes(&raw);
    // The wire layout, read back field by field.
    assert_eq!(hdr.src_cid.to_le_bytes(), raw[0..8]);
    assert_eq!(hdr.fwd_cnt.to_le_bytes(), raw[40..44]);

    let mem = guest_memory();
    let mut queue = fuzzed_queue(&mem, 0x1_0000, 0, &mut input);
    let mut iter = match queue.iter(&mem) {
        Ok(iter) => iter,
        Err(_) => return,
    };
    while let Some(chain) = iter.next() {
        if let Ok((hdr, payload)) = gather_tx_packet(&mem, chain) {
            assert!(hdr.len <= MAX_PKT_DATA);
            assert_eq!(payload.len(), hdr.len as usize);
        }
    }
});
