//! Helpers shared by the unit tests and the integration tests
//! (`tests/*.rs` include this file with `#[path]`): a minimal ELF64 writer
//! and a tiny x86 byte assembler for hand-made guest programs.
// Test guests: small code lengths and addresses fit 16/32-bit fields.
#![allow(clippy::cast_possible_truncation)]
#![allow(dead_code)]

/// A minimal ELF64 x86_64 executable with one PT_LOAD segment holding `code`
/// at physical (and virtual) address `load`; the entry point is `load`.
pub fn build_elf(load: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut v = Vec::with_capacity(EHDR + PHDR + code.len());
    // e_ident: magic, ELFCLASS64, little endian, version 1, SysV ABI.
    v.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    v.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    v.extend_from_slice(&1u32.to_le_bytes()); // e_version
    v.extend_from_slice(&load.to_le_bytes()); // e_entry
    v.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    v.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    v.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    v.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    v.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
                                  // Program header: PT_LOAD, R+X.
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&5u32.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes()); // p_offset
    v.extend_from_slice(&load.to_le_bytes()); // p_vaddr
    v.extend_from_slice(&load.to_le_bytes()); // p_paddr
    v.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    v.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    v.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    v.extend_from_slice(code);
    v
}

/// Appends hand-assembled x86 instructions (64-bit mode unless noted).
#[derive(Default)]
pub struct Asm {
    /// The machine code so far.
    pub code: Vec<u8>,
}

