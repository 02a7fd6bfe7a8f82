//! containerd's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`, used
//! by containerd 2.x with `sandboxer = "shim"`): the pod's VM is created
//! and started by the sandbox controller instead of with a pause
//! container's task, and the pod's containers then join it through the
//! Task API. One file per verb; the VM comes from the same boot pipeline
//! as a task's ([`crate::sandbox::SandboxSlot`]).

mod create;
mod metrics;
pub(crate) mod namespaces;
mod platform;
mod pod;
mod shutdown;
mod start;
mod status;
mod stop;
#[cfg(test)]
mod tests;
mod wait;

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use containerd_shim_protos::{sandbox_api as api, sandbox_sync::Sandbox, ttrpc};

pub(crate) use self::namespaces::PodNamespaces;
use self::pod::PodRequest;
use crate::{
    error::{Result, ShimError},
    task::{ExitInfo, Shared},
};

/// How often WaitSandbox looks whether the VM died under it (its watchers
/// tell the Task side; the sandbox's state is derived from the slot).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Where the sandbox is in its life.
#[derive(Debug, Default)]
struct Lifecycle {
    /// Set by CreateSandbox.
    pod: Option<PodRequest>,
    /// Set by StartSandbox once the VM runs.
    started_at: Option<SystemTime>,
    /// Set while StopSandbox/ShutdownSandbox stop the VM on purpose.
    stopping: bool,
    /// Set once it stopped (StopSandbox, or the VM died).
    exit: Option<ExitInfo>,
}

/// The Sandbox service of one shim: one sandbox, whose id is the shim's.
pub struct SandboxService {
    shared: Arc<Shared>,
    lifecycle: Mutex<Lifecycle>,
    changed: Condvar,
}

impl std::fmt::Debug for SandboxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxService")
            .field("state_dir", &self.shared.state_dir)
            .finish_non_exhaustive()
    }
}

impl SandboxService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SandboxService {
            shared,
            lifecycle: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sandbox id this shim serves (the last part of its state dir).
    fn id(&self) -> String {
        self.shared
            .state_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// Requests name the sandbox; this shim serves exactly one.
    fn check_id(&self, sandbox_id: &str) -> Result<()> {
        let id = self.id();
        if sandbox_id == id {
            Ok(())
        } else {
            Err(ShimError::NotFound(format!(
                "sandbox {sandbox_id} not found (this shim serves sandbox {id})"
            )))
        }
    }

    /// The lifecycle, with the VM's unexpected death recorded as an exit
    /// (status 137, as the pod's tasks get).
    fn observe(&self) -> MutexGuard<'_, Lifecycle> {
        let mut lifecycle = self.lifecycle();
        if lifecycle.started_at.is_some()
            && lifecycle.exit.is_none()
            && !lifecycle.stopping
            && self.shared.sandbox.running().is_err()
        {
            lifecycle.exit = Some(ExitInfo::now(crate::task::VM_GONE_STATUS));
            self.changed.notify_all();
        }
        lifecycle
    }
}

impl Sandbox for SandboxService {
    fn create_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> ttrpc::Result<api::CreateSandboxResponse> {
        create::create(self, req).map_err(Into::into)
    }

    fn start_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::StartSandboxRequest,
    ) -> ttrpc::Result<api::StartSandboxResponse> {
        start::start(self, req).map_err(Into::into)
    }

    fn platform(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::PlatformRequest,
    ) -> ttrpc::Result<api::PlatformResponse> {
        platform::platform(self, req).map_err(Into::into)
    }

    fn stop_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::StopSandboxRequest,
    ) -> ttrpc::Result<api::StopSandboxResponse> {
        stop::stop(self, req).map_err(Into::into)
    }

    fn wait_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::WaitSandboxRequest,
    ) -> ttrpc::Result<api::WaitSandboxResponse> {
        wait::wait(self, req).map_err(Into::into)
    }

    fn sandbox_status(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::SandboxStatusRequest,
    ) -> ttrpc::Result<api::SandboxStatusResponse> {
        status::status(self, req).map_err(Into::into)
    }

    fn ping_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::PingRequest,
    ) -> ttrpc::Result<api::PingResponse> {
        status::ping(self, req).map_err(Into::into)
    }

    fn shutdown_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::ShutdownSandboxRequest,
    ) -> ttrpc::Result<api::ShutdownSandboxResponse> {
        shutdown::shutdown(self, req).map_err(Into::into)
    }

    fn sandbox_metrics(
        &self,
        _: &ttrpc::TtrpcContext,
        req: api::SandboxMetricsRequest,
    ) -> ttrpc::Result<api::SandboxMetricsResponse> {
        metrics::metrics(self, req).map_err(Into::into)
    }
}
