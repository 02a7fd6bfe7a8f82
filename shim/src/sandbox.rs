//! A sandbox VM together with a ttrpc client to its agent.

use std::{
    os::{fd::IntoRawFd, unix::net::UnixStream},
    path::PathBuf,
    process::ExitStatus,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context;
use firedoor_hypervisor::{vsock, Backend, MicroVm, VmSpec};
use firedoor_protocol::{
    agent::{CheckRequest, CheckResponse, ShutdownRequest},
    agent_ttrpc::AgentClient,
    stdio,
};
use log::debug;

/// Time allowed for one agent call that should answer at once.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the guest gets to power off after `Shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time allowed to open one stdio stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sandbox {
    vm: Mutex<MicroVm>,
    agent: AgentClient,
    vsock_uds: PathBuf,
    stdio_port: u32,
}

impl Sandbox {
    /// Boots a VM and connects to its agent. Nothing is left running if
    /// this fails.
    pub fn boot(backend: &dyn Backend, spec: &VmSpec) -> anyhow::Result<Sandbox> {
        let mut spec = spec.clone();
        spec.ready_marker
            .get_or_insert_with(|| firedoor_protocol::ready_marker(spec.agent_port));
        let (vm, stream) = MicroVm::start(backend, &spec)?;
        let client = ttrpc::Client::new(stream.into_raw_fd())
            .map_err(|e| anyhow::anyhow!("creating the agent client: {e}"))?;
        Ok(Sandbox {
            vsock_uds: vm.run_dir().join("vsock.sock"),
            vm: Mutex::new(vm),
            agent: AgentClient::new(client),
            stdio_port: stdio::port(spec.agent_port),
        })
    }

    /// The VM itself (for its PIDs, console and timings).
    pub fn vm(&self) -> MutexGuard<'_, MicroVm> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// Opens a raw stream to the agent's stdio port (before the header).
    pub fn connect_stdio(&self) -> anyhow::Result<UnixStream> {
        vsock::connect(&self.vsock_uds, self.stdio_port, STREAM_TIMEOUT)
            .with_context(|| format!("connecting to the agent's stdio port {}", self.stdio_port))
    }

    pub fn check(&self) -> anyhow::Result<CheckResponse> {
        self.agent
            .check(ctx(RPC_TIMEOUT), &CheckRequest::default())
            .context("agent Check")
    }

    /// Asks the agent to power the guest off, waits for the VM to end (or
    /// kills it after a grace period) and stops its helpers. Returns the
    /// VMM's exit status and whether it had to be killed. Dropping the
    /// sandbox then removes its run directory.
    pub fn shutdown(&self) -> anyhow::Result<(ExitStatus, bool)> {
        // The guest may power off before the reply leaves it; the VM's exit
        // is what counts.
        if let Err(e) = self
            .agent
            .shutdown(ctx(RPC_TIMEOUT), &ShutdownRequest::default())
        {
            debug!("agent Shutdown: {e} (waiting for the VM to exit anyway)");
        }
        Ok(self.vm().stop(SHUTDOWN_GRACE)?)
    }
}

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}
