//! End-to-end tests on real KVM with tiny hand-assembled 64-bit guests,
//! loaded through the same vmlinux (ELF) path as a Linux kernel.
// Test guests: small code lengths and addresses fit 16/32-bit fields.
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::test_utils::{build_elf, real_mode_ap, Asm};
use crate::{ExitReason, FsConfig, SerialOutput, VmConfig, Vmm, VmmError, VsockConfig};

const LOAD_ADDR: u64 = 0x20_0000;

fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is not available on this machine");
    false
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Guest {
    dir: tempfile::TempDir,
    serial: SharedBuf,
}

impl Guest {
    fn new(code: &[u8]) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("vmlinux"), build_elf(LOAD_ADDR, code)).unwrap();
        Self {
            dir,
            serial: SharedBuf::default(),
        }
    }

    fn config(&self) -> VmConfig {
        let mut c = VmConfig::new(self.dir.path().join("vmlinux"));
        c.memory_mib = 32;
        c.seccomp = false; // the test harness thread must not be confined
        c.serial = SerialOutput::Writer(Box::new(self.serial.clone()));
        c.cmdline = "console=ttyS0 reboot=k panic=1".into();
        c
    }

    fn output(&self) -> Vec<u8> {
        self.serial.0.lock().unwrap().clone()
    }
}

#[test]
fn guest_prints_and_resets() {
    if !kvm_available() {
        return;
    }
    let code = Asm::default()
        .print("Hello from the guest\n")
        .i8042_reset()
        .halt_forever()
        .code
        .clone();
    let guest = Guest::new(&code);
    let mut vmm = Vmm::new(guest.config()).unwrap();
    assert_eq!(vmm.run().unwrap(), ExitReason::Reset);
    assert_eq!(guest.output(), b"Hello from the guest\n");
}

/// Parses `virtio_mmio.device=4K@0x...:irq` from a command line.
fn first_virtio_mmio_addr(cmdline: &str) -> u32 {
    let spec = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("virtio_mmio.device="))
        .expect("virtio device on the command line");
    let addr = spec.split('@').nth(1).unwrap().split(':').next().unwrap();
    u32::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn guest_reads_virtio_mmio_identification() {
    if !kvm_available() {
        return;
    }
    // The address is only known once the VMM laid the devices out: build a
    // first VM to learn it, then the real guest (the layout is fixed).
    let probe = Guest::new(&[0xf4]);
    let sock_dir = tempfile::TempDir::new().unwrap();
    let mut cfg = probe.config();
    cfg.vsock = Some(VsockConfig {
        uds_path: sock_dir.path().join("probe.sock"),
        cid: 3,
    });
    let addr = first_virtio_mmio_addr(Vmm::new(cfg).unwrap().kernel_cmdline());

    let mut asm = Asm::default();
    asm.mov_edi(addr);
    for reg in [0u8, 4, 8] {
        asm.load_eax_rdi(reg).print_eax_raw();
    }
    asm.i8042_reset().halt_forever();
    let guest = Guest::new(&asm.code);
    let mut cfg = guest.config();
    cfg.vsock = Some(VsockConfig {
        uds_path: sock_dir.path().join("v.sock"),
        cid: 3,
    });
    let mut vmm = Vmm::new(cfg).unwrap();
    assert!(vmm
        .kernel_cmdline()
        .contains(&format!("virtio_mmio.device=4K@{addr:#x}:5")));
    assert_eq!(vmm.run().unwrap(), ExitReason::Reset);
    // Magic "virt", version 2, device id 19 (vsock), little endian.
    assert_eq!(guest.output(), b"virt\x02\0\0\0\x13\0\0\0");
}

/// With a virtio-fs device, guest RAM is a shared memfd that KVM runs the
/// guest from, and the guest finds the device (id 26) with its tag and one
/// request queue in the configuration space.
#[test]
fn guest_finds_the_virtio_fs_device_in_shared_memory() {
    if !kvm_available() {
        return;
    }
    let share = tempfile::TempDir::new().unwrap();
    let (mut virtiofsd, socket) = crate::test_utils::spawn_virtiofsd(share.path());
    // The only virtio device: the first window of the MMIO gap.
    let addr = crate::memory::MMIO_GAP_START as u32;
    let mut asm = Asm::default();
    asm.mov_edi(addr).load_eax_rdi(0).print_eax_raw();
    asm.load_eax_rdi(8).print_eax_raw();
    asm.mov_edi(addr + 0x100);
    for offset in [0u8, 4, 0x24] {
        asm.load_eax_rdi(offset).print_eax_raw();
    }
    asm.i8042_reset().halt_forever();
    let guest = Guest::new(&asm.code);
    let mut cfg = guest.config();
    cfg.fs = vec![FsConfig {
        socket,
        tag: "kvmtest".into(),
    }];
    let result = Vmm::new(cfg).and_then(|mut vmm| vmm.run());
    virtiofsd.kill().unwrap();
    virtiofsd.wait().unwrap();
    assert_eq!(result.unwrap(), ExitReason::Reset);
    assert_eq!(guest.output(), b"virt\x1a\0\0\0kvmtest\0\x01\0\0\0");
}

