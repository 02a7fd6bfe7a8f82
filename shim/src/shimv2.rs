//! The shim v2 binary's three roles: `start` (spawn the shim daemon of a
//! sandbox, or join the running one), `delete` (clean up after a shim that
//! died), and the daemon serving containerd's Task API.

use std::{
    env, fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use containerd_shim::{
    self as shim, api::DeleteResponse, publisher::RemotePublisher, util::write_address,
    Config as ShimConfig, ExitSignal, Flags, StartOpts,
};
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
pub fn run() {
    // We wait for our own children by PID (pidfds); a SIGCHLD reaper that
    // collects every child would steal their exit statuses. These must be
    // set here: the crate installs signal handling before Shim::new.
    let config = ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    shim::run::<FiredoorShim>(RUNTIME_ID, Some(config))
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
        let grouping = sandbox_id_of_bundle(Path::new(".")).unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        // containerd 1.6 does not write it, and needs it to reconnect.
        write_address(&address)?;
        Ok(address)
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
        }))
    }
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
