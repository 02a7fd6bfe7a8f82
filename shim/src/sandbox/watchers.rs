//! The threads that watch a sandbox: the one that boots the VM and then
//! waits for its exit, and the OOM event long-poll.

use std::{
    fs,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::{mpsc, Arc, Weak},
    thread,
};

use anyhow::Context;
use firedoor_hypervisor::{Backend, VmSpec};
use log::{debug, error, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Sandbox, SandboxOwner};

/// PIDs of the VM's processes, for `shim delete` after a shim crash.
pub const PIDS_FILE: &str = "vm.pids";

/// Boots in a thread that lives as long as the VMM: the VM's processes die
/// with the thread that started them (PR_SET_PDEATHSIG), and ttrpc's worker
/// threads come and go. The thread then watches for the VMM's exit.
pub(super) fn boot_watched<O: SandboxOwner>(
    owner: &Arc<O>,
    backend: Box<dyn Backend>,
    spec: VmSpec,
) -> anyhow::Result<Arc<Sandbox>> {
    let (tx, rx) = mpsc::channel();
    let watcher_owner = Arc::downgrade(owner);
    thread::Builder::new()
        .name("sandbox-vm".into())
        .spawn(move || {
            let sandbox = match Sandbox::boot(backend.as_ref(), &spec) {
                Ok(sandbox) => Arc::new(sandbox),
                Err(e) => return drop(tx.send(Err(e))),
            };
            let exit_fd = sandbox.vm().exit_notifier();
            let helpers = sandbox.vm().helper_exit_notifiers();
            record_pids(&spec.run_base, &sandbox);
            let _ = tx.send(Ok(sandbox));
            match (exit_fd, helpers) {
                (Ok(exit_fd), Ok(helpers)) => watch_exit(&watcher_owner, &exit_fd, helpers),
                (Err(e), _) | (_, Err(e)) => warn!("cannot watch the sandbox VM: {e}"),
            }
        })
        .context("starting the sandbox thread")?;
    rx.recv().context("the sandbox thread died")?
}

/// Watches an already running sandbox's exit from a thread of its own.
#[cfg(test)]
pub(super) fn watch_in_thread<O: SandboxOwner>(owner: &Arc<O>, sandbox: &Sandbox) {
    let exit_fd = sandbox.vm().exit_notifier().expect("exit notifier");
    let helpers = sandbox
        .vm()
        .helper_exit_notifiers()
        .expect("helper notifiers");
    let owner = Arc::downgrade(owner);
    thread::spawn(move || watch_exit(&owner, &exit_fd, helpers));
}

/// Blocks until `exit_fd` (the VM's exit notifier) is readable, then
/// reports the VM's exit unless we stopped it. A helper that dies first
/// (virtiofsd, vhost-device-vsock) fails the sandbox too: the VM is killed
/// at once, since a guest waiting on a dead helper never finishes (Linux
/// does not give up on in-flight FUSE requests), and its exit is reported
/// as the VM's.
fn watch_exit<O: SandboxOwner>(
    owner: &Weak<O>,
    exit_fd: &OwnedFd,
    mut helpers: Vec<(String, OwnedFd)>,
) {
    loop {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(exit_fd)
            .chain(helpers.iter().map(|(_, fd)| fd))
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return warn!("watching the sandbox VM: {e}"),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if ready[0] {
            break;
        }
        let Some(dead) = ready[1..].iter().position(|&r| r) else {
            continue;
        };
        let (name, _) = helpers.remove(dead);
        let Some(owner) = owner.upgrade() else {
            return;
        };
        if owner.slot().is_stopping() {
            continue;
        }
        error!("{name} exited under a running sandbox; stopping the sandbox VM");
        if let Some(sandbox) = owner.slot().get() {
            if let Err(e) = sandbox.vm().stop(std::time::Duration::ZERO) {
                warn!("stopping the sandbox VM: {e:#}");
            }
        }
    }
    let Some(owner) = owner.upgrade() else {
        return;
    };
    let slot = owner.slot();
    if !slot.exited_unexpectedly() {
        return;
    }
    let console = slot.get().map(|s| console_report(&s)).unwrap_or_default();
    error!("the sandbox VM exited unexpectedly; last console lines:\n{console}");
    owner.sandbox_failed();
}

/// Console lines searched for a kernel panic when the VM exits.
const CONSOLE_SCAN_LINES: usize = 100;
/// Console lines logged when the VM exits.
const CONSOLE_REPORT_LINES: usize = 20;
/// What the guest kernel prints first when it panics; its stack trace
/// follows, so the last lines alone would miss the reason.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// The guest console's lines worth logging when the sandbox fails: from a
/// kernel panic's reason on, else the last few.
pub(crate) fn console_report(sandbox: &Sandbox) -> String {
    crash_lines(&sandbox.vm().console_tail(CONSOLE_SCAN_LINES))
}

/// The console lines worth logging from `tail`: from the last kernel panic
/// line on (its reason and the start of its trace), else the last few.
fn crash_lines(tail: &str) -> String {
    let lines: Vec<&str> = tail.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains(KERNEL_PANIC))
        .unwrap_or(lines.len().saturating_sub(CONSOLE_REPORT_LINES));
    let end = lines.len().min(start + 2 * CONSOLE_REPORT_LINES);
    lines[start..end].join("\n")
}

fn record_pids(state_dir: &Path, sandbox: &Sandbox) {
    let vm = sandbox.vm();
    let pids: Vec<String> = std::iter::once(vm.vmm_pid())
        .chain(vm.helper_pids())
        .map(|p| p.to_string())
        .collect();
    if let Err(e) = fs::write(state_dir.join(PIDS_FILE), pids.join("\n")) {
        warn!("recording the VM's PIDs: {e}");
    }
}

/// Long-polls the agent for OOM kills and tells the owner of each.
pub(super) fn spawn_oom_watcher<O: SandboxOwner>(owner: &Arc<O>, sandbox: &Sandbox) {
    let agent = sandbox.agent().clone();
    let owner = Arc::downgrade(owner);
    let spawned = thread::Builder::new()
        .name("oom-events".into())
        .spawn(move || loop {
            let event = match agent.get_oom_event() {
                Ok(event) => event,
                Err(e) => {
                    debug!("OOM event stream ended: {e}");
                    return;
                }
            };
            let Some(owner) = owner.upgrade() else {
                return;
            };
            owner.oom_killed(&event.container_id);
        });
    if let Err(e) = spawned {
        warn!("cannot watch OOM events: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_panic_is_reported_from_its_reason_on() {
        let mut console: Vec<String> = (0..30).map(|i| format!("boot line {i}")).collect();
        console
            .push("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00004600".into());
        console.extend((0..50).map(|i| format!("trace line {i}")));
        let report = crash_lines(&console.join("\n"));
        assert!(
            report.starts_with("Kernel panic - not syncing: Attempted to kill init!"),
            "{report}"
        );
        assert_eq!(report.lines().count(), 2 * CONSOLE_REPORT_LINES);
    }

    #[test]
    fn without_a_panic_the_last_lines_are_reported() {
        let console: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let report = crash_lines(&console.join("\n"));
        assert_eq!(report.lines().count(), CONSOLE_REPORT_LINES);
        assert!(report.ends_with("line 49"), "{report}");
        assert_eq!(crash_lines("only\ntwo"), "only\ntwo");
        assert_eq!(crash_lines(""), "");
    }
}
