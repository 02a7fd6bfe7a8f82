//! Starts and stops Firedoor microVMs and connects to their guest.
//!
//! A [`Backend`] knows how to launch the processes that make up one VM (QEMU
//! plus vhost-device-vsock, or the built-in `firedoor-vmm`); [`MicroVm`] owns
//! those processes and the VM's run directory, waits for the guest agent over
//! hybrid vsock, and tears everything down on every path, including drop.
//! Nothing here knows about containers or the agent's API.

mod backend;
pub mod builtin;
mod error;
pub mod host;
pub mod process;
pub mod qemu;
pub mod vhost_user;
mod vm;
pub mod vsock;

pub use backend::{Backend, BackendKind, Launch, ReadinessProbe, RunDir, VmNic, VmSpec};
pub use builtin::BuiltinBackend;
pub use error::{Result, VmError};
pub use qemu::QemuBackend;
pub use vm::MicroVm;

/// The virtio-fs tag under which the guest sees [`VmSpec::shared_dir`].
pub const SHARED_FS_TAG: &str = "firedoor";
