//! Identity page tables for the 64-bit entry point.
//!
//! Linux's `startup_64` builds its own tables early; ours only have to cover
//! the kernel, the zero page and the boot stack. We map the first 4 GiB with
//! 2 MiB pages so the MMIO gap is reachable too (tiny test guests use it).

use vm_memory::{Bytes, GuestAddress};

use super::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestMemoryMmap;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
/// Number of page directories (each maps 1 GiB).
pub const IDENTITY_MAPPED_GIB: u64 = 4;

/// Writes the tables and returns the value for CR3.
pub fn setup_identity_paging(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPTE_START + gib * 8))?;
        for i in 0..512u64 {
            let phys = ((gib << 9) + i) << 21;
            mem.write_obj(
                phys | PRESENT | WRITABLE | PAGE_SIZE_2M,
                GuestAddress(pd + i * 8),
            )?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn maps_first_4gib_identically() {
        let mem = create_guest_memory(16 << 20).unwrap();
        assert_eq!(setup_identity_paging(&mem).unwrap(), PML4_START);
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4e, PDPTE_START | 3);
        let pdpte3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpte3, (PDE_START + 0x3000) | 3);
        // Last 2 MiB page below 4 GiB.
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
