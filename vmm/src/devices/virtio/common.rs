//! What every virtio device has: the features it offers and the driver
//! accepted, one notification eventfd per queue, its interrupt, and the
//! checks on the queues the driver hands over at activation.

use std::sync::Arc;

use event_manager::{EventOps, Events};
use log::error;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioInterrupt};
use crate::memory::GuestMemoryMmap;

/// The state every device keeps the same way; a device embeds one and
/// returns it from [`VirtioDevice::common`](super::VirtioDevice::common),
/// which gives it the trait's feature, queue-event and interrupt methods.
#[derive(Debug)]
pub struct VirtioCommon {
    /// Logged with every message about this device.
    name: &'static str,
    queue_max_sizes: &'static [u16],
    avail_features: u64,
    acked_features: u64,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
}

impl VirtioCommon {
    /// A device named `name` (in logs) with one queue per entry of
    /// `queue_max_sizes`, offering `avail_features`.
    pub fn new(
        name: &'static str,
        queue_max_sizes: &'static [u16],
        avail_features: u64,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let queue_evts = queue_max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            name,
            queue_max_sizes,
            avail_features,
            acked_features: 0,
            queue_evts,
            interrupt,
        })
    }

    /// The device's name in logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The maximum size of each queue.
    pub fn queue_max_sizes(&self) -> &'static [u16] {
        self.queue_max_sizes
    }

    /// Features offered to the driver.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features the driver accepted (never more than offered).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records what the driver accepted, dropping anything not offered.
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Forgets the accepted features (device reset).
    pub fn reset_features(&mut self) {
        self.acked_features = 0;
    }

    /// The per-queue notification eventfds.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Checks the queues handed to `activate`: as many as the device has,
    /// each ready and inside guest memory.
    pub fn check_queues(
        &self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), ActivateError> {
        super::check_queues(mem, queues, self.queue_max_sizes.len())
    }

    /// Wakes the event loop for every queue, so that buffers the driver
    /// queued before activation are looked at.
    pub fn kick_all_queues(&self) {
        for evt in &self.queue_evts {
            // Only fails if the counter would overflow: then it is set anyway.
            let _ = evt.write(1);
        }
    }

    /// Polls every queue eventfd, with the queue's index as the event data.
    pub fn poll_queue_events(&self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let Ok(index) = u32::try_from(i) else {
                break;
            };
            if let Err(e) = ops.add(Events::with_data(evt, index, EventSet::IN)) {
                error!("{}: cannot poll queue {i}: {e:?}", self.name);
            }
        }
    }

    /// Consumes the notification of queue `index`; false if there is no
    /// such queue. EAGAIN (already consumed on another path) is fine.
    pub fn consume_queue_event(&self, index: u32) -> bool {
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        {
            Some(evt) => {
                let _ = evt.read();
                true
            }
            None => false,
        }
    }
}
