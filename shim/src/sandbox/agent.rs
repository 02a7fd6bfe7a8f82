//! The typed client of a sandbox's guest agent: one method per agent RPC,
//! each with its deadline and the error containerd should see.

use std::time::Duration;

use firedoor_protocol::{
    agent::{
        CheckRequest, CheckResponse, ConfigureNetworkRequest, ContainerRequest,
        CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest, ExecProcessRequest,
        ExecProcessResponse, GetOOMEventRequest, ListProcessesResponse, OOMEvent, ProcessRequest,
        RemoveContainerRequest, ResizeTtyRequest, ShutdownRequest, SignalProcessRequest,
        StatsContainerResponse, UpdateContainerRequest, WaitProcessResponse,
    },
    agent_ttrpc::AgentClient,
};

use crate::error::{Result, ShimError};

/// Time allowed for one agent call that should answer at once.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// The agent of one sandbox VM. Cheap to clone (one ttrpc connection).
#[derive(Clone)]
pub struct GuestAgent {
    client: AgentClient,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent").finish_non_exhaustive()
    }
}

impl GuestAgent {
    pub fn new(client: AgentClient) -> Self {
        GuestAgent { client }
    }

    /// The raw ttrpc client, for tools and tests that drive the agent
    /// directly.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// One call with the usual deadline; a failure says what we were doing.
    fn call<T>(
        &self,
        doing: impl FnOnce() -> String,
        rpc: impl FnOnce(&AgentClient, ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T> {
        rpc(&self.client, ctx(RPC_TIMEOUT)).map_err(|error| ShimError::Agent {
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
            |c, ctx| c.check(ctx, &CheckRequest::default()),
        )
    }

    /// Asks the guest to power off (it may do so before replying).
    pub fn shutdown(&self) -> Result<()> {
        self.call(
            || "agent Shutdown".into(),
            |c, ctx| c.shutdown(ctx, &ShutdownRequest::default()),
        )
        .map(drop)
    }

    pub fn create_sandbox(&self, request: &CreateSandboxRequest) -> Result<()> {
        self.call(
            || "setting up the guest".into(),
            |c, ctx| c.create_sandbox(ctx, request),
        )
        .map(drop)
    }

    pub fn configure_network(&self, request: &ConfigureNetworkRequest) -> Result<()> {
        self.call(
            || "configuring the guest's network".into(),
            |c, ctx| c.configure_network(ctx, request),
        )
        .map(drop)
    }

    pub fn create_container(
        &self,
        request: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        self.call(
            || "creating the container in the guest".into(),
            |c, ctx| c.create_container(ctx, request),
        )
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(
            || "starting the container".into(),
            |c, ctx| c.start_container(ctx, &Self::container(id)),
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
            |c, ctx| c.remove_container(ctx, &request),
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
            |c, ctx| c.update_container(ctx, &request),
        )
        .map(drop)
    }

    pub fn pause_container(&self, id: &str) -> Result<()> {
        self.call(
            || "pausing".into(),
            |c, ctx| c.pause_container(ctx, &Self::container(id)),
        )
        .map(drop)
    }

    pub fn resume_container(&self, id: &str) -> Result<()> {
        self.call(
            || "resuming".into(),
            |c, ctx| c.resume_container(ctx, &Self::container(id)),
        )
        .map(drop)
    }

    pub fn stats_container(&self, id: &str) -> Result<StatsContainerResponse> {
        self.call(
            || "reading the container's stats".into(),
            |c, ctx| c.stats_container(ctx, &Self::container(id)),
        )
    }

    pub fn list_processes(&self, id: &str) -> Result<ListProcessesResponse> {
        self.call(
            || "listing processes".into(),
            |c, ctx| c.list_processes(ctx, &Self::container(id)),
        )
    }

    pub fn exec_process(&self, request: &ExecProcessRequest) -> Result<ExecProcessResponse> {
        self.call(
            || "starting the exec process".into(),
            |c, ctx| c.exec_process(ctx, request),
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
            |c, ctx| c.signal_process(ctx, &request),
        )
        .map(drop)
    }

    /// Waits for the process to exit. No deadline: processes run for as
    /// long as they like; the call ends when the connection does.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
        self.client
            .wait_process(
                ttrpc::context::Context::default(),
                &Self::process(id, exec_id),
            )
            .map_err(|error| ShimError::Agent {
                doing: format!("waiting for {id}/{exec_id}"),
                error,
            })
    }

    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.call(
            || format!("removing exec {exec_id} in the guest"),
            |c, ctx| c.remove_process(ctx, &Self::process(id, exec_id)),
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
            |c, ctx| c.resize_tty(ctx, &request),
        )
        .map(drop)
    }

    /// The next OOM kill in the guest. A long poll without a deadline: it
    /// ends with an event or with the connection.
    pub fn get_oom_event(&self) -> Result<OOMEvent> {
        self.client
            .get_oom_event(
                ttrpc::context::Context::default(),
                &GetOOMEventRequest::default(),
            )
            .map_err(|error| ShimError::Agent {
                doing: "waiting for OOM events".into(),
                error,
            })
    }
}
