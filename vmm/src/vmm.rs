//! Building the microVM from a [`VmConfig`] and running it to completion.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use log::{debug, info};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootError};
use crate::devices::boot_timer::{BootTimer, BOOT_TIMER_PORT};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::{Bus, BusError, EventFdTrigger};
use crate::memory::{
    create_guest_memory_backed, GuestMemoryMmap, MemoryBacking, MemoryError, MMIO_GAP_START,
};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::vstate::vcpu::{self, ExitReason, Vcpu, VcpuError, VmExit};
use crate::vstate::vm::{Vm, VmError};

/// First IOAPIC line for virtio devices; lines up to 23 are usable.
const VIRTIO_FIRST_IRQ: u32 = 5;
const IOAPIC_LAST_IRQ: u32 = 23;
/// Most vCPUs (APIC ids are 8 bits, 0xff is broadcast).
pub const MAX_VCPUS: u8 = 254;

/// Where the serial console's output goes.
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer (tests).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Sink,
}

/// The hybrid vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// Unix socket the host connects to (must not exist yet).
    pub uds_path: PathBuf,
    /// The guest's CID (3 or more).
    pub cid: u64,
}

/// A file-backed virtio-blk disk.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd).
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The backend's vhost-user socket (it must be listening).
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
}

/// Everything needed to build a microVM.
pub struct VmConfig {
    /// Uncompressed vmlinux (ELF).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= entries are appended).
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Disks, in order (the first is /dev/vda).
    pub disks: Vec<DiskConfig>,
    /// Shared file systems; any makes guest memory a shared memfd.
    pub fs: Vec<FsConfig>,
    /// Serial console output.
    pub serial: SerialOutput,
    /// The KVM device (normally /dev/kvm).
    pub kvm_path: PathBuf,
    /// Install the seccomp filters when running.
    pub seccomp: bool,
    /// Back guest RAM with the host's 2 MiB huge pages.
    pub huge_pages: bool,
    /// When the VMM started (the boot timer measures from here).
    pub start_time: Instant,
}

impl VmConfig {
    /// A configuration with defaults: 1 vCPU, 128 MiB, no devices, serial
    /// to stdout, seccomp on.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            vsock: None,
            disks: Vec::new(),
            fs: Vec::new(),
            serial: SerialOutput::Stdout,
            kvm_path: PathBuf::from("/dev/kvm"),
            seccomp: true,
            huge_pages: false,
            start_time: Instant::now(),
        }
    }
}

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel, initrd or boot structures.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Bus layout.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A file or device could not be set up.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A KVM call for a device failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventManager(event_manager::Error),
    /// Seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A virtio-fs device could not be set up.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The guest or a vCPU failed fatally.
    #[error("VM failed: {0}")]
    Guest(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |e| VmmError::Io(what, e)
}

/// Wakes the event loop when the VM must stop.
struct ExitSubscriber(Arc<VmExit>);

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            self.0.fail(format!("cannot poll the exit event: {e:?}"));
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A built microVM, ready to [`run`](Vmm::run).
pub struct Vmm {
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Subscriber>,
    exit: Arc<VmExit>,
    boot_time: Arc<OnceLock<Duration>>,
    cmdline: String,
    seccomp: bool,
    // Dropped last: vCPUs and devices refer to them.
    _vm: Vm,
    _mem: GuestMemoryMmap,
}

/// Stops a running VM from another thread (or a signal handler).
#[derive(Clone)]
pub struct StopHandle(Arc<VmExit>);

impl StopHandle {
    /// Asks the VM to stop; [`Vmm::run`] returns [`ExitReason::Stopped`].
    pub fn stop(&self) {
        self.0.request(ExitReason::Stopped);
    }
}

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
        let index = self.virtio_slots.len() as u32;
        let irq = VIRTIO_FIRST_IRQ + index;
        if irq > IOAPIC_LAST_IRQ {
            return Err(VmmError::Config("too many virtio devices".into()));
        }
        let addr = MMIO_GAP_START + u64::from(index) * MMIO_WINDOW_SIZE;
        let transport = MmioTransport::new(self.mem.clone(), device.clone())
            .map_err(io_err("virtio transport"))?;
        self.vm
            .fd()
            .register_irqfd(transport.interrupt().irqfd(), irq)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
            self.vm
                .fd()
                .register_ioevent(evt, &notify, queue as u32)
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

    /// The full kernel command line given to the guest.
    pub fn kernel_cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Time from VMM start to the guest's write to the boot-timer port.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time.get().copied()
    }

    /// A handle that stops the VM from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.exit.clone())
    }

    /// Runs the VM until the guest resets or powers off, the host stops it,
    /// or something fails. The calling thread becomes the VMM (device) thread.
    pub fn run(&mut self) -> Result<ExitReason, VmmError> {
        vcpu::register_kick_handler().map_err(io_err("cannot install the vCPU kick handler"))?;
        let filters = if self.seccomp {
            Some((
                seccomp::build_filter(ThreadKind::Vmm)?,
                Arc::new(seccomp::build_filter(ThreadKind::Vcpu)?),
            ))
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let (stop, exit) = (stop.clone(), self.exit.clone());
            let filter = filters.as_ref().map(|f| f.1.clone());
            let spawned = thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    if let Some(filter) = filter {
                        if let Err(e) = seccomp::apply(&filter) {
                            exit.fail(format!("vCPU {}: {e}", vcpu.id()));
                            return;
                        }
                    }
                    vcpu.run(&stop, &exit);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.fail(format!("cannot start a vCPU thread: {e}"));
                    break;
                }
            }
        }
        let result = self.event_loop(filters.as_ref().map(|f| &f.0));
        stop.store(true, Ordering::SeqCst);
        for t in &threads {
            // ESRCH if the thread is already gone: fine.
            let _ = t.kill(vcpu::kick_signal());
        }
        for t in threads {
            let _ = t.join();
        }
        result?;
        match self.exit.reason() {
            Some(ExitReason::Error) | None => Err(VmmError::Guest(
                self.exit.error().unwrap_or_else(|| "unknown error".into()),
            )),
            Some(reason) => {
                info!("VM stopped: {reason:?}");
                Ok(reason)
            }
        }
    }

    fn event_loop(&mut self, filter: Option<&seccompiler::BpfProgram>) -> Result<(), VmmError> {
        if let Some(filter) = filter {
            seccomp::apply(filter)?;
        }
        // Blocks in epoll_wait; returns early (0 events) on a signal.
        while self.exit.reason().is_none() {
            self.event_manager.run().map_err(VmmError::EventManager)?;
        }
        Ok(())
    }
}
