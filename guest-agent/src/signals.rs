//! Signal handling for PID 1: all handled signals are blocked in every thread
//! and taken synchronously by one thread, which reaps exited children (PID 1
//! adopts every orphan) and turns termination signals into a shutdown.

use std::{sync::mpsc::Sender, thread};

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

/// Collects every exited child; signals coalesce, so one SIGCHLD may stand
/// for many exits.
fn reap_children() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => debug!("reaped {status:?}"),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("waitpid: {e}");
                return;
            }
        }
    }
}
