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

/// SIGTERM to `child` (a VMM or its supervisor, stderr piped): it must
/// exit with status 0.
fn stop_gracefully(child: &mut std::process::Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child.
    let killed = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(killed, 0);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "status {status:?}: {err}");
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
    stop_gracefully(&mut child);
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

/// `--hugepages`: the guest runs from the host's huge page pool, and a pool
/// too small is a clear error at start.
#[test]
fn hugepages_back_the_guest_or_fail_clearly() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let code = Asm::default()
        .print("hello, huge pages\n")
        .i8042_reset()
        .halt_forever()
        .code
        .clone();
    let kernel = write_kernel(dir.path(), &code);
    let serial = dir.path().join("serial.log");
    let meminfo = |key: &str| -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap()
    };
    let run = |mib: u64| {
        run_vmm(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
            "--memory-mib",
            &mib.to_string(),
            "--hugepages",
        ])
    };
    let beyond_the_pool = (meminfo("HugePages_Free:") + 8) * 2;
    let out = run(beyond_the_pool);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nr_hugepages"), "{}", stderr(&out));

    let pool = "/proc/sys/vm/nr_hugepages";
    let total = meminfo("HugePages_Total:");
    if std::fs::write(pool, (total + 16).to_string()).is_err() {
        return; // not root
    }
    let out = run(32);
    std::fs::write(pool, total.to_string()).unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&serial).unwrap(),
        "hello, huge pages\n"
    );
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
    // Not reached; the parent test checks that the child died of SIGSYS.
    #[allow(clippy::exit)]
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

// ---------------------------------------------------------------------------
// The jail.

/// Whether this test process could jail a VMM (root with CAP_SYS_ADMIN and
/// CAP_SETPCAP); says why not otherwise.
fn jail_possible() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let needed = (1u64 << 21) | (1 << 8); // CAP_SYS_ADMIN, CAP_SETPCAP
    if cap_eff & needed == needed {
        return true;
    }
    eprintln!("SKIPPED: the jail needs CAP_SYS_ADMIN and CAP_SETPCAP (run the tests as root)");
    false
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path.strip_prefix(dir).unwrap().to_owned());
        }
    }
    out.sort();
    out
}

/// The host's mounts a VMM run in `dir` could have left: of `dir`, or of
/// the jail's root tmpfs. (Other mounts on this machine come and go with
/// other work, so the whole table is not compared.)
fn mounts_left_by_vmm(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir) || l.contains("firedoor-vmm-jail"))
        .map(String::from)
        .collect()
}

