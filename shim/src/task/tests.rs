//! The Task state machine against a fake agent served over ttrpc on a Unix
//! socket, with a stand-in VM whose death the test decides.

use std::{
    collections::HashMap,
    fs,
    os::{
        fd::OwnedFd,
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    process::ExitStatus,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use containerd_shim::{
    api,
    event::Event,
    protos::{
        events::task::{TaskDelete, TaskExit},
        protobuf::{well_known_types::any::Any, Message, MessageDyn},
        ttrpc::Code,
    },
    ExitSignal,
};
use firedoor_protocol::{
    agent::{
        CheckRequest, CheckResponse, ContainerRequest, CreateContainerRequest,
        CreateContainerResponse, Empty, ExecProcessRequest, ExecProcessResponse,
        GetOOMEventRequest, OOMEvent, ProcessRequest, RemoveContainerRequest, ShutdownRequest,
        SignalProcessRequest, StatsContainerResponse, UpdateContainerRequest, WaitProcessResponse,
    },
    agent_ttrpc::{create_agent, Agent},
};
use ttrpc::TtrpcContext;

use super::{
    container_create, container_delete, container_update, events::EventSink, process_exec,
    process_kill, process_start, process_state, process_wait, Events, Shared,
};
use crate::{
    config::Config,
    error::ShimError,
    sandbox::{GuestAgent, Sandbox, SandboxSlot, SandboxVm},
};

const SIGKILL: u32 = 9;
const SIGTERM: u32 = 15;

// ---- the fake agent ----

#[derive(Default)]
struct AgentState {
    /// Exit status per (container, exec) once the process has "exited".
    exits: HashMap<(String, String), Option<i32>>,
    calls: Vec<String>,
    /// The OCI spec each container was created with.
    specs: HashMap<String, Vec<u8>>,
    dead: bool,
}

/// Processes "run" until signalled; a signal ends them with 128 + signal.
#[derive(Default)]
struct FakeAgent {
    state: Mutex<AgentState>,
    changed: Condvar,
    next_pid: AtomicU32,
}

type Reply<T> = ttrpc::Result<T>;

fn not_found(what: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, what))
}

impl FakeAgent {
    fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap()
    }

    fn record(&self, call: String) {
        self.state().calls.push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    fn pid(&self) -> u32 {
        100 + self.next_pid.fetch_add(1, Ordering::SeqCst)
    }

    /// The VM went away: every pending call fails.
    fn die(&self) {
        self.state().dead = true;
        self.changed.notify_all();
    }

    fn gone() -> ttrpc::Error {
        ttrpc::Error::Others("the fake VM is gone".into())
    }
}

impl Agent for FakeAgent {
    fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Reply<CreateContainerResponse> {
        self.record(format!("create {}", req.container_id));
        let mut state = self.state();
        state
            .specs
            .insert(req.container_id.clone(), req.oci_spec_json.clone());
        state.exits.insert((req.container_id, String::new()), None);
        drop(state);
        Ok(CreateContainerResponse {
            pid: self.pid(),
            ..Default::default()
        })
    }

    fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        self.record(format!("start {}", req.container_id));
        Ok(Empty::default())
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Reply<ExecProcessResponse> {
        self.record(format!("exec {}/{}", req.container_id, req.exec_id));
        self.state()
            .exits
            .insert((req.container_id, req.exec_id), None);
        Ok(ExecProcessResponse {
            pid: self.pid(),
            ..Default::default()
        })
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> Reply<Empty> {
        self.record(format!(
            "signal {}/{} {}",
            req.container_id, req.exec_id, req.signal
        ));
        let status = 128 + i32::try_from(req.signal).unwrap_or(0);
        let mut state = self.state();
        let mut hit = false;
        for ((id, exec), exit) in state.exits.iter_mut() {
            if *id == req.container_id && (req.all || *exec == req.exec_id) {
                exit.get_or_insert(status);
                hit = true;
            }
        }
        drop(state);
        self.changed.notify_all();
        if hit {
            Ok(Empty::default())
        } else {
            Err(not_found(format!("no process {}", req.container_id)))
        }
    }

    fn wait_process(&self, _: &TtrpcContext, req: ProcessRequest) -> Reply<WaitProcessResponse> {
        let key = (req.container_id, req.exec_id);
        let mut state = self.state();
        loop {
            if state.dead {
                return Err(Self::gone());
            }
            match state.exits.get(&key) {
                None => return Err(not_found(format!("no process {key:?}"))),
                Some(Some(status)) => {
                    return Ok(WaitProcessResponse {
                        exit_status: *status,
                        exited_at_unix_nanos: 1_000_000_000,
                        ..Default::default()
                    })
                }
                Some(None) => state = self.changed.wait(state).unwrap(),
            }
        }
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        _: ContainerRequest,
    ) -> Reply<StatsContainerResponse> {
        Ok(StatsContainerResponse::default())
    }

    fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> Reply<Empty> {
        // As the real agent: the JSON must be OCI LinuxResources.
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&req.resources_json).map_err(
            |e| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("resources_json: {e}"),
                ))
            },
        )?;
        self.record(format!("update {}", req.container_id));
        Ok(Empty::default())
    }

    fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> Reply<Empty> {
        self.record(format!("remove {}", req.container_id));
        Ok(Empty::default())
    }

    fn remove_process(&self, _: &TtrpcContext, req: ProcessRequest) -> Reply<Empty> {
        self.record(format!("remove {}/{}", req.container_id, req.exec_id));
        Ok(Empty::default())
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> Reply<OOMEvent> {
        let mut state = self.state();
        while !state.dead {
            state = self.changed.wait(state).unwrap();
        }
        Err(Self::gone())
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> Reply<Empty> {
        self.record("shutdown".into());
        Ok(Empty::default())
    }

    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> Reply<CheckResponse> {
        if self.state().dead {
            return Err(Self::gone());
        }
        Ok(CheckResponse::default())
    }
}

// ---- the stand-in VM ----

/// The write end of a pipe whose read end is the VM's exit notifier:
/// closing it is the VM's death.
#[derive(Clone, Default)]
struct Lifeline(Arc<Mutex<Option<OwnedFd>>>);

impl Lifeline {
    fn cut(&self) {
        self.0.lock().unwrap().take();
    }
}

struct FakeVm {
    exit: OwnedFd,
    lifeline: Lifeline,
    stopped: Arc<AtomicBool>,
}

impl SandboxVm for FakeVm {
    fn exit_notifier(&self) -> std::io::Result<OwnedFd> {
        self.exit.try_clone()
    }
    fn vmm_pid(&self) -> u32 {
        0
    }
    fn helper_pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn console_tail(&self, _: usize) -> String {
        "fake console".into()
    }
    fn boot_time(&self) -> Duration {
        Duration::ZERO
    }
    fn stop(&mut self, _: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        self.stopped.store(true, Ordering::SeqCst);
        self.lifeline.cut();
        Ok((ExitStatus::from_raw(0), false))
    }
}

// ---- events ----

#[derive(Debug, Clone, PartialEq)]
struct Published {
    topic: String,
    bytes: Vec<u8>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Published>>>);

impl EventSink for Recorder {
    fn publish(&self, event: Box<dyn Event>) {
        let message: &dyn MessageDyn = &*event;
        let bytes = message.write_to_bytes_dyn().unwrap();
        self.0.lock().unwrap().push(Published {
            topic: event.topic(),
            bytes,
        });
    }
}

impl Recorder {
    fn topics(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic.clone())
            .collect()
    }

    fn exits(&self) -> Vec<TaskExit> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == "/tasks/exit")
            .map(|e| TaskExit::parse_from_bytes(&e.bytes).unwrap())
            .collect()
    }

    /// Waits until `n` events went out (exits come from wait threads).
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let topics = self.topics();
            if topics.len() >= n || Instant::now() > deadline {
                return topics;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---- the harness ----

/// Also the Sandbox API's harness (`sandbox_api/tests.rs`).
pub(crate) struct Harness {
    pub(crate) shared: Arc<Shared>,
    agent: Arc<FakeAgent>,
    events: Recorder,
    lifeline: Lifeline,
    pub(crate) stopped: Arc<AtomicBool>,
    server: Option<ttrpc::Server>,
    dir: tempfile::TempDir,
}

impl Harness {
    pub(crate) fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let addr = format!("unix://{}", socket.display());
        let agent = Arc::new(FakeAgent::default());
        let service: Arc<dyn Agent + Send + Sync> = agent.clone();
        let mut server = ttrpc::Server::new()
            .bind(&addr)
            .unwrap()
            .set_thread_count_default(4)
            .set_thread_count_max(32)
            .register_service(create_agent(service));
        server.start().unwrap();
        let client = GuestAgent::connect(UnixStream::connect(&socket).unwrap()).unwrap();

        let (exit, writer) = nix::unistd::pipe().unwrap();
        let lifeline = Lifeline(Arc::new(Mutex::new(Some(writer))));
        let stopped = Arc::new(AtomicBool::new(false));
        let vm = FakeVm {
            exit,
            lifeline: lifeline.clone(),
            stopped: stopped.clone(),
        };
        let sandbox = Sandbox::from_parts(
            Box::new(vm),
            client,
            Box::new(|| anyhow::bail!("no stdio in these tests")),
        );

        let events = Recorder::default();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        let shared = Arc::new(Shared {
            namespace: "test".into(),
            config: Ok(Config::default()),
            events: Events::to_sink(Box::new(events.clone())),
            state_dir,
            sandbox: SandboxSlot::default(),
            containers: Mutex::default(),
            exit: Arc::new(ExitSignal::default()),
            pod_namespaces: Default::default(),
            volumes: Default::default(),
        });
        SandboxSlot::install(&shared, Arc::new(sandbox));
        Harness {
            shared,
            agent,
            events,
            lifeline,
            stopped,
            server: Some(server),
            dir,
        }
    }

    /// A bundle with a config.json running `sh` and an empty rootfs at
    /// `root_path`.
    fn bundle(&self, id: &str, root_path: &str) -> String {
        self.bundle_with(id, root_path, "[]")
    }

    /// A bundle as [`Harness::bundle`], with `namespaces` (JSON) as its
    /// `linux.namespaces`.
    fn bundle_with(&self, id: &str, root_path: &str, namespaces: &str) -> String {
        let bundle = self.dir.path().join(format!("bundle-{id}"));
        fs::create_dir_all(bundle.join(root_path)).unwrap();
        let config = format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "{root_path}"}},
                "process": {{"user": {{"uid": 0, "gid": 0}}, "args": ["sh"], "cwd": "/"}},
                "linux": {{"namespaces": {namespaces}}}}}"#
        );
        fs::write(bundle.join("config.json"), config).unwrap();
        bundle.display().to_string()
    }

    /// Creates container `id` with `namespaces`; returns its guest pid and
    /// the spec the agent got.
    pub(crate) fn create_with_namespaces(
        &self,
        id: &str,
        namespaces: &str,
    ) -> Result<(u32, oci_spec::runtime::Spec), ShimError> {
        let pid = container_create::create(
            &self.shared,
            api::CreateTaskRequest {
                id: id.into(),
                bundle: self.bundle_with(id, "rootfs", namespaces),
                ..Default::default()
            },
        )?
        .pid;
        let spec = self.agent.state().specs.get(id).cloned().unwrap();
        Ok((pid, serde_json::from_slice(&spec).unwrap()))
    }

    /// What the fake agent was asked, in order.
    pub(crate) fn agent_calls(&self) -> Vec<String> {
        self.agent.calls()
    }

    fn create(&self, id: &str) -> Result<api::CreateTaskResponse, ShimError> {
        container_create::create(
            &self.shared,
            api::CreateTaskRequest {
                id: id.into(),
                bundle: self.bundle(id, "rootfs"),
                ..Default::default()
            },
        )
    }

    pub(crate) fn start(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, ShimError> {
        process_start::start(
            &self.shared,
            api::StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    }

    fn exec(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        process_exec::exec(
            &self.shared,
            api::ExecProcessRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                spec: Some(Any {
                    value: br#"{"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#
                        .to_vec(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
        .map(drop)
    }

    pub(crate) fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), ShimError> {
        process_kill::kill(
            &self.shared,
            api::KillRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                signal,
                ..Default::default()
            },
        )
        .map(drop)
    }

    pub(crate) fn wait(&self, id: &str, exec_id: &str) -> u32 {
        process_wait::wait(
            &self.shared,
            api::WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .unwrap()
        .exit_status
    }

    pub(crate) fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        container_delete::delete(
            &self.shared,
            api::DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    }

    fn status(&self, id: &str, exec_id: &str) -> i32 {
        process_state::state(
            &self.shared,
            api::StateRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .unwrap()
        .status
        .value()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.agent.die();
        self.shared.sandbox.shut_down(&self.shared.state_dir);
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

fn code(result: Result<impl std::fmt::Debug, ShimError>) -> Code {
    result.expect_err("the request should have failed").code()
}

// ---- the tests ----

#[test]
fn events_follow_create_start_exit_delete() {
    let h = Harness::new();
    let pid = h.create("c1").unwrap().pid;
    assert_eq!(h.events.topics(), ["/tasks/create"]);
    assert_eq!(h.start("c1", "").unwrap().pid, pid);
    assert_eq!(h.events.topics(), ["/tasks/create", "/tasks/start"]);
    h.kill("c1", "", SIGTERM).unwrap();
    assert_eq!(h.wait("c1", ""), 128 + SIGTERM);
    let topics = h.events.wait_for(3);
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit"]);
    let exit = &h.events.exits()[0];
    assert_eq!(
        (exit.container_id.as_str(), exit.id.as_str(), exit.pid),
        ("c1", "c1", pid)
    );
    assert_eq!(exit.exit_status, 128 + SIGTERM);

    let deleted = h.delete("c1", "").unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 128 + SIGTERM));
    let topics = h.events.topics();
    assert_eq!(topics.last().unwrap(), "/tasks/delete");
    assert_eq!(topics.len(), 4, "{topics:?}");
    let delete = TaskDelete::parse_from_bytes(&h.events.0.lock().unwrap()[3].bytes).unwrap();
    assert_eq!(delete.exit_status, 128 + SIGTERM);
    // The last container takes the VM with it, after removing itself.
    let calls = h.agent.calls();
    assert_eq!(
        calls,
        [
            "create c1",
            "start c1",
            "signal c1/ 15",
            "remove c1",
            "shutdown"
        ]
    );
    assert!(h.stopped.load(Ordering::SeqCst), "the VM was not stopped");
    assert!(!h.shared.state_dir.exists(), "state dir left behind");
}

#[test]
fn exec_lifecycle_publishes_added_started_exit() {
    let h = Harness::new();
    h.create("c1").unwrap();
    // An exec needs a running init.
    assert_eq!(code(h.exec("c1", "e1")), Code::FAILED_PRECONDITION);
    h.start("c1", "").unwrap();
    h.exec("c1", "e1").unwrap();
    assert_eq!(code(h.exec("c1", "e1")), Code::ALREADY_EXISTS);
    assert_eq!(code(h.exec("c1", "bad/id")), Code::INVALID_ARGUMENT);
    assert_eq!(h.status("c1", "e1"), 1, "created");
    // Never started: it cannot be signalled.
    assert_eq!(code(h.kill("c1", "e1", SIGKILL)), Code::FAILED_PRECONDITION);
    let exec_pid = h.start("c1", "e1").unwrap().pid;
    assert_eq!(h.status("c1", "e1"), 2, "running");
    assert_eq!(code(h.start("c1", "e1")), Code::FAILED_PRECONDITION);
    h.kill("c1", "e1", SIGKILL).unwrap();
    assert_eq!(h.wait("c1", "e1"), 128 + SIGKILL);
    let topics = h.events.wait_for(5);
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit"
        ]
    );
    let exit = &h.events.exits()[0];
    assert_eq!(
        (exit.id.as_str(), exit.pid, exit.exit_status),
        ("e1", exec_pid, 128 + SIGKILL)
    );
    assert_eq!(code(h.kill("c1", "e1", SIGKILL)), Code::NOT_FOUND);
    // Deleting an exec forgets it, in the guest too, and publishes nothing.
    h.delete("c1", "e1").unwrap();
    assert_eq!(code(h.delete("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(h.events.topics().len(), 5);
    assert!(h.agent.calls().contains(&"remove c1/e1".to_string()));
    // The init is still running.
    assert_eq!(code(h.delete("c1", "")), Code::FAILED_PRECONDITION);
    assert!(!h.stopped.load(Ordering::SeqCst));
}

#[test]
fn preconditions_are_enforced() {
    let h = Harness::new();
    assert_eq!(code(h.create("bad id")), Code::INVALID_ARGUMENT);
    assert_eq!(code(h.start("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(h.kill("nope", "", SIGKILL)), Code::NOT_FOUND);
    assert_eq!(code(h.delete("nope", "")), Code::NOT_FOUND);
    h.create("c1").unwrap();
    assert_eq!(code(h.create("c1")), Code::ALREADY_EXISTS);
    assert_eq!(code(h.start("c1", "nope")), Code::NOT_FOUND);
    h.start("c1", "").unwrap();
    assert_eq!(code(h.start("c1", "")), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.delete("c1", "")), Code::FAILED_PRECONDITION);
    h.kill("c1", "", SIGKILL).unwrap();
    h.wait("c1", "");
    assert_eq!(code(h.kill("c1", "", SIGKILL)), Code::NOT_FOUND);

    // A created, never started container can be deleted; nothing ran.
    h.create("c2").unwrap();
    let deleted = h.delete("c2", "").unwrap();
    assert_eq!(deleted.exit_status, 0);
    assert!(!h.stopped.load(Ordering::SeqCst), "c1 still needs the VM");
}

#[test]
fn vm_death_ends_every_process_with_137() {
    let h = Harness::new();
    h.create("c1").unwrap();
    h.start("c1", "").unwrap();
    h.exec("c1", "e1").unwrap();
    h.start("c1", "e1").unwrap();
    h.create("c2").unwrap();
    h.agent.die();
    h.lifeline.cut();
    assert_eq!(h.wait("c1", ""), 137);
    assert_eq!(h.wait("c1", "e1"), 137);
    // c2's init was created in the guest: it is gone with the VM too.
    let topics = h.events.wait_for(8);
    let exits = h.events.exits();
    assert_eq!(exits.len(), 3, "{topics:?}");
    assert!(exits.iter().all(|e| e.exit_status == 137), "{exits:?}");
    let mut ids: Vec<&str> = exits.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["c1", "c2", "e1"]);
    // The sandbox is gone for new work, but everything can be deleted.
    assert_eq!(code(h.create("c3")), Code::UNAVAILABLE);
    assert_eq!(code(h.kill("c1", "", SIGKILL)), Code::NOT_FOUND);
    h.delete("c1", "e1").unwrap();
    assert_eq!(h.delete("c1", "").unwrap().exit_status, 137);
    h.delete("c2", "").unwrap();
    assert_eq!(h.events.topics().last().unwrap(), "/tasks/delete");
    assert!(!h.shared.state_dir.exists(), "state dir left behind");
}

#[test]
fn delete_unmounts_the_rootfs_where_create_mounted_it() {
    let h = Harness::new();
    let image = h.dir.path().join("image");
    fs::create_dir(&image).unwrap();
    fs::write(image.join("marker"), "x").unwrap();
    let bundle = h.bundle("c1", "custom-root");
    let rootfs = std::path::Path::new(&bundle).join("custom-root");
    container_create::create(
        &h.shared,
        api::CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.clone(),
            rootfs: vec![containerd_shim_protos::api::Mount {
                type_: "bind".into(),
                source: image.display().to_string(),
                options: vec!["rbind".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rootfs.join("marker").exists(), "rootfs not mounted");
    h.delete("c1", "").unwrap();
    assert!(
        crate::mount::mounts_under(&rootfs).is_empty(),
        "{} still mounted",
        rootfs.display()
    );
}

#[test]
fn update_passes_the_agents_verdict_on_resources_through() {
    let h = Harness::new();
    h.create("c1").unwrap();
    let update = |json: &[u8]| {
        container_update::update(
            &h.shared,
            api::UpdateTaskRequest {
                id: "c1".into(),
                resources: Some(Any {
                    value: json.to_vec(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
    };
    update(br#"{"pids": {"limit": 10}}"#).unwrap();
    let err = update(b"not json").unwrap_err();
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(
        err.to_string()
            .starts_with("updating resources: resources_json"),
        "{err}"
    );
    assert!(h.agent.calls().contains(&"update c1".to_string()));
}
