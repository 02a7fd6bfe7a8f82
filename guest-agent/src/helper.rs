//! The runtime helper: `firedoor-agent __helper <request.json>`, run by the
//! agent for each container and exec. libcontainer clones the container's
//! processes from the calling process, and a clone of a multi-threaded
//! process (the agent serves RPCs on many threads) may inherit locks held by
//! other threads; so, like runc's `init` and Kata's rustjail, the work is
//! done in a fresh single-threaded process. Its stdin/stdout/stderr are the
//! container process's; it writes `<pid>` or the error to a result file and
//! exits, leaving the container process to the agent (PID 1 or subreaper).
//!
//! The request is one JSON document in a file (not positional arguments), so
//! that it can carry structured parts such as an exec's seccomp profile.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use libcontainer::{
    container::builder::ContainerBuilder,
    oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, Spec},
    syscall::syscall::{create_syscall, SyscallType},
    workload::{
        default::DefaultExecutor, Executor, ExecutorError, ExecutorSetEnvsError,
        ExecutorValidationError,
    },
};
use serde::{Deserialize, Serialize};

/// The helper's subcommand (`firedoor-agent __helper <request file>`).
pub const HELPER: &str = "__helper";

/// What the agent asks a helper to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Create the container from `bundle/config.json`.
    Create { bundle: PathBuf, no_pivot: bool },
    /// Start the process described in `process` in the running container.
    Exec {
        process: PathBuf,
        /// The container's seccomp profile, which libcontainer's exec path
        /// leaves out; applied by [`SeccompExecutor`].
        seccomp: Option<Box<ExecSeccomp>>,
    },
}

/// How an exec'd process gets its container's seccomp profile.
///
/// libcontainer 0.7 rebuilds `linux` for an exec'd process without
/// `seccomp`, so the process would run unconfined. Instead the profile is
/// loaded by our executor, the last step before execve. Loading a filter
/// needs no_new_privs or CAP_SYS_ADMIN; when no_new_privs is off (runc then
/// loads the profile before it drops capabilities), the process is set up
/// with CAP_SYS_ADMIN added to its effective and permitted sets, and the
/// executor drops to `capabilities` right after loading the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSeccomp {
    pub profile: LinuxSeccomp,
    /// The process's own capabilities, restored after the filter is loaded;
    /// None when libcontainer already set them (no_new_privs on).
    pub capabilities: Option<LinuxCapabilities>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// libcontainer's state directory (one subdirectory per container).
    pub state_root: PathBuf,
    pub id: String,
    pub result: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub job: Job,
}

impl Request {
    /// Writes the request to `file` and returns the command that runs the
    /// helper on it.
    pub fn command(&self, exe: &Path, file: &Path) -> std::io::Result<Command> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        fs::write(file, json)?;
        let mut command = Command::new(exe);
        command.arg(HELPER).arg(file);
        Ok(command)
    }

    pub fn load(file: &Path) -> Result<Request, String> {
        let json = fs::read(file).map_err(|e| format!("reading {file:?}: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("parsing {file:?}: {e}"))
    }
}

/// Entry point of the helper process; `args` are `[__helper, <file>]`.
pub fn main(args: &[String]) -> ExitCode {
    let request = match args {
        [_, file] => Request::load(Path::new(file)),
        _ => Err(format!("usage: {HELPER} <request.json>, not {args:?}")),
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            eprintln!("firedoor-agent: bad helper request: {e}");
            return ExitCode::FAILURE;
        }
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
        Job::Exec { process, seccomp } => {
            let builder = match seccomp {
                Some(seccomp) => builder.with_executor(SeccompExecutor((**seccomp).clone())),
                None => builder,
            };
            builder
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process))
                .build()
                .map(|pid| pid.as_raw())
                .map_err(err)
        }
    }
}

/// Runs the exec'd program like libcontainer's default executor, after
/// loading the container's seccomp profile (see [`ExecSeccomp`]).
#[derive(Clone)]
struct SeccompExecutor(ExecSeccomp);

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            ExecutorError::Other(format!("exec: {what}: {e}"))
        };
        // A notify fd would need a listener (listenerPath), which a guest
        // has none of; the filter is in force either way.
        if let Some(fd) = libcontainer::seccomp::initialize_seccomp(&self.0.profile)
            .map_err(|e| failed("loading the seccomp profile", &e))?
        {
            let _ = nix::unistd::close(fd);
        }
        if let Some(caps) = &self.0.capabilities {
            libcontainer::capabilities::drop_privileges(caps, create_syscall().as_ref())
                .map_err(|e| failed("dropping capabilities", &e))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let profile: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
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
                    seccomp: Some(Box::new(ExecSeccomp {
                        profile,
                        capabilities: None,
                    })),
                },
            },
        ] {
            let file = dir.path().join("request.json");
            let command = request.command(Path::new("/agent"), &file).unwrap();
            let args: Vec<_> = command.get_args().collect();
            assert_eq!(args, [HELPER.as_ref(), file.as_os_str()]);
            assert_eq!(Request::load(&file), Ok(request));
        }
        fs::write(dir.path().join("bad.json"), "{}").unwrap();
        Request::load(&dir.path().join("bad.json")).unwrap_err();
    }
}
