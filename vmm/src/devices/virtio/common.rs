//! What every virtio device has: its type and configuration space, the
//! features it offers and the driver accepted, one notification eventfd per
//! queue, its interrupt, the checks on the queues the driver hands over at
//! activation, and those queues while the device is active.

use std::sync::Arc;

use event_manager::{EventOps, Events};
use log::error;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioInterrupt};
use crate::memory::GuestMemoryMmap;

/// What an activated device works on: guest memory and the driver's
/// queues, kept until reset.
#[derive(Debug)]
pub struct ActiveQueues {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
}

/// The state every device keeps the same way; a device embeds one and
/// returns it from [`VirtioDevice::common`](super::VirtioDevice::common),
/// which gives it the trait's feature, queue-event and interrupt methods.
#[derive(Debug)]
pub struct VirtioCommon {
    /// VIRTIO_ID_*.
    device_type: u32,
    /// Logged with every message about this device.
    name: &'static str,
    queue_max_sizes: &'static [u16],
    avail_features: u64,
    acked_features: u64,
    /// The device's configuration space (its little-endian
    /// `struct virtio_*_config`).
    config: Vec<u8>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    /// The driver's queues, from activation until reset.
    active: Option<ActiveQueues>,
}

/// Writes the two [`VirtioDevice`](super::VirtioDevice) methods that reach a
/// device's [`VirtioCommon`], for a device that keeps it in a field named
/// `common` (every device does).
macro_rules! common_accessors {
    () => {
        fn common(&self) -> &$crate::devices::virtio::VirtioCommon {
            &self.common
        }

        fn common_mut(&mut self) -> &mut $crate::devices::virtio::VirtioCommon {
            &mut self.common
        }
    };
}
pub(crate) use common_accessors;

impl VirtioCommon {
    /// A device of type `device_type` named `name` (in logs) with one queue
    /// per entry of `queue_max_sizes`, offering `avail_features`, with an
    /// empty configuration space (see [`with_config`](Self::with_config)).
    pub fn new(
        device_type: u32,
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
            device_type,
            name,
            queue_max_sizes,
            avail_features,
            acked_features: 0,
            config: Vec::new(),
            queue_evts,
            interrupt,
            active: None,
        })
    }

    /// The same with `config` as the configuration space.
    #[must_use]
    pub fn with_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.config = config.into();
        self
    }

    /// The virtio device id (VIRTIO_ID_*).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The configuration space.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The configuration space, for the fields the driver may write.
    pub fn config_mut(&mut self) -> &mut [u8] {
        &mut self.config
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

    /// Activation as most devices do it: checks the queues (as
    /// [`check_queues`](Self::check_queues)), keeps them until
    /// [`deactivate`](Self::deactivate), and wakes every queue, so that
    /// buffers queued before activation are looked at.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.activate_first(mem, queues, self.queue_max_sizes.len())
    }

    /// As [`activate`](Self::activate), for a device whose queues after the
    /// first `required` exist only with some negotiated feature: those need
    /// not be ready.
    pub fn activate_first(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        required: usize,
    ) -> Result<(), ActivateError> {
        let expected = self.queue_max_sizes.len();
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        if let Some(i) = queues[..required.min(expected)]
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&mem))
        {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.active = Some(ActiveQueues { mem, queues });
        self.kick_all_queues();
        Ok(())
    }

    /// Drops the queues (device reset).
    pub fn deactivate(&mut self) {
        self.active = None;
    }

    /// Runs `work` on queue `index` if the device is active and the queue
    /// ready; `work` says whether it returned any chain as used, and then
    /// the driver is interrupted (once).
    pub fn with_queue(
        &mut self,
        index: usize,
        work: impl FnOnce(&GuestMemoryMmap, &mut Queue) -> bool,
    ) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index).filter(|q| q.ready()) else {
            return;
        };
        if work(&active.mem, queue) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Serves every chain the driver placed on queue `index` (see
    /// [`with_queue`](Self::with_queue)): `handle` gets each chain and says
    /// how many bytes it wrote into it; the chain is then returned as used.
    pub fn serve_queue(
        &mut self,
        index: usize,
        mut handle: impl FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    ) {
        let name = self.name;
        self.with_queue(index, |mem, queue| {
            let mut used = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = handle(mem, chain);
                if let Err(e) = queue.add_used(mem, head, len) {
                    error!("{name}: cannot return a buffer of queue {index}: {e}");
                }
                used = true;
            }
            used
        });
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

    /// Consumes the notification of the queue whose event data is `token`
    /// and returns the queue's index; None if no queue has that token.
    /// EAGAIN (already consumed on another path) is fine.
    pub fn consume_queue_event(&self, token: u32) -> Option<usize> {
        let index = usize::try_from(token).ok()?;
        let _ = self.queue_evts.get(index)?.read();
        Some(index)
    }
}