#[test]
fn second_vcpu_starts_through_init_sipi() {
    if !kvm_available() {
        return;
    }
    const TRAMPOLINE: u32 = 0x1_0000; // SIPI vector 0x10
    const FLAG: u16 = 0xf000;
    let ap = real_mode_ap("AP up\n", FLAG);
    let mut asm = Asm::default();
    asm.print("BSP up\n");
    // Copy the AP code (appended after this program) below 1 MiB.
    let copy_at = asm.code.len();
    asm.mov_esi(0)
        .mov_edi(TRAMPOLINE)
        .mov_ecx(ap.len() as u32)
        .rep_movsb();
    // INIT then SIPI to APIC id 1 through the LAPIC's ICR.
    asm.mov_edi(0xfee0_0300)
        .store_rdi_imm(0x10, 1 << 24)
        .store_rdi_imm(0, 0x0000_4500)
        .store_rdi_imm(0, 0x0000_4600 | (TRAMPOLINE >> 12));
    asm.wait_byte(FLAG.into(), 1)
        .print("BSP done\n")
        .i8042_reset()
        .halt_forever();
    let ap_at = LOAD_ADDR as u32 + asm.code.len() as u32;
    asm.code[copy_at + 1..copy_at + 5].copy_from_slice(&ap_at.to_le_bytes());
    asm.raw(&ap);

    let guest = Guest::new(&asm.code);
    let mut cfg = guest.config();
    cfg.vcpus = 2;
    let mut vmm = Vmm::new(cfg).unwrap();
    assert_eq!(vmm.run().unwrap(), ExitReason::Reset);
    assert_eq!(
        String::from_utf8_lossy(&guest.output()),
        "BSP up\nAP up\nBSP done\n"
    );
}

#[test]
fn boot_timer_records_guest_ready() {
    if !kvm_available() {
        return;
    }
    let code = Asm::default()
        .mov_dx(0x440)
        .mov_al(123)
        .out_dx_al()
        .i8042_reset()
        .code
        .clone();
    let guest = Guest::new(&code);
    let mut vmm = Vmm::new(guest.config()).unwrap();
    assert!(vmm.boot_time().is_none());
    assert_eq!(vmm.run().unwrap(), ExitReason::Reset);
    let t = vmm.boot_time().expect("boot time recorded");
    eprintln!("VMM start to guest boot-timer write: {t:?}");
}

#[test]
fn host_stop_kicks_halted_vcpus() {
    if !kvm_available() {
        return;
    }
    // Interrupts off and HLT: with the in-kernel LAPIC the vCPU sleeps in
    // KVM_RUN and only a kick gets it out.
    let code = Asm::default().print("zzz\n").halt_forever().code.clone();
    let guest = Guest::new(&code);
    let mut cfg = guest.config();
    cfg.vcpus = 2;
    let mut vmm = Vmm::new(cfg).unwrap();
    let stop = vmm.stop_handle();
    let serial = guest.serial.clone();
    let stopper = std::thread::spawn(move || {
        // Stop once the guest is visibly running (no timing assumptions).
        while !serial.0.lock().unwrap().ends_with(b"zzz\n") {
            std::thread::yield_now();
        }
        stop.stop();
    });
    assert_eq!(vmm.run().unwrap(), ExitReason::Stopped);
    stopper.join().unwrap();
}

#[test]
fn guest_triple_fault_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    // A load from an unmapped address with the empty boot IDT:
    // #PF -> #DF -> triple fault.
    let guest = Guest::new(&[0x48, 0xa1, 0, 0, 0, 0, 0, 1, 0, 0]);
    let mut vmm = Vmm::new(guest.config()).unwrap();
    assert_eq!(vmm.run().unwrap(), ExitReason::Reset);
}

