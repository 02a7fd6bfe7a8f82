//! Virtio devices over the virtio-mmio (version 2) transport.

pub mod balloon;
pub mod block;
pub mod common;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
mod test_queues;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;
pub use common::VirtioCommon;

/// VIRTIO_F_VERSION_1: every device offers it; virtio-mmio v2 requires it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Errors when a device is activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues given.
        got: usize,
    },
    /// A queue is not ready or its rings are outside guest memory.
    #[error("queue {0} is not ready or not valid")]
    InvalidQueue(usize),
    /// The device's backend (another process) is gone or failed.
    #[error("device backend unavailable: {0}")]
    BackendUnavailable(String),
}

/// The interrupt line of a virtio device: the InterruptStatus register plus
/// an irqfd that raises the guest interrupt. It also carries the device's
/// "needs reset" signal, which a device raises from its own thread when it
/// can no longer work (e.g. its vhost-user backend died).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// `irqfd` is registered with KVM on the device's GSI.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    /// The eventfd to register as an irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::error!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the configuration (or device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device failed and stops serving its queues: the transport shows
    /// DEVICE_NEEDS_RESET in the status register until the driver resets it.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The driver reset the device: forget interrupts and the failure.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A virtio device model; the transport drives it.
///
/// Register accesses arrive on vCPU threads; queue processing happens on the
/// VMM thread (event loop), which owns the queue eventfds. What every device
/// keeps the same way lives in its [`VirtioCommon`]; the provided methods
/// read it.
pub trait VirtioDevice: Send {
    /// The features, queue events and interrupt of the device
    /// ([`common_accessors`](common::common_accessors) writes this and
    /// `common_mut`).
    fn common(&self) -> &VirtioCommon;
    /// The same, to record what the driver accepted.
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// The virtio device id (VIRTIO_ID_*).
    fn device_type(&self) -> u32 {
        self.common().device_type()
    }
    /// Reads device configuration space; must fill `data`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.common().config(), offset, data);
    }
    /// Starts the device with the driver's queues; by default they are
    /// checked and kept in [`VirtioCommon`].
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.common_mut().activate(mem, queues)
    }
    /// Returns the device to its initial state (driver wrote 0 to Status);
    /// by default it drops the queues. A device with state of its own
    /// resets that too.
    fn reset(&mut self) {
        self.common_mut().deactivate();
    }

    /// Writes device configuration space; by default it is read-only and
    /// the write is ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignored {}-byte write to the read-only configuration at {offset:#x}",
            self.common().name(),
            data.len()
        );
    }
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.common().queue_max_sizes()
    }
    /// Features offered to the driver.
    fn avail_features(&self) -> u64 {
        self.common().avail_features()
    }
    /// Features the driver accepted (kept as a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64) {
        self.common_mut().set_acked_features(features);
    }
    /// The per-queue notification eventfds (one per queue).
    fn queue_events(&self) -> &[EventFd] {
        self.common().queue_events()
    }
    /// The device's interrupt.
    fn interrupt(&self) -> &std::sync::Arc<VirtioInterrupt> {
        self.common().interrupt()
    }
}

/// Checks that queues handed to `activate` fit the device, are ready and lie in memory.
pub fn check_queues(
    mem: &GuestMemoryMmap,
    queues: &[Queue],
    expected: usize,
) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    if queues.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    match queues.iter().position(|q| !q.ready() || !q.is_valid(mem)) {
        Some(i) => Err(ActivateError::InvalidQueue(i)),
        None => Ok(()),
    }
}

/// Reads `data.len()` bytes at `offset` of a little-endian configuration blob;
/// out-of-range bytes read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
