//! The shim v2 binary's three roles: `start` (spawn the shim daemon of a
//! sandbox, or join the running one), `delete` (clean up after a shim that
//! died), and the daemon serving containerd's Task API (v2, and the same
//! handlers as v3) and Sandbox API.
//!
//! `start` and `delete` are the `containerd-shim` crate's; the daemon is
//! our own loop ([`serve`]), because the crate registers only the Task
//! service on its ttrpc server.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use containerd_shim::{
    self as shim, api::DeleteResponse, publisher::RemotePublisher, util::write_address,
    Config as ShimConfig, ExitSignal, Flags, StartOpts,
};

mod serve;
use log::{info, warn};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    config::Config,
    mount,
    task::{events::Events, ExitInfo, Shared, TaskService},
};

pub const RUNTIME_ID: &str = "io.containerd.firedoor.v2";

/// Annotation carrying a pod's sandbox id on each of its containers.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Where the shims keep per-sandbox state (shared dir, VM run dir).
const STATE_ROOT: &str = "/run/firedoor";

/// Runs the shim; called from `main`.
pub fn run() -> ExitCode {
    let args: Vec<_> = env::args_os().collect();
    let flags = shim::parse(&args[1..]).ok();
    if let Some(flags) = flags.filter(is_daemon) {
        return match serve::serve(flags, shim_config()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{RUNTIME_ID}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    shim::run::<FiredoorShim>(RUNTIME_ID, Some(shim_config()));
    ExitCode::SUCCESS
}

/// The daemon role: no action, `-socket` given (as `shim::spawn` starts it).
fn is_daemon(flags: &Flags) -> bool {
    flags.action.is_empty() && !flags.socket.is_empty() && !flags.version
}

fn shim_config() -> ShimConfig {
    // We wait for our own children by PID (pidfds); a SIGCHLD reaper that
    // collects every child would steal their exit statuses. These must be
    // set here: the crate installs signal handling before Shim::new.
    ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

pub struct FiredoorShim {
    id: String,
    namespace: String,
    config: Result<Config, String>,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for FiredoorShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FiredoorShim")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl shim::Shim for FiredoorShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, shim_config: &mut ShimConfig) -> Self {
        let config = Config::load().map_err(|e| format!("{e:#}"));
        if let Ok(config) = &config {
            shim_config.default_log_level = config.log_level.as_str().to_ascii_lowercase();
        }
        FiredoorShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            config,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, shim::Error> {
        // The containers of a pod share one shim and one VM.
        let bundle = Path::new(".");
        let sandbox_api = started_by_sandbox_api(bundle);
        if sandbox_api {
            refuse_sandbox_api_before_2(containerd_major_version(&opts.publish_binary))?;
        }
        let grouping = sandbox_id_of_bundle(bundle).unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        // containerd 1.6 does not write it, and needs it to reconnect.
        write_address(&address)?;
        Ok(bootstrap_answer(&address, sandbox_api))
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let bundle = env::current_dir().unwrap_or_default();
        cleanup_after_crash(&bundle, &state_dir(&self.namespace, &self.id));
        let exit = ExitInfo::now(128 + Signal::SIGKILL as u32);
        Ok(DeleteResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        if let Err(e) = &self.config {
            warn!("configuration error (every create will fail): {e}");
        }
        // A new shim serving this sandbox: whatever is in its state dir was
        // left by one that died (containerd may not have run `delete`).
        let state_dir = state_dir(&self.namespace, &self.id);
        if state_dir.exists() {
            warn!(
                "{} was left by an earlier shim of this sandbox; removing it",
                state_dir.display()
            );
            remove_sandbox_state(&state_dir);
        }
        TaskService::new(Arc::new(Shared {
            namespace: self.namespace.clone(),
            config: self.config.clone(),
            events: Events::new(publisher, self.namespace.clone()),
            state_dir,
            sandbox: Default::default(),
            containers: Mutex::default(),
            exit: self.exit.clone(),
            pod_namespaces: Default::default(),
            volumes: Default::default(),
        }))
    }
}

/// containerd >= 2.0's sandbox controller (`sandboxer = "shim"`) starts the
/// shim of a pod in a bundle without an OCI spec; every task's bundle has
/// one. Only 2.x does that, and 2.x accepts protocol version 3.
fn started_by_sandbox_api(bundle: &Path) -> bool {
    !bundle.join("config.json").exists()
}

/// What `start` prints: the bare address (protocol version 2, which every
/// containerd reads; 1.6 reads nothing else and 1.7 rejects 3), or, for a
/// shim started through the Sandbox API, version 3 as JSON, which makes
/// containerd 2.x send the pod's tasks to the same connection through the
/// Task API v3. `MAX_SHIM_VERSION` cannot decide it: containerd 1.7.24
/// and 2.1.9 both pass `2` (measured), although 2.x accepts 3.
fn bootstrap_answer(address: &str, sandbox_api: bool) -> String {
    if sandbox_api {
        serde_json::json!({"version": 3, "address": address, "protocol": "ttrpc"}).to_string()
    } else {
        address.to_string()
    }
}

/// containerd 1.7's experimental sandbox mode would need protocol version
/// 3, which 1.7 refuses: say what to configure instead of letting it fail
/// on our answer.
fn refuse_sandbox_api_before_2(containerd_major: Option<u32>) -> Result<(), shim::Error> {
    match containerd_major {
        Some(major) if major < 2 => Err(shim::Error::InvalidArgument(format!(
            "{RUNTIME_ID}: containerd {major}.x's sandbox API (sandbox_mode = \"shim\") needs \
             shim protocol version 3, which containerd before 2.0 does not accept; use \
             sandbox_mode = \"podsandbox\" (the default) for this runtime handler, or \
             containerd >= 2.0 with sandboxer = \"shim\""
        ))),
        _ => Ok(()),
    }
}

/// The major version `containerd --version` prints ("containerd
/// github.com/containerd/containerd/v2 2.1.9 ..."); None if it cannot say.
fn containerd_major_version(containerd: &str) -> Option<u32> {
    if containerd.is_empty() {
        return None;
    }
    let out = std::process::Command::new(containerd)
        .arg("--version")
        .output()
        .ok()?;
    parse_major_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major_version(version_line: &str) -> Option<u32> {
    version_line
        .split_whitespace()
        .nth(2)?
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn state_dir(namespace: &str, id: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(namespace).join(id)
}

/// The pod sandbox id from the bundle's config.json annotations, if any.
fn sandbox_id_of_bundle(bundle: &Path) -> Option<String> {
    let text = fs::read_to_string(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
    spec.get("annotations")?
        .get(SANDBOX_ID_ANNOTATION)?
        .as_str()
        .filter(|id| firedoor_protocol::stdio::valid_id(id))
        .map(String::from)
}

/// `shim delete`: the daemon is gone; stop what it left running (found by
/// the PIDs it recorded, checked against their command lines so a reused
/// PID is never hit) and remove its mounts and state.
fn cleanup_after_crash(bundle: &Path, state_dir: &Path) {
    let started = SystemTime::now();
    remove_sandbox_state(state_dir);
    // The VM's taps died with it; the tc redirects on the pod's veth did not.
    if let Some(netns) = fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok())
        .as_ref()
        .and_then(crate::network::netns_path)
    {
        crate::network::clean_up(&netns);
    }
    mount::unmount_all_under(&bundle.join("rootfs"));
    info!("cleanup took {:?}", started.elapsed().unwrap_or_default());
}

/// Kills the VM processes a dead shim recorded (only those whose command
/// line still names this state dir: PIDs get reused), then unmounts and
/// removes the state dir.
fn remove_sandbox_state(state_dir: &Path) {
    if let Ok(pids) = fs::read_to_string(state_dir.join(crate::sandbox::PIDS_FILE)) {
        let marker = state_dir.to_string_lossy().into_owned();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                info!("killing leftover VM process {pid}");
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    if state_dir.exists() {
        mount::unmount_all_under(state_dir);
        if let Err(e) = fs::remove_dir_all(state_dir) {
            warn!("removing {}: {e}", state_dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sandbox_api_start_answers_version_3() {
        let address = "unix:///run/containerd/s/abc";
        assert_eq!(bootstrap_answer(address, false), address);
        let answer: serde_json::Value =
            serde_json::from_str(&bootstrap_answer(address, true)).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"version": 3, "address": address, "protocol": "ttrpc"})
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(started_by_sandbox_api(dir.path()));
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(!started_by_sandbox_api(dir.path()));
    }

    #[test]
    fn containerd_versions_are_read_from_its_version_line() {
        let v17 = "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1";
        assert_eq!(parse_major_version(v17), Some(1));
        let v21 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown ";
        assert_eq!(parse_major_version(v21), Some(2));
        assert_eq!(parse_major_version("garbage"), None);
        assert_eq!(containerd_major_version(""), None);
    }

    #[test]
    fn containerd_1_7_sandbox_mode_is_refused_with_what_to_configure() {
        let err = refuse_sandbox_api_before_2(Some(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sandbox_mode = \"podsandbox\""), "{err}");
        refuse_sandbox_api_before_2(Some(2)).unwrap();
        refuse_sandbox_api_before_2(None).unwrap();
    }
}
