//! The VMM as PID 1 of its own PID namespace.
//!
//! `unshare(CLONE_NEWPID)` moves only the caller's future children, so the
//! process the host spawned cannot be in the new namespace itself. Two ways
//! out: the host spawns the VMM with `clone(CLONE_NEWPID)` (std's `Command`
//! cannot, and every launcher would need to), or the VMM splits itself. We
//! split: [`enter_namespace`] forks, before any allocation of guest memory
//! and before any file is opened, and
//!
//! * the child returns and goes on to be the VMM, as PID 1 of the new
//!   namespace (it cannot see or signal any host process);
//! * the parent stays behind as a supervisor the size of a few pages: it
//!   forwards SIGTERM and SIGINT to the VMM, waits for it, and exits with its
//!   status (re-raising the signal that killed it, so a seccomp kill still
//!   shows as SIGSYS). It drops every capability and runs under its own
//!   seccomp allow-list.
//!
//! The host keeps supervising the PID it spawned. Killing it with SIGKILL
//! tears everything down: the VMM has PR_SET_PDEATHSIG=SIGKILL towards the
//! supervisor, and as PID 1 its death ends the whole namespace; its mount
//! and network namespaces die with it, so nothing is left mounted.
// The supervisor half of the fork never returns into main: it ends the
// process itself, with the VMM's exit status or signal.
#![allow(clippy::exit)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, raise, signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use super::JailError;
use crate::seccomp::{self, ThreadKind};

/// The VMM's PID (in the supervisor's namespace), for the signal handler.
static VMM_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = VMM_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and touches no memory.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Signals the host uses to stop the VMM gracefully; anything else that
/// kills the supervisor kills the VMM through its parent-death signal.
const FORWARDED: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// Splits the process (see the module documentation). Returns in the VMM,
/// as PID 1 of a new PID namespace; in the supervisor it never returns.
/// Call it while the process has a single thread.
pub fn enter_namespace() -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| JailError::Sys("create a PID namespace (unshare)".into(), e))?;
    // The supervisor holds the write end for its whole life: the VMM sees
    // the pipe hang up if the supervisor died before the parent-death
    // signal was armed.
    let (alive_r, alive_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| JailError::Sys("create a pipe".into(), e))?;
    // SAFETY: the process has a single thread (checked by the caller's
    // contract and before any thread can exist in main), so the child may
    // run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| JailError::Sys("fork the VMM".into(), e))? {
        ForkResult::Child => {
            drop(alive_w);
            arm_parent_death_signal(alive_r)?;
            Ok(())
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            if let Err(e) = confine_supervisor() {
                eprintln!("firedoor-vmm: error: cannot confine the jail's supervisor: {e}");
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                std::process::exit(1);
            }
            let status = supervise(child);
            drop(alive_w);
            exit_like(status)
        }
    }
}

/// The supervisor needs no privilege either: signalling its own child is
/// allowed to any process.
fn confine_supervisor() -> Result<(), JailError> {
    super::drop_capabilities()?;
    // Sets no_new_privs too.
    seccomp::apply(seccomp::filter(ThreadKind::Supervisor))
        .map_err(|e| JailError::Seccomp(e.to_string()))
}

fn arm_parent_death_signal(alive: OwnedFd) -> Result<(), JailError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| JailError::Sys("set the parent-death signal".into(), e))?;
    let mut fds = [PollFd::new(alive.as_fd(), PollFlags::POLLIN)];
    // POLLHUP: every write end is closed, so the supervisor is already gone.
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Ok(()),
        Ok(_) => std::process::exit(1),
        Err(e) => Err(JailError::Sys("check on the supervisor".into(), e)),
    }
}

/// Waits for the VMM, forwarding stop signals; returns how it ended.
fn supervise(vmm: Pid) -> WaitStatus {
    VMM_PID.store(vmm.as_raw(), Ordering::SeqCst);
    for sig in FORWARDED {
        // SAFETY: the handler only loads an atomic and calls kill(2).
        if let Err(e) = unsafe { signal(sig, SigHandler::Handler(forward_signal)) } {
            eprintln!("firedoor-vmm: cannot forward {sig}: {e}");
        }
    }
    loop {
        match waitpid(vmm, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return status,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                // Only ECHILD is possible, which cannot happen: the child is ours.
                eprintln!("firedoor-vmm: cannot wait for the VMM: {e}");
                let _ = kill(vmm, Signal::SIGKILL);
                std::process::exit(1);
            }
        }
    }
}

/// Ends the supervisor the way the VMM ended.
fn exit_like(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, sig, _) => {
            // No second core dump: the VMM's is the interesting one.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads the struct we pass and nothing else.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
            // SAFETY: restoring the default action; no handler is involved.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            let mut set = SigSet::empty();
            set.add(sig);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
            let _ = raise(sig);
            std::process::exit(128 + sig as i32)
        }
        _ => std::process::exit(1),
    }
}
