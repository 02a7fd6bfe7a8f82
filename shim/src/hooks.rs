//! OCI hooks that belong to the host: `prestart` and `createRuntime` (during
//! create, before the sandbox VM boots, so that interfaces they put into the
//! container's network namespace become the VM's NICs), `poststart` and
//! `poststop`, run by the shim as runc runs them: the hook's `path` with its
//! `args` (`args[0]` as argv[0]) and exactly its `env`, the container's
//! state JSON on stdin, its `timeout`.
//!
//! The state's `pid` is a host process in the container's network namespace
//! (a CNI-calling hook such as nerdctl's finds the namespace to configure
//! through it): a [`NetnsAnchor`] that sits in the namespace the spec names,
//! or in a new one for a spec that asks for a new namespace.
//!
//! `createContainer` and `startContainer` hooks run in the container's own
//! namespaces, which are inside the guest, where no host binary exists: they
//! are skipped with a warning.

use std::{
    collections::HashMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use firedoor_hypervisor::process::ManagedChild;
use log::{info, warn};
use oci_spec::runtime::{ContainerState, Hook, LinuxNamespaceType, Spec, State};

use crate::child::run_with_deadline;

/// The longest a hook without a timeout of its own may run: the shim must
/// not wait for ever on a host program.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `containerd-shim-firedoor-v2 __netns-anchor`: the anchor process.
pub const ANCHOR_ARG: &str = "__netns-anchor";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{phase} hook {path}: {detail}")]
    Failed {
        phase: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("starting the network namespace anchor for hooks: {0}")]
    Anchor(String),
}

