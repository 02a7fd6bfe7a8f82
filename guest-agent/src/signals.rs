//! Signal handling for PID 1: all handled signals are blocked in every thread
//! and taken synchronously by one thread, which reaps exited children (PID 1
//! adopts every orphan) and turns termination signals into a shutdown.
//!
//! The reaper is the only place that calls `waitpid`: whoever needs a
//! child's exit status registers the pid with [`watch`] (or starts the child
//! with [`spawn`]) and is called back. Exits of pids nobody watches yet are
//! kept for a while, because a container's init is adopted and may exit
//! before the agent has learnt its pid from the helper that created it.

use std::{
    collections::{HashMap, VecDeque},
    io,
    process::{Child, Command},
    sync::{mpsc::Sender, LazyLock, Mutex},
    thread,
    time::SystemTime,
};

use log::{debug, info, warn};
use nix::{
    errno::Errno,
    sys::{
        signal::{SigSet, SigmaskHow, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

use crate::ShutdownReason;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    pub at: SystemTime,
}

impl Exit {
    fn from_wait(status: WaitStatus) -> Option<(Pid, Exit)> {
        let (pid, code) = match status {
            WaitStatus::Exited(pid, code) => (pid, code),
            WaitStatus::Signaled(pid, signal, _) => (pid, 128 + signal as i32),
            _ => return None,
        };
        Some((
            pid,
            Exit {
                status: code,
                at: SystemTime::now(),
            },
        ))
    }
}

type Callback = Box<dyn FnOnce(Exit) + Send>;

/// Exits nobody watched yet; bounded so that a stream of orphans cannot
/// grow it.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct Registry {
    watchers: HashMap<i32, Callback>,
    unclaimed: VecDeque<(i32, Exit)>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls `on_exit` once `pid` (a child of the agent, or a process it
/// adopts) has exited and been reaped; at once if that already happened.
pub fn watch(pid: i32, on_exit: impl FnOnce(Exit) + Send + 'static) {
    let mut registry = registry();
    if let Some(i) = registry.unclaimed.iter().position(|(p, _)| *p == pid) {
        let (_, exit) = registry.unclaimed.remove(i).expect("index is valid");
        drop(registry);
        on_exit(exit);
    } else {
        registry.watchers.insert(pid, Box::new(on_exit));
    }
}

/// Starts `command` and watches its pid. The registry stays locked from
/// the fork to the registration, so the reaper cannot take the exit first.
/// Never call `wait` on the returned `Child`.
pub fn spawn(
    command: &mut Command,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> io::Result<Child> {
    let mut registry = registry();
    let child = command.spawn()?;
    // A PID is at most pid_max (2^22): it fits an i32 as is.
    registry
        .watchers
        .insert(child.id().cast_signed(), Box::new(on_exit));
    Ok(child)
}

/// Collects every exited child; signals coalesce, so one SIGCHLD may stand
/// for many exits.
pub fn reap_children() {
    loop {
        let mut registry = registry();
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("waitpid: {e}");
                return;
            }
        };
        let Some((pid, exit)) = Exit::from_wait(status) else {
            continue;
        };
        match registry.watchers.remove(&pid.as_raw()) {
            Some(on_exit) => {
                drop(registry);
                debug!("pid {pid} exited with {}", exit.status);
                on_exit(exit);
            }
            None => {
                debug!("reaped {status:?}");
                if registry.unclaimed.len() == MAX_UNCLAIMED {
                    registry.unclaimed.pop_front();
                }
                registry.unclaimed.push_back((pid.as_raw(), exit));
            }
        }
    }
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        // The kernel sends SIGINT to init on Ctrl-Alt-Del once CAD is off.
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks the handled signals in the calling thread. Call before spawning any
/// other thread so that every thread inherits the mask.
pub fn block() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// Starts the thread that waits for the blocked signals.
pub fn spawn_handler(shutdown: Sender<ShutdownReason>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled();
            loop {
                match set.wait() {
                    Ok(Signal::SIGCHLD) => reap_children(),
                    Ok(Signal::SIGHUP) => debug!("ignoring SIGHUP"),
                    Ok(signal) => {
                        info!("received {signal}");
                        let _ = shutdown.send(ShutdownReason::Signal(signal));
                    }
                    Err(e) => warn!("sigwait: {e}"),
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn exits_before_the_watch_are_kept() {
        // Unit tests run without the signal thread: reap by hand.
        // Reaped by `reap_children` below, never by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let (tx, rx) = mpsc::channel();
        loop {
            reap_children();
            if registry().unclaimed.iter().any(|(p, _)| *p == pid) {
                break;
            }
            thread::yield_now();
        }
        watch(pid, move |exit| tx.send(exit.status).unwrap());
        assert_eq!(rx.recv().unwrap(), 5);
    }

    #[test]
    fn spawned_children_report_signals_as_128_plus() {
        let (tx, rx) = mpsc::channel();
        let child = spawn(
            Command::new("/bin/sh").args(["-c", "kill -9 $$"]),
            move |exit| tx.send(exit.status).unwrap(),
        )
        .unwrap();
        drop(child);
        let status = loop {
            reap_children();
            if let Ok(status) = rx.try_recv() {
                break status;
            }
            thread::yield_now();
        };
        assert_eq!(status, 137);
    }
}