impl Asm {
    /// `mov dx, imm16` (64-bit mode).
    pub fn mov_dx(&mut self, v: u16) -> &mut Self {
        self.code.extend_from_slice(&[0x66, 0xba]);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `mov al, imm8`.
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.code.extend_from_slice(&[0xb0, v]);
        self
    }
    /// `out dx, al`.
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.code.push(0xee);
        self
    }
    /// `out imm8, al`.
    pub fn out_imm_al(&mut self, port: u8) -> &mut Self {
        self.code.extend_from_slice(&[0xe6, port]);
        self
    }
    /// Writes `s` to the serial port at 0x3f8.
    pub fn print(&mut self, s: &str) -> &mut Self {
        self.mov_dx(0x3f8);
        for b in s.bytes() {
            self.mov_al(b).out_dx_al();
        }
        self
    }
    /// `mov edi, imm32` (zero-extends into rdi).
    pub fn mov_edi(&mut self, v: u32) -> &mut Self {
        self.code.push(0xbf);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `mov esi, imm32`.
    pub fn mov_esi(&mut self, v: u32) -> &mut Self {
        self.code.push(0xbe);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `mov ecx, imm32`.
    pub fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.code.push(0xb9);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// `rep movsb`.
    pub fn rep_movsb(&mut self) -> &mut Self {
        self.code.extend_from_slice(&[0xf3, 0xa4]);
        self
    }
    /// `mov eax, [rdi + disp8]`.
    pub fn load_eax_rdi(&mut self, disp: u8) -> &mut Self {
        self.code.extend_from_slice(&[0x8b, 0x47, disp]);
        self
    }
    /// `mov dword [rdi + disp8], imm32`.
    pub fn store_rdi_imm(&mut self, disp: u8, v: u32) -> &mut Self {
        self.code.extend_from_slice(&[0xc7, 0x47, disp]);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Sends the four bytes of eax (little endian) to the serial port.
    pub fn print_eax_raw(&mut self) -> &mut Self {
        self.mov_dx(0x3f8);
        for _ in 0..4 {
            self.out_dx_al();
            self.code.extend_from_slice(&[0xc1, 0xe8, 0x08]); // shr eax, 8
        }
        self
    }
    /// Spins until the byte at absolute address `addr` (< 2 GiB) equals `v`.
    pub fn wait_byte(&mut self, addr: u32, v: u8) -> &mut Self {
        // cmp byte [disp32], imm8 ; jne back to the cmp
        self.code.extend_from_slice(&[0x80, 0x3c, 0x25]);
        self.code.extend_from_slice(&addr.to_le_bytes());
        self.code.extend_from_slice(&[v, 0x75, 0xf6]);
        self
    }
    /// Resets the machine through the i8042 (0xfe to port 0x64).
    pub fn i8042_reset(&mut self) -> &mut Self {
        self.mov_al(0xfe).out_imm_al(0x64)
    }
    /// `cli; hlt; jmp` back to the hlt.
    pub fn halt_forever(&mut self) -> &mut Self {
        self.code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        self
    }
    /// Appends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
}

/// 16-bit real-mode code for an application processor started by SIPI:
/// prints `s` on the serial port, sets the byte at `flag` (< 64 KiB) to 1,
/// and halts.
pub fn real_mode_ap(s: &str, flag: u16) -> Vec<u8> {
    let mut c = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in s.bytes() {
        c.extend_from_slice(&[0xb0, b, 0xee]);
    }
    c.extend_from_slice(&[0xc6, 0x06]); // mov byte [flag], 1
    c.extend_from_slice(&flag.to_le_bytes());
    c.push(1);
    c.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    c
}

/// A real virtiofsd (installed by scripts/setup) sharing `dir`, listening on
/// `dir/fs.sock` once this returns. Kill it when done.
pub fn spawn_virtiofsd(dir: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let virtiofsd = std::env::split_paths(&path)
        .chain(std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin")))
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .expect("virtiofsd is missing: run scripts/setup");
    let socket = dir.join("fs.sock");
    let daemon = std::process::Command::new(virtiofsd)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(dir)
        .args(["--sandbox", "none", "--log-level", "error"])
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (daemon, socket)
}

/// A guest that drives a virtio-net device at `addr` (the first virtio-mmio
/// window) as a driver would: status, VERSION_1, RX with one 2 KiB buffer,
/// TX, DRIVER_OK; sends the frame `GUEST-FRAME-01234567` with a queue
/// notification, waits until both used rings advanced, prints the first 4
/// bytes of the frame it received (after the 12-byte header) and resets.
pub fn virtio_net_guest(addr: u32) -> Vec<u8> {
    const RX_DESC: u32 = 0x32_0000;
    const RX_BUF: u32 = 0x33_0000;
    const TX_DESC: u32 = 0x30_0000;
    const TX_BUF: u32 = 0x31_0000;
    let frame_words = [*b"GUES", *b"T-FR", *b"AME-", *b"0123", *b"4567"];
    let mut asm = Asm::default();
    // Rings in memory: RX offers one 2 KiB write-only buffer; TX's frame.
    asm.mov_edi(RX_DESC)
        .store_rdi_imm(0, RX_BUF)
        .store_rdi_imm(8, 2048)
        .store_rdi_imm(12, 2); // VIRTQ_DESC_F_WRITE, next 0
    asm.mov_edi(RX_DESC + 0x1000).store_rdi_imm(0, 1 << 16); // avail idx 1
    asm.mov_edi(TX_DESC)
        .store_rdi_imm(0, TX_BUF)
        .store_rdi_imm(8, 12 + 20)
        .store_rdi_imm(12, 0);
    asm.mov_edi(TX_BUF + 12);
    for (i, word) in frame_words.iter().enumerate() {
        asm.store_rdi_imm(4 * i as u8, u32::from_le_bytes(*word));
    }
    // The driver: ACKNOWLEDGE, DRIVER, VERSION_1 (bit 32), FEATURES_OK.
    asm.mov_edi(addr)
        .store_rdi_imm(0x70, 1)
        .store_rdi_imm(0x70, 3)
        .store_rdi_imm(0x24, 1)
        .store_rdi_imm(0x20, 1)
        .store_rdi_imm(0x70, 11);
    for (queue, desc) in [(0, RX_DESC), (1, TX_DESC)] {
        asm.mov_edi(addr)
            .store_rdi_imm(0x30, queue)
            .store_rdi_imm(0x38, 16);
        // QueueDesc/Driver/Device at 0x80/0x90/0xa0: past a signed disp8.
        asm.mov_edi(addr + 0x80)
            .store_rdi_imm(0, desc)
            .store_rdi_imm(0x10, desc + 0x1000)
            .store_rdi_imm(0x20, desc + 0x2000);
        asm.mov_edi(addr).store_rdi_imm(0x44, 1);
    }
    asm.mov_edi(addr).store_rdi_imm(0x70, 15); // DRIVER_OK
                                               // Publish the TX frame and notify queue 1.
    asm.mov_edi(TX_DESC + 0x1000).store_rdi_imm(0, 1 << 16);
    asm.mov_edi(addr).store_rdi_imm(0x50, 1);
    // Both used rings advance; then show what arrived after the header.
    asm.wait_byte(TX_DESC + 0x2002, 1)
        .wait_byte(RX_DESC + 0x2002, 1);
    asm.mov_edi(RX_BUF + 12).load_eax_rdi(0).print_eax_raw();
    asm.i8042_reset().halt_forever();
    asm.code
}
