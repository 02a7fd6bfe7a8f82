//! Guest physical memory: anonymous mappings below and above the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used by the whole VMM (no dirty-page bitmap).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO gap: virtio-mmio devices, IOAPIC, LAPIC live here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// First address past the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;

/// Smallest guest the VMM accepts: room for the boot structures and a tiny kernel.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;
/// Largest guest the VMM accepts (keeps all address arithmetic far from overflow).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is outside `[MIN_MEMORY_BYTES, MAX_MEMORY_BYTES]` or not page aligned.
    #[error(
        "invalid guest memory size {0} bytes (must be a multiple of 4 KiB between 8 MiB and 1 TiB)"
    )]
    InvalidSize(u64),
    /// mmap failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// Guest RAM ranges for `size` bytes: one range below the MMIO gap and, for
/// large guests, the rest starting at 4 GiB.
pub fn arch_memory_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Creates `size` bytes of guest memory (anonymous, private, not reserved up front).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&size) || !size.is_multiple_of(4096) {
        return Err(MemoryError::InvalidSize(size));
    }
    Ok(GuestMemoryMmap::from_ranges(&arch_memory_ranges(size))?)
}

/// End (exclusive) of the RAM that lies below the MMIO gap.
pub fn low_memory_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0 + r.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_guest_is_one_region() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(low_memory_end(&mem), 64 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let size = MMIO_GAP_START + (16 << 20);
        let ranges = arch_memory_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), 16 << 20));
        let mem = create_guest_memory(size).unwrap();
        assert_eq!(low_memory_end(&mem), MMIO_GAP_START);
        // The gap is not memory.
        assert!(mem.write_obj(1u8, GuestAddress(MMIO_GAP_START)).is_err());
        assert!(mem.write_obj(1u8, GuestAddress(MMIO_GAP_END)).is_ok());
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(create_guest_memory(0).is_err());
        assert!(create_guest_memory(1 << 20).is_err());
        assert!(create_guest_memory((64 << 20) + 1).is_err());
        assert!(create_guest_memory(MAX_MEMORY_BYTES + 4096).is_err());
    }
}
