//! Building a [`Vmm`] from a [`VmConfig`]: memory, kernel, devices, vCPUs.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use log::{debug, info};
use vmm_sys_util::eventfd::EventFd;

use super::run::ExitSubscriber;
use super::{io_err, SerialOutput, Subscriber, VmConfig, Vmm, VmmError, MAX_VCPUS};
use crate::boot::{self, BootError};
use crate::devices::boot_timer::{BootTimer, BOOT_TIMER_PORT};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::{Bus, EventFdTrigger};
use crate::memory::{create_guest_memory_backed, GuestMemoryMmap, MemoryBacking, MMIO_GAP_START};
use crate::vstate::vcpu::{self, Vcpu, VmExit};
use crate::vstate::vm::Vm;

/// First IOAPIC line for virtio devices; lines up to 23 are usable.
const VIRTIO_FIRST_IRQ: u32 = 5;
const IOAPIC_LAST_IRQ: u32 = 23;

struct Builder {
    vm: Vm,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    event_manager: EventManager<Subscriber>,
    virtio_slots: Vec<(u64, u64, u32)>,
}

impl Builder {
    fn add_virtio<D>(&mut self, device: Arc<Mutex<D>>) -> Result<(), VmmError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let too_many = || VmmError::Config("too many virtio devices".into());
        let index = u32::try_from(self.virtio_slots.len()).map_err(|_| too_many())?;
        let irq = VIRTIO_FIRST_IRQ + index;
        if irq > IOAPIC_LAST_IRQ {
            return Err(too_many());
        }
        let addr = MMIO_GAP_START + u64::from(index) * MMIO_WINDOW_SIZE;
        let transport = MmioTransport::new(self.mem.clone(), device.clone())
            .map_err(io_err("virtio transport"))?;
        self.vm
            .fd()
            .register_irqfd(transport.interrupt().irqfd(), irq)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        for (queue, evt) in (0u32..).zip(transport.queue_events()) {
            let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
            self.vm
                .fd()
                .register_ioevent(evt, &notify, queue)
                .map_err(|e| VmmError::Kvm("KVM_IOEVENTFD", e))?;
        }
        self.mmio
            .insert(addr, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
        self.event_manager.add_subscriber(device);
        self.virtio_slots.push((MMIO_WINDOW_SIZE, addr, irq));
        Ok(())
    }

    fn new_interrupt(&self) -> Result<Arc<VirtioInterrupt>, VmmError> {
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("eventfd"))?;
        Ok(Arc::new(VirtioInterrupt::new(evt)))
    }
}

/// Removes a file this VMM created unless setup succeeds: a failed start
/// leaves nothing behind.
struct RemoveUnlessDisarmed(Option<PathBuf>);

impl RemoveUnlessDisarmed {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveUnlessDisarmed {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn open_serial(
    out: SerialOutput,
    created: &mut RemoveUnlessDisarmed,
) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(path) => {
            let existed = path.exists();
            let file = File::create(&path).map_err(io_err(format!(
                "cannot create serial output {}",
                path.display()
            )))?;
            if !existed {
                created.0 = Some(path);
            }
            Box::new(file)
        }
        SerialOutput::Writer(w) => w,
        SerialOutput::Sink => Box::new(std::io::sink()),
    })
}

