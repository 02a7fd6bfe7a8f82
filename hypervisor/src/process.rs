//! Child processes of a VM (the VMM, vhost-user daemons), supervised by PID:
//! never looked up by name, always reaped, killed if still running on drop.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use log::{debug, warn};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use rustix::process::{
    pidfd_send_signal, set_parent_process_death_signal, Pid as RustixPid, PidfdFlags,
    Signal as RustixSignal,
};

use crate::{Result, VmError};

/// A running child process that is ours to stop.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
    /// Readable once the child has exited; lets us wait with a timeout
    /// without polling in a loop.
    pidfd: OwnedFd,
    exited: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl ManagedChild {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr to `log`
    /// (or inherited when `None`), in its own process group (so a terminal's
    /// Ctrl-C reaches us, not it) and set to die with the spawning thread.
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Self> {
        let spawn_err = |source| VmError::Spawn {
            name: name.into(),
            source,
        };
        cmd.stdin(Stdio::null()).process_group(0);
        if let Some(log) = log {
            let file = File::create(log).map_err(spawn_err)?;
            cmd.stdout(file.try_clone().map_err(spawn_err)?)
                .stderr(file);
        }
        // SAFETY: the closure runs between fork and exec and only makes the
        // prctl(2) system call, which is async-signal-safe, allocates
        // nothing and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                set_parent_process_death_signal(Some(RustixSignal::KILL)).map_err(io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let pidfd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_err(source));
            }
        };
        debug!("started {name} (pid {})", child.id());
        Ok(ManagedChild {
            name: name.into(),
            child,
            pidfd,
            exited: None,
            log: log.map(Path::to_owned),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms =
                PollTimeout::try_from(i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1))
                    .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&self.pidfd),
                PollFlags::POLLIN,
            )];
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A duplicate of the pidfd: readable once the child has exited.
    pub fn exit_notifier(&self) -> io::Result<OwnedFd> {
        self.pidfd.try_clone()
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps, and waits for
    /// the processes the child started (see [`group_members`]).
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let members = group_members(self.pid());
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            end_all(&self.name, members);
            return Ok(status);
        }
        warn!(
            "{} (pid {}) ignored SIGTERM for {grace:?}; killing it",
            self.name,
            self.pid()
        );
        self.kill_with(members)
    }

    /// SIGKILL and reap, and the same for the processes it started.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let members = group_members(self.pid());
        self.kill_with(members)
    }

    fn kill_with(&mut self, members: Vec<OwnedFd>) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL);
        let status = self.child.wait()?;
        self.exited = Some(status);
        end_all(&self.name, members);
        Ok(status)
    }

    fn signal(&self, signal: Signal) {
        // The child is not reaped yet (exited is None), so the PID cannot
        // have been reused.
        if let Err(e) = kill(Pid::from_raw(self.pid().cast_signed()), signal) {
            debug!("{signal} to {} (pid {}): {e}", self.name, self.pid());
        }
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log
            .as_deref()
            .map(|path| tail_lines(path, lines))
            .unwrap_or_default()
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            warn!("stopping {} (pid {}): {e}", self.name, self.pid());
        }
    }
}

/// How long a child's own children may take to follow it out.
const GROUP_GRACE: Duration = Duration::from_secs(2);

/// Pidfds of the other processes in process group `pgid` (our child is its
/// leader: spawned with `process_group(0)`), such as virtiofsd's sandboxed
/// worker. Taken before the leader is signalled, so that stopping a helper
/// also waits for what it started and nothing outlives the VM.
fn group_members(pgid: u32) -> Vec<OwnedFd> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != pgid && process_group_of(pid) == Some(pgid))
        .filter_map(|pid| pidfd_open(pid).ok())
        .collect()
}

/// Field 5 of /proc/PID/stat; the command name before it may hold spaces
/// and parentheses, so count from the last ')'.
fn process_group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// Waits for `members` to exit; SIGKILLs the ones still there after
/// [`GROUP_GRACE`].
fn end_all(name: &str, members: Vec<OwnedFd>) {
    if members.is_empty() || wait_all_exited(&members, GROUP_GRACE) {
        return;
    }
    warn!("processes started by {name} outlived it by {GROUP_GRACE:?}; killing them");
    for pidfd in &members {
        // The pidfd names exactly the process we opened, never a reused PID;
        // one that has exited already is fine.
        let _ = pidfd_send_signal(pidfd, RustixSignal::KILL);
    }
    if !wait_all_exited(&members, GROUP_GRACE) {
        warn!("processes started by {name} survived SIGKILL");
    }
}

/// True once every pidfd is readable (its process has exited).
fn wait_all_exited(pidfds: &[OwnedFd], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&OwnedFd> = pidfds.iter().collect();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds: Vec<PollFd> = pending
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms =
            PollTimeout::try_from(left.as_millis().min(10_000) as u32).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
            Ok(_) => {}
        }
        let exited: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
        let mut exited = exited.into_iter();
        pending.retain(|_| !exited.next().unwrap_or(false));
    }
    true
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = RustixPid::from_raw(pid.cast_signed())
        .ok_or_else(|| io::Error::other(format!("pid {pid} is not a process")))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// The last `lines` lines of a text file (at most 64 KiB are read).
pub(crate) fn tail_lines(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = file.take(MAX).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_with_timeout_and_kills() {
        let mut child =
            ManagedChild::spawn("sleep", Command::new("sleep").arg("30"), None).unwrap();
        assert_eq!(child.wait_timeout(Duration::from_millis(50)).unwrap(), None);
        let status = child.terminate(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        // Reaped: the PID is gone.
        assert!(kill(Pid::from_raw(child.pid().cast_signed()), None).is_err());
    }

    #[test]
    fn reports_exit_status_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut child = ManagedChild::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo one; echo two; echo three >&2; exit 3"]),
            Some(&log),
        )
        .unwrap();
        let status = child
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.log_tail(2), "two\nthree");
    }

    #[test]
    fn drop_kills_and_reaps() {
        let child = ManagedChild::spawn("sleep", Command::new("sleep").arg("30"), None).unwrap();
        let pid = Pid::from_raw(child.pid().cast_signed());
        drop(child);
        assert!(kill(pid, None).is_err(), "child still exists after drop");
    }

    #[test]
    fn stopping_a_child_ends_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = ManagedChild::spawn(
            "sh",
            Command::new("sh").args(["-c", "sleep 30 & echo $!; wait"]),
            Some(&log),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Ok(pid) = std::fs::read_to_string(&log).unwrap().trim().parse::<i32>() {
                break Pid::from_raw(pid);
            }
            assert!(Instant::now() < deadline, "no pid from the shell");
            std::thread::sleep(Duration::from_millis(10));
        };
        child.kill().unwrap();
        // Not our child, so it cannot be reaped here: gone or a zombie.
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        let state = state
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "grandchild {grandchild}: {state:?}"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = ManagedChild::spawn("nope", &mut Command::new("/nonexistent/prog"), None)
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("starting nope:"), "{err}");
    }
}
