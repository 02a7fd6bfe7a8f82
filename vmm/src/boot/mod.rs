//! x86_64 direct boot of an uncompressed vmlinux (64-bit boot protocol):
//! kernel and initrd loading, command line, zero page, GDT, page tables and
//! the initial vCPU state.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod zero_page;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::memory::{low_memory_end, GuestMemoryMmap};
use layout::{BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
pub use zero_page::InitrdInfo;

/// Errors while preparing the guest for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel image: {0}")]
    KernelRead(#[source] std::io::Error),
    /// Not an ELF64 x86_64 executable.
    #[error("kernel image is not an uncompressed x86_64 vmlinux (ELF64 executable): {0}")]
    InvalidKernel(&'static str),
    /// A kernel segment does not fit in guest RAM.
    #[error("kernel does not fit in guest memory: it needs RAM up to {needed:#x}, but RAM below the MMIO gap ends at {available:#x}")]
    KernelTooBig {
        /// End of the highest kernel segment.
        needed: u64,
        /// End of low RAM.
        available: u64,
    },
    /// linux-loader failed.
    #[error("cannot load kernel: {0}")]
    KernelLoad(#[from] linux_loader::loader::Error),
    /// The initrd cannot be read.
    #[error("cannot read initrd: {0}")]
    InitrdRead(#[source] std::io::Error),
    /// The initrd does not fit between the kernel and the end of low RAM.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooBig {
        /// Size of the initrd file.
        size: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing boot structures failed.
    #[error("cannot write boot structures to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// Writing the zero page failed.
    #[error("cannot write the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
    /// More memory regions than the zero page can describe.
    #[error("too many e820 entries")]
    TooManyE820Entries,
    /// A value the 32-bit boot protocol fields cannot hold.
    #[error("the {0} ({1:#x}) does not fit the boot protocol's 32-bit field")]
    Above32Bits(&'static str, u64),
}

/// Where the kernel was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// 64-bit entry point (guest-physical).
    pub entry: u64,
    /// First byte past the kernel image (including bss).
    pub end: u64,
}

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// vmlinux has a handful of program headers; refuse absurd counts.
const MAX_PROGRAM_HEADERS: u16 = 64;

fn read_obj<T: ByteValued + Default>(file: &mut File, offset: u64) -> Result<T, BootError> {
    let mut obj = T::default();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(obj.as_mut_slice()))
        .map_err(BootError::KernelRead)?;
    Ok(obj)
}

/// Checks the ELF headers and that every loadable segment lies in low RAM at
/// or above 1 MiB (where it cannot overwrite the boot structures).
fn check_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<(), BootError> {
    let ehdr: Elf64_Ehdr = read_obj(file, 0)?;
    if ehdr.e_ident[..4] != *b"\x7fELF" {
        return Err(BootError::InvalidKernel("no ELF magic"));
    }
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(BootError::InvalidKernel("not a little-endian ELF64 file"));
    }
    if ehdr.e_type != ET_EXEC || ehdr.e_machine != EM_X86_64 {
        return Err(BootError::InvalidKernel("not an x86_64 executable"));
    }
    if ehdr.e_phnum == 0 || ehdr.e_phnum > MAX_PROGRAM_HEADERS {
        return Err(BootError::InvalidKernel("bad program header count"));
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() {
        return Err(BootError::InvalidKernel("bad program header size"));
    }
    let available = low_memory_end(mem);
    let mut loaded = false;
    for i in 0..u64::from(ehdr.e_phnum) {
        let off = ehdr
            .e_phoff
            .checked_add(i * std::mem::size_of::<Elf64_Phdr>() as u64)
            .ok_or(BootError::InvalidKernel("bad program header offset"))?;
        let phdr: Elf64_Phdr = read_obj(file, off)?;
        if phdr.p_type != PT_LOAD || phdr.p_filesz == 0 {
            continue;
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(BootError::InvalidKernel(
                "segment file size exceeds memory size",
            ));
        }
        if phdr.p_paddr < HIMEM_START {
            return Err(BootError::InvalidKernel("segment below 1 MiB"));
        }
        let needed = phdr
            .p_paddr
            .checked_add(phdr.p_memsz)
            .ok_or(BootError::InvalidKernel("segment address overflows"))?;
        if needed > available {
            return Err(BootError::KernelTooBig { needed, available });
        }
        loaded = true;
    }
    if !loaded {
        return Err(BootError::InvalidKernel("no loadable segment"));
    }
    if ehdr.e_entry < HIMEM_START || ehdr.e_entry >= available {
        return Err(BootError::InvalidKernel("entry point outside the kernel"));
    }
    Ok(())
}

/// Loads a vmlinux ELF into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<KernelInfo, BootError> {
    check_kernel(mem, file)?;
    let result = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))?;
    Ok(KernelInfo {
        entry: result.kernel_load.0,
        end: result.kernel_end,
    })
}

