//! The runtime helper: `firedoor-agent __create|__exec ...`, run by the
//! agent for each container and exec. libcontainer clones the container's
//! processes from the calling process, and a clone of a multi-threaded
//! process (the agent serves RPCs on many threads) may inherit locks held by
//! other threads; so, like runc's `init` and Kata's rustjail, the work is
//! done in a fresh single-threaded process. Its stdin/stdout/stderr are the
//! container process's; it writes `<pid>` or the error to a result file and
//! exits, leaving the container process to the agent (PID 1 or subreaper).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use libcontainer::{container::builder::ContainerBuilder, syscall::syscall::SyscallType};

pub const CREATE: &str = "__create";
pub const EXEC: &str = "__exec";

/// What the agent asks a helper to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Create the container from `bundle/config.json`.
    Create { bundle: PathBuf, no_pivot: bool },
    /// Start the process described in `process` in the running container.
    Exec { process: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// libcontainer's state directory (one subdirectory per container).
    pub state_root: PathBuf,
    pub id: String,
    pub result: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub job: Job,
}

impl Request {
    /// The helper's command line (after the program name).
    pub fn to_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        let console = self.console_socket.as_deref().map_or("-".into(), path);
        let mut args = match &self.job {
            Job::Create { .. } => vec![CREATE.to_string()],
            Job::Exec { .. } => vec![EXEC.to_string()],
        };
        args.extend([
            path(&self.state_root),
            self.id.clone(),
            path(&self.result),
            console,
        ]);
        match &self.job {
            Job::Create { bundle, no_pivot } => {
                args.extend([path(bundle), no_pivot.to_string()]);
            }
            Job::Exec { process } => args.push(path(process)),
        }
        args
    }

    pub fn from_args(args: &[String]) -> Option<Request> {
        let (state_root, id, result, console) = (
            args.get(1)?.into(),
            args.get(2)?.clone(),
            args.get(3)?.into(),
            args.get(4)?,
        );
        let console_socket = (console != "-").then(|| console.into());
        let job = match (args.first()?.as_str(), args.len()) {
            (CREATE, 7) => Job::Create {
                bundle: args[5].clone().into(),
                no_pivot: args[6].parse().ok()?,
            },
            (EXEC, 6) => Job::Exec {
                process: args[5].clone().into(),
            },
            _ => return None,
        };
        Some(Request {
            state_root,
            id,
            result,
            console_socket,
            job,
        })
    }

    /// The command the agent runs.
    pub fn command(&self, exe: &Path) -> Command {
        let mut command = Command::new(exe);
        command.args(self.to_args());
        command
    }
}

/// Entry point of the helper process; `args` start with the subcommand.
pub fn main(args: &[String]) -> ExitCode {
    let Some(request) = Request::from_args(args) else {
        eprintln!("firedoor-agent: bad helper arguments {args:?}");
        return ExitCode::FAILURE;
    };
    // Container processes must not inherit the agent's blocked signals
    // (the mask survives exec) nor the Rust runtime's ignored SIGPIPE.
    use nix::sys::signal::{pthread_sigmask, signal, SigHandler, SigSet, SigmaskHow, Signal};
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: single-threaded here; restoring the default disposition.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let outcome = run(&request);
    let (text, code) = match &outcome {
        Ok(pid) => (pid.to_string(), ExitCode::SUCCESS),
        Err(e) => (e.clone(), ExitCode::FAILURE),
    };
    if let Err(e) = fs::write(&request.result, text) {
        eprintln!("firedoor-agent: writing {:?}: {e}", request.result);
        return ExitCode::FAILURE;
    }
    code
}

fn run(request: &Request) -> Result<i32, String> {
    let err = |e: libcontainer::error::LibcontainerError| crate::error::chain(&e);
    let builder = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.state_root)
        .map_err(err)?
        .with_console_socket(request.console_socket.as_ref())
        .validate_id()
        .map_err(err)?;
    match &request.job {
        Job::Create { bundle, no_pivot } => {
            let container = builder
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(*no_pivot)
                .build()
                .map_err(err)?;
            container
                .pid()
                .map(|pid| pid.as_raw())
                .ok_or_else(|| "the container has no init process".to_string())
        }
        Job::Exec { process } => builder
            .as_tenant()
            .with_detach(true)
            .with_process(Some(process))
            .build()
            .map(|pid| pid.as_raw())
            .map_err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_args() {
        for request in [
            Request {
                state_root: "/run/lc".into(),
                id: "c1".into(),
                result: "/run/b/c1/result".into(),
                console_socket: None,
                job: Job::Create {
                    bundle: "/run/b/c1".into(),
                    no_pivot: false,
                },
            },
            Request {
                state_root: "/run/lc".into(),
                id: "c1".into(),
                result: "/run/b/c1/e1.result".into(),
                console_socket: Some("/run/b/c1/e1.sock".into()),
                job: Job::Exec {
                    process: "/run/b/c1/e1.json".into(),
                },
            },
        ] {
            assert_eq!(Request::from_args(&request.to_args()), Some(request));
        }
        assert_eq!(Request::from_args(&["__create".into()]), None);
    }
}
