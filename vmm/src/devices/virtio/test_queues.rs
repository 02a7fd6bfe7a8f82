//! What the devices' unit tests share: an interrupt whose eventfd nobody
//! reads, mock queues (16 entries each, 64 KiB apart from address 0), and
//! descriptor chains placed on them.
// Test descriptor indices and flags fit their 16-bit fields.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

use vm_memory::GuestAddress;

use super::{VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemoryMmap;

/// An interrupt for a device under test.
pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

/// Places one chain of `(addr, len, flags)` descriptors at descriptor index
/// `first`, linking each to the next (NEXT is added to all but the last).
pub fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[(u64, u32, u16)]) {
    let raw: Vec<_> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

/// `N` mock queues in `mem`.
pub fn mock_queues<const N: usize>(
    mem: &GuestMemoryMmap,
) -> [MockSplitQueue<'_, GuestMemoryMmap>; N] {
    std::array::from_fn(|i| MockSplitQueue::create(mem, GuestAddress(0x1_0000 * i as u64), 16))
}

/// Activates `dev` with `N` ready mock queues and returns them.
pub fn activate_with_mock_queues<'a, const N: usize>(
    dev: &mut dyn VirtioDevice,
    mem: &'a GuestMemoryMmap,
) -> [MockSplitQueue<'a, GuestMemoryMmap>; N] {
    let vqs = mock_queues::<N>(mem);
    dev.activate(
        mem.clone(),
        vqs.iter().map(|q| q.create_queue().unwrap()).collect(),
    )
    .unwrap();
    vqs
}

/// Places `chains` one after the other, from descriptor index 0.
pub fn add_chains(vq: &MockSplitQueue<GuestMemoryMmap>, chains: &[&[(u64, u32, u16)]]) {
    let mut first = 0;
    for chain in chains {
        add_chain(vq, first, chain);
        first += chain.len() as u16;
    }
}

/// The length the device reported for the `i`th used buffer.
pub fn used_len(vq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> u32 {
    vq.used()
        .ring()
        .ref_at(usize::from(i))
        .unwrap()
        .load()
        .len()
}
