//! The ttrpc `Agent` service: validates nothing itself, maps every error
//! to a status code in one place (`AgentError` -> `ttrpc::Error`).

use std::sync::{mpsc::Sender, Arc};

use firedoor_protocol::agent::*;
use firedoor_protocol::agent_ttrpc::Agent;
use log::info;
use ttrpc::TtrpcContext;

use crate::{
    error::AgentError,
    fault::{self, Fault},
    runtime::Runtime,
    sandbox::Sandbox,
    ShutdownReason,
};

type Reply<T> = ttrpc::Result<T>;

/// Serves the agent API; `Shutdown` is handed to the main thread, which owns
/// the orderly exit.
#[derive(Debug)]
pub struct AgentService {
    boot_to_ready_ms: u64,
    kernel_release: String,
    shutdown: Sender<ShutdownReason>,
    runtime: Option<Arc<Runtime>>,
    sandbox: Option<Arc<Sandbox>>,
    /// Fired by an exec of [`fault::FAULT_TRIGGER`] (tests only).
    fault: Option<Fault>,
}

fn done<T: Default>(result: Result<(), AgentError>) -> Reply<T> {
    result.map(|()| T::default()).map_err(Into::into)
}

impl AgentService {
    /// `boot_to_ready_ms` is the guest uptime when the agent became ready.
    pub fn new(boot_to_ready_ms: u64, shutdown: Sender<ShutdownReason>) -> Self {
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        AgentService {
            boot_to_ready_ms,
            kernel_release,
            shutdown,
            runtime: None,
            sandbox: None,
            fault: None,
        }
    }

    /// Arms `fault` (from `firedoor.fault=`) for the trigger exec.
    pub fn with_fault(mut self, fault: Option<Fault>) -> Self {
        self.fault = fault;
        self
    }

    /// Serves the container API with `runtime` and `sandbox`.
    pub fn with_containers(mut self, runtime: Arc<Runtime>, sandbox: Arc<Sandbox>) -> Self {
        self.runtime = Some(runtime);
        self.sandbox = Some(sandbox);
        self
    }

    fn runtime(&self) -> Result<&Runtime, AgentError> {
        self.runtime
            .as_deref()
            .ok_or_else(|| AgentError::FailedPrecondition("containers are not served here".into()))
    }

    fn sandbox(&self) -> Result<&Sandbox, AgentError> {
        self.sandbox
            .as_deref()
            .ok_or_else(|| AgentError::FailedPrecondition("sandboxes are not served here".into()))
    }
}

impl Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> Reply<CheckResponse> {
        Ok(CheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: self.kernel_release.clone(),
            boot_to_ready_ms: self.boot_to_ready_ms,
            uptime_ms: u64::try_from(crate::uptime().as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> Reply<Empty> {
        info!("shutdown requested by the host");
        self.shutdown
            .send(ShutdownReason::Requested)
            .map_err(|_| ttrpc::Error::Others("agent is already shutting down".into()))?;
        Ok(Empty::default())
    }

    fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> Reply<Empty> {
        done(self.sandbox().and_then(|s| s.create(&req)))
    }

    fn destroy_sandbox(&self, _ctx: &TtrpcContext, _req: DestroySandboxRequest) -> Reply<Empty> {
        done(self.runtime().map(Runtime::remove_all).and_then(|()| {
            self.sandbox()?.destroy();
            Ok(())
        }))
    }

    fn configure_network(&self, _ctx: &TtrpcContext, req: ConfigureNetworkRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| crate::network::configure(&req, r.pod_netns())),
        )
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Reply<CreateContainerResponse> {
        let pid = self.runtime()?.create(&req)?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        done(self.runtime().and_then(|r| r.start(&req.container_id)))
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.remove(&req.container_id, req.force)),
        )
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.update(&req.container_id, &req.resources_json)),
        )
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.pause(&req.container_id, true)),
        )
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.pause(&req.container_id, false)),
        )
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<StatsContainerResponse> {
        Ok(self.runtime()?.stats(&req.container_id)?)
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<ListProcessesResponse> {
        Ok(ListProcessesResponse {
            pids: self.runtime()?.pids(&req.container_id)?,
            ..Default::default()
        })
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Reply<ExecProcessResponse> {
        if let Some(armed) = self.fault {
            if crate::spec::parse_process(&req.process_json)
                .is_ok_and(|p| p.args().as_deref().is_some_and(fault::is_trigger))
            {
                fault::fire(armed);
            }
        }
        Ok(ExecProcessResponse {
            pid: self.runtime()?.exec(&req)?,
            ..Default::default()
        })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.signal(&req.container_id, &req.exec_id, req.signal, req.all)),
        )
    }

    fn wait_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> Reply<WaitProcessResponse> {
        let (exit_status, exited_at_unix_nanos) =
            self.runtime()?.wait(&req.container_id, &req.exec_id)?;
        Ok(WaitProcessResponse {
            exit_status,
            exited_at_unix_nanos,
            ..Default::default()
        })
    }

    fn remove_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.remove_process(&req.container_id, &req.exec_id)),
        )
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.resize(&req.container_id, &req.exec_id, req.rows, req.columns)),
        )
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> Reply<Empty> {
        done(
            self.runtime()
                .and_then(|r| r.close_stdin(&req.container_id, &req.exec_id)),
        )
    }

    fn get_oom_event(&self, _ctx: &TtrpcContext, _req: GetOOMEventRequest) -> Reply<OOMEvent> {
        let container_id = self.runtime()?.next_oom_event().ok_or_else(|| {
            AgentError::Unavailable("the guest is shutting down: no more OOM events".into())
        })?;
        Ok(OOMEvent {
            container_id,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, sync::Arc, time::Duration};

    use firedoor_protocol::agent_ttrpc::{create_agent, AgentClient};

    use super::*;

    /// Drives the real ttrpc server and client over a Unix socket.
    #[test]
    fn check_and_shutdown_over_ttrpc() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}", dir.path().join("agent.sock").display());
        let (tx, rx) = mpsc::channel();
        let service = Arc::new(AgentService::new(42, tx));
        let mut server = ttrpc::Server::new()
            .bind(&addr)
            .unwrap()
            .register_service(create_agent(service));
        server.start().unwrap();

        let client = AgentClient::new(ttrpc::Client::connect(&addr).unwrap());
        let ctx = || {
            ttrpc::context::with_timeout(i64::try_from(Duration::from_secs(5).as_nanos()).unwrap())
        };
        let reply = client.check(ctx(), &CheckRequest::default()).unwrap();
        assert_eq!(reply.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(reply.boot_to_ready_ms, 42);
        assert!(!reply.kernel_release.is_empty());
        assert!(reply.uptime_ms > 0);
        assert!(rx.try_recv().is_err(), "check must not request shutdown");

        client.shutdown(ctx(), &ShutdownRequest::default()).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            ShutdownReason::Requested
        );
        server.shutdown();
    }
}
