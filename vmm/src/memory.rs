//! Guest physical memory: mappings below and above the 32-bit MMIO gap,
//! private anonymous memory by default, or one shared memfd when a vhost-user
//! backend (another process) must map the guest's RAM too.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

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
    /// The memfd for shared guest memory could not be created or sized.
    #[error("cannot create shared guest memory (memfd of {size} bytes): {source}")]
    Memfd {
        /// Bytes asked for.
        size: u64,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory: only this process can see it.
    Private,
    /// One memfd mapped MAP_SHARED: its descriptor can be handed to a
    /// vhost-user backend, which maps the same pages.
    SharedMemfd,
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
    create_guest_memory_backed(size, MemoryBacking::Private)
}

/// Creates `size` bytes of guest memory backed as `backing` (never reserved
/// up front: pages are allocated when first touched).
pub fn create_guest_memory_backed(
    size: u64,
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&size) || !size.is_multiple_of(4096) {
        return Err(MemoryError::InvalidSize(size));
    }
    let ranges = arch_memory_ranges(size);
    match backing {
        MemoryBacking::Private => Ok(GuestMemoryMmap::from_ranges(&ranges)?),
        MemoryBacking::SharedMemfd => {
            let file = Arc::new(create_memfd(size)?);
            // The regions are consecutive slices of the one file.
            let mut offset = 0u64;
            let with_files: Vec<_> = ranges
                .iter()
                .map(|&(addr, len)| {
                    let region = (addr, len, Some(FileOffset::from_arc(file.clone(), offset)));
                    offset += len as u64;
                    region
                })
                .collect();
            Ok(GuestMemoryMmap::from_ranges_with_files(&with_files)?)
        }
    }
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let memfd_err = |source| MemoryError::Memfd { size, source };
    // SAFETY: the name is a valid NUL-terminated string; the call has no
    // other inputs and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"firedoor-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(memfd_err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // A sparse file: no page is allocated until the guest touches it.
    file.set_len(size).map_err(memfd_err)?;
    Ok(file)
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
    fn shared_memory_is_one_memfd_in_order() {
        let size = MMIO_GAP_START + (16 << 20);
        let mem = create_guest_memory_backed(size, MemoryBacking::SharedMemfd).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (low, high) = (regions[0].file_offset(), regions[1].file_offset());
        let (low, high) = (low.unwrap(), high.unwrap());
        assert!(Arc::ptr_eq(low.arc(), high.arc()));
        assert_eq!((low.start(), high.start()), (0, MMIO_GAP_START));
        assert_eq!(low.file().metadata().unwrap().len(), size);
        // Writes land in the file: another mapping of it would see them.
        mem.write_obj(0x5au8, GuestAddress(MMIO_GAP_END)).unwrap();
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(high.file(), &mut byte, MMIO_GAP_START).unwrap();
        assert_eq!(byte, [0x5a]);
        let private = create_guest_memory(64 << 20).unwrap();
        assert!(private.iter().all(|r| r.file_offset().is_none()));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(create_guest_memory(0).is_err());
        assert!(create_guest_memory(1 << 20).is_err());
        assert!(create_guest_memory((64 << 20) + 1).is_err());
        assert!(create_guest_memory(MAX_MEMORY_BYTES + 4096).is_err());
    }
}
