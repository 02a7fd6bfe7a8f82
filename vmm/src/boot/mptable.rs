//! The Intel MultiProcessor table (MP specification 1.4): how a guest
//! without ACPI finds its CPUs, the IOAPIC and the ISA interrupt routing.
//! Without it Linux runs on one CPU with the legacy PIC only.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

/// Where the table goes: the last KiB of base memory, which Linux scans and
/// which the e820 map leaves out (RAM below 1 MiB ends here).
pub const MPTABLE_START: u64 = super::layout::EBDA_START;

/// The guest's IOAPIC and local APICs (KVM's in-kernel irqchip).
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IOAPIC input pins; every one is routed from the same ISA IRQ number.
const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 in the CPU signature; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Bytes summing (mod 256) to zero with the checksum byte in place.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The configuration table for `vcpus` CPUs, to be placed at `addr`.
fn config_table(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        // Conforming polarity and trigger, ISA bus 0, IRQ n -> pin n.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, irq]);
        entries.extend_from_slice(&[ioapic_id, irq]);
        count += 1;
    }
    // LINT0 is the PIC's ExtINT on every CPU, LINT1 the NMI (as set up in
    // regs::setup_lint).
    for (kind, apic, lint) in [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 0xff, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, apic, lint]);
        count += 1;
    }

    const HEADER_LEN: usize = 44;
    // At most 254 processor entries of 20 bytes: far below 64 KiB.
    let length = u16::try_from(HEADER_LEN + entries.len()).unwrap_or(u16::MAX);
    let mut table = Vec::with_capacity(length.into());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec revision 1.4, checksum below
    table.extend_from_slice(b"FIREDOOR");
    table.extend_from_slice(b"microVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The floating pointer structure pointing at a configuration table.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = 4; // spec revision 1.4
                // feature bytes 0: the configuration table is present; no IMCR.
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the floating pointer and the table for `vcpus` CPUs at
/// [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    let table_addr = MPTABLE_START + 16;
    // The EBDA is in the first MiB: the address fits the pointer's 32 bits.
    let pointer = u32::try_from(table_addr)
        .map_err(|_| vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(table_addr)))?;
    mem.write_slice(&floating_pointer(pointer), GuestAddress(MPTABLE_START))?;
    mem.write_slice(&config_table(vcpus), GuestAddress(table_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn table_has_every_cpu_and_valid_checksums() {
        let mem = create_guest_memory(16 << 20).unwrap();
        setup_mptable(&mem, 3).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(&mpf), 0);
        let table_addr = u64::from(u32::from_le_bytes(mpf[4..8].try_into().unwrap()));

        let mut header = [0u8; 44];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&header[..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let count = u16::from_le_bytes([header[34], header[35]]);
        // 3 CPUs, bus, IOAPIC, 24 IRQs, 2 local interrupts.
        assert_eq!(count, 3 + 2 + 24 + 2);
        assert_eq!(len, 44 + 3 * 20 + 2 * 8 + 24 * 8 + 2 * 8);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0);
        // First CPU is the bootstrap processor, the others only enabled.
        assert_eq!(&table[44..48], &[ENTRY_PROCESSOR, 0, APIC_VERSION, 3]);
        assert_eq!(&table[64..68], &[ENTRY_PROCESSOR, 1, APIC_VERSION, 1]);
    }

    #[test]
    fn largest_table_fits_below_1mib() {
        let len = config_table(crate::vmm::MAX_VCPUS).len() as u64;
        assert!(MPTABLE_START + 16 + len < super::super::layout::HIMEM_START);
    }
}