const PAGE_SIZE: u64 = 4096;

/// Loads the initrd at the top of low RAM, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel_end: u64,
) -> Result<InitrdInfo, BootError> {
    let size = file.metadata().map_err(BootError::InitrdRead)?.len();
    let lowest = kernel_end.next_multiple_of(PAGE_SIZE);
    let top = low_memory_end(mem);
    let address = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= lowest)
        .ok_or(BootError::InitrdTooBig { size })?;
    file.rewind().map_err(BootError::InitrdRead)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { size })?;
    mem.read_exact_volatile_from(GuestAddress(address), file, len)?;
    Ok(InitrdInfo { address, size })
}

/// Builds the command line, with `virtio_mmio.device=` entries appended.
pub fn build_cmdline(base: &str, mmio_devices: &[(u64, u64, u32)]) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim())?;
    }
    for &(size, addr, irq) in mmio_devices {
        cmdline.add_virtio_mmio_device(size, GuestAddress(addr), irq, None)?;
    }
    Ok(cmdline)
}

/// Writes the command line, GDT, IDT, page tables, MP table (for `vcpus`
/// CPUs) and zero page.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<InitrdInfo>,
    vcpus: u8,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)?;
    let cmdline_size = cmdline.as_cstring()?.as_bytes_with_nul().len();
    for (i, entry) in gdt::BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    paging::setup_identity_paging(mem)?;
    mptable::setup_mptable(mem, vcpus)?;
    zero_page::write_zero_page(mem, cmdline_size, initrd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use crate::test_utils::build_elf;
    use std::io::Write;
    use tempfile::TempDir;

    fn kernel_file(dir: &TempDir, bytes: &[u8]) -> File {
        let path = dir.path().join("vmlinux");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        File::open(&path).unwrap()
    }

    #[test]
    fn loads_a_minimal_elf() {
        let dir = TempDir::new().unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        let code = [0xf4u8; 16];
        let mut f = kernel_file(&dir, &build_elf(0x20_0000, &code));
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.entry, 0x20_0000);
        assert_eq!(k.end, 0x20_0000 + 16);
        let byte: u8 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(byte, 0xf4);
    }

    #[test]
    fn rejects_bad_kernels() {
        let dir = TempDir::new().unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        let mut f = kernel_file(
            &dir,
            b"not an elf file at all, just some text padding it out to 64 bytes......",
        );
        assert!(matches!(
            load_kernel(&mem, &mut f),
            Err(BootError::InvalidKernel(_))
        ));
        let mut f = kernel_file(&dir, b"\x7fELF");
        assert!(matches!(
            load_kernel(&mem, &mut f),
            Err(BootError::KernelRead(_))
        ));
        // Below 1 MiB would overwrite the boot structures.
        let mut f = kernel_file(&dir, &build_elf(0x8000, &[0xf4]));
        assert!(matches!(
            load_kernel(&mem, &mut f),
            Err(BootError::InvalidKernel(_))
        ));
    }

    #[test]
    fn kernel_too_big_for_memory() {
        let dir = TempDir::new().unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        let mut f = kernel_file(&dir, &build_elf(0x100_0000, &[0xf4]));
        let err = load_kernel(&mem, &mut f).unwrap_err();
        assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
        assert!(err.to_string().contains("does not fit"));
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        let dir = TempDir::new().unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        let path = dir.path().join("initrd");
        File::create(&path)
            .unwrap()
            .write_all(&[7u8; 5000])
            .unwrap();
        let mut f = File::open(&path).unwrap();
        let info = load_initrd(&mem, &mut f, 0x20_0000).unwrap();
        assert_eq!(info.size, 5000);
        assert_eq!(info.address, ((16 << 20) - 5000) & !0xfff);
        let b: u8 = mem.read_obj(GuestAddress(info.address + 4999)).unwrap();
        assert_eq!(b, 7);
        // Kernel end above where the initrd would go.
        assert!(matches!(
            load_initrd(&mem, &mut f, (16 << 20) - 4096),
            Err(BootError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn cmdline_lists_virtio_devices() {
        let c = build_cmdline("console=ttyS0 reboot=k", &[(0x1000, 0xd000_0000, 5)]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5"
        );
        build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE), &[]).unwrap_err();
    }

    #[test]
    fn configure_system_writes_boot_structures() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let c = build_cmdline("hello", &[]).unwrap();
        configure_system(&mem, &c, None, 1).unwrap();
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt::BOOT_GDT[1]);
        let mut buf = [0u8; 6];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"hello\0");
    }
}
