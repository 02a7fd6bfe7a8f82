//! The ttrpc `Agent` service.

use std::sync::mpsc::Sender;

use firedoor_protocol::{
    agent::{CheckRequest, CheckResponse, Empty, ShutdownRequest},
    agent_ttrpc::Agent,
};
use log::info;
use ttrpc::TtrpcContext;

use crate::ShutdownReason;

/// Serves the agent API; `Shutdown` is handed to the main thread, which owns
/// the orderly exit.
pub struct AgentService {
    boot_to_ready_ms: u64,
    kernel_release: String,
    shutdown: Sender<ShutdownReason>,
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
        }
    }
}

impl Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(CheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: self.kernel_release.clone(),
            boot_to_ready_ms: self.boot_to_ready_ms,
            uptime_ms: crate::uptime().as_millis() as u64,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        info!("shutdown requested by the host");
        self.shutdown
            .send(ShutdownReason::Requested)
            .map_err(|_| ttrpc::Error::Others("agent is already shutting down".into()))?;
        Ok(Empty::default())
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
        let ctx = || ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
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
