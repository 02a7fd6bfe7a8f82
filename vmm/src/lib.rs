//! Firedoor's built-in VMM: a KVM microVM on the rust-vmm crates.
//!
//! It boots an uncompressed vmlinux directly in 64-bit mode, with a serial
//! console, an i8042 (for reset), a boot-time marker port, and virtio-mmio
//! devices (vsock over a hybrid Unix socket, block, virtio-fs as a
//! vhost-user frontend, net on a tap, a balloon with free page reporting). It knows nothing about
//! containers.

#![deny(missing_docs)]

pub mod boot;
pub mod devices;
pub mod jail;
pub mod memory;
pub mod seccomp;
mod vmm;
pub mod vstate;

#[cfg(test)]
mod kvm_tests;
#[cfg(test)]
mod test_utils;

pub use vmm::{
    DiskConfig, FsConfig, NetConfig, SerialOutput, StopHandle, VmConfig, Vmm, VmmError, VsockConfig,
};
pub use vstate::vcpu::ExitReason;
