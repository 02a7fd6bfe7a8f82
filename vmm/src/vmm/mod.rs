//! The microVM: what it is built from ([`config`]), how it is built
//! ([`builder`]) and how it runs to completion ([`run`]).

mod builder;
mod config;
mod run;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber};

use crate::boot::BootError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::net::NetError;
use crate::devices::BusError;
use crate::memory::{GuestMemoryMmap, MemoryError};
use crate::seccomp::SeccompError;
use crate::vstate::vcpu::{Vcpu, VcpuError, VmExit};
use crate::vstate::vm::{Vm, VmError};

pub use config::{DiskConfig, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig, MAX_VCPUS};
pub use run::StopHandle;

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
    /// A virtio-net device could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The guest or a vCPU failed fatally.
    #[error("VM failed: {0}")]
    Guest(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |e| VmmError::Io(what, e)
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

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus)
            .field("cmdline", &self.cmdline)
            .field("seccomp", &self.seccomp)
            .finish_non_exhaustive()
    }
}

impl Vmm {
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
}
