//! Choosing a hypervisor backend for this host.

use firedoor_hypervisor::{
    builtin::FIREDOOR_VMM, host, host::KvmKind, Backend, BackendKind, BuiltinBackend, QemuBackend,
};

use crate::config::Config;

/// The backend `config` names, or for "auto" the built-in VMM (with
/// virtio-fs for the containers' share) on hardware KVM, QEMU elsewhere.
pub fn for_config(config: &Config) -> anyhow::Result<Box<dyn Backend>> {
    let kvm = host::probe_kvm();
    let kind = match config.backend_kind() {
        Some(kind) => kind,
        None => default_kind(&kvm),
    };
    let backend = create_with(kind, &kvm, config)?;
    log::info!(
        "booting the sandbox VM with the {} backend ({})",
        backend.kind(),
        backend.accelerator()
    );
    Ok(backend)
}

/// The backend to use when none is named: the built-in VMM on hardware KVM
/// when `firedoor-vmm` is installed, otherwise QEMU (with KVM or TCG as the
/// host allows).
pub fn default_kind(kvm: &KvmKind) -> BackendKind {
    default_kind_with(kvm, host::find_program(FIREDOOR_VMM).is_some())
}

fn default_kind_with(kvm: &KvmKind, have_vmm: bool) -> BackendKind {
    if kvm.boots_linux() && have_vmm {
        BackendKind::Builtin
    } else {
        BackendKind::Qemu
    }
}

/// Why a backend cannot run a Linux guest on this host, if it cannot.
pub fn unusable_reason(kind: BackendKind, kvm: &KvmKind) -> Option<String> {
    match kind {
        BackendKind::Qemu => QemuBackend::detect().err().map(|e| e.to_string()),
        BackendKind::Builtin if !kvm.boots_linux() => Some(format!(
            "needs hardware KVM (VT-x or AMD-V); this host has {kvm}: use the qemu backend"
        )),
        BackendKind::Builtin => BuiltinBackend::detect().err().map(|e| e.to_string()),
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
            let mut backend = match (config.qemu.as_deref(), config.vhost_device_vsock.as_deref()) {
                (Some(qemu), Some(vsock)) => QemuBackend {
                    qemu: qemu.into(),
                    vhost_vsock: vsock.into(),
                    virtiofsd: None,
                    accel: firedoor_hypervisor::qemu::Accel::best_for(kvm),
                },
                _ => QemuBackend::detect()?,
            };
            if let Some(qemu) = config.qemu.as_deref() {
                backend.qemu = qemu.into();
            }
            if let Some(vsock) = config.vhost_device_vsock.as_deref() {
                backend.vhost_vsock = vsock.into();
            }
            backend.virtiofsd = config.virtiofsd.clone().or_else(|| {
                firedoor_hypervisor::host::find_program(firedoor_hypervisor::qemu::VIRTIOFSD)
            });
            Ok(Box::new(backend))
        }
        BackendKind::Builtin => match unusable_reason(kind, kvm) {
            Some(why) => Err(anyhow::anyhow!(
                "the builtin backend cannot run here: {why}"
            )),
            None => {
                let mut backend = BuiltinBackend::detect()?;
                if let Some(virtiofsd) = &config.virtiofsd {
                    backend.virtiofsd = Some(virtiofsd.clone());
                }
                Ok(Box::new(backend))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD_V: KvmKind = KvmKind::Hardware { extension: "AMD-V" };

    #[test]
    fn builtin_is_the_default_only_on_hardware_kvm_with_the_vmm() {
        assert_eq!(default_kind_with(&AMD_V, true), BackendKind::Builtin);
        assert_eq!(default_kind_with(&AMD_V, false), BackendKind::Qemu);
        assert_eq!(default_kind_with(&KvmKind::Pvm, true), BackendKind::Qemu);
        assert_eq!(default_kind_with(&KvmKind::Absent, true), BackendKind::Qemu);
    }

    #[test]
    fn builtin_without_hardware_kvm_says_why() {
        let why = unusable_reason(BackendKind::Builtin, &KvmKind::Pvm).unwrap();
        assert!(why.contains("needs hardware KVM"), "{why}");
        let err = create(BackendKind::Builtin, &KvmKind::Pvm).err().unwrap();
        assert!(err.to_string().contains("use the qemu backend"), "{err}");
    }
}
