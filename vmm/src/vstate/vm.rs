//! The KVM VM: capability checks, in-kernel irqchip and PIT, memory slots.

use std::path::Path;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;

/// Where KVM needs three pages for the real-mode TSS (inside the MMIO gap,
/// clear of the IOAPIC and LAPIC).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open {path}: {source} (is KVM available and accessible to this user?)")]
    OpenKvm {
        /// The device path.
        path: String,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The KVM API version is not the stable one.
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    /// A capability the VMM relies on is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// A KVM VM with an in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    supported_cpuid: CpuId,
}

impl Vm {
    /// Opens `kvm_path` (normally /dev/kvm) and creates the VM.
    pub fn new(kvm_path: &Path) -> Result<Self, VmError> {
        let path =
            std::ffi::CString::new(kvm_path.as_os_str().as_encoded_bytes()).map_err(|_| {
                VmError::OpenKvm {
                    path: kvm_path.display().to_string(),
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                }
            })?;
        let kvm = Kvm::new_with_path(&path).map_err(|source| VmError::OpenKvm {
            path: kvm_path.display().to_string(),
            source,
        })?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        for cap in [
            Cap::Irqchip,
            Cap::Ioeventfd,
            Cap::Irqfd,
            Cap::UserMemory,
            Cap::SetTssAddr,
            Cap::Pit2,
            Cap::ImmediateExit,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("KVM_CREATE_VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        // The PC speaker port (0x61) is handled in the kernel as a dummy.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("KVM_CREATE_PIT2", e))?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        Ok(Self {
            kvm,
            fd,
            supported_cpuid,
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// CPUID entries KVM can expose.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// Whether KVM emulates the TSC-deadline LAPIC timer mode.
    pub fn has_tsc_deadline(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Highest vCPU count KVM recommends.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_nr_vcpus()
    }

    /// Makes every region of `mem` guest RAM, one slot per region.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the host range is a live mapping owned by `mem` for its
            // whole length; the VMM keeps `mem` (and so the mapping) alive
            // for as long as the VM exists, and slots do not overlap because
            // the guest regions do not.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_device_is_a_clear_error() {
        let err = Vm::new(Path::new("/nonexistent/kvm")).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("cannot open /nonexistent/kvm"), "{msg}");
        let err = Vm::new(Path::new("/dev/null")).err().unwrap();
        assert!(!err.to_string().is_empty());
    }
}