/// Processes whose command line mentions `marker` (a test's temporary
/// directory): what a VMM run would leave behind.
fn processes_mentioning(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Children of `pid`, from /proc/*/status (CONFIG_PROC_CHILDREN, which
/// gives /proc/PID/task/TID/children, is not everywhere).
fn children_of(pid: u32) -> Vec<u32> {
    let ppid_line = format!("PPid:\t{pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == ppid_line))
        })
        .collect()
}

/// The jailed VMM: the only child of the supervisor the test spawned.
fn jailed_vmm_pid(supervisor: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = children_of(supervisor);
        if let [pid] = pids[..] {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "supervisor has children {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a jailed VMM whose guest prints "ready" and spins; returns once
/// the guest is running.
fn start_spinning_jailed_vmm(dir: &Path, uds: &Path) -> std::process::Child {
    let code = Asm::default()
        .print("ready\n")
        .raw(&[0xfa, 0xeb, 0xfe])
        .code
        .clone();
    let kernel = write_kernel(dir, &code);
    let serial = dir.join("serial.log");
    let child = Command::new(VMM)
        .args(["--jail", "--kernel", kernel.to_str().unwrap()])
        .args(["--serial", serial.to_str().unwrap(), "--vcpus", "2"])
        .args(["--vsock-uds", uds.to_str().unwrap(), "--memory-mib", "32"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&serial).unwrap_or_default() != "ready\n" {
        assert!(Instant::now() < deadline, "guest never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jailed_vmm_runs_confined() {
    if !kvm_available() || !jail_possible() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(dir.path().join("secret"), "not for the VMM").unwrap();
    let uds = run_dir.join("v.sock");
    let mut supervisor = start_spinning_jailed_vmm(dir.path(), &uds);
    let vmm = jailed_vmm_pid(supervisor.id());
    let proc_dir = PathBuf::from(format!("/proc/{vmm}"));

    // Its own namespaces.
    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(proc_dir.join("ns").join(ns)).unwrap();
        assert_ne!(ours, its, "the VMM shares the {ns} namespace");
    }
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    assert_eq!(
        field(&status, "NSpid"),
        format!("{vmm}\t1"),
        "PID 1 of its namespace"
    );

    // Every thread: no capabilities, no_new_privs, a seccomp filter. (KVM
    // adds a kernel worker, kvm-nx-lpage-recovery, to the process.)
    let mut names = Vec::new();
    for task in names_in(&proc_dir.join("task")) {
        let status =
            std::fs::read_to_string(proc_dir.join("task").join(task).join("status")).unwrap();
        let name = field(&status, "Name").to_owned();
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, set), "0000000000000000", "{name}: {set}");
        }
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{name}");
        assert_eq!(
            field(&status, "Seccomp"),
            "2",
            "{name}: seccomp filter mode"
        );
        names.push(name);
    }
    for thread in ["firedoor-vmm", "vcpu0", "vcpu1"] {
        assert!(
            names.iter().any(|n| n == thread),
            "no {thread} in {names:?}"
        );
    }

    // Its file system: the socket's directory and nothing else (not the
    // kernel, the serial log, or the file beside them).
    let root = proc_dir.join("root");
    let mut path_in_jail = root.clone();
    for component in run_dir.strip_prefix("/").unwrap().components() {
        assert_eq!(
            names_in(&path_in_jail),
            [component.as_os_str().to_string_lossy()],
            "{}",
            path_in_jail.display()
        );
        path_in_jail.push(component);
    }
    assert_eq!(names_in(&path_in_jail), ["v.sock"]);
    let its_mounts = std::fs::read_to_string(proc_dir.join("mountinfo")).unwrap();
    assert_eq!(its_mounts.lines().count(), 2, "{its_mounts}");
    let root_mount = its_mounts.lines().find(|l| l.contains(" / / ")).unwrap();
    assert!(
        root_mount.contains(" ro,") && root_mount.contains(" - tmpfs "),
        "{root_mount}"
    );

    // The host still reaches the vsock listener through the same path.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();

    // A graceful stop through the supervisor.
    stop_gracefully(&mut supervisor);
    wait_until_gone(vmm);
    assert!(!uds.exists(), "the jailed VMM must remove its socket");
    assert_eq!(mounts_left_by_vmm(dir.path()), [] as [String; 0]);
}

#[test]
fn killing_the_supervisor_kills_the_jailed_vmm() {
    if !kvm_available() || !jail_possible() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let uds = dir.path().join("v.sock");
    let mut supervisor = start_spinning_jailed_vmm(dir.path(), &uds);
    let vmm = jailed_vmm_pid(supervisor.id());
    // What the host does to a VMM that misbehaves.
    supervisor.kill().unwrap();
    let status = supervisor.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    wait_until_gone(vmm);
    assert!(processes_mentioning(dir.path()).is_empty());
    assert_eq!(mounts_left_by_vmm(dir.path()), [] as [String; 0]);
}

/// The host tells how the VMM ended from the supervisor's status: a VMM
/// killed by a signal (SIGSYS from its seccomp filter, or SIGKILL) must not
/// look like a clean exit.
#[test]
fn jailed_vmm_death_by_signal_shows_in_the_supervisor_status() {
    if !kvm_available() || !jail_possible() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let uds = dir.path().join("v.sock");
    let mut supervisor = start_spinning_jailed_vmm(dir.path(), &uds);
    let vmm = jailed_vmm_pid(supervisor.id());
    // From outside its namespace only SIGKILL (or SIGSTOP) can end PID 1
    // without a handler; a seccomp SIGSYS comes from the kernel and takes
    // the same path through the supervisor.
    let pid = i32::try_from(vmm).unwrap();
    // SAFETY: plain kill(2) on our own grandchild, which is still alive
    // (the supervisor has not reaped it).
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0);
    let status = supervisor.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    wait_until_gone(vmm);
}

#[test]
fn jail_without_privileges_is_a_clear_error() {
    if !kvm_available() || !jail_possible() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let code = Asm::default().i8042_reset().halt_forever().code.clone();
    let kernel = write_kernel(dir.path(), &code);
    // Root without CAP_SYS_ADMIN, as in a container.
    let vmm = |jail_flag: &[&str]| {
        Command::new("setpriv")
            .args(["--bounding-set", "-sys_admin", "--inh-caps", "-all", "--"])
            .arg(VMM)
            .args(jail_flag)
            .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "16"])
            .args(["--serial", "/dev/null"])
            .output()
    };
    let out = match vmm(&["--jail"]) {
        Ok(o) if !stderr(&o).starts_with("setpriv:") => o,
        _ => {
            eprintln!("SKIPPED: setpriv cannot drop CAP_SYS_ADMIN here");
            return;
        }
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("jailing the VMM needs CAP_SYS_ADMIN")
            && stderr(&out).contains("--no-jail"),
        "{}",
        stderr(&out)
    );
    // Without --jail it runs unconfined, and says so.
    let out = vmm(&[]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("running without the jail"),
        "{}",
        stderr(&out)
    );
}

/// Every way a start can fail leaves the run directory as it was, no
/// mount and no process.
#[test]
fn failed_starts_leave_nothing_behind() {
    if !kvm_available() || !jail_possible() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let kernel = write_kernel(dir.path(), &[0xf4]);
    let big_kernel = dir.path().join("big-vmlinux");
    std::fs::write(&big_kernel, build_elf(64 << 20, &[0xf4])).unwrap();
    let taken = dir.path().join("taken.sock");
    std::fs::write(&taken, "").unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (uds, serial) = (run.join("v.sock"), run.join("serial.log"));
    let (kernel, big_kernel) = (kernel.to_str().unwrap(), big_kernel.to_str().unwrap());
    let common = |kernel: &str| {
        vec![
            "--jail".to_string(),
            "--kernel".into(),
            kernel.into(),
            "--vsock-uds".into(),
            uds.display().to_string(),
            "--serial".into(),
            serial.display().to_string(),
        ]
    };
    let missing_disk = format!("{}", dir.path().join("no-such-disk.img").display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (common("/nonexistent/vmlinux"), "cannot open kernel"),
        (
            [common(big_kernel), vec!["--memory-mib".into(), "32".into()]].concat(),
            "kernel does not fit in guest memory",
        ),
        (
            [common(kernel), vec!["--memory-mib".into(), "1".into()]].concat(),
            "invalid guest memory size",
        ),
        // After the serial log and the vsock socket were created.
        (
            [common(kernel), vec!["--disk".into(), missing_disk]].concat(),
            "cannot open disk",
        ),
        (
            vec![
                "--jail".into(),
                "--kernel".into(),
                kernel.into(),
                "--vsock-uds".into(),
                taken.display().to_string(),
            ],
            "cannot listen on vsock socket",
        ),
    ];
    let files_before = tree(dir.path());
    for (args, expected) in cases {
        let out = Command::new(VMM).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(tree(dir.path()), files_before, "{args:?} left files");
        assert_eq!(
            mounts_left_by_vmm(dir.path()),
            [] as [String; 0],
            "{args:?}"
        );
        assert_eq!(processes_mentioning(dir.path()), [] as [u32; 0], "{args:?}");
    }
}

/// The tap descriptor handed to `--net` survives the jail (the VMM is
/// then in its own network namespace and could not open a tap itself):
/// the guest sends a frame through it and receives one. Unjailed without
/// privileges.
#[test]
fn net_device_works_through_the_jail() {
    use std::os::unix::net::UnixDatagram;
    if !kvm_available() {
        return;
    }
    let jail_flag = if jail_possible() {
        "--jail"
    } else {
        "--no-jail"
    };
    let dir = tempfile::TempDir::new().unwrap();
    let kernel = write_kernel(dir.path(), &test_utils::virtio_net_guest(0xd000_0000));
    let serial = dir.path().join("serial.log");
    let (tap, network) = UnixDatagram::pair().unwrap();
    network.send(b"HOST-FRAME-0123456789").unwrap();
    // Inherited by the VMM: clear close-on-exec on our end.
    // SAFETY: F_SETFD on a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    let out = run_vmm(&[
        jail_flag,
        "--kernel",
        kernel.to_str().unwrap(),
        "--serial",
        serial.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--net",
        &format!("fd={},mac=02:00:00:00:00:01", tap.as_raw_fd()),
    ]);
    drop(tap);
    assert!(out.status.success(), "{}: {}", out.status, stderr(&out));
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), "HOST");
    let mut got = [0u8; 64];
    network.set_nonblocking(true).unwrap();
    let n = network.recv(&mut got).unwrap();
    assert_eq!(&got[..n], b"GUEST-FRAME-01234567");
}

#[test]
fn net_with_a_closed_descriptor_is_a_clear_error() {
    let out = run_vmm(&[
        "--no-jail",
        "--kernel",
        "/nonexistent",
        "--net",
        "fd=999,mac=02:00:00:00:00:01",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fd=999: the descriptor is not open"),
        "{}",
        stderr(&out)
    );
}