#[test]
fn bad_kernel_and_memory_errors_are_clear() {
    if !kvm_available() {
        return;
    }
    let guest = Guest::new(&[0xf4]);
    let mut cfg = guest.config();
    cfg.kernel = guest.dir.path().join("missing");
    let err = Vmm::new(cfg).err().unwrap().to_string();
    assert!(err.contains("cannot open kernel"), "{err}");
    // A kernel linked at 16 MiB cannot fit in 8 MiB.
    std::fs::write(guest.dir.path().join("big"), build_elf(16 << 20, &[0xf4])).unwrap();
    let mut cfg = guest.config();
    cfg.kernel = guest.dir.path().join("big");
    cfg.memory_mib = 8;
    let err = Vmm::new(cfg).err().unwrap();
    assert!(matches!(err, VmmError::Boot(_)), "{err}");
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// A tiny guest drives the virtio-net device as a driver would (status,
/// VERSION_1, two queues, DRIVER_OK), sends one frame through TX with a
/// queue notification (the ioeventfd path), and receives one the "network"
/// (the other end of a datagram socket standing in for the tap) sent.
#[test]
fn guest_sends_and_receives_a_frame_over_virtio_net() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    if !kvm_available() {
        return;
    }
    let addr = crate::memory::MMIO_GAP_START as u32;
    let guest = Guest::new(&crate::test_utils::virtio_net_guest(addr));
    let (tap, network) = UnixDatagram::pair().unwrap();
    network.send(b"HOST-FRAME-0123456789").unwrap();
    let mut cfg = guest.config();
    cfg.net = vec![crate::NetConfig {
        tap: OwnedFd::from(tap),
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    }];
    let reason = Vmm::new(cfg).and_then(|mut vmm| vmm.run()).unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(guest.output(), b"HOST");
    let mut got = [0u8; 64];
    network.set_nonblocking(true).unwrap();
    let n = network.recv(&mut got).unwrap();
    assert_eq!(&got[..n], b"GUEST-FRAME-01234567");
}

/// A tiny guest negotiates free page reporting, fills a page, reports it
/// free, and reads it back as zeroes: the VMM discarded it from the host
/// mapping KVM runs the guest on.
#[test]
fn reported_free_page_comes_back_zeroed() {
    if !kvm_available() {
        return;
    }
    const PAGE_ADDR: u32 = 0x40_0000;
    let addr = crate::memory::MMIO_GAP_START as u32;
    let descs = [0x30_0000u32, 0x31_0000, 0x32_0000];
    let mut asm = Asm::default();
    asm.mov_edi(PAGE_ADDR).store_rdi_imm(0, 0xabab_abab);
    asm.load_eax_rdi(0).print_eax_raw();
    asm.mov_edi(descs[2])
        .store_rdi_imm(0, PAGE_ADDR)
        .store_rdi_imm(8, 4096)
        .store_rdi_imm(12, 2); // device-writable, as Linux reports
                               // ACKNOWLEDGE, DRIVER, REPORTING (bit 5), VERSION_1 (bit 32), FEATURES_OK.
    asm.mov_edi(addr)
        .store_rdi_imm(0x70, 1)
        .store_rdi_imm(0x70, 3)
        .store_rdi_imm(0x24, 0)
        .store_rdi_imm(0x20, 1 << 5)
        .store_rdi_imm(0x24, 1)
        .store_rdi_imm(0x20, 1)
        .store_rdi_imm(0x70, 11);
    for (queue, desc) in descs.iter().enumerate() {
        asm.mov_edi(addr)
            .store_rdi_imm(0x30, queue as u32)
            .store_rdi_imm(0x38, 16);
        asm.mov_edi(addr + 0x80)
            .store_rdi_imm(0, *desc)
            .store_rdi_imm(0x10, desc + 0x1000)
            .store_rdi_imm(0x20, desc + 0x2000);
        asm.mov_edi(addr).store_rdi_imm(0x44, 1);
    }
    asm.mov_edi(addr).store_rdi_imm(0x70, 15);
    asm.mov_edi(descs[2] + 0x1000).store_rdi_imm(0, 1 << 16);
    asm.mov_edi(addr).store_rdi_imm(0x50, 2);
    asm.wait_byte(descs[2] + 0x2002, 1);
    asm.mov_edi(PAGE_ADDR).load_eax_rdi(0).print_eax_raw();
    asm.i8042_reset().halt_forever();
    let guest = Guest::new(&asm.code);
    let mut cfg = guest.config();
    cfg.balloon = true;
    let reason = Vmm::new(cfg).and_then(|mut vmm| vmm.run()).unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(guest.output(), b"\xab\xab\xab\xab\0\0\0\0");
}
