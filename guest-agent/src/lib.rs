//! firedoor-agent: PID 1 of every Firedoor guest. It mounts the basic
//! filesystems, reaps orphans, and serves the agent API (ttrpc) on vsock.
//! It knows nothing about KVM or the VMM that runs it.

pub mod config;
pub mod init;
pub mod logger;
pub mod service;
pub mod signals;

use std::{fmt, time::Duration};

/// Why the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The host called `Shutdown`.
    Requested,
    /// A termination signal (SIGTERM, SIGINT from Ctrl-Alt-Del, SIGPWR).
    Signal(nix::sys::signal::Signal),
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownReason::Requested => f.write_str("requested by the host"),
            ShutdownReason::Signal(signal) => write!(f, "received {signal}"),
        }
    }
}

/// Time since the machine booted (CLOCK_BOOTTIME).
pub fn uptime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}
