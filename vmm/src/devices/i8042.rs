//! i8042 keyboard controller (ports 0x60 and 0x64), on vm-superio. Its only
//! job here is the reset line: the guest writes 0xfe to port 0x64.

use log::warn;
use vm_superio::I8042Device;

use super::BusDevice;
use vm_superio::Trigger;

/// First port (data register); the command register is at +4.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The controller; `reset` fires when the guest pulses the reset line.
#[derive(Debug)]
pub struct I8042<T: Trigger>(I8042Device<T>);

impl<T: Trigger> I8042<T> {
    /// Creates the controller with its reset trigger.
    pub fn new(reset: T) -> Self {
        Self(I8042Device::new(reset))
    }
}

impl<T: Trigger<E = std::io::Error> + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The bus hands over offsets inside the device's few ports.
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.0.read(offset),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let ([byte], Ok(offset)) = (data, u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.0.write(offset, *byte) {
            warn!("i8042: cannot signal reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_fires_the_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0x20]); // read command byte: harmless
        evt.read().unwrap_err(); // nothing yet (EAGAIN)
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
