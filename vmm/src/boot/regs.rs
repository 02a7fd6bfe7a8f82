//! Initial vCPU state for the 64-bit boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;

use super::gdt::{self, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, ZERO_PAGE_START,
};
use super::msr::boot_msr_entries;

/// Errors while setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {set} of {total} boot MSRs")]
    Msrs {
        /// Number accepted.
        set: usize,
        /// Number given.
        total: usize,
    },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Long mode, paging on, flat segments from the boot GDT.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    sregs.gdt.base = BOOT_GDT_START;
    // Four 8-byte entries.
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&BOOT_GDT) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = gdt::kvm_segment(BOOT_GDT[CODE_INDEX as usize], CODE_INDEX);
    let data = gdt::kvm_segment(BOOT_GDT[DATA_INDEX as usize], DATA_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::kvm_segment(BOOT_GDT[TSS_INDEX as usize], TSS_INDEX);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))
}

/// RIP at the kernel entry, RSI at the zero page, a small boot stack.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

/// x87 and SSE control words at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

/// Writes the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).expect("boot MSR list fits in a Msrs");
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            total: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Routes LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as a BIOS would.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[offset..offset + 4];
        let mut raw = [0u8; 4];
        for (d, s) in raw.iter_mut().zip(bytes.iter()) {
            *d = s.to_ne_bytes()[0];
        }
        let value = set_delivery_mode(u32::from_le_bytes(raw), mode).to_le_bytes();
        for (d, s) in bytes.iter_mut().zip(value) {
            *d = libc::c_char::from_ne_bytes([s]);
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }
}
