//! Start: run a created container's init, or start an exec.

use std::sync::Arc;

use containerd_shim::api;
use firedoor_protocol::agent::ExecProcessRequest;
use log::info;

use super::{process::Phase, process_wait::spawn_waiter, ExitInfo, Shared};
use crate::{
    error::{Result, ShimError},
    stdio::ProcessIo,
};

/// The exit status of a process that could not be started (runc's shim also
/// releases its waiters then).
const EXEC_FAILED_STATUS: u32 = 255;

pub(super) fn start(shared: &Arc<Shared>, req: api::StartRequest) -> Result<api::StartResponse> {
    let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
    let process = shared.process(id, exec_id)?;
    if process.phase() != Phase::Created {
        return Err(ShimError::FailedPrecondition(format!(
            "process {exec_id:?} of container {id} was already started"
        )));
    }
    if exec_id.is_empty() {
        // The VM boots now if create left that to start.
        let deferred = shared
            .containers()
            .get_mut(id)
            .and_then(|c| c.deferred.take());
        if let Some(deferred) = deferred {
            if let Err(e) = super::container_create::boot_deferred(shared, id, deferred) {
                // It will never run: as a stopped task, containerd's
                // clients (ctr run's cleanup) can delete it.
                shared.report_exit(&process, ExitInfo::now(EXEC_FAILED_STATUS));
                return Err(e);
            }
        }
    }
    let sandbox = shared.sandbox.running()?;
    let agent = sandbox.agent();

    if exec_id.is_empty() {
        agent.start_container(id)?;
        process.set_running();
        info!("started container {id}");
        shared.events.start(id, process.pid());
        let hooks = shared.containers().get(id).and_then(|c| c.hooks.clone());
        if let Some(hooks) = hooks {
            hooks.started();
        }
    } else {
        let request = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: process.exec_spec.clone().unwrap_or_default(),
            stdio: Some(process.stdio.agent_stdio()).into(),
            ..Default::default()
        };
        let reply = match agent.exec_process(&request) {
            Ok(reply) => reply,
            Err(e) => {
                // Waiters (containerd waits on an exec before it starts it)
                // must not block for ever on a process that never ran.
                process.set_exited(ExitInfo::now(EXEC_FAILED_STATUS));
                return Err(e);
            }
        };
        process.set_pid(reply.pid);
        let io = ProcessIo::attach(&process.stdio, id, exec_id, &shared.namespace, &|| {
            sandbox.connect_stdio()
        })
        .map_err(|e| ShimError::Internal(e.context("attaching the exec process's stdio")))?;
        *process.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
        process.set_running();
        shared.events.exec_started(id, exec_id, reply.pid);
    }
    spawn_waiter(shared, agent.clone(), process.clone());
    Ok(api::StartResponse {
        pid: process.pid(),
        ..Default::default()
    })
}
