//! Choosing a hypervisor backend for this host.

use firedoor_hypervisor::{host::KvmKind, Backend, BackendKind, QemuBackend};

use crate::config::Config;

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

/// Creates the named backend with default helper paths, or says why it
/// cannot run here.
pub fn create(kind: BackendKind, kvm: &KvmKind) -> anyhow::Result<Box<dyn Backend>> {
    create_with(kind, kvm, &Config::default())
}

/// Creates the named backend, with helper paths from `config` where set.
pub fn create_with(
    kind: BackendKind,
    kvm: &KvmKind,
    config: &Config,
) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Qemu => {
            let mut backend = match (
                Config::explicit(&config.qemu),
                Config::explicit(&config.vhost_device_vsock),
            ) {
                (Some(qemu), Some(vsock)) => QemuBackend {
                    qemu: qemu.into(),
                    vhost_vsock: vsock.into(),
                    virtiofsd: None,
                    accel: firedoor_hypervisor::qemu::Accel::best_for(kvm),
                },
                _ => QemuBackend::detect()?,
            };
            if let Some(qemu) = Config::explicit(&config.qemu) {
                backend.qemu = qemu.into();
            }
            if let Some(vsock) = Config::explicit(&config.vhost_device_vsock) {
                backend.vhost_vsock = vsock.into();
            }
            backend.virtiofsd = Config::explicit(&config.virtiofsd)
                .map(Into::into)
                .or_else(|| {
                    firedoor_hypervisor::host::find_program(firedoor_hypervisor::qemu::VIRTIOFSD)
                });
            Ok(Box::new(backend))
        }
        BackendKind::Builtin => Err(anyhow::anyhow!(
            "the builtin backend cannot run here: {}",
            unusable_reason(kind, kvm).unwrap_or_default()
        )),
    }
}
