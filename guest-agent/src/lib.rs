//! firedoor-agent: PID 1 of every Firedoor guest. It mounts the basic
//! filesystems, reaps orphans, serves the agent API (ttrpc) on vsock and
//! runs the pod's OCI containers (through youki's libcontainer, in a helper
//! process: see `helper`). It knows nothing about KVM or the VMM that runs it.

pub mod cgroup;
pub mod config;
pub mod error;
pub mod fault;
pub mod helper;
pub mod init;
pub mod logger;
pub mod namespaces;
pub mod network;
pub mod oom;
pub mod runtime;
pub mod sandbox;
pub mod service;
pub mod signals;
pub mod spec;
pub mod streams;
pub mod volumes;

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
