//! The zero page (`struct boot_params`): e820 map, command line and initrd.

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};
use super::BootError;
use crate::memory::{GuestMemoryMmap, MMIO_GAP_START};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Where an initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest-physical start.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

fn add_e820(params: &mut boot_params, addr: u64, size: u64) -> Result<(), BootError> {
    let idx = params.e820_entries as usize;
    let slot = params
        .e820_table
        .get_mut(idx)
        .ok_or(BootError::TooManyE820Entries)?;
    *slot = boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    params.e820_entries += 1;
    Ok(())
}

/// Builds the zero page and writes it to guest memory.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    cmdline_size: usize,
    initrd: Option<InitrdInfo>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    let low32 =
        |what, value: u64| u32::try_from(value).map_err(|_| BootError::Above32Bits(what, value));
    params.hdr.cmd_line_ptr = low32("command line address", CMDLINE_START)?;
    params.hdr.cmdline_size = u32::try_from(cmdline_size)
        .map_err(|_| BootError::Above32Bits("command line size", cmdline_size as u64))?;
    if let Some(initrd) = initrd {
        // Initrds are placed below the MMIO gap, so 32 bits suffice.
        params.hdr.ramdisk_image = low32("initrd address", initrd.address)?;
        params.hdr.ramdisk_size = low32("initrd size", initrd.size)?;
    }

    // Low RAM up to the EBDA, then every region from 1 MiB on.
    add_e820(&mut params, 0, EBDA_START)?;
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            debug_assert!(end <= MMIO_GAP_START || start >= MMIO_GAP_START);
            add_e820(&mut params, start, end - start)?;
        }
    }

    let params = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MMIO_GAP_END};
    use vm_memory::Bytes;

    fn read_params(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn small_guest_map() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let initrd = InitrdInfo {
            address: 0x300_0000,
            size: 0x1234,
        };
        write_zero_page(&mem, 42, Some(initrd)).unwrap();
        let p = read_params(&mem);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_START);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table;
        assert_eq!(({ e[0].addr }, { e[0].size }), (0, EBDA_START));
        assert_eq!(
            ({ e[1].addr }, { e[1].size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn large_guest_map_has_high_ram() {
        let mem = create_guest_memory(MMIO_GAP_START + (8 << 20)).unwrap();
        write_zero_page(&mem, 1, None).unwrap();
        let p = read_params(&mem);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[1].addr }, { e[1].size }),
            (HIMEM_START, MMIO_GAP_START - HIMEM_START)
        );
        assert_eq!(({ e[2].addr }, { e[2].size }), (MMIO_GAP_END, 8 << 20));
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }
}
