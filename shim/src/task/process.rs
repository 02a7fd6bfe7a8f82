//! One process of a container (its init, or an exec) as containerd sees it.

use std::{
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_shim::protos::{
    protobuf::well_known_types::timestamp::Timestamp, types::task::Status,
};

use crate::stdio::{ProcessIo, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub status: u32,
    pub at: SystemTime,
}

impl ExitInfo {
    pub fn now(status: u32) -> Self {
        ExitInfo {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn from_unix_nanos(status: i32, nanos: i64) -> Self {
        ExitInfo {
            // Exit code or 128 + signal: never negative from the agent.
            status: status.cast_unsigned(),
            at: UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let since = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            // Below 10^9: always fits.
            nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
            ..Default::default()
        }
    }
}

/// Exit status reported when the VM (and so the process) died under us:
/// 128 + SIGKILL, as if the process had been killed.
pub const VM_GONE_STATUS: u32 = 137;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped(ExitInfo),
}

#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// OCI Process JSON of an exec, sent to the agent at start.
    pub exec_spec: Option<Vec<u8>>,
    state: Mutex<ProcessState>,
    exited: Condvar,
    pub io: Mutex<Option<ProcessIo>>,
}

#[derive(Debug)]
struct ProcessState {
    phase: Phase,
    pid: u32,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        exec_spec: Option<Vec<u8>>,
    ) -> Self {
        Process {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stdio,
            exec_spec,
            state: Mutex::new(ProcessState {
                phase: Phase::Created,
                pid: 0,
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    pub fn set_running(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Created {
            state.phase = Phase::Running;
        }
    }

    /// Records the exit once; returns false if it was already recorded.
    pub fn set_exited(&self, exit: ExitInfo) -> bool {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Stopped(_)) {
            return false;
        }
        state.phase = Phase::Stopped(exit);
        self.exited.notify_all();
        true
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        match self.lock().phase {
            Phase::Stopped(exit) => Some(exit),
            _ => None,
        }
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> ExitInfo {
        let mut state = self.lock();
        loop {
            if let Phase::Stopped(exit) = state.phase {
                return exit;
            }
            state = self.exited.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn status(&self) -> Status {
        match self.phase() {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped(_) => Status::STOPPED,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    #[test]
    fn wait_returns_the_first_recorded_exit() {
        let process = Arc::new(Process::new("c", "", StdioPaths::default(), None));
        let waiter = {
            let process = process.clone();
            thread::spawn(move || process.wait())
        };
        process.set_running();
        assert_eq!(process.status(), Status::RUNNING);
        let exit = ExitInfo::now(3);
        assert!(process.set_exited(exit));
        assert!(!process.set_exited(ExitInfo::now(9)));
        assert_eq!(waiter.join().unwrap(), exit);
        assert_eq!(process.status(), Status::STOPPED);
        assert_eq!(process.exit().unwrap().status, 3);
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let exit = ExitInfo::from_unix_nanos(0, 1_500_000_123);
        let ts = exit.timestamp();
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_123));
    }
}
