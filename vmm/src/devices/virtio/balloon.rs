//! virtio-balloon with free page reporting: an idle guest hands its free
//! memory back to the host.
//!
//! Only `VIRTIO_BALLOON_F_REPORTING` is offered. The guest's page reporting
//! (Linux `CONFIG_PAGE_REPORTING`) places ranges of free pages (typically
//! 2-4 MiB) on the reporting queue; the device discards each from the host
//! mapping of guest RAM (`MADV_DONTNEED` for private memory, `MADV_REMOVE`
//! for the shared memfd that virtio-fs and huge pages use, which
//! `MADV_DONTNEED` would not free), and returns the buffer. The guest owns
//! those pages again when it next allocates them and finds them zeroed.
//!
//! The host never asks for inflation (`num_pages` stays 0); inflate and
//! deflate buffers a guest sends anyway are returned untouched. A reported
//! range outside guest memory, or straddling two regions, is ignored: the
//! guest can only ever discard its own memory.

use std::os::raw::c_void;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestAddress;

use super::common::common_accessors;
use super::{ActivateError, VirtioCommon, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::memory::{host_range, GuestMemoryMmap, MemoryBacking};

/// `VIRTIO_BALLOON_F_REPORTING` (virtio 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// Queue 0 inflates, 1 deflates: their buffers are returned untouched.
#[cfg(test)]
const INFLATE_QUEUE: usize = 0;
/// With only REPORTING negotiated, the reporting queue is the third.
const REPORTING_QUEUE: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// The host page: discards are rounded inwards to it.
const PAGE: u64 = 4096;

/// The virtio-balloon device.
#[derive(Debug)]
pub struct Balloon {
    advice: libc::c_int,
    /// Its configuration space is `struct virtio_balloon_config`:
    /// num_pages, actual (LE u32 each).
    common: VirtioCommon,
    /// Bytes handed back to the host so far.
    discarded: u64,
}

impl Balloon {
    /// A balloon over guest memory backed as `backing`.
    pub fn new(backing: MemoryBacking, interrupt: Arc<VirtioInterrupt>) -> std::io::Result<Self> {
        let advice = match backing {
            MemoryBacking::Private => libc::MADV_DONTNEED,
            MemoryBacking::SharedMemfd | MemoryBacking::HugePages => libc::MADV_REMOVE,
        };
        Ok(Self {
            advice,
            common: VirtioCommon::new(
                VIRTIO_ID_BALLOON,
                "virtio-balloon",
                &QUEUE_SIZES,
                VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING,
                interrupt,
            )?
            .with_config([0; 8]),
            discarded: 0,
        })
    }

    /// Bytes of guest memory given back to the host so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// Returns every buffer of queue `index`; on the reporting queue, after
    /// discarding the ranges it names.
    pub fn process_queue(&mut self, index: usize) {
        self.common.serve_queue(index, |mem, chain| {
            if index == REPORTING_QUEUE {
                self.discarded += discard_ranges(mem, chain, self.advice);
            }
            0
        });
    }
}

/// Discards every page-aligned part of the ranges `chain` describes that
/// lies inside one region of guest memory; returns the bytes discarded.
fn discard_ranges(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    advice: libc::c_int,
) -> u64 {
    let mut total = 0;
    for desc in chain {
        let start = desc.addr().0.next_multiple_of(PAGE);
        let end = (desc.addr().0.saturating_add(u64::from(desc.len()))) / PAGE * PAGE;
        if end <= start {
            continue;
        }
        let Some(host) = host_range(mem, GuestAddress(start), end - start) else {
            debug!(
                "virtio-balloon: ignoring a reported range outside guest memory at {:#x}",
                desc.addr().0
            );
            continue;
        };
        let Ok(len) = usize::try_from(end - start) else {
            continue;
        };
        // SAFETY: `host..host + len` lies inside one mapping of guest RAM
        // this process made (checked by host_range) and never unmaps while
        // the device runs. Guest RAM is only ever accessed through volatile
        // pointers, never Rust references, so discarding pages under them
        // is sound for the host; the guest reported the pages free, and a
        // guest that lies only loses its own data.
        let ret = unsafe { libc::madvise(host.cast::<c_void>(), len, advice) };
        if ret == 0 {
            total += end - start;
        } else {
            debug!(
                "virtio-balloon: cannot discard {len} bytes at {start:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    total
}

impl VirtioDevice for Balloon {
    common_accessors!();

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            self.common.config_mut()[4..8].copy_from_slice(data);
        } else {
            debug!(
                "virtio-balloon: ignored {}-byte config write at {offset:#x}",
                data.len()
            );
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // The reporting queue exists only when REPORTING was negotiated:
        // the first two must be ready, the third only then.
        let reporting = self.common.acked_features() & VIRTIO_BALLOON_F_REPORTING != 0;
        let required = if reporting { 3 } else { 2 };
        self.common.activate_first(mem, queues, required)
    }

    fn reset(&mut self) {
        self.common.deactivate();
        self.common.reset_features();
        self.common.config_mut()[4..8].fill(0);
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(queue) = self.common.consume_queue_event(events.data()) {
            self.process_queue(queue);
        }
    }
}

// Test constants (descriptor flags, small lengths) fit their narrower types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::Bytes;

    use super::*;
    use crate::devices::virtio::test_queues::{
        activate_with_mock_queues, add_chain, interrupt, mock_queues,
    };
    use crate::memory::create_guest_memory;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn device() -> Balloon {
        let irq = interrupt();
        Balloon::new(MemoryBacking::Private, irq).unwrap()
    }

    /// A balloon whose driver negotiated REPORTING, active on mock queues.
    fn reporting_device(
        mem: &GuestMemoryMmap,
    ) -> (Balloon, [MockSplitQueue<'_, GuestMemoryMmap>; 3]) {
        let mut dev = device();
        dev.set_acked_features(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
        let vqs = activate_with_mock_queues(&mut dev, mem);
        (dev, vqs)
    }

    fn is_zero(mem: &GuestMemoryMmap, addr: u64, len: usize) -> bool {
        let mut buf = vec![0xffu8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|&b| b == 0)
    }

    #[test]
    fn reported_pages_are_discarded_and_the_buffer_returned() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let (mut dev, vqs) = reporting_device(&mem);
        // Guest data in two ranges (one unaligned at both ends) and a page
        // that is not reported.
        let data = vec![0xabu8; 3 * PAGE as usize];
        for addr in [0x40_0000, 0x50_0000, 0x60_0000] {
            mem.write_slice(&data, GuestAddress(addr)).unwrap();
        }
        add_chain(
            &vqs[REPORTING_QUEUE],
            0,
            &[
                (0x40_0000, 2 * PAGE as u32, W),
                (0x50_0000 + 100, 2 * PAGE as u32, W),
            ],
        );
        dev.process_queue(REPORTING_QUEUE);
        assert_eq!(vqs[REPORTING_QUEUE].used().idx().load(), 1);
        assert!(is_zero(&mem, 0x40_0000, 2 * PAGE as usize));
        // Only the whole page inside the unaligned range is discarded.
        assert!(!is_zero(&mem, 0x50_0000, PAGE as usize));
        assert!(is_zero(&mem, 0x50_1000, PAGE as usize));
        assert!(!is_zero(&mem, 0x50_2000, 100));
        assert!(!is_zero(&mem, 0x60_0000, 3 * PAGE as usize));
        assert_eq!(dev.discarded_bytes(), 3 * PAGE);
    }

    #[test]
    fn ranges_outside_guest_memory_are_ignored() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let (mut dev, vqs) = reporting_device(&mem);
        add_chain(
            &vqs[REPORTING_QUEUE],
            0,
            &[
                (0xffff_ffff_0000, 1 << 21, W),          // outside
                ((16 << 20) - PAGE, 2 * PAGE as u32, W), // past the end
                (u64::MAX - PAGE, u32::MAX, W),          // wraps
                (0x40_0000, 100, W),                     // less than a page
            ],
        );
        dev.process_queue(REPORTING_QUEUE);
        assert_eq!(vqs[REPORTING_QUEUE].used().idx().load(), 1);
        assert_eq!(dev.discarded_bytes(), 0);
    }

    #[test]
    fn inflate_buffers_are_returned_untouched_and_reporting_is_optional() {
        let mut dev = device();
        // A driver without REPORTING sets up two queues only.
        dev.set_acked_features(VIRTIO_F_VERSION_1);
        let mem = create_guest_memory(16 << 20).unwrap();
        let vqs = mock_queues::<3>(&mem);
        let mut qs: Vec<Queue> = vqs.iter().map(|q| q.create_queue().unwrap()).collect();
        qs[2].set_ready(false);
        dev.activate(mem.clone(), qs).unwrap();
        mem.write_slice(&[0xab; 8], GuestAddress(0x40_0000))
            .unwrap();
        // PFN 0x400 (0x40_0000) in an inflate buffer: not discarded.
        mem.write_obj(0x400u32, GuestAddress(0x70_0000)).unwrap();
        add_chain(&vqs[INFLATE_QUEUE], 0, &[(0x70_0000, 4, 0)]);
        dev.process_queue(INFLATE_QUEUE);
        dev.process_queue(REPORTING_QUEUE);
        assert_eq!(vqs[INFLATE_QUEUE].used().idx().load(), 1);
        assert!(!is_zero(&mem, 0x40_0000, 8));
        // A driver with REPORTING must set up the third queue.
        let mut dev = device();
        dev.set_acked_features(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
        let mut qs: Vec<Queue> = vqs.iter().map(|q| q.create_queue().unwrap()).collect();
        qs[2].set_ready(false);
        dev.activate(mem, qs).unwrap_err();
    }

    #[test]
    fn config_space_asks_for_nothing_and_takes_actual() {
        let mut dev = device();
        let mut b = [0xffu8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(b, [0; 8]);
        dev.write_config(4, &7u32.to_le_bytes());
        dev.write_config(0, &9u32.to_le_bytes()); // num_pages is the host's
        dev.read_config(0, &mut b);
        assert_eq!(b, [0, 0, 0, 0, 7, 0, 0, 0]);
        assert_ne!(dev.avail_features() & VIRTIO_BALLOON_F_REPORTING, 0);
    }
}
