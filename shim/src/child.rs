//! Short-lived host programs the shim runs and waits for (OCI hooks, `nft`):
//! each one under a deadline, so that a hung program fails the request
//! instead of stalling it for ever, and always reaped.

use std::{
    io::{Read, Write},
    os::fd::AsFd,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// How long the stderr of a program that has exited may take to reach its
/// end (a process it started may hold the pipe open).
const STDERR_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error("cannot watch it (pidfd_open): {0}")]
    Watch(rustix::io::Errno),
    #[error("waiting for it: {0}")]
    Wait(std::io::Error),
    /// Killed (SIGKILL through its pidfd) and reaped.
    #[error("still running after {after:?}; killed")]
    DeadlineExpired { pid: u32, after: Duration },
}

/// How a program that ran to its end (before the deadline) ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: Vec<u8>,
}

impl Finished {
    /// `Ok` on exit status 0, else the status and the program's stderr.
    pub fn check(&self) -> Result<(), String> {
        if self.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&self.stderr);
        Err(format!("{}: {}", self.status, stderr.trim()))
    }
}

/// Runs `cmd` with `stdin` as its standard input, its stdout discarded and
/// its stderr kept, and waits for it for at most `deadline`. On expiry the
/// program is killed and reaped before this returns
/// ([`RunError::DeadlineExpired`]).
///
/// The child is forked by the calling thread, so it inherits that thread's
/// namespaces (the network code relies on it).
pub fn run_with_deadline(
    cmd: &mut Command,
    stdin: &[u8],
    deadline: Duration,
) -> Result<Finished, RunError> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Start)?;
    // Opened before anyone can reap the child, the pidfd names exactly this
    // process: the kill on expiry can never hit a reused PID.
    let pidfd = match pidfd_open(Pid::from_child(&child), PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Watch(e));
        }
    };
    // In threads of their own, so that a program that neither reads its
    // input nor ends cannot block us past the deadline. A write error just
    // means it did not read.
    if let Some(mut pipe) = child.stdin.take() {
        let input = stdin.to_vec();
        std::thread::spawn(move || drop(pipe.write_all(&input)));
    }
    let (stderr_tx, stderr_rx) = mpsc::channel();
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut stderr = Vec::new();
            let _ = pipe.read_to_end(&mut stderr);
            let _ = stderr_tx.send(stderr);
        });
    }
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {
                // The pidfd is readable: the child has exited.
                let status = child.wait().map_err(RunError::Wait)?;
                let stderr = stderr_rx.recv_timeout(STDERR_GRACE).unwrap_or_default();
                return Ok(Finished { status, stderr });
            }
            Err(e) => {
                let _ = pidfd_send_signal(&pidfd, Signal::KILL);
                let _ = child.wait();
                return Err(RunError::Wait(e.into()));
            }
        }
    }
    // ESRCH (it has just ended) is fine: the wait below reaps it either way.
    let _ = pidfd_send_signal(&pidfd, Signal::KILL);
    child.wait().map_err(RunError::Wait)?;
    Err(RunError::DeadlineExpired {
        pid: child.id(),
        after: deadline,
    })
}

#[cfg(test)]
mod tests {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};

    use super::*;

    #[test]
    fn a_program_past_its_deadline_is_killed_and_reaped() {
        let started = Instant::now();
        let err = run_with_deadline(
            Command::new("sleep").arg("100"),
            b"",
            Duration::from_millis(200),
        )
        .unwrap_err();
        let RunError::DeadlineExpired { pid, after } = &err else {
            panic!("not a deadline error: {err}");
        };
        assert_eq!(*after, Duration::from_millis(200));
        assert!(err.to_string().contains("killed"), "{err}");
        // Killed, not waited out (generous: the machine may be loaded).
        assert!(started.elapsed() < Duration::from_secs(50));
        // Reaped: no child of ours (not even a zombie) has that PID.
        // WNOWAIT: never reap anything here.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let pid = nix::unistd::Pid::from_raw(pid.cast_signed());
        assert_eq!(waitid(Id::Pid(pid), flags), Err(nix::Error::ECHILD));
    }

    #[test]
    fn a_program_gets_its_input_and_its_status_and_stderr_come_back() {
        let finished = run_with_deadline(
            Command::new("/bin/sh").args(["-c", "read line; echo \"got $line\" >&2; exit 3"]),
            b"the input\n",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(finished.status.code(), Some(3));
        assert_eq!(
            finished.check().unwrap_err(),
            "exit status: 3: got the input"
        );
        let ok =
            run_with_deadline(&mut Command::new("true"), b"", Duration::from_secs(60)).unwrap();
        ok.check().unwrap();
    }

    #[test]
    fn a_program_that_cannot_start_is_a_start_error() {
        let err = run_with_deadline(
            &mut Command::new("/nonexistent/program"),
            b"",
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::Start(_)), "{err}");
    }
}
