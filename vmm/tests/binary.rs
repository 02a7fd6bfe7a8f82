//! The `firedoor-vmm` binary: exit status, error messages, and running
//! under its seccomp filters.

#[path = "../src/test_utils.rs"]
mod test_utils;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_utils::{build_elf, Asm};

const VMM: &str = env!("CARGO_BIN_EXE_firedoor-vmm");

fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is not available on this machine");
    false
}

fn write_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    let path = dir.join("vmlinux");
    std::fs::write(&path, build_elf(0x20_0000, code)).unwrap();
    path
}

fn run_vmm(args: &[&str]) -> Output {
    Command::new(VMM).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn guest_reset_exits_zero_under_seccomp() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let code = Asm::default()
        .print("hello, seccomp\n")
        .i8042_reset()
        .halt_forever()
        .code
        .clone();
    let kernel = write_kernel(dir.path(), &code);
    let serial = dir.path().join("serial.log");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let uds = dir.path().join("v.sock");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--serial",
        serial.to_str().unwrap(),
        "--vcpus",
        "2",
        "--memory-mib",
        "32",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--disk",
        &format!("{},ro", disk.display()),
    ]);
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&serial).unwrap(),
        "hello, seccomp\n"
    );
    assert!(!uds.exists(), "the vsock socket must be removed at exit");
}

#[test]
fn sigterm_stops_a_running_guest_with_vsock_traffic() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    // Prints, then spins forever with interrupts off.
    let code = Asm::default()
        .print("ready\n")
        .raw(&[0xfa, 0xeb, 0xfe])
        .code
        .clone();
    let kernel = write_kernel(dir.path(), &code);
    let serial = dir.path().join("serial.log");
    let uds = dir.path().join("v.sock");
    let mut child = Command::new(VMM)
        .args(["--kernel", kernel.to_str().unwrap()])
        .args(["--serial", serial.to_str().unwrap()])
        .args(["--vsock-uds", uds.to_str().unwrap(), "--memory-mib", "32"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&serial).unwrap_or_default() != "ready\n" {
        assert!(Instant::now() < deadline, "guest never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A host connection goes through accept and the handshake under seccomp
    // (the guest has no vsock driver, so it is never answered).
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "status {status:?}: {err}");
    // The VMM is gone, so is its end of the connection.
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap_or(0), 0);
    assert!(!uds.exists());
}

/// A pseudo-terminal: (master, slave).
fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new descriptor or -1; grantpt and
    // unlockpt only act on it; ptsname returns a pointer to a static
    // NUL-terminated buffer, copied out at once (no other thread of this test
    // calls ptsname).
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt failed");
        let master = std::fs::File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        let name = libc::ptsname(master.as_raw_fd());
        assert!(!name.is_null());
        let name = std::ffi::CStr::from_ptr(name).to_str().unwrap().to_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name)
            .unwrap();
        (master, slave)
    }
}

/// Regression: the logger checks whether stderr is a terminal on every line
/// (ioctl TCGETS); the seccomp filters killed the VMM at the first log line
/// after they were installed (here: the i8042 reset) when run in a terminal.
#[test]
fn logging_to_a_terminal_survives_seccomp() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let code = Asm::default().i8042_reset().halt_forever().code.clone();
    let kernel = write_kernel(dir.path(), &code);
    let (master, slave) = open_pty();
    let mut child = Command::new(VMM)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "32"])
        .args(["--serial", "/dev/null"])
        .env("RUST_LOG", "info")
        .stderr(slave)
        .spawn()
        .unwrap();
    // Drain the terminal so the VMM never blocks on a full one.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&master).read_to_end(&mut out); // EIO once the VMM is gone
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "status {status:?}: {out}");
    assert!(out.contains("guest reset through the i8042"), "{out}");
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let out = run_vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot open kernel /nonexistent/vmlinux"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_kernel_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, vec![b'x'; 4096]).unwrap();
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an uncompressed x86_64 vmlinux"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn memory_too_small_for_kernel_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, build_elf(64 << 20, &[0xf4])).unwrap();
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--memory-mib", "32"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kernel does not fit in guest memory"),
        "{}",
        stderr(&out)
    );
    let out = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--memory-mib", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid guest memory size"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let kernel = write_kernel(dir.path(), &[0xf4]);
    // Hide /dev behind an empty tmpfs in a private mount namespace.
    let script = format!(
        "mount -t tmpfs none /dev && exec {VMM} --kernel {} --memory-mib 16",
        kernel.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output();
    let out = match out {
        Ok(o) if !stderr(&o).contains("unshare failed") && !stderr(&o).contains("mount:") => o,
        _ => {
            eprintln!("SKIPPED: cannot make a mount namespace without /dev/kvm here");
            return;
        }
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot open /dev/kvm"),
        "{}",
        stderr(&out)
    );
}

/// Child half of `seccomp_kills_forbidden_syscalls`: installs a filter and
/// makes a call it does not allow.
fn seccomp_child(kind: &str) {
    use firedoor_vmm::seccomp::{apply, build_filter, ThreadKind};
    let thread_kind = if kind == "vmm" {
        ThreadKind::Vmm
    } else {
        ThreadKind::Vcpu
    };
    apply(&build_filter(thread_kind).unwrap()).unwrap();
    // Allowed: writing and reading an eventfd-like pipe would do; use getpid.
    // SAFETY: trivial syscalls; the second one is expected to kill us.
    unsafe {
        libc::getpid();
        if kind == "vcpu-ioctl" {
            libc::ioctl(0, libc::FIONBIO, &0);
        } else {
            libc::getppid();
        }
    }
    // Not reached.
    std::process::exit(0);
}

#[test]
fn seccomp_kills_forbidden_syscalls() {
    if let Ok(kind) = std::env::var("FIREDOOR_SECCOMP_CHILD") {
        seccomp_child(&kind);
        return;
    }
    for kind in ["vmm", "vcpu", "vcpu-ioctl"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp_kills_forbidden_syscalls",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("FIREDOOR_SECCOMP_CHILD", kind)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{kind}: {:?} {}",
            out.status,
            stderr(&out)
        );
    }
}
