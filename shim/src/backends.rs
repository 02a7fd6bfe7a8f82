//! Choosing a hypervisor backend for this host.

use firedoor_hypervisor::{host::KvmKind, Backend, BackendKind, QemuBackend};

/// The backend to use when none is named: the built-in VMM on hardware KVM
/// once it exists, otherwise QEMU (with KVM or TCG as the host allows).
pub fn default_kind(_kvm: &KvmKind) -> BackendKind {
    BackendKind::Qemu
}

/// Why a backend cannot run a Linux guest on this host, if it cannot.
pub fn unusable_reason(kind: BackendKind, kvm: &KvmKind) -> Option<String> {
    match kind {
        BackendKind::Qemu => QemuBackend::detect().err().map(|e| e.to_string()),
        BackendKind::Builtin if !kvm.boots_linux() => Some(format!(
            "needs hardware KVM (VT-x or AMD-V); this host has {kvm}: use the qemu backend"
        )),
        BackendKind::Builtin => {
            Some("the built-in VMM is not part of this build yet: use the qemu backend".into())
        }
    }
}

/// Creates the named backend, or says why it cannot run here.
pub fn create(kind: BackendKind, kvm: &KvmKind) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Qemu => Ok(Box::new(QemuBackend::detect()?)),
        BackendKind::Builtin => Err(anyhow::anyhow!(
            "the builtin backend cannot run here: {}",
            unusable_reason(kind, kvm).unwrap_or_default()
        )),
    }
}
