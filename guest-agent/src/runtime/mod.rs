//! Containers and their processes: the state behind the container RPCs.
//!
//! State directory layout (`--state-dir`, `/run/firedoor/agent` in the guest):
//! `containers/<id>/` holds the bundle (`config.json`), exec process files
//! and `cgroup` (the group's path, for cleanup after a crash);
//! `runtime/<id>/` is libcontainer's own state; `consoles/<n>` are the
//! console sockets, named by a counter: a socket path must stay under
//! SUN_LEN (108 bytes) whatever the length of the ids (64 for CRI).
//!
//! Split by concept: [`process`] (one process and its exit), `create`
//! (CreateContainer and the runtime helper), `exec` (ExecProcess); the rest
//! of the container RPCs are here.

mod create;
mod exec;
mod process;

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, UNIX_EPOCH},
};

use firedoor_protocol::{
    agent::Stdio,
    stdio::{valid_id, StreamHeader},
};
use log::{info, warn};
use nix::{sys::signal::Signal, unistd::Pid};
use oci_spec::runtime::LinuxSeccomp;

pub use self::process::Process;
use crate::{
    cgroup::{
        devices::{self, DeviceFilter},
        Cgroup,
    },
    error::{chain, AgentError, Result},
    oom::{OomCounter, OomEvents},
    spec::{self, Roots},
    streams::Conn,
    volumes::{VolumeDirs, Volumes},
};

#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// The cgroup2 mount.
    pub cgroup_mount: PathBuf,
    /// Parent of the containers' groups inside the hierarchy (`/firedoor`).
    pub cgroup_parent: String,
    pub roots: Roots,
    /// MS_MOVE + chroot instead of pivot_root (for a root that cannot pivot).
    pub no_pivot: bool,
    /// This program, run as the runtime helper.
    pub exe: PathBuf,
    /// Where the pod network namespace is pinned
    /// ([`firedoor_protocol::POD_NETNS_PATH`] in the guest).
    pub pod_netns: PathBuf,
    /// The pod's volumes (see [`crate::volumes`]); `None`: bind-mount
    /// sources are used as they come.
    pub volumes: Option<VolumeDirs>,
}

#[derive(Debug)]
pub struct Container {
    id: String,
    cgroup: Cgroup,
    dir: PathBuf,
    /// The container's seccomp profile, for its exec'd processes.
    seccomp: Option<LinuxSeccomp>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    started: Mutex<bool>,
    oom: Arc<OomCounter>,
    /// The device program attached to the group; UpdateContainer replaces it.
    devices: Mutex<DeviceFilter>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!("container {}: no exec process {exec_id}", self.id))
        })
    }

    fn require_running(&self) -> Result<()> {
        if !*lock(&self.started) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is not started",
                self.id
            )));
        }
        if self.init.exit().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} has stopped",
                self.id
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Runtime {
    opts: Options,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Container ids and `container/exec` ids being created.
    reserved: Mutex<HashSet<String>>,
    /// Names the next console socket.
    next_console: AtomicU64,
    oom: Arc<OomEvents>,
    volumes: Option<Volumes>,
}

/// Frees a reserved id when creation ends, whichever way.
struct Reservation<'a> {
    reserved: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.reserved).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{what} {id:?}: must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

fn enabled(stdio: Option<&Stdio>) -> ([bool; 3], bool) {
    stdio.map_or(([false; 3], false), |s| {
        ([s.stdin, s.stdout, s.stderr], s.terminal)
    })
}

impl Runtime {
    /// Prepares the state directory, removing what a previous agent left.
    pub fn new(opts: Options, oom: Arc<OomEvents>) -> Result<Runtime> {
        let runtime = Runtime {
            volumes: opts.volumes.clone().map(Volumes::new),
            opts,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            next_console: AtomicU64::new(0),
            oom,
        };
        runtime.clean_stale_state();
        for dir in [
            runtime.containers_dir(),
            runtime.runtime_dir(),
            runtime.consoles_dir(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| AgentError::internal(format!("creating {dir:?}"), e))?;
        }
        Ok(runtime)
    }

    fn containers_dir(&self) -> PathBuf {
        self.opts.state_dir.join("containers")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.opts.state_dir.join("runtime")
    }

