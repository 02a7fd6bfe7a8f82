//! 16550A UART at 0x3f8 (COM1, IRQ 4), output only, on vm-superio.

use std::io::Write;

use log::warn;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{BusDevice, EventFdTrigger};

/// COM1's I/O base.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_PORT_LEN: u64 = 8;
/// COM1's legacy interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// The UART, writing the guest's output to `out`.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    write_failed: bool,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("write_failed", &self.write_failed)
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// `interrupt` is signalled when the UART raises its interrupt line.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(interrupt, out),
            write_failed: false,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The bus hands over offsets inside the device's few ports.
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.serial.read(offset),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let ([byte], Ok(offset)) = (data, u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.serial.write(offset, *byte) {
            // A full disk or a closed stdout must not stop the guest; say it once.
            if !self.write_failed {
                warn!("serial output failed, further errors are not logged: {e}");
                self.write_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_ignores_odd_sizes() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            Box::new(out.clone()),
        );
        s.write(0, b"h");
        s.write(0, b"i");
        s.write(0, b"xy"); // not a byte access
        s.write(100, b"z"); // no such register: ignored by the UART model
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        let mut d = [0u8; 1];
        s.read(5, &mut d); // LSR: transmitter empty
        assert_ne!(d[0] & 0x60, 0);
        let mut d2 = [0u8; 2];
        s.read(5, &mut d2);
        assert_eq!(d2, [0xff, 0xff]);
    }
}
