//! vCPUs: configuration and the run loop (one thread per vCPU).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::vm::Vm;
use crate::boot::cpuid::{filter_cpuid, VcpuTopology};
use crate::boot::regs::{self, RegsError};
use crate::devices::{lock, Bus};

/// Why the VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset, triple fault, or
    /// KVM_SYSTEM_EVENT_RESET): how a `reboot=k` Linux guest ends.
    Reset,
    /// The guest powered off or halted without interrupts to wake it.
    PowerOff,
    /// The host asked the VMM to stop.
    Stopped,
    /// A vCPU hit a fatal error (see `VmExit::error`).
    Error,
}

impl ExitReason {
    fn code(self) -> u8 {
        match self {
            ExitReason::Reset => 1,
            ExitReason::PowerOff => 2,
            ExitReason::Stopped => 3,
            ExitReason::Error => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => ExitReason::Reset,
            2 => ExitReason::PowerOff,
            3 => ExitReason::Stopped,
            4 => ExitReason::Error,
            _ => return None,
        })
    }
}

/// The first reason the VM must stop, and an eventfd that wakes the VMM
/// thread. `request` only touches an atomic and an eventfd, so it may be
/// called from a signal handler.
#[derive(Debug)]
pub struct VmExit {
    reason: AtomicU8,
    error: Mutex<Option<String>>,
    evt: EventFd,
}

impl VmExit {
    /// Creates the signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: AtomicU8::new(0),
            error: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Records `reason` (if none was recorded yet) and wakes the VMM thread.
    pub fn request(&self, reason: ExitReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
        // Cannot fail short of the counter overflowing, which a wakeup does not need.
        let _ = self.evt.write(1);
    }

    /// Records a fatal error.
    pub fn fail(&self, message: String) {
        error!("{message}");
        lock(&self.error).get_or_insert(message);
        self.request(ExitReason::Error);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        ExitReason::from_code(self.reason.load(Ordering::SeqCst))
    }

    /// The first fatal error message, if any.
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// The wakeup eventfd.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// The i8042 reset line: stops the VM with [`ExitReason::Reset`].
#[derive(Debug)]
pub struct ResetTrigger(pub Arc<VmExit>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        info!("guest reset through the i8042");
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU or KVM_SET_CPUID2 failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Register setup failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
}

/// One vCPU, configured and ready to run.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and sets its CPUID, MSRs, FPU and LAPIC.
    /// The boot vCPU (`entry` given) also gets the 64-bit entry state; the
    /// others wait in the kernel for INIT/SIPI from the guest.
    pub fn new(
        vm: &Vm,
        id: u8,
        count: u8,
        entry: Option<u64>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(id.into())
            .map_err(|e| VcpuError::Kvm("KVM_CREATE_VCPU", e))?;
        let mut cpuid = vm.supported_cpuid().clone();
        filter_cpuid(
            &mut cpuid,
            VcpuTopology {
                id,
                count,
                tsc_deadline: vm.has_tsc_deadline(),
            },
        );
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm("KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lint(&fd)?;
        if let Some(entry) = entry {
            regs::setup_sregs(&fd)?;
            regs::setup_regs(&fd, entry)?;
        }
        Ok(Self { fd, id, pio, mmio })
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Runs the guest until `stop` is set (and the thread kicked), or until the
    /// guest stops the VM, which is reported through `exit`.
    pub fn run(mut self, stop: &AtomicBool, exit: &VmExit) {
        let _kick = KickGuard::register(&mut self.fd);
        while !stop.load(Ordering::SeqCst) {
            match self.fd.run() {
                Ok(vcpu_exit) => {
                    if let Some(reason) = handle_exit(self.id, vcpu_exit, &self.pio, &self.mmio) {
                        match reason {
                            Err(message) => exit.fail(message),
                            Ok(reason) => exit.request(reason),
                        }
                        break;
                    }
                }
                Err(e) if e.errno() == libc::EINTR => self.fd.set_kvm_immediate_exit(0),
                Err(e) if e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    exit.fail(format!("vCPU {}: KVM_RUN failed: {e}", self.id));
                    break;
                }
            }
        }
        debug!("vCPU {} stopped", self.id);
    }
}

/// Handles one exit. `None`: keep running; `Some`: stop with this reason.
fn handle_exit(
    id: u8,
    exit: VcpuExit,
    pio: &Bus,
    mmio: &Bus,
) -> Option<Result<ExitReason, String>> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(port.into(), data) {
                debug!("vCPU {id}: unhandled port read {port:#x}");
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(port.into(), data) {
                debug!("vCPU {id}: unhandled port write {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                debug!("vCPU {id}: unhandled MMIO read {addr:#x}");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                debug!("vCPU {id}: unhandled MMIO write {addr:#x}");
            }
        }
        // With the in-kernel LAPIC, HLT only reaches us if the guest can never
        // be woken again: that is how a guest without ACPI "powers off".
        VcpuExit::Hlt => {
            info!("vCPU {id} halted");
            return Some(Ok(ExitReason::PowerOff));
        }
        VcpuExit::Shutdown => {
            info!("vCPU {id}: shutdown (triple fault or reset)");
            return Some(Ok(ExitReason::Reset));
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                KVM_SYSTEM_EVENT_RESET => Ok(ExitReason::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => Ok(ExitReason::PowerOff),
                KVM_SYSTEM_EVENT_CRASH => Err(format!("vCPU {id}: guest crashed")),
                other => Err(format!("vCPU {id}: unexpected system event {other}")),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(Err(format!(
                "vCPU {id}: VM entry failed (hardware reason {reason:#x} on cpu {cpu})"
            )))
        }
        VcpuExit::InternalError => {
            return Some(Err(format!(
                "vCPU {id}: KVM internal error (emulation failure?)"
            )))
        }
        VcpuExit::Intr => {}
        other => {
            warn!("vCPU {id}: unexpected exit {other:?}");
            return Some(Err(format!("vCPU {id}: unexpected exit {other:?}")));
        }
    }
    None
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Publishes the vCPU's `immediate_exit` flag to the kick handler for as long
/// as it lives.
struct KickGuard;

impl KickGuard {
    fn register(fd: &mut VcpuFd) -> Self {
        let ptr = std::ptr::addr_of_mut!(fd.get_kvm_run().immediate_exit);
        IMMEDIATE_EXIT.with(|c| c.set(ptr));
        KickGuard
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(|c| c.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's kvm_run mapping, published by a
        // KickGuard that is still alive (it is cleared before the VcpuFd and
        // its mapping go away). Setting immediate_exit makes the current or
        // next KVM_RUN return EINTR, so a kick sent just before the vCPU
        // enters the guest is not lost.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// Installs the kick handler (idempotent).
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}
