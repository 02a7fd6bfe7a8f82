//! Guest physical memory: mappings below and above the 32-bit MMIO gap,
//! private anonymous memory by default, or one shared memfd when a vhost-user
//! backend (another process) must map the guest's RAM too.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

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
    /// Huge pages were asked for a size that is not a multiple of them.
    #[error("guest memory of {0} bytes is not a multiple of 2 MiB huge pages")]
    HugePageSize(u64),
    /// The huge page pool cannot hold the guest.
    #[error(
        "cannot map {size} bytes of guest memory from 2 MiB huge pages: {source} \
         (is the pool large enough? see HugePages_Free in /proc/meminfo; raise \
         /proc/sys/vm/nr_hugepages)"
    )]
    HugePagesUnavailable {
        /// Bytes asked for.
        size: u64,
        /// The error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
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
    /// As `SharedMemfd`, from the host's pool of 2 MiB huge pages
    /// (`/proc/sys/vm/nr_hugepages`): fewer TLB misses, and the memory is
    /// reserved when mapped, so a pool too small fails at start, not later.
    HugePages,
}

/// Size of the huge pages [`MemoryBacking::HugePages`] uses.
pub const HUGE_PAGE_BYTES: u64 = 2 << 20;

// The VMM is built for x86_64 only: a guest size always fits a host length.
const _: () = assert!(usize::BITS == u64::BITS);

/// `n` bytes of guest memory as a host length (lossless: see above).
#[allow(clippy::cast_possible_truncation)]
pub(crate) const fn host_len(n: u64) -> usize {
    n as usize
}

/// Guest RAM ranges for `size` bytes: one range below the MMIO gap and, for
/// large guests, the rest starting at 4 GiB.
pub fn arch_memory_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), host_len(size))]
    } else {
        vec![
            (GuestAddress(0), host_len(MMIO_GAP_START)),
            (GuestAddress(MMIO_GAP_END), host_len(size - MMIO_GAP_START)),
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
    let huge = backing == MemoryBacking::HugePages;
    if huge && !size.is_multiple_of(HUGE_PAGE_BYTES) {
        return Err(MemoryError::HugePageSize(size));
    }
    match backing {
        MemoryBacking::Private => Ok(GuestMemoryMmap::from_ranges(&ranges)?),
        MemoryBacking::SharedMemfd | MemoryBacking::HugePages => {
            let file = Arc::new(create_memfd(size, huge)?);
            // The regions are consecutive slices of the one file (the MMIO
            // gap starts on a huge page boundary, so each slice does too).
            let mut offset = 0u64;
            let with_files: Vec<_> = ranges
                .iter()
                .map(|&(addr, len)| {
                    let region = (addr, len, Some(FileOffset::from_arc(file.clone(), offset)));
                    offset += len as u64;
                    region
                })
                .collect();
            if huge {
                return map_huge_pages(&with_files)
                    .map_err(|source| MemoryError::HugePagesUnavailable { size, source });
            }
            Ok(GuestMemoryMmap::from_ranges_with_files(&with_files)?)
        }
    }
}

/// Maps huge page memfd slices *with* a reservation: vm-memory maps files
/// MAP_NORESERVE, which for hugetlb would defer running out of huge pages
/// to a SIGBUS on the guest's first touch instead of an error now.
fn map_huge_pages(
    ranges: &[(GuestAddress, usize, Option<FileOffset>)],
) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    use vm_memory::mmap::{FromRangesError, MmapRegionBuilder};
    let regions = ranges
        .iter()
        .map(|(addr, len, file)| {
            let mut builder = MmapRegionBuilder::new(*len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_SHARED)
                .with_hugetlbfs(true);
            if let Some(file) = file {
                builder = builder.with_file_offset(file.clone());
            }
            let region = builder.build()?;
            vm_memory::GuestRegionMmap::new(region, *addr)
                .ok_or(FromRangesError::InvalidGuestRegion)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

fn create_memfd(size: u64, huge_pages: bool) -> Result<File, MemoryError> {
    let memfd_err = |source| MemoryError::Memfd { size, source };
    let flags = if huge_pages {
        // MFD_HUGETLB alone means the default huge page size (2 MiB on x86).
        libc::MFD_CLOEXEC | libc::MFD_HUGETLB
    } else {
        libc::MFD_CLOEXEC
    };
    // SAFETY: the name is a valid NUL-terminated string; the call has no
    // other inputs and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"firedoor-guest-ram".as_ptr(), flags) };
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

/// Where `len` bytes of guest memory at `addr` are mapped in this process,
/// if they lie entirely inside one memory region (regions are mapped
/// separately: a range straddling two has no single host address).
pub fn host_range(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Option<*mut u8> {
    let region = mem.find_region(addr)?;
    let offset = addr.checked_offset_from(region.start_addr())?;
    if offset.checked_add(len)? > region.len() {
        return None;
    }
    region.get_host_address(MemoryRegionAddress(offset)).ok()
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
        assert_eq!(ranges[0], (GuestAddress(0), host_len(MMIO_GAP_START)));
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), 16 << 20));
        let mem = create_guest_memory(size).unwrap();
        assert_eq!(low_memory_end(&mem), MMIO_GAP_START);
        // The gap is not memory.
        mem.write_obj(1u8, GuestAddress(MMIO_GAP_START))
            .unwrap_err();
        mem.write_obj(1u8, GuestAddress(MMIO_GAP_END)).unwrap();
    }

    #[test]
    fn huge_pages_must_fit_the_page_size() {
        let err = create_guest_memory_backed(9 << 20, MemoryBacking::HugePages).unwrap_err();
        assert!(matches!(err, MemoryError::HugePageSize(_)), "{err}");
    }

    fn hugepages_meminfo(key: &str) -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap()
    }

    /// Beyond the pool: a clear error at once, not a SIGBUS on first touch.
    /// Within it (the test grows the pool for itself, then restores it):
    /// guest RAM comes from huge pages.
    #[test]
    fn huge_pages_come_from_the_pool_or_fail_at_start() {
        let free = hugepages_meminfo("HugePages_Free:");
        let too_big = (free + 8) * HUGE_PAGE_BYTES;
        let err = create_guest_memory_backed(too_big, MemoryBacking::HugePages).unwrap_err();
        assert!(err.to_string().contains("nr_hugepages"), "{err}");

        let pool = "/proc/sys/vm/nr_hugepages";
        let total = hugepages_meminfo("HugePages_Total:");
        if std::fs::write(pool, (total + 8).to_string()).is_err() {
            return; // not root: the error path above is what can be checked
        }
        let result = create_guest_memory_backed(16 << 20, MemoryBacking::HugePages);
        let in_use = result
            .as_ref()
            .map(|mem| {
                mem.write_obj(1u8, GuestAddress(0)).unwrap();
                hugepages_meminfo("HugePages_Total:") - hugepages_meminfo("HugePages_Free:")
            })
            .map_err(|e| e.to_string());
        drop(result);
        std::fs::write(pool, total.to_string()).unwrap();
        let in_use = in_use.unwrap();
        assert!(in_use >= 1, "no huge page in use after a write");
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
        create_guest_memory(0).unwrap_err();
        create_guest_memory(1 << 20).unwrap_err();
        create_guest_memory((64 << 20) + 1).unwrap_err();
        create_guest_memory(MAX_MEMORY_BYTES + 4096).unwrap_err();
    }
}
