//! Faults inside the guest, through real containerd and `ctr`: a guest
//! kernel panic, the agent's death and an agent that stops answering, each
//! injected with the test-only `firedoor.fault=` kernel parameter (README,
//! "Fault injection") and fired by an exec of the trigger; and out of space
//! in the shim's state directory and in a container's volume.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use firedoor_protocol::FAULT_TRIGGER;
use firedoor_tests::{
    containerd::{Containerd, RUNTIME},
    image::BUSYBOX_IMAGE,
};

/// A container id no other test (of this or another worktree: the shim's
/// state root is host-wide) uses.
fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// containerd whose shims boot guests with `firedoor.fault=FAULT`.
fn containerd_with_fault(fault: &str) -> Containerd {
    Containerd::start_with_config(&format!("kernel_params = [\"firedoor.fault={fault}\"]\n"))
}

/// `ctr task exec` of the fault trigger; returns how it ended.
fn exec_trigger(ctrd: &Containerd, id: &str) -> std::process::Output {
    ctrd.ctr_command(&["task", "exec", "--exec-id", "fault", id, FAULT_TRIGGER])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Waits (at most `limit`, generous: the machine is loaded) for `ctr run`
/// to end; its exit code.
fn wait_exit(ctrd: &Containerd, run: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = run.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > limit {
            let _ = run.kill();
            let _ = run.wait();
            panic!(
                "the task did not end within {limit:?}\n{}",
                ctrd.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No mount under sandbox `id`'s state directory is left on the host.
fn assert_no_mounts_left(id: &str) {
    let dir = Containerd::state_dir(id);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:#?}");
}

/// The container is deleted at once and nothing of its sandbox is left.
fn assert_deleted_and_gone(ctrd: &Containerd, id: &str) {
    let started = Instant::now();
    ctrd.ctr_ok(&["containers", "rm", id]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ctr containers rm took {:?}",
        started.elapsed()
    );
    ctrd.assert_sandbox_gone(id);
    assert_no_mounts_left(id);
}

/// A guest crash fired under a running container ends like a dead VMM: the
/// task exits 137, the console's last lines (showing `console_says`) are in
/// containerd's log, and the container is removed at once with nothing left.
fn guest_crash_ends_the_task_and_cleans_up(fault: &str, prefix: &str, console_says: &str) {
    let ctrd = containerd_with_fault(fault);
    let id = unique_id(prefix);
    let mut run = ctrd.run_attached(&id, &["sleep", "1000"]);
    let exec = exec_trigger(&ctrd, &id);
    assert!(
        !exec.status.success(),
        "the trigger exec succeeded in a crashing guest"
    );
    let code = wait_exit(&ctrd, &mut run, Duration::from_secs(120));
    let log = fs::read_to_string(ctrd.dir().join("containerd.log")).unwrap();
    assert_eq!(code, Some(137), "exit status of the task\n{log}");
    // Whichever the shim saw first: the VM's exit, a helper's (QEMU drops
    // its vhost-user backends before it exits) or the agent's connection.
    assert!(
        log.contains("the sandbox VM exited unexpectedly; last console lines")
            || log.contains("exited under a running sandbox")
            || log.contains("the guest agent is unreachable"),
        "the shim did not report the guest's crash:\n{log}"
    );
    assert!(
        log.contains(console_says),
        "{console_says:?} is not among the console lines in containerd's log:\n{log}"
    );
    assert_deleted_and_gone(&ctrd, &id);
}

/// `vm.panic_on_oom` and an out-of-memory in the guest: a real kernel
/// panic, then `panic=-1` resets the guest and QEMU (`-no-reboot`) exits.
#[test]
fn guest_kernel_panic_ends_the_task_and_cleans_up() {
    guest_crash_ends_the_task_and_cleans_up("panic", "fd-panic", "Kernel panic - not syncing");
}

/// The agent (PID 1) exits: the kernel panics ("Attempted to kill init!").
#[test]
fn agent_death_ends_the_task_and_cleans_up() {
    guest_crash_ends_the_task_and_cleans_up("exit", "fd-agentdie", "Attempted to kill init");
}

/// An agent that never answers one RPC: the shim's deadline ends the exec
/// (the test does not wait forever), and the container can still be killed
/// and removed with nothing left.
#[test]
fn agent_that_stops_answering_is_cut_off_by_the_rpc_deadline() {
    let ctrd = containerd_with_fault("hang");
    let id = unique_id("fd-hang");
    let mut run = ctrd.run_attached(&id, &["sleep", "1000"]);
    let started = Instant::now();
    let exec = exec_trigger(&ctrd, &id);
    let took = started.elapsed();
    assert!(!exec.status.success(), "the hanging exec succeeded");
    assert!(
        took < Duration::from_secs(120),
        "the hanging exec took {took:?} to fail"
    );
    ctrd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", &id]);
    assert_eq!(
        wait_exit(&ctrd, &mut run, Duration::from_secs(60)),
        Some(137)
    );
    assert_deleted_and_gone(&ctrd, &id);
}

/// A small tmpfs mounted for one test, unmounted (and its mount point
/// removed) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", dir.display()));
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Fills every block and then every inode; returns what to remove to
    /// free them again.
    fn fill(&self) -> Vec<PathBuf> {
        let big = self.dir.join("filler");
        let mut file = fs::File::create(&big).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", big.display()),
            }
        }
        drop(file);
        let mut made = vec![big];
        for n in 0.. {
            let path = self.dir.join(format!("inode-{n}"));
            match fs::File::create(&path) {
                Ok(_) => made.push(path),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the inodes of {}: {e}", self.dir.display()),
            }
        }
        made
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a leftover mount below (a failed test's) must not keep
        // the tmpfs on the host.
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.dir.display());
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn free(paths: &[PathBuf]) -> io::Result<()> {
    paths.iter().try_for_each(fs::remove_file)
}

/// A full state directory: the shim's state root for a containerd
/// namespace of the test's own (`/run/firedoor/<namespace>`, so no other
/// test's sandboxes are on it) is a small tmpfs, filled up. The create
/// fails with an error naming the directory; once space is freed, the next
/// container runs.
#[test]
fn full_state_directory_fails_naming_it_and_the_next_container_works() {
    let ctrd = Containerd::start();
    let namespace = unique_id("fdns");
    let state_root = Path::new("/run/firedoor").join(&namespace);
    let tmpfs = Tmpfs::mount(&state_root, "size=16m,nr_inodes=1024,mode=0711");
    let image = ctrd.dir().join("busybox-oci.tar");
    ctrd.ctr_ok(&[
        "-n",
        &namespace,
        "images",
        "import",
        image.to_str().unwrap(),
    ]);
    let filler = tmpfs.fill();

    let id = unique_id("fd-full");
    let run = |id: &str| {
        ctrd.ctr_command(&[
            "-n",
            &namespace,
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            BUSYBOX_IMAGE,
            id,
            "echo",
            "room",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let out = run(&id);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran on a full state directory");
    let want = format!("no space left in {}", state_root.join(&id).display());
    assert!(
        stderr.contains(&want),
        "ctr's error does not say {want:?}:\n{stderr}\n{}",
        ctrd.log_tail(30)
    );
    assert!(
        !state_root.join(&id).exists(),
        "the failed sandbox's state directory was left"
    );

    free(&filler).unwrap();
    let next = unique_id("fd-room");
    let out = run(&next);
    assert!(
        out.status.success(),
        "the next container failed after space was freed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail(30)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "room");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state_root.join(&next).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!state_root.join(&next).exists(), "state directory left");
    let containers = ctrd.ctr_ok(&["-n", &namespace, "containers", "ls", "-q"]);
    assert!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
}

/// A full volume (a small tmpfs bind-mounted into the container through
/// the shared directory): the container's write fails with ENOSPC, nothing
/// hangs, and after the host frees it the next container writes there.
#[test]
fn full_volume_fails_writes_with_enospc_and_the_next_container_works() {
    let ctrd = Containerd::start();
    let volume = Tmpfs::mount(&ctrd.dir().join("volume"), "size=1m,mode=0777");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        volume.dir.display()
    );
    let run = |id: &str, script: &str| {
        ctrd.ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--mount",
            &mount,
            BUSYBOX_IMAGE,
            id,
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let id = unique_id("fd-vfull");
    let out = run(
        &id,
        "dd if=/dev/zero of=/data/big bs=64k 2>&1; echo dd-status=$?",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("No space left on device") && stdout.contains("dd-status=1"),
        "dd on a full volume:\n{stdout}"
    );
    ctrd.assert_sandbox_gone(&id);

    fs::remove_file(volume.dir.join("big")).unwrap();
    let next = unique_id("fd-vroom");
    let out = run(&next, "echo room >/data/small && cat /data/small");
    assert!(
        out.status.success(),
        "after the volume was freed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail(30)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "room");
    ctrd.assert_sandbox_gone(&next);
}
