//! Containers and their processes: the state behind the container RPCs.
//!
//! State directory layout (`--state-dir`, `/run/firedoor/agent` in the guest):
//! `containers/<id>/` holds the bundle (`config.json`), exec process files
//! and `cgroup` (the group's path, for cleanup after a crash);
//! `runtime/<id>/` is libcontainer's own state; `consoles/<n>` are the
//! console sockets, named by a counter: a socket path must stay under
//! SUN_LEN (108 bytes) whatever the length of the ids (64 for CRI).

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, UNIX_EPOCH},
};

use firedoor_protocol::{
    agent::{CreateContainerRequest, ExecProcessRequest, Stdio},
    stdio::{valid_id, StreamHeader},
};
use log::{info, warn};
use nix::{sys::signal::Signal, unistd::Pid};
use oci_spec::runtime::LinuxSeccomp;

use crate::{
    cgroup::{
        devices::{self, DeviceFilter},
        Cgroup,
    },
    error::{chain, AgentError, Result},
    helper,
    namespaces::{self, Joinable},
    oom::{OomCounter, OomEvents},
    signals::{self, Exit},
    spec::{self, Roots},
    streams::{Conn, ConsoleSocket, ProcessSide, Streams},
};

/// Where things go; fixed in the guest, chosen by the tests on a host.
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
}

pub struct Process {
    pid: i32,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
    streams: Streams,
}

impl Process {
    fn new(pid: i32, streams: Streams) -> Arc<Process> {
        Arc::new(Process {
            pid,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            streams,
        })
    }

    fn set_exit(&self, exit: Exit) {
        *lock(&self.exit) = Some(exit);
        self.exited.notify_all();
        self.streams.release();
    }

    fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let exit = lock(&self.exit);
        let exit = self
            .exited
            .wait_while(exit, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        exit.expect("waited for the exit")
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let exit = lock(&self.exit);
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, timeout, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *exit
    }
}

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

