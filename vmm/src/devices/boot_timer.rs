//! Boot-time marker: the guest writes any byte to port 0x440 when it is
//! ready; the VMM logs the time elapsed since it started.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::info;

use super::BusDevice;

/// The I/O port the guest writes to.
pub const BOOT_TIMER_PORT: u64 = 0x440;

/// Records the first write.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    elapsed: Arc<OnceLock<Duration>>,
}

impl BootTimer {
    /// `start` is the VMM's start; `elapsed` receives the boot time.
    pub fn new(start: Instant, elapsed: Arc<OnceLock<Duration>>) -> Self {
        Self { start, elapsed }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let elapsed = self.start.elapsed();
        if self.elapsed.set(elapsed).is_ok() {
            info!(
                "guest boot done {:.3} ms after VMM start (value {:#x})",
                elapsed.as_secs_f64() * 1000.0,
                data.first().copied().unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_the_first_write() {
        let cell = Arc::new(OnceLock::new());
        let mut t = BootTimer::new(Instant::now(), cell.clone());
        assert!(cell.get().is_none());
        t.write(0, &[123]);
        let first = *cell.get().unwrap();
        t.write(0, &[1]);
        assert_eq!(*cell.get().unwrap(), first);
    }
}
