//! Delete: forget an exited exec, or remove a container from the guest and
//! the host; the last container takes the sandbox VM with it (unless the
//! Sandbox API owns the VM).

use std::sync::Arc;

use containerd_shim::api;
use firedoor_protocol::oci::display_exec;
use log::{debug, info};

use super::{process::Phase, ExitInfo, Shared};
use crate::error::{Result, ShimError};

pub(super) fn delete(shared: &Arc<Shared>, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
    let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
    let process = shared.process(id, exec_id)?;
    let exit = match process.phase() {
        Phase::Stopped(exit) => exit,
        // Never started: nothing ran, nothing to report; but a Wait on it
        // must return.
        Phase::Created => {
            let exit = ExitInfo::now(0);
            process.set_exited(exit);
            exit
        }
        Phase::Running => {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} of container {id} is still running: kill it first",
                display_exec(exec_id)
            )))
        }
    };
    let response = api::DeleteResponse {
        pid: process.pid(),
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    };

    if !exec_id.is_empty() {
        if let Some(container) = shared.containers().get_mut(id) {
            container.execs.remove(exec_id);
        }
        if let (Ok(sandbox), true) = (shared.sandbox.running(), process.pid() != 0) {
            if let Err(e) = sandbox.agent().remove_process(id, exec_id) {
                debug!("{e}");
            }
        }
        return Ok(response);
    }

    let Some(mut container) = shared.containers().remove(id) else {
        return Err(ShimError::NotFound(format!("container {id} not found")));
    };
    let sandbox = shared.sandbox.running().ok();
    container.footprint.release(id, sandbox.as_deref());
    drop(
        container
            .init
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    if let Some(hooks) = container.hooks.take() {
        hooks.stopped();
    }
    info!("deleted container {id}");
    shared.events.delete(id, response.pid, &exit);
    // A sandbox of the Sandbox API outlives its containers (StopSandbox
    // ends it).
    if shared.containers().is_empty() && !shared.sandbox_api() {
        shared.sandbox.shut_down(&shared.state_dir);
    }
    // Last, after the VM: the anchor's process is what Docker's pid names.
    drop(container.anchor.take());
    Ok(response)
}