pub struct Runtime {
    opts: Options,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Container ids and `container/exec` ids being created.
    reserved: Mutex<HashSet<String>>,
    /// Names the next console socket.
    next_console: AtomicU64,
    oom: Arc<OomEvents>,
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

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no container {id:?}")))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(id)?.process(exec_id)
    }

    pub fn create(&self, req: &CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        check_id("container_id", id)?;
        let exists = lock(&self.containers).contains_key(id);
        let _reservation = self.reserve(format!("container {id}"), exists)?;
        let (streams, terminal) = enabled(req.stdio.as_ref());

        let mut spec = spec::parse_spec(&req.oci_spec_json)?;
        let cgroup_path = format!("{}/{id}", self.opts.cgroup_parent.trim_end_matches('/'));
        let init_pids = self.live_init_pids();
        let joinable = Joinable {
            init_pids: &init_pids,
            pod_netns: &self.opts.pod_netns,
        };
        let pod_netns = spec::prepare(
            &mut spec,
            Path::new(&req.rootfs),
            &self.opts.roots,
            &cgroup_path,
            terminal,
            &joinable,
        )?;
        if pod_netns {
            namespaces::ensure_pod_netns(&self.opts.pod_netns)?;
        }
        let dir = self.containers_dir().join(id);
        let cgroup = Cgroup::new(&self.opts.cgroup_mount, &cgroup_path);
        let result = self.create_in(id, &spec, &dir, &cgroup, streams, terminal);
        match result {
            Ok(container) => {
                let pid = container.init.pid as u32;
                lock(&self.containers).insert(id.into(), container);
                info!("created container {id} (init pid {pid})");
                Ok(pid)
            }
            Err(e) => {
                let _ = cgroup.destroy();
                let _ = fs::remove_dir_all(self.runtime_dir().join(id));
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Init pids of the containers whose namespaces others may join.
    fn live_init_pids(&self) -> Vec<i32> {
        lock(&self.containers)
            .values()
            .filter(|c| c.init.exit().is_none())
            .map(|c| c.init.pid)
            .collect()
    }

    fn create_in(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        dir: &Path,
        cgroup: &Cgroup,
        enabled: [bool; 3],
        terminal: bool,
    ) -> Result<Arc<Container>> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::internal(format!("container {id}: {what}"), e)
        };
        fs::create_dir_all(dir).map_err(|e| internal("creating its directory", &e))?;
        fs::write(dir.join("cgroup"), cgroup.path()).map_err(|e| internal("state", &e))?;
        spec.save(dir.join("config.json"))
            .map_err(|e| internal("writing config.json", &e))?;
        let (side, streams) =
            Streams::new(enabled, terminal).map_err(|e| internal("stdio pipes", &e))?;
        let console = self.console_socket();
        let request = helper::Request {
            state_root: self.runtime_dir(),
            id: id.into(),
            result: dir.join("create.result"),
            console_socket: terminal.then(|| console.clone()),
            job: helper::Job::Create {
                bundle: dir.to_owned(),
                no_pivot: self.opts.no_pivot,
            },
        };
        // Checked before the helper runs so that a bad rule costs nothing.
        let device_rules = devices::container_rules(
            spec.linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.devices().as_ref()),
        )?;
        let (pid, master) = self.run_helper(&request, side, &format!("creating container {id}"))?;
        // libcontainer (built without its cgroupsv2_devices feature) leaves
        // device access to us. The container's init waits for StartContainer
        // before it runs the container's program, so the filter is in place
        // before any of the container's code runs; the device nodes
        // libcontainer made in /dev were made without it, as the default
        // rules would allow anyway.
        let device_filter = DeviceFilter::attach(&cgroup.dir(), &device_rules, None)
            .map_err(|e| AgentError::Internal(format!("container {id}: {e}")))?;
        if let Some(master) = master {
            streams
                .set_terminal(master, enabled[0], true)
                .map_err(|e| internal("terminal", &e))?;
        }
        let oom = OomCounter::new(id, cgroup.clone());
        let container = Arc::new(Container {
            id: id.into(),
            cgroup: cgroup.clone(),
            dir: dir.to_owned(),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            init: Process::new(pid, streams),
            execs: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
            oom: oom.clone(),
            devices: Mutex::new(device_filter),
        });
        let init = container.init.clone();
        let events = self.oom.clone();
        signals::watch(pid, move |exit| {
            // The OOM event goes out before the exit is visible.
            events.check(&oom);
            init.set_exit(exit);
        });
        self.oom.watch(&container.oom);
        Ok(container)
    }

    /// Runs the runtime helper and returns the pid it reports and, for a
    /// terminal, the pty master it sent on the console socket.
    fn run_helper(
        &self,
        request: &helper::Request,
        side: ProcessSide,
        what: &str,
    ) -> Result<(i32, Option<fs::File>)> {
        let console = match &request.console_socket {
            Some(path) => Some(
                ConsoleSocket::bind(path)
                    .map_err(|e| AgentError::internal(format!("{what}: console socket"), e))?,
            ),
            None => None,
        };
        let file = request.result.with_extension("request");
        let command = request.command(&self.opts.exe, &file);
        let mut command = match command {
            Ok(command) => command,
            Err(e) => {
                let _ = fs::remove_file(&file);
                return Err(AgentError::internal(format!("{what}: helper request"), e));
            }
        };
        command
            .stdin(side.stdin)
            .stdout(side.stdout)
            .stderr(side.stderr);
        let (tx, rx) = mpsc::channel();
        let child = signals::spawn(&mut command, move |exit| {
            let _ = tx.send(exit);
        })
        .map_err(|e| AgentError::internal(format!("{what}: starting the runtime helper"), e))?;
        // Our copies of the process's stdio ends must not keep its pipes open.
        drop(command);
        drop(child);
        let exit = rx.recv();
        let _ = fs::remove_file(&file);
        if let Some(path) = &request.console_socket {
            // The connection, if any, waits in the listener.
            let _ = fs::remove_file(path);
        }
        let exit = exit.map_err(|e| AgentError::internal(format!("{what}: runtime helper"), e))?;
        let text = fs::read_to_string(&request.result).unwrap_or_default();
        let _ = fs::remove_file(&request.result);
        if exit.status != 0 {
            let why = if text.is_empty() {
                format!("runtime helper exited with status {}", exit.status)
            } else {
                text
            };
            return Err(AgentError::Internal(format!("{what}: {why}")));
        }
        let pid = text.trim().parse::<i32>().map_err(|_| {
            AgentError::Internal(format!("{what}: runtime helper reported {text:?}"))
        })?;
        let master =
            match console {
                Some(console) => Some(console.receive().map_err(|e| {
                    AgentError::internal(format!("{what}: receiving the terminal"), e)
                })?),
                None => None,
            };
        Ok((pid, master))
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

    pub fn exec(&self, req: &ExecProcessRequest) -> Result<u32> {
        let (id, exec_id) = (req.container_id.as_str(), req.exec_id.as_str());
        let container = self.container(id)?;
        check_id("exec_id", exec_id)?;
        container.require_running()?;
        let exists = lock(&container.execs).contains_key(exec_id);
        let _reservation = self.reserve(format!("exec {exec_id} of container {id}"), exists)?;
        let (enabled, terminal) = enabled(req.stdio.as_ref());
        let mut process = spec::parse_process(&req.process_json)?;
        process.set_terminal(Some(terminal));
        let seccomp = spec::exec_seccomp(&mut process, container.seccomp.as_ref());

        let what = format!("exec {exec_id} in container {id}");
        let process_file = container.dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| AgentError::internal(&what, e))?;
        fs::write(&process_file, json).map_err(|e| AgentError::internal(&what, e))?;
        let (side, streams) =
            Streams::new(enabled, terminal).map_err(|e| AgentError::internal(&what, e))?;
        let request = helper::Request {
            state_root: self.runtime_dir(),
            id: id.into(),
            result: container.dir.join(format!("exec-{exec_id}.result")),
            console_socket: terminal.then(|| self.console_socket()),
            job: helper::Job::Exec {
                process: process_file.clone(),
                seccomp: seccomp.map(Box::new),
            },
        };
        let result = self.run_helper(&request, side, &what);
        let _ = fs::remove_file(&process_file);
        let (pid, master) = result?;
        if let Some(master) = master {
            streams
                .set_terminal(master, enabled[0], true)
                .map_err(|e| AgentError::internal(&what, e))?;
        }
        let process = Process::new(pid, streams);
        lock(&container.execs).insert(exec_id.into(), process.clone());
        signals::watch(pid, move |exit| process.set_exit(exit));
        info!("{what}: pid {pid}");
        Ok(pid as u32)
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
                display_exec(exec_id)
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
            .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
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

fn display_exec(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}
