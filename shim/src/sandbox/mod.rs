//! The sandbox: one VM with our agent in it, and everything around it —
//! the typed agent client ([`agent`]), the shim's slot that boots it once
//! ([`slot`]: config resolution -> VM spec -> backend -> boot, each a step
//! of its own in [`sizing`]), and the threads that watch it ([`watchers`]).

pub mod agent;
mod sizing;
pub(crate) mod slot;
pub mod space;
mod watchers;

use std::{
    io,
    os::{fd::OwnedFd, unix::net::UnixStream},
    process::ExitStatus,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context;
use firedoor_hypervisor::{Backend, MicroVm, ReadinessProbe, VmSpec};
use firedoor_protocol::{agent::CheckResponse, cmdline, ready_marker, stdio, DEFAULT_AGENT_PORT};
use log::debug;

pub(crate) use self::slot::{SandboxOwner, SandboxSlot};
pub(crate) use self::watchers::console_report;
pub use self::{
    agent::{ctx, GuestAgent, RPC_TIMEOUT},
    watchers::PIDS_FILE,
};

/// The agent's vsock port in every sandbox VM.
const AGENT_PORT: u32 = DEFAULT_AGENT_PORT;

/// `spec` with what our agent needs: its port on the kernel command line
/// (before the caller's parameters, so that a test can still override it),
/// and the agent's ready line and port as the readiness probe.
fn with_agent(spec: &VmSpec) -> VmSpec {
    let mut spec = spec.clone();
    spec.kernel_params
        .insert(0, cmdline::port_param(AGENT_PORT));
    spec.ready = agent_readiness();
    spec
}

/// How the host knows our agent is up: its ready line on the console, then
/// a connection on its port.
pub fn agent_readiness() -> ReadinessProbe {
    ReadinessProbe {
        vsock_port: AGENT_PORT,
        console_marker: Some(ready_marker(AGENT_PORT)),
    }
}

/// Time the guest gets to power off after `Shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time allowed to open one stdio stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sandbox needs of the VM under it: a [`MicroVm`] in production,
/// a stand-in in the shim's unit tests.
pub trait SandboxVm: Send {
    /// A descriptor that becomes readable when the VM has exited.
    fn exit_notifier(&self) -> io::Result<OwnedFd>;
    /// Each helper's name and a descriptor readable once it has exited.
    fn helper_exit_notifiers(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        Ok(Vec::new())
    }
    fn vmm_pid(&self) -> u32;
    /// PIDs of the helper processes (vhost-user daemons).
    fn helper_pids(&self) -> Vec<u32>;
    /// The last `lines` lines of the guest console.
    fn console_tail(&self, lines: usize) -> String;
    /// Launch to the agent's first answer.
    fn boot_time(&self) -> Duration;
    /// Waits up to `grace` for the guest to end, then kills it; returns the
    /// exit status and whether it was killed.
    fn stop(&mut self, grace: Duration) -> anyhow::Result<(ExitStatus, bool)>;
}

impl SandboxVm for MicroVm {
    fn exit_notifier(&self) -> io::Result<OwnedFd> {
        MicroVm::exit_notifier(self)
    }
    fn helper_exit_notifiers(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        MicroVm::helper_exit_notifiers(self)
    }
    fn vmm_pid(&self) -> u32 {
        MicroVm::vmm_pid(self)
    }
    fn helper_pids(&self) -> Vec<u32> {
        MicroVm::helper_pids(self)
    }
    fn console_tail(&self, lines: usize) -> String {
        MicroVm::console_tail(self, lines)
    }
    fn boot_time(&self) -> Duration {
        MicroVm::boot_time(self)
    }
    fn stop(&mut self, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        Ok(MicroVm::stop(self, grace)?)
    }
}

/// Opens a raw stream to the agent's stdio port (before the header).
pub type StdioConnector = Box<dyn Fn() -> anyhow::Result<UnixStream> + Send + Sync>;

pub struct Sandbox {
    vm: Mutex<Box<dyn SandboxVm>>,
    agent: GuestAgent,
    connect_stdio: StdioConnector,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("vmm_pid", &self.vm().vmm_pid())
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Boots a VM running our agent and connects to it. Nothing is left
    /// running if this fails.
    pub fn boot(backend: &dyn Backend, spec: &VmSpec) -> anyhow::Result<Sandbox> {
        let (vm, stream) = MicroVm::start(backend, &with_agent(spec))?;
        let agent = GuestAgent::connect(stream).context("creating the agent client")?;
        let vsock = vm.vsock();
        let stdio_port = stdio::port(AGENT_PORT);
        let connect_stdio = Box::new(move || {
            vsock
                .connect(stdio_port, STREAM_TIMEOUT)
                .with_context(|| format!("connecting to the agent's stdio port {stdio_port}"))
        });
        Ok(Sandbox::from_parts(Box::new(vm), agent, connect_stdio))
    }

    /// A sandbox from a running VM and a connected agent.
    pub fn from_parts(
        vm: Box<dyn SandboxVm>,
        agent: GuestAgent,
        connect_stdio: StdioConnector,
    ) -> Sandbox {
        Sandbox {
            vm: Mutex::new(vm),
            agent,
            connect_stdio,
        }
    }

    /// The VM itself (for its PIDs, console and timings).
    pub fn vm(&self) -> MutexGuard<'_, Box<dyn SandboxVm>> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent(&self) -> &GuestAgent {
        &self.agent
    }

    /// Opens a raw stream to the agent's stdio port (before the header).
    pub fn connect_stdio(&self) -> anyhow::Result<UnixStream> {
        (self.connect_stdio)()
    }

    pub fn check(&self) -> anyhow::Result<CheckResponse> {
        Ok(self.agent.check()?)
    }

    /// Asks the agent to power the guest off, waits for the VM to end (or
    /// kills it after a grace period) and stops its helpers. Returns the
    /// VMM's exit status and whether it had to be killed. Dropping the
    /// sandbox then removes its run directory.
    pub fn shutdown(&self) -> anyhow::Result<(ExitStatus, bool)> {
        // The guest may power off before the reply leaves it; the VM's exit
        // is what counts.
        if let Err(e) = self.agent.shutdown() {
            debug!("{e} (waiting for the VM to exit anyway)");
        }
        self.vm().stop(SHUTDOWN_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_port_goes_first_and_is_what_the_probe_waits_for() {
        let mut spec = VmSpec::new("/k", "/i");
        spec.kernel_params = vec!["firedoor.log=debug".into()];
        let spec = with_agent(&spec);
        assert_eq!(
            spec.kernel_params,
            ["firedoor.port=1024", "firedoor.log=debug"]
        );
        assert_eq!(spec.ready.vsock_port, 1024);
        assert_eq!(
            spec.ready.console_marker.as_deref(),
            Some("firedoor-agent: ready on vsock port 1024")
        );
    }
}
