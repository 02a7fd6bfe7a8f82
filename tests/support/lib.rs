//! Helpers shared by the integration tests: where the built guest and
//! binaries are, and checks that a test left nothing behind.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use firedoor_hypervisor::{process::ManagedChild, VmSpec};

pub mod containerd;
pub mod cri;
pub mod docker;
pub mod guest;
pub mod hooks;
pub mod image;
pub mod network;

/// A script for a container with a terminal: prints the terminal's size
/// once the caller's has arrived, then the terminal's name. Clients (ctr,
/// docker) resize the terminal only after the start, so a process that asks
/// at once may still see 0x0 (busybox's `stty size` then prints only
/// "stty: standard input"); this waits up to 10 s for the resize instead
/// of racing it.
pub const TTY_SIZE_SCRIPT: &str = "i=0; until s=$(stty size 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != \"0 0\" ] || [ $i -ge 100 ]; do i=$((i+1)); sleep 0.1; done; echo \"$s\"; tty";

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The directory holding the workspace's binaries for this build
/// (`target/debug`): test executables live in its `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// A workspace binary; `cargo build --workspace` must have run.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// The guest built by scripts/build-guest: (vmlinux, initramfs.img).
pub fn guest_image() -> (PathBuf, PathBuf) {
    let dir = workspace_root().join("target/guest");
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("initramfs.img");
    for file in [&kernel, &initrd] {
        assert!(
            file.is_file(),
            "{} is missing: run scripts/build-guest before the tests",
            file.display()
        );
    }
    (kernel, initrd)
}

/// A spec for the built guest whose run directory goes under `run_base`.
pub fn guest_spec(run_base: &Path) -> VmSpec {
    let (kernel, initrd) = guest_image();
    let mut spec = VmSpec::new(kernel, initrd);
    spec.run_base = run_base.to_owned();
    // For tests that start a MicroVm themselves (Sandbox::boot sets it too).
    spec.ready = firedoor_shim::sandbox::agent_readiness();
    spec
}

/// PIDs of live processes whose command line mentions `needle` (for
/// example a VM's run directory, which QEMU and its helpers all name).
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Lines of this host's mount table that mention `needle` (a sandbox's or
/// container's id or state directory).
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Asserts that nothing a VM used under `run_base` is left: no process
/// naming it and no file or socket in it.
pub fn assert_nothing_left(run_base: &Path) {
    let procs = processes_mentioning(run_base);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let leftovers: Vec<_> = fs::read_dir(run_base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

/// How a test daemon (containerd, dockerd) is waited for after its start.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// Named in the panic messages.
    pub name: &'static str,
    /// How long it may take to come up.
    pub timeout: Duration,
    /// How long to wait for its exit between two probes.
    pub poll: Duration,
}

impl Readiness {
    /// Probes `owner` with `ready` until it answers, while its daemon
    /// (reached through `daemon`) runs; panics with `log_tail` of it if the
    /// daemon exits first or the time runs out.
    pub fn wait<T>(
        &self,
        owner: &mut T,
        ready: impl Fn(&T) -> bool,
        daemon: impl Fn(&mut T) -> &mut ManagedChild,
        log_tail: impl Fn(&T) -> String,
    ) {
        let name = self.name;
        let deadline = Instant::now() + self.timeout;
        loop {
            if ready(owner) {
                return;
            }
            if let Some(status) = daemon(owner).wait_timeout(self.poll).unwrap() {
                panic!("{name} exited ({status}):\n{}", log_tail(owner));
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not come up:\n{}",
                log_tail(owner)
            );
        }
    }
}
