//! The typed client of a sandbox's guest agent: one method per agent RPC,
//! each with its deadline and the error containerd should see.
//!
//! The calls are blocking, as the rest of the shim is, but the ttrpc client
//! underneath is the async one on a tokio runtime of one worker thread: the
//! sync client's receiver wakes every 10 ms while connected (half of an idle
//! shim's wake-ups), the async one sleeps in epoll until the guest writes.

use std::{future::Future, os::unix::net::UnixStream, sync::OnceLock, time::Duration};

use firedoor_protocol::{
    agent::{
        CheckRequest, CheckResponse, ConfigureNetworkRequest, ContainerRequest,
        CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest, ExecProcessRequest,
        ExecProcessResponse, GetOOMEventRequest, ListProcessesResponse, OOMEvent, ProcessRequest,
        RemoveContainerRequest, ResizeTtyRequest, ShutdownRequest, SignalProcessRequest,
        StatsContainerResponse, UpdateContainerRequest, WaitProcessResponse,
    },
    agent_ttrpc_async::AgentClient,
};
use tokio::runtime::{Handle, Runtime};

use crate::error::{Result, ShimError};

/// Time allowed for one agent call that should answer at once.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// The process's one runtime for agent connections, built on first use and
/// kept for the life of the process (a shim serves one sandbox; tools and
/// tests that boot several share it).
fn runtime() -> std::io::Result<Handle> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agent-rpc")
        .enable_io()
        .enable_time()
        .build()?;
    // A racing thread may have set it first: then this one is dropped unused.
    Ok(RUNTIME.get_or_init(|| runtime).handle().clone())
}

/// The agent of one sandbox VM. Cheap to clone (one ttrpc connection, closed
/// when the last clone is dropped).
#[derive(Clone)]
pub struct GuestAgent {
    client: AgentClient,
    runtime: Handle,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent").finish_non_exhaustive()
    }
}

impl GuestAgent {
    /// A client on `stream`, a connection to the agent's ttrpc port.
    pub fn connect(stream: UnixStream) -> std::io::Result<Self> {
        let runtime = runtime()?;
        stream.set_nonblocking(true)?;
        // Registering the socket and spawning the connection's tasks need
        // the runtime's context.
        let _context = runtime.enter();
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
        Ok(GuestAgent {
            client: AgentClient::new(client),
            runtime,
        })
    }

    /// The raw ttrpc client, for tools and tests that drive the agent
    /// directly; run its calls with [`GuestAgent::block_on`].
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// Runs one of [`GuestAgent::client`]'s calls to its end. Not from a
    /// thread of a tokio runtime (the shim has none but the client's own).
    pub fn block_on<F: Future>(&self, call: F) -> F::Output {
        self.runtime.block_on(call)
    }

    /// One call; a failure says what we were doing.
    fn call<T>(
        &self,
        doing: impl FnOnce() -> String,
        rpc: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<T> {
        self.block_on(rpc).map_err(|error| ShimError::Agent {
            doing: doing(),
            error,
        })
    }

    fn container(id: &str) -> ContainerRequest {
        ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    fn process(id: &str, exec_id: &str) -> ProcessRequest {
        ProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        }
    }

    pub fn check(&self) -> Result<CheckResponse> {
        self.call(
            || "agent Check".into(),
            self.client
                .check(ctx(RPC_TIMEOUT), &CheckRequest::default()),
        )
    }

    /// Asks the guest to power off (it may do so before replying).
    pub fn shutdown(&self) -> Result<()> {
        self.call(
            || "agent Shutdown".into(),
            self.client
                .shutdown(ctx(RPC_TIMEOUT), &ShutdownRequest::default()),
        )
        .map(drop)
    }

    pub fn create_sandbox(&self, request: &CreateSandboxRequest) -> Result<()> {
        self.call(
            || "setting up the guest".into(),
            self.client.create_sandbox(ctx(RPC_TIMEOUT), request),
        )
        .map(drop)
    }

    pub fn configure_network(&self, request: &ConfigureNetworkRequest) -> Result<()> {
        self.call(
            || "configuring the guest's network".into(),
            self.client.configure_network(ctx(RPC_TIMEOUT), request),
        )
        .map(drop)
    }

    pub fn create_container(
        &self,
        request: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        self.call(
            || "creating the container in the guest".into(),
            self.client.create_container(ctx(RPC_TIMEOUT), request),
        )
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(
            || "starting the container".into(),
            self.client
                .start_container(ctx(RPC_TIMEOUT), &Self::container(id)),
        )
        .map(drop)
    }

    /// Removes the container in the guest; `force` kills what still runs.
    pub fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let request = RemoveContainerRequest {
            container_id: id.into(),
            force,
            ..Default::default()
        };
        self.call(
            || format!("removing container {id} in the guest"),
            self.client.remove_container(ctx(RPC_TIMEOUT), &request),
        )
        .map(drop)
    }