/// The host-side hooks of one container.
#[derive(Debug, Clone, Default)]
pub struct HostHooks {
    /// `prestart` (deprecated, still used) then `createRuntime`.
    pub create: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl HostHooks {
    /// The host-side hooks of `spec`; warns about those that cannot run.
    pub fn of(spec: &Spec) -> HostHooks {
        let Some(hooks) = spec.hooks() else {
            return HostHooks::default();
        };
        for (phase, list) in [
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
        ] {
            if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
                warn!(
                    "skipping {} {phase} hook(s): they run inside the container's namespaces, \
                     which are in the guest VM, where host binaries do not exist",
                    list.len()
                );
            }
        }
        let list = |l: &Option<Vec<Hook>>| l.clone().unwrap_or_default();
        let mut create = list(hooks.prestart());
        create.extend(list(hooks.create_runtime()));
        HostHooks {
            create,
            poststart: list(hooks.poststart()),
            poststop: list(hooks.poststop()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }
}

/// A container's host-side hooks with what they need: the anchor whose PID
/// they get, and the fields of the state they read.
#[derive(Debug)]
pub struct ContainerHooks {
    hooks: HostHooks,
    anchor: Arc<NetnsAnchor>,
    id: String,
    bundle: PathBuf,
    oci_version: String,
    annotations: Option<HashMap<String, String>>,
}

impl ContainerHooks {
    /// The `hooks` of container `id` (spec `spec`, bundle `bundle`), whose
    /// state names `anchor`'s pid.
    pub fn new(
        hooks: HostHooks,
        anchor: Arc<NetnsAnchor>,
        spec: &Spec,
        id: &str,
        bundle: &Path,
    ) -> Self {
        ContainerHooks {
            hooks,
            anchor,
            id: id.into(),
            bundle: bundle.to_owned(),
            oci_version: spec.version().clone(),
            annotations: spec.annotations().clone(),
        }
    }

    /// The OCI state a hook reads on stdin.
    fn state(&self, status: ContainerState) -> Vec<u8> {
        let mut state = State::default();
        state
            .set_version(self.oci_version.clone())
            .set_id(self.id.clone())
            .set_status(status)
            .set_pid(i32::try_from(self.anchor.pid()).ok())
            .set_bundle(self.bundle.clone())
            .set_annotations(self.annotations.clone());
        serde_json::to_vec(&state).unwrap_or_default()
    }

    /// While the container is being created (its rootfs is mounted, its
    /// network namespace exists, the VM has not read it yet): `prestart`,
    /// `createRuntime`, with the status `creating` runc gives them. An
    /// error fails the create.
    pub fn creating(&self) -> Result<(), HookError> {
        let state = self.state(ContainerState::Creating);
        run("createRuntime", &self.hooks.create, &state)
    }

    /// After the container's process started: `poststart` (failures logged).
    pub fn started(&self) {
        let state = self.state(ContainerState::Running);
        run_logged("poststart", &self.hooks.poststart, &state);
    }

    /// After the container was deleted: `poststop` (failures logged).
    pub fn stopped(&self) {
        let state = self.state(ContainerState::Stopped);
        run_logged("poststop", &self.hooks.poststop, &state);
    }
}

/// Runs `hooks` of `phase` in order; the first failure ends the run.
pub fn run(phase: &'static str, hooks: &[Hook], state: &[u8]) -> Result<(), HookError> {
    for hook in hooks {
        run_one(phase, hook, state)?;
        info!("{phase} hook {} done", hook.path().display());
    }
    Ok(())
}

/// Runs `hooks`, logging failures instead of failing (poststart and
/// poststop: the container's lifecycle goes on, as the OCI spec says).
pub fn run_logged(phase: &'static str, hooks: &[Hook], state: &[u8]) {
    for hook in hooks {
        if let Err(e) = run_one(phase, hook, state) {
            warn!("{e}");
        }
    }
}

fn run_one(phase: &'static str, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let fail = |detail: String| HookError::Failed {
        phase,
        path: hook.path().clone(),
        detail,
    };
    if !hook.path().is_absolute() {
        return Err(fail("the path must be absolute".into()));
    }
    let timeout = match hook.timeout() {
        Some(secs) if secs <= 0 => return Err(fail(format!("timeout {secs}: must be > 0"))),
        Some(secs) => Duration::from_secs(secs.unsigned_abs()),
        None => DEFAULT_TIMEOUT,
    };
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for var in hook.env().iter().flatten() {
        if let Some((key, value)) = var.split_once('=') {
            cmd.env(key, value);
        }
    }
    run_with_deadline(&mut cmd, state, timeout)
        .map_err(|e| fail(e.to_string()))?
        .check()
        .map_err(fail)
}

/// A host process parked in the container's network namespace, whose PID
/// hooks receive. Killed when dropped.
#[derive(Debug)]
pub struct NetnsAnchor {
    pid: u32,
    /// Dropping it ends the thread that owns the process, which kills it.
    stop: Option<std::sync::mpsc::Sender<()>>,
    owner: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NetnsAnchor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

impl NetnsAnchor {
    /// Starts the anchor in the network namespace `spec` asks for: the one
    /// at its path, a new one when it has no path, the shim's own (the
    /// host's) when the spec has no network namespace.
    pub fn start(spec: &Spec) -> Result<NetnsAnchor, HookError> {
        let exe = std::env::current_exe().map_err(|e| HookError::Anchor(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.arg(ANCHOR_ARG);
        Self::start_command(spec, cmd)
    }

    /// As [`NetnsAnchor::start`], with `cmd` as the parked program.
    fn start_command(spec: &Spec, mut cmd: Command) -> Result<NetnsAnchor, HookError> {
        let err = |e: String| HookError::Anchor(e);
        let network = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
        match network.map(|n| n.path().clone()) {
            None => {}
            Some(Some(path)) => {
                let netns = std::fs::File::open(&path)
                    .map_err(|e| err(format!("opening {}: {e}", path.display())))?;
                // SAFETY: between fork and exec the closure only calls
                // setns(2) on a descriptor it owns (moved in), which is
                // async-signal-safe and allocates nothing.
                unsafe {
                    cmd.pre_exec(move || {
                        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
            }
            Some(None) => {
                // SAFETY: unshare(2) between fork and exec is
                // async-signal-safe and touches no memory of ours.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
            }
        }
        // The process dies with the thread that started it
        // (PR_SET_PDEATHSIG), and RPC threads come and go: a thread of its
        // own holds it until the anchor is dropped.
        let (started_tx, started) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("netns-anchor".into())
            .spawn(
                move || match ManagedChild::spawn("netns anchor", &mut cmd, None) {
                    Ok(child) => {
                        let _ = started_tx.send(Ok(child.pid()));
                        let _ = stop_rx.recv();
                        drop(child);
                    }
                    Err(e) => drop(started_tx.send(Err(e.to_string()))),
                },
            )
            .map_err(|e| err(e.to_string()))?;
        let pid = started
            .recv()
            .map_err(|e| err(e.to_string()))?
            .map_err(err)?;
        Ok(NetnsAnchor {
            pid,
            stop: Some(stop),
            owner: Some(owner),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The anchor's network namespace, valid while the anchor lives.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

/// The anchor's whole life: wait to be killed.
pub fn anchor_main() -> ! {
    loop {
        nix::unistd::pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &str, args: &[&str], timeout: Option<i64>) -> Hook {
        let mut hook = Hook::default();
        hook.set_path(path.into())
            .set_args(Some(args.iter().map(|a| a.to_string()).collect()))
            .set_env(Some(vec!["HOOK_VAR=from-spec".into()]))
            .set_timeout(timeout);
        hook
    }

    #[test]
    fn hooks_get_the_state_their_args_and_only_their_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > {0}.state; echo \"$0 $1 $HOOK_VAR ${{HOME:-nohome}}\" > {0}.args",
            out.display()
        );
        let h = hook("/bin/sh", &["hook-name", "-c", &script], Some(5));
        let mut spec = Spec::default();
        let mut hooks = oci_spec::runtime::Hooks::default();
        hooks.set_create_runtime(Some(vec![h]));
        spec.set_hooks(Some(hooks));
        // The test binary cannot be the anchor program: sleep stands in.
        let mut sleep = Command::new("sleep");
        sleep.arg("1000");
        let anchor = Arc::new(NetnsAnchor::start_command(&spec, sleep).unwrap());
        let hooks = ContainerHooks::new(HostHooks::of(&spec), anchor, &spec, "c1", dir.path());
        hooks.creating().unwrap();
        let seen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("state")).unwrap())
                .unwrap();
        assert_eq!(seen["id"], "c1");
        assert_eq!(seen["status"], "creating");
        assert_eq!(seen["pid"], hooks.anchor.pid());
        // The spec asks for a new network namespace: the anchor has its own.
        let netns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_ne!(netns(&hooks.anchor.pid().to_string()), netns("self"));
        assert_eq!(
            std::fs::read_link(hooks.anchor.netns_path()).unwrap(),
            netns(&hooks.anchor.pid().to_string())
        );
        assert_eq!(seen["bundle"], dir.path().display().to_string());
        // argv[0] is args[0]; the environment is exactly the hook's.
        let args = std::fs::read_to_string(out.with_extension("args")).unwrap();
        assert_eq!(args, "hook-name  from-spec nohome\n");
    }

    #[test]
    fn a_failing_or_hanging_hook_is_an_error_naming_it() {
        let state = br#"{"id":"c1"}"#;
        let failing = hook("/bin/sh", &["sh", "-c", "echo broken >&2; exit 3"], None);
        let err = run("createRuntime", &[failing], state)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/bin/sh") && err.contains("broken"), "{err}");
        let hanging = hook("/bin/sh", &["sh", "-c", "sleep 100"], Some(1));
        let err = run("poststart", &[hanging], state).unwrap_err().to_string();
        assert!(err.contains("killed"), "{err}");
        let relative = hook("sh", &["sh"], None);
        assert!(run("poststop", &[relative], state).is_err());
    }
}
