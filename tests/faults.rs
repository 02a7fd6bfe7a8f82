//! Faults inside the guest, through real containerd and `ctr`: a guest
//! kernel panic, the agent's death and an agent that stops answering, each
//! injected with the test-only `firedoor.fault=` kernel parameter (README,
//! "Fault injection") and fired by an exec of the trigger.

use std::{
    fs,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

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

/// `ctr run` (attached, no `--rm`) of a long sleep, once it runs.
fn run_sleeper(ctrd: &Containerd, id: &str) -> Child {
    let run = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    ctrd.wait_status(id, "RUNNING");
    run
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
    let mut run = run_sleeper(&ctrd, &id);
    let exec = exec_trigger(&ctrd, &id);
    assert!(
        !exec.status.success(),
        "the trigger exec succeeded in a crashing guest"
    );
    let code = wait_exit(&ctrd, &mut run, Duration::from_secs(120));
    let log = fs::read_to_string(ctrd.dir().join("containerd.log")).unwrap();
    assert_eq!(code, Some(137), "exit status of the task\n{log}");
    assert!(
        log.contains("the sandbox VM exited unexpectedly; last console lines"),
        "the shim did not report the VM's exit:\n{log}"
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
    let mut run = run_sleeper(&ctrd, &id);
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