    /// New cgroup resources (OCI LinuxResources JSON).
    pub fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let request = UpdateContainerRequest {
            container_id: id.into(),
            resources_json,
            ..Default::default()
        };
        self.call(
            || "updating resources".into(),
            self.client.update_container(ctx(RPC_TIMEOUT), &request),
        )
        .map(drop)
    }

    pub fn pause_container(&self, id: &str) -> Result<()> {
        self.call(
            || "pausing".into(),
            self.client
                .pause_container(ctx(RPC_TIMEOUT), &Self::container(id)),
        )
        .map(drop)
    }

    pub fn resume_container(&self, id: &str) -> Result<()> {
        self.call(
            || "resuming".into(),
            self.client
                .resume_container(ctx(RPC_TIMEOUT), &Self::container(id)),
        )
        .map(drop)
    }

    pub fn stats_container(&self, id: &str) -> Result<StatsContainerResponse> {
        self.call(
            || "reading the container's stats".into(),
            self.client
                .stats_container(ctx(RPC_TIMEOUT), &Self::container(id)),
        )
    }

    pub fn list_processes(&self, id: &str) -> Result<ListProcessesResponse> {
        self.call(
            || "listing processes".into(),
            self.client
                .list_processes(ctx(RPC_TIMEOUT), &Self::container(id)),
        )
    }

    pub fn exec_process(&self, request: &ExecProcessRequest) -> Result<ExecProcessResponse> {
        self.call(
            || "starting the exec process".into(),
            self.client.exec_process(ctx(RPC_TIMEOUT), request),
        )
    }

    /// `signal` to one process, or with `all` to every process of the
    /// container.
    pub fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let request = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.call(
            || format!("sending signal {signal} to {id}"),
            self.client.signal_process(ctx(RPC_TIMEOUT), &request),
        )
        .map(drop)
    }

    /// Waits for the process to exit. No deadline: processes run for as
    /// long as they like; the call ends when the connection does.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
        self.call(
            || format!("waiting for {id}/{exec_id}"),
            self.client.wait_process(
                ttrpc::context::Context::default(),
                &Self::process(id, exec_id),
            ),
        )
    }

    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.call(
            || format!("removing exec {exec_id} in the guest"),
            self.client
                .remove_process(ctx(RPC_TIMEOUT), &Self::process(id, exec_id)),
        )
        .map(drop)
    }

    pub fn resize_tty(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let request = ResizeTtyRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            rows,
            columns,
            ..Default::default()
        };
        self.call(
            || "resizing the terminal".into(),
            self.client.resize_tty(ctx(RPC_TIMEOUT), &request),
        )
        .map(drop)
    }

    /// The next OOM kill in the guest. A long poll without a deadline: it
    /// ends with an event or with the connection.
    pub fn get_oom_event(&self) -> Result<OOMEvent> {
        self.call(
            || "waiting for OOM events".into(),
            self.client.get_oom_event(
                ttrpc::context::Context::default(),
                &GetOOMEventRequest::default(),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, thread};

    use super::*;

    #[test]
    fn a_call_without_deadline_ends_with_an_error_when_the_guest_goes() {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = GuestAgent::connect(host).unwrap();
        let (done, result) = mpsc::channel();
        thread::spawn(move || done.send(agent.wait_process("c", "")).unwrap());
        thread::sleep(Duration::from_millis(100));
        // A VMM killed with SIGKILL: its end of the connection closes.
        drop(guest);
        let error = result
            .recv_timeout(Duration::from_secs(5))
            .expect("the wait ends with the connection")
            .unwrap_err();
        assert!(
            error.to_string().contains("waiting for c/"),
            "the error says what was waited for: {error}"
        );
    }

    #[test]
    fn a_call_after_the_guest_went_fails_at_once() {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = GuestAgent::connect(host).unwrap();
        drop(guest);
        thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let error = agent.check().unwrap_err();
        assert!(error.to_string().contains("agent Check"), "{error}");
        assert!(
            started.elapsed() < RPC_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
    }
}
