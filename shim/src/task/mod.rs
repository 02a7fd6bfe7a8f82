//! containerd's Task service (API v2), one file per verb, backed by one
//! sandbox VM per shim.

mod container;
mod container_create;
mod container_delete;
mod container_pause;
mod container_stats;
mod container_update;
pub mod events;
mod process;
mod process_exec;
mod process_io;
mod process_kill;
mod process_start;
mod process_state;
mod process_wait;
mod shim_lifecycle;
mod volumes;

pub use container_stats::to_metrics;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard, OnceLock},
};

use containerd_shim::{
    api::{self, Empty},
    ExitSignal, Task, TtrpcContext, TtrpcResult,
};

use firedoor_protocol::agent::StatsContainerResponse;

pub use self::process::{ExitInfo, Process, VM_GONE_STATUS};
use self::{container::Container, events::Events, process::Phase, volumes::Volumes};
use crate::{
    config::Config,
    error::{Result, ShimError},
    sandbox::{SandboxOwner, SandboxSlot},
    sandbox_api::PodNamespaces,
};

/// State shared by every request of one shim.
pub(crate) struct Shared {
    pub namespace: String,
    pub config: Result<Config, String>,
    pub events: Events,
    /// `/run/firedoor/<namespace>/<shim id>`: the shared directory and the
    /// VM's run directory.
    pub state_dir: PathBuf,
    pub sandbox: SandboxSlot,
    pub containers: Mutex<HashMap<String, Container>>,
    pub exit: Arc<ExitSignal>,
    /// Set when containerd's Sandbox API created this shim's sandbox: the
    /// VM then lives from StartSandbox to StopSandbox (not from the first
    /// task to the last), and the pod's shared namespaces are mapped.
    pub pod_namespaces: OnceLock<Arc<PodNamespaces>>,
    /// The host paths the pod's containers bind-mount, shared once each.
    pub volumes: Arc<Volumes>,
}

impl Shared {
    /// Records the exit of `process` and publishes TaskExit, once: the wait
    /// thread and the VM's death may both report it.
    pub fn report_exit(&self, process: &Process, exit: ExitInfo) {
        if process.set_exited(exit) {
            self.events.exit(
                &process.container_id,
                &process.exec_id,
                process.pid(),
                &exit,
            );
        }
    }

    pub fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process `exec_id` (empty: init) of container `id`.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let containers = self.containers();
        let container = containers
            .get(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))?;
        if exec_id.is_empty() {
            return Ok(container.init.clone());
        }
        container.execs.get(exec_id).cloned().ok_or_else(|| {
            ShimError::NotFound(format!("process {exec_id} of container {id} not found"))
        })
    }

    /// Whether the Sandbox API owns the VM (see `pod_namespaces`).
    pub fn sandbox_api(&self) -> bool {
        self.pod_namespaces.get().is_some()
    }

    /// The guest pid of container `id`'s init while it is created or
    /// running.
    pub fn running_init(&self, id: &str) -> Option<u32> {
        let containers = self.containers();
        let init = &containers.get(id)?.init;
        (!matches!(init.phase(), Phase::Stopped(_)) && init.pid() != 0).then(|| init.pid())
    }

    /// Publishes TaskOOM for `id` unless it already went out.
    pub fn report_oom(&self, id: &str) {
        let flag = self.containers().get(id).map(|c| c.oom_reported.clone());
        if let Some(flag) = flag {
            if !flag.swap(true, Ordering::SeqCst) {
                self.events.oom(id);
            }
        }
    }
}

impl SandboxOwner for Shared {
    fn slot(&self) -> &SandboxSlot {
        &self.sandbox
    }

    /// Every process of the sandbox is gone with the VM: each one that was
    /// created in the guest exits with [`VM_GONE_STATUS`].
    fn sandbox_failed(&self) {
        let processes: Vec<_> = self
            .containers()
            .values()
            .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
            .collect();
        for process in processes {
            if process.phase() == Phase::Created && process.pid() == 0 {
                continue;
            }
            self.report_exit(&process, ExitInfo::now(VM_GONE_STATUS));
        }
    }

    fn oom_killed(&self, id: &str) {
        self.report_oom(id);
    }
}

/// Whether the container's cgroup saw an OOM kill.
pub(crate) fn oom_killed(stats: &StatsContainerResponse) -> bool {
    stats.memory.as_ref().is_some_and(|m| m.oom_kill > 0)
}

#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.shared.namespace)
            .field("state_dir", &self.shared.state_dir)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        TaskService { shared }
    }

    /// The state every service of this shim shares (the Sandbox API's too).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl Task for TaskService {
    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        container_create::create(&self.shared, req).map_err(Into::into)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        process_start::start(&self.shared, req).map_err(Into::into)
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        container_delete::delete(&self.shared, req).map_err(Into::into)
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        process_exec::exec(&self.shared, req).map_err(Into::into)
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        process_kill::kill(&self.shared, req).map_err(Into::into)
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        process_wait::wait(&self.shared, req).map_err(Into::into)
    }

    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        process_state::state(&self.shared, req).map_err(Into::into)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        process_state::pids(&self.shared, req).map_err(Into::into)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        container_pause::pause(&self.shared, &req.id).map_err(Into::into)
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        container_pause::resume(&self.shared, &req.id).map_err(Into::into)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        container_stats::stats(&self.shared, req).map_err(Into::into)
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        container_update::update(&self.shared, req).map_err(Into::into)
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        process_io::resize_pty(&self.shared, req).map_err(Into::into)
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        process_io::close_io(&self.shared, req).map_err(Into::into)
    }

    fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint is not supported by Firedoor".into()).into())
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        shim_lifecycle::connect(&self.shared, req).map_err(Into::into)
    }

    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        shim_lifecycle::shutdown(&self.shared, req).map_err(Into::into)
    }
}