    fn consoles_dir(&self) -> PathBuf {
        self.opts.state_dir.join("consoles")
    }

    /// A fresh console socket path, short whatever the ids.
    fn console_socket(&self) -> PathBuf {
        let n = self.next_console.fetch_add(1, Ordering::Relaxed);
        self.consoles_dir().join(n.to_string())
    }

    /// Kills the containers of a previous agent (found by their cgroups) and
    /// removes their state.
    fn clean_stale_state(&self) {
        let Ok(entries) = fs::read_dir(self.containers_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if let Ok(path) = fs::read_to_string(entry.path().join("cgroup")) {
                let cgroup = Cgroup::new(&self.opts.cgroup_mount, path.trim());
                info!("removing stale container {:?}", entry.file_name());
                if let Err(e) = cgroup.destroy() {
                    warn!("{e}");
                }
            }
            let _ = fs::remove_dir_all(entry.path());
        }
        let _ = fs::remove_dir_all(self.runtime_dir());
        let _ = fs::remove_dir_all(self.consoles_dir());
    }

    fn reserve(&self, key: String, exists: bool) -> Result<Reservation<'_>> {
        if exists || !lock(&self.reserved).insert(key.clone()) {
            return Err(AgentError::AlreadyExists(format!("{key} already exists")));
        }
        Ok(Reservation {
            reserved: &self.reserved,
            key,
        })
    }

    /// Where the pod network namespace is pinned.
    pub fn pod_netns(&self) -> &std::path::Path {
        &self.opts.pod_netns
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no container {id:?}")))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(id)?.process(exec_id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let mut started = lock(&container.started);
        if *started {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} is already started"
            )));
        }
        if container.init.exit().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} has stopped"
            )));
        }
        let mut lc = libcontainer::container::Container::load(self.runtime_dir().join(id))
            .map_err(|e| AgentError::internal(format!("loading container {id}"), chain(&e)))?;
        lc.start()
            .map_err(|e| AgentError::internal(format!("starting container {id}"), chain(&e)))?;
        *started = true;
        info!("started container {id}");
        Ok(())
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let container = self.container(id)?;
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("signal {signal}: unknown")))?;
        if all {
            if !exec_id.is_empty() {
                return Err(AgentError::InvalidArgument(
                    "all=true signals the whole container: exec_id must be empty".into(),
                ));
            }
            return container.cgroup.signal_all(sig);
        }
        let process = container.process(exec_id)?;
        // The exit is recorded under this lock before the pid can be reused.
        let exit = lock(&process.exit);
        if exit.is_some() {
            return Err(AgentError::NotFound(format!(
                "process {} of container {id} has already exited",
                firedoor_protocol::oci::display_exec(exec_id)
            )));
        }
        nix::sys::signal::kill(Pid::from_raw(process.pid), sig).map_err(|e| match e {
            nix::errno::Errno::ESRCH => {
                AgentError::NotFound(format!("process {}: {e}", process.pid))
            }
            e => AgentError::internal(format!("signalling {}", process.pid), e),
        })
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> Result<(i32, i64)> {
        let exit = self.process(id, exec_id)?.wait();
        let nanos = exit
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok((exit.status, nanos))
    }

    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        if exec_id.is_empty() {
            return Err(AgentError::InvalidArgument(
                "exec_id is empty: the init process goes with RemoveContainer".into(),
            ));
        }
        let container = self.container(id)?;
        let mut execs = lock(&container.execs);
        let process = execs.get(exec_id).ok_or_else(|| {
            AgentError::NotFound(format!("container {id}: no exec process {exec_id}"))
        })?;
        if process.exit().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {exec_id} of container {id} is still running"
            )));
        }
        execs.remove(exec_id);
        Ok(())
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let process = self.process(id, exec_id)?;
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(AgentError::InvalidArgument(format!(
                "terminal size {rows}x{columns} is too large"
            )));
        };
        process
            .streams
            .resize(rows, columns)
            .map_err(AgentError::FailedPrecondition)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.process(id, exec_id)?.streams.close_stdin();
        Ok(())
    }

    /// Connects a host stream connection to its process.
    pub fn attach(&self, header: &StreamHeader, mut conn: Conn) {
        match self.process(&header.container_id, &header.exec_id) {
            Ok(process) => {
                if let Err(reason) = process.streams.attach(header.stream, conn) {
                    warn!("{}: {reason}", header.encode().trim_end());
                }
            }
            Err(e) => {
                let _ = firedoor_protocol::stdio::reject(&mut conn, &e.to_string());
            }
        }
    }

    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let container = self.container(id)?;
        if !force && *lock(&container.started) && container.init.exit().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} is running (stop it first, or force)"
            )));
        }
        lock(&self.containers).remove(id);
        self.teardown(&container)
    }

    fn teardown(&self, container: &Container) -> Result<()> {
        let id = &container.id;
        let result = container.cgroup.destroy();
        if container
            .init
            .wait_timeout(Duration::from_secs(10))
            .is_none()
        {
            warn!(
                "container {id}: init {} not reaped after SIGKILL",
                container.init.pid
            );
        }
        self.oom.unwatch(&container.oom);
        container.init.streams.release();
        for process in lock(&container.execs).values() {
            process.streams.release();
        }
        let _ = fs::remove_dir_all(self.runtime_dir().join(id));
        let _ = fs::remove_dir_all(&container.dir);
        if let Some(volumes) = &self.volumes {
            volumes.detach(id);
        }
        info!("removed container {id}");
        result
    }

    /// Removes every container (DestroySandbox, Shutdown).
    pub fn remove_all(&self) {
        let containers: Vec<_> = lock(&self.containers).drain().map(|(_, c)| c).collect();
        for container in containers {
            if let Err(e) = self.teardown(&container) {
                warn!("{e}");
            }
        }
    }

    pub fn pause(&self, id: &str, frozen: bool) -> Result<()> {
        let container = self.container(id)?;
        container.require_running()?;
        container.cgroup.freeze(frozen)
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let container = self.container(id)?;
        let resources = spec::parse_resources(resources_json)?;
        // Validate the device rules before changing anything.
        let device_rules = match resources.devices() {
            Some(rules) => Some(devices::container_rules(Some(rules))?),
            None => None,
        };
        container.cgroup.update(&resources)?;
        if let Some(rules) = device_rules {
            lock(&container.devices)
                .replace(&rules)
                .map_err(|e| AgentError::Internal(format!("container {id}: {e}")))?;
        }
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<firedoor_protocol::agent::StatsContainerResponse> {
        self.container(id)?.cgroup.stats()
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>> {
        self.container(id)?.cgroup.pids()
    }

    /// The next OOM-killed container; `None` once the agent shuts down.
    pub fn next_oom_event(&self) -> Option<String> {
        self.oom.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(state_dir: &std::path::Path) -> Runtime {
        let opts = Options {
            state_dir: state_dir.to_owned(),
            cgroup_mount: "/sys/fs/cgroup".into(),
            cgroup_parent: "/firedoor-unit".into(),
            roots: Roots::default(),
            no_pivot: false,
            exe: "/proc/self/exe".into(),
            pod_netns: state_dir.join("netns/pod"),
            volumes: None,
        };
        Runtime::new(opts, OomEvents::start()).unwrap()
    }

    #[test]
    fn console_sockets_are_short_whatever_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let first = runtime.console_socket();
        let second = runtime.console_socket();
        assert_ne!(first, second);
        assert!(first.starts_with(dir.path().join("consoles")));
        // In the guest: /run/firedoor/agent/consoles/<n>, far below SUN_LEN.
        let guest = PathBuf::from("/run/firedoor/agent/consoles").join(u64::MAX.to_string());
        assert!(guest.as_os_str().len() < 108 - 1);
    }

    #[test]
    fn ids_and_stdio_flags() {
        let hex = "a".repeat(64);
        check_id("container_id", &hex).unwrap();
        for bad in ["", ".hidden", "a/b", &"x".repeat(129)] {
            let err = check_id("exec_id", bad).unwrap_err();
            assert!(matches!(err, AgentError::InvalidArgument(_)), "{bad:?}");
        }
        assert_eq!(enabled(None), ([false; 3], false));
        let stdio = Stdio {
            stdin: true,
            stderr: true,
            terminal: true,
            ..Default::default()
        };
        assert_eq!(enabled(Some(&stdio)), ([true, false, true], true));
    }
}
