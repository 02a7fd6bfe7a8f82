//! Fault injection for Firedoor's own tests (`tests/faults.rs`): a guest
//! kernel panic, the agent's death, an agent that stops answering.
//!
//! Two gates keep it away from ordinary pods. The fault is armed only by
//! the kernel parameter `firedoor.fault=KIND`, which only the host's
//! Firedoor config (`kernel_params`, a file the host's administrator
//! writes, or containerd's runtime options) can put on the guest's command
//! line; nothing a pod or container specifies reaches it. And it fires only
//! on an exec whose whole argv is [`FAULT_TRIGGER`], a request that comes
//! from the host (`ctr task exec`), never from inside a container.

use std::{fmt, fs, str::FromStr, thread};

pub use firedoor_protocol::FAULT_TRIGGER;
use log::error;

/// The agent's exit status when it dies of [`Fault::AgentExit`].
pub const AGENT_EXIT_STATUS: i32 = 70;

/// What `firedoor.fault=` arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `panic`: a real kernel panic (a system-wide OOM with
    /// `vm.panic_on_oom=1`, so the guest kernel needs no extra options);
    /// `panic=-1` on the command line then resets the guest and the VMM
    /// exits.
    KernelPanic,
    /// `exit`: the agent, PID 1, exits; the kernel panics with "Attempted
    /// to kill init!", as when the agent crashes.
    AgentExit,
    /// `hang`: the triggering RPC never answers (the host's deadline must
    /// end it).
    Hang,
}

impl Fault {
    pub const KINDS: &'static str = "panic, exit or hang";
}

impl FromStr for Fault {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "panic" => Ok(Fault::KernelPanic),
            "exit" => Ok(Fault::AgentExit),
            "hang" => Ok(Fault::Hang),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KernelPanic => "panic",
            Fault::AgentExit => "exit",
            Fault::Hang => "hang",
        })
    }
}

/// Whether an exec's argv is the trigger.
pub fn is_trigger<S: AsRef<str>>(args: &[S]) -> bool {
    matches!(args, [only] if only.as_ref() == FAULT_TRIGGER)
}

/// Fires `fault`; never returns (a hang parks the calling thread for good).
// Exiting PID 1 is the fault asked for (test-only).
#[allow(clippy::exit)]
pub fn fire(fault: Fault) -> ! {
    error!("fault injection: firing firedoor.fault={fault}");
    match fault {
        Fault::KernelPanic => panic_the_kernel(),
        Fault::AgentExit => std::process::exit(AGENT_EXIT_STATUS),
        Fault::Hang => loop {
            thread::park();
        },
    }
}

/// Panics the kernel through a system-wide out-of-memory with
/// `vm.panic_on_oom=1`; if that setting cannot be made, PID 1 exits, which
/// panics the kernel too.
// The exit is the fallback fault (test-only).
#[allow(clippy::exit)]
fn panic_the_kernel() -> ! {
    if let Err(e) = fs::write("/proc/sys/vm/panic_on_oom", "1") {
        error!("fault injection: setting vm.panic_on_oom: {e}; exiting instead");
        std::process::exit(AGENT_EXIT_STATUS);
    }
    // Touch every page (a non-zero fill) so the memory is really used;
    // leak each chunk. The kernel panics on the first allocation it cannot
    // satisfy.
    const CHUNK: usize = 8 << 20;
    loop {
        std::mem::forget(std::hint::black_box(vec![0xa5u8; CHUNK]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds_and_nothing_else() {
        for kind in ["panic", "exit", "hang"] {
            assert_eq!(kind.parse::<Fault>().unwrap().to_string(), kind);
        }
        "Panic".parse::<Fault>().unwrap_err();
        "".parse::<Fault>().unwrap_err();
    }

    #[test]
    fn only_the_bare_trigger_fires() {
        assert!(is_trigger(&[FAULT_TRIGGER]));
        assert!(!is_trigger(&[FAULT_TRIGGER, "x"]));
        assert!(!is_trigger(&["sh", FAULT_TRIGGER]));
        assert!(!is_trigger::<&str>(&[]));
        assert!(!is_trigger(&["/.firedoor-fault-trigger "]));
    }
}
