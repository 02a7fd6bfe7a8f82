//! The virtio-mmio transport, version 2 ("modern"): the register file of
//! section 4.2.2 of the virtio 1.2 specification.

use std::sync::{Arc, Mutex};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::{lock, BusDevice};
use crate::memory::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (for ioeventfd registration).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    queue_max_sizes: Vec<u16>,
    device_id: u32,
    device_features: u64,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `mem` is handed to the device when the driver is ready.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> std::io::Result<Self> {
        let (interrupt, queue_evts, queue_max_sizes, device_id, device_features) = {
            let d = lock(&device);
            let evts = d
                .queue_events()
                .iter()
                .map(|e| e.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            (
                d.interrupt().clone(),
                evts,
                d.queue_max_sizes().to_vec(),
                d.device_type(),
                d.avail_features(),
            )
        };
        let mut t = Self {
            device,
            mem,
            interrupt,
            queue_evts,
            queue_max_sizes,
            device_id,
            device_features,
            queues: Vec::new(),
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        };
        t.reset_transport();
        Ok(t)
    }

    /// The queue notification eventfds, for KVM ioeventfd registration.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt (its irqfd is registered with KVM).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    fn reset_transport(&mut self) {
        self.queues = self
            .queue_max_sizes
            .iter()
            // Device models only declare power-of-two sizes, so this cannot fail.
            .map(|&max| Queue::new(max).expect("device declares a valid queue size"))
            .collect();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.reset();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_setup_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_id,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => low_half(self.device_features),
                1 => low_half(self.device_features >> 32),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS if self.interrupt.needs_reset() => {
                self.status | VIRTIO_CONFIG_S_NEEDS_RESET
            }
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No device here has shared memory regions: a length of -1 says
            // "no such region" (a 0 would describe an empty one at 0, which
            // virtio-fs's DAX probe would try to claim).
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                debug!("virtio-mmio: read of unknown or write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_DRIVER == 0
                    || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                {
                    debug!("virtio-mmio: driver features written in the wrong state");
                    return;
                }
                match self.driver_features_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM if setup => {
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(size);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if setup => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if setup => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if setup => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if setup => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if setup => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if setup => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Normally caught by the KVM ioeventfd; this is the fallback path.
                match self.queue_evts.get(value as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            warn!("virtio-mmio: cannot signal queue {value}: {e}");
                        }
                    }
                    None => debug!("virtio-mmio: notify for unknown queue {value}"),
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            _ => debug!("virtio-mmio: ignored write {value:#x} to register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
                lock(&self.device).reset();
            }
            self.reset_transport();
            return;
        }
        // The driver only ever adds bits (section 3.1.1); anything else is a bug.
        if value & self.status != self.status {
            debug!(
                "virtio-mmio: status {value:#x} clears bits of {:#x}",
                self.status
            );
            return;
        }
        let new = value & !self.status;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // Leave FEATURES_OK clear: the driver reads it back and gives up.
            self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
            return;
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let required =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if value & required != required {
                debug!("virtio-mmio: DRIVER_OK before FEATURES_OK");
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&mut self) -> bool {
        let unknown = self.driver_features & !self.device_features;
        if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            debug!(
                "virtio-mmio: driver features {:#x} not acceptable (offered {:#x})",
                self.driver_features, self.device_features
            );
            return false;
        }
        lock(&self.device).set_acked_features(self.driver_features);
        true
    }

    fn activate(&mut self) {
        // The device gets its own copies; the transport keeps answering
        // register reads from its view.
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>();
        let result = match queues {
            Ok(queues) => lock(&self.device).activate(self.mem.clone(), queues),
            Err(e) => {
                warn!("virtio-mmio: invalid queue state: {e}");
                Err(super::ActivateError::InvalidQueue(0))
            }
        };
        if let Err(e) = result {
            warn!(
                "virtio-mmio: device {} activation failed: {e}",
                self.device_id
            );
            self.interrupt.signal_needs_reset();
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            lock(&self.device).read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        match (<&mut [u8; 4]>::try_from(&mut *data), u32::try_from(offset)) {
            (Ok(word), Ok(offset)) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            _ => {
                debug!(
                    "virtio-mmio: bad register read of {} bytes at {offset:#x}",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            lock(&self.device).write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            (Ok(word), Ok(offset)) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(word))
            }
            _ => debug!(
                "virtio-mmio: bad register write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }
}

/// The low 32 bits of `value` (feature words are read in halves).
fn low_half(value: u64) -> u32 {
    let b = value.to_le_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{check_queues, ActivateError, VirtioCommon};
    use crate::memory::create_guest_memory;

    struct Dummy {
        common: VirtioCommon,
        activated: bool,
        resets: u32,
        config: [u8; 8],
        mem: Option<GuestMemoryMmap>,
    }

    impl Dummy {
        fn new() -> Self {
            let interrupt = Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ));
            Self {
                common: VirtioCommon::new(
                    42,
                    "dummy",
                    &[16, 16],
                    VIRTIO_F_VERSION_1 | 1,
                    interrupt,
                )
                .unwrap(),
                activated: false,
                resets: 0,
                config: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
                mem: None,
            }
        }
    }

    impl VirtioDevice for Dummy {
        crate::devices::virtio::common::common_accessors!();
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            mem: GuestMemoryMmap,
            queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            check_queues(&mem, &queues, 2)?;
            self.mem = Some(mem);
            self.activated = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = false;
            self.resets += 1;
        }
    }

    fn setup() -> (Arc<Mutex<Dummy>>, MmioTransport) {
        let mem = create_guest_memory(16 << 20).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::new()));
        let t = MmioTransport::new(mem, dev.clone()).unwrap();
        (dev, t)
    }

    fn r(t: &mut MmioTransport, off: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x10_0000u32), (1, 0x20_0000)] {
            w(t, VIRTIO_MMIO_QUEUE_SEL, i);
            assert_eq!(r(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
            w(t, VIRTIO_MMIO_QUEUE_NUM, 16);
            w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
            w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
            w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(r(t, VIRTIO_MMIO_QUEUE_READY), 1);
        }
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, features_hi);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        w(t, VIRTIO_MMIO_STATUS, 0xb);
    }

    #[test]
    fn identification_registers() {
        let (_d, mut t) = setup();
        assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        w(&mut t, VIRTIO_MMIO_SHM_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        let mut cfg = [0u8; 2];
        t.read(0x106, &mut cfg);
        assert_eq!(cfg, [7, 8]);
        let mut cfg = [0xaau8; 4];
        t.read(0x107, &mut cfg);
        assert_eq!(cfg, [8, 0, 0, 0]);
    }

    #[test]
    fn full_handshake_activates_and_reset_resets() {
        let (d, mut t) = setup();
        negotiate(&mut t, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0xb);
        assert_eq!(lock(&d).common.acked_features(), VIRTIO_F_VERSION_1 | 1);
        setup_queues(&mut t);
        w(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert!(lock(&d).activated);
        // Queue registers are frozen once running.
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        // Notify falls back to the eventfd.
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(lock(&d).common.queue_events()[1].read().unwrap(), 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 99); // ignored
                                                 // Interrupt status and ack.
        lock(&d).common.interrupt().signal_used_queue();
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(lock(&d).resets, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn rejects_legacy_driver_and_unknown_features() {
        let (d, mut t) = setup();
        negotiate(&mut t, 0); // no VERSION_1
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        assert_eq!(lock(&d).common.acked_features(), 0);
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        negotiate(&mut t, 1 | 2); // feature 33 is not offered
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
    }

    #[test]
    fn bad_queue_setup_does_not_activate() {
        let (d, mut t) = setup();
        negotiate(&mut t, 1);
        // Queue 0 with rings outside guest memory, queue 1 never set up.
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xffff_0000);
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
        w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3); // not a power of two: ignored
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1000); // no such queue
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        w(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert!(!lock(&d).activated);
        assert_ne!(
            r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (_d, mut t) = setup();
        let mut two = [0u8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0u8; 4];
        t.read(2, &mut four);
        assert_eq!(four, [0; 4]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        // DRIVER_OK without FEATURES_OK.
        w(&mut t, VIRTIO_MMIO_STATUS, 1);
        w(&mut t, VIRTIO_MMIO_STATUS, 1 | 2 | 4);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 1);
        // Clearing bits is refused.
        w(&mut t, VIRTIO_MMIO_STATUS, 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 1);
    }
}
