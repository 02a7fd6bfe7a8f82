//! A sandbox VM together with a ttrpc client to its agent.

use std::{os::fd::IntoRawFd, process::ExitStatus, time::Duration};

use anyhow::Context;
use firedoor_hypervisor::{Backend, MicroVm, VmSpec};
use firedoor_protocol::{
    agent::{CheckRequest, CheckResponse, ShutdownRequest},
    agent_ttrpc::AgentClient,
};
use log::debug;

/// Time allowed for one agent call that should answer at once.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the guest gets to power off after `Shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Sandbox {
    vm: MicroVm,
    agent: AgentClient,
}

impl Sandbox {
    /// Boots a VM and connects to its agent. Nothing is left running if
    /// this fails.
    pub fn boot(backend: &dyn Backend, spec: &VmSpec) -> anyhow::Result<Sandbox> {
        let (vm, stream) = MicroVm::start(backend, spec)?;
        let client = ttrpc::Client::new(stream.into_raw_fd())
            .map_err(|e| anyhow::anyhow!("creating the agent client: {e}"))?;
        Ok(Sandbox {
            vm,
            agent: AgentClient::new(client),
        })
    }

    pub fn vm(&self) -> &MicroVm {
        &self.vm
    }

    pub fn check(&self) -> anyhow::Result<CheckResponse> {
        self.agent
            .check(ctx(RPC_TIMEOUT), &CheckRequest::default())
            .context("agent Check")
    }

    /// Asks the agent to power the guest off, waits for the VM to end (or
    /// kills it after a grace period) and removes everything it used.
    /// Returns the VMM's exit status and whether it had to be killed.
    pub fn shutdown(self) -> anyhow::Result<(ExitStatus, bool)> {
        // The guest may power off before the reply leaves it; the VM's exit
        // is what counts.
        if let Err(e) = self
            .agent
            .shutdown(ctx(RPC_TIMEOUT), &ShutdownRequest::default())
        {
            debug!("agent Shutdown: {e} (waiting for the VM to exit anyway)");
        }
        Ok(self.vm.stop(SHUTDOWN_GRACE)?)
    }
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}
