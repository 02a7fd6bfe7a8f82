//! Devices and the port-I/O / MMIO buses the vCPUs dispatch exits to.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

/// A device on a bus. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`; must fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Locks a mutex, recovering the data if a previous holder panicked: device
/// state stays usable and the VMM keeps running rather than cascading panics.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors while building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range overlaps another device or is empty or wraps.
    #[error("bus range {base:#x}+{len:#x} is invalid or overlaps another device")]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

impl std::fmt::Debug for BusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusRange")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// An address space (port I/O or MMIO) mapping ranges to devices.
/// Built before the vCPUs start; read-only afterwards.
#[derive(Debug, Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = |r: &BusRange| end.is_some_and(|end| base < r.base + r.len && r.base < end);
        if end.is_none() || self.ranges.iter().any(overlaps) {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(pos, BusRange { base, len, device });
        Ok(())
    }

    /// The device and offset for an access of `size` bytes at `addr`, if one
    /// device covers the whole access.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&BusRange, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        let offset = addr - r.base;
        let end = offset.checked_add(size as u64)?;
        (end <= r.len).then_some((r, offset))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff, as a
    /// floating bus would) if no device handles it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((r, offset)) => {
                lock(&r.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device handles it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((r, offset)) => {
                lock(&r.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A vm-superio trigger backed by an EventFd (an irqfd or a reset event).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, b.clone()).unwrap();
        bus.insert(0x10, 0x8, a.clone()).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x13, &mut data));
        assert_eq!(data, [3, 3]);
        assert!(bus.write(0x10f, &[9]));
        assert_eq!(lock(&b).writes, vec![(0xf, vec![9])]);
        assert!(lock(&a).writes.is_empty());
    }

    #[test]
    fn unhandled_and_straddling_accesses() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x10, 0x8, a.clone()).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x8, &mut data));
        assert_eq!(data, [0xff; 4]);
        // Starts inside, ends outside.
        assert!(!bus.read(0x16, &mut data));
        assert!(!bus.write(0x17, &[1, 2]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert!(lock(&a).writes.is_empty());
    }

    #[test]
    fn rejects_overlaps() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x10, 0x8, a.clone()).unwrap();
        assert!(bus.insert(0x17, 0x8, a.clone()).is_err());
        assert!(bus.insert(0x8, 0x9, a.clone()).is_err());
        assert!(bus.insert(0x0, 0, a.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err());
        bus.insert(0x18, 0x8, a).unwrap();
    }
}