impl Vmm {
    /// Builds the VM: memory, kernel, devices, vCPUs. Nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "vCPU count must be between 1 and {MAX_VCPUS}"
            )));
        }
        let mem_bytes = config
            .memory_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| VmmError::Config("memory size overflows".into()))?;
        // Open the inputs first: a wrong path is the most common mistake.
        let mut kernel = File::open(&config.kernel).map_err(io_err(format!(
            "cannot open kernel {}",
            config.kernel.display()
        )))?;
        let mut initrd = match &config.initrd {
            Some(p) => {
                Some(File::open(p).map_err(io_err(format!("cannot open initrd {}", p.display())))?)
            }
            None => None,
        };

        // vhost-user backends map guest RAM themselves: it must be a shared
        // memfd then (huge pages are one too). Otherwise private memory.
        let backing = if config.huge_pages {
            MemoryBacking::HugePages
        } else if config.fs.is_empty() {
            MemoryBacking::Private
        } else {
            MemoryBacking::SharedMemfd
        };
        let mem = create_guest_memory_backed(mem_bytes, backing)?;
        let vm = Vm::new(&config.kvm_path)?;
        if usize::from(config.vcpus) > vm.max_vcpus() {
            return Err(VmmError::Config(format!(
                "KVM supports at most {} vCPUs",
                vm.max_vcpus()
            )));
        }
        vm.register_memory(&mem)?;
        let kernel_info = boot::load_kernel(&mem, &mut kernel)?;
        let initrd_info = match initrd.as_mut() {
            Some(f) => Some(boot::load_initrd(&mem, f, kernel_info.end)?),
            None => None,
        };
        debug!(
            "kernel entry {:#x}, end {:#x}, initrd {initrd_info:?}",
            kernel_info.entry, kernel_info.end
        );

        let exit = Arc::new(VmExit::new().map_err(io_err("eventfd"))?);
        let boot_time = Arc::new(OnceLock::new());
        let mut event_manager: EventManager<Subscriber> =
            EventManager::new().map_err(VmmError::EventManager)?;
        event_manager.add_subscriber(Arc::new(Mutex::new(ExitSubscriber(exit.clone()))));

        let mut b = Builder {
            vm,
            mem,
            pio: Bus::new(),
            mmio: Bus::new(),
            event_manager,
            virtio_slots: Vec::new(),
        };

        // Legacy devices on port I/O.
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("eventfd"))?;
        b.vm.fd()
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        let mut serial_file = RemoveUnlessDisarmed(None);
        let serial = SerialDevice::new(
            EventFdTrigger(serial_irq),
            open_serial(config.serial, &mut serial_file)?,
        );
        b.pio.insert(
            SERIAL_PORT_BASE,
            SERIAL_PORT_LEN,
            Arc::new(Mutex::new(serial)),
        )?;
        let i8042 = I8042::new(vcpu::ResetTrigger(exit.clone()));
        b.pio
            .insert(I8042_PORT_BASE, I8042_PORT_LEN, Arc::new(Mutex::new(i8042)))?;
        let timer = BootTimer::new(config.start_time, boot_time.clone());
        b.pio
            .insert(BOOT_TIMER_PORT, 1, Arc::new(Mutex::new(timer)))?;

        // Virtio devices in the MMIO gap.
        if let Some(vsock) = &config.vsock {
            if vsock.cid < 3 || vsock.cid > u64::from(u32::MAX) {
                return Err(VmmError::Config(format!("invalid guest CID {}", vsock.cid)));
            }
            let interrupt = b.new_interrupt()?;
            let dev = Vsock::new(vsock.cid, vsock.uds_path.clone(), interrupt).map_err(io_err(
                format!("cannot listen on vsock socket {}", vsock.uds_path.display()),
            ))?;
            b.add_virtio(Arc::new(Mutex::new(dev)))?;
        }
        for disk in &config.disks {
            let interrupt = b.new_interrupt()?;
            let dev = Block::new(&disk.path, disk.read_only, interrupt)
                .map_err(io_err(format!("cannot open disk {}", disk.path.display())))?;
            b.add_virtio(Arc::new(Mutex::new(dev)))?;
        }
        for fs in &config.fs {
            let interrupt = b.new_interrupt()?;
            let dev = Fs::connect(&fs.socket, &fs.tag, interrupt)?;
            b.add_virtio(Arc::new(Mutex::new(dev)))?;
        }
        if config.balloon {
            let interrupt = b.new_interrupt()?;
            let dev = Balloon::new(backing, interrupt).map_err(io_err("virtio-balloon"))?;
            b.add_virtio(Arc::new(Mutex::new(dev)))?;
        }
        for net in config.net {
            let interrupt = b.new_interrupt()?;
            let dev = Net::new(net.tap, net.mac, net.mtu, interrupt)?;
            b.add_virtio(Arc::new(Mutex::new(dev)))?;
        }

        let cmdline = boot::build_cmdline(&config.cmdline, &b.virtio_slots)?;
        boot::configure_system(&b.mem, &cmdline, initrd_info, config.vcpus)?;
        let cmdline = cmdline
            .as_cstring()
            .map_err(BootError::from)?
            .into_string()
            .unwrap_or_default();
        info!("kernel command line: {cmdline}");

        let pio = Arc::new(b.pio);
        let mmio = Arc::new(b.mmio);
        let vcpus = (0..config.vcpus)
            .map(|id| {
                let entry = (id == 0).then_some(kernel_info.entry);
                Vcpu::new(&b.vm, id, config.vcpus, entry, pio.clone(), mmio.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;

        serial_file.disarm();
        Ok(Self {
            vcpus,
            event_manager: b.event_manager,
            exit,
            boot_time,
            cmdline,
            seccomp: config.seccomp,
            _vm: b.vm,
            _mem: b.mem,
        })
    }
}
