//! Delete: forget an exited exec, or remove a container from the guest and
//! the host; the last container takes the sandbox VM with it.

use std::sync::Arc;

use containerd_shim::{api, protos::ttrpc::Code, TtrpcResult};
use firedoor_protocol::agent::{ProcessRequest, RemoveContainerRequest};
use log::{debug, info};

use super::{container_create::remove_shared, process::Phase, status, ExitInfo, Shared};
use crate::{
    mount,
    sandbox::{ctx, Sandbox, RPC_TIMEOUT},
};

pub(super) fn delete(
    shared: &Arc<Shared>,
    req: api::DeleteRequest,
) -> TtrpcResult<api::DeleteResponse> {
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
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "process {} of container {id} is still running: kill it first",
                    display_exec(exec_id)
                ),
            ))
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
            let request = ProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            };
            if let Err(e) = sandbox.agent().remove_process(ctx(RPC_TIMEOUT), &request) {
                debug!("removing exec {exec_id} in the guest: {e}");
            }
        }
        return Ok(response);
    }

    let Some(container) = shared.containers().remove(id) else {
        return Err(status(Code::NOT_FOUND, format!("container {id} not found")));
    };
    if let Ok(sandbox) = shared.sandbox.running() {
        remove_in_guest(&sandbox, id);
    }
    drop(
        container
            .init
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    remove_shared(&shared.state_dir.join("shared").join(id));
    if container.rootfs_mounted {
        mount::unmount_all_under(&container.bundle.join("rootfs"));
    }
    info!("deleted container {id}");
    shared.events.delete(id, response.pid, &exit);
    if shared.containers().is_empty() {
        shared.sandbox.shut_down(&shared.state_dir);
    }
    Ok(response)
}

/// Removes the container in the guest, whatever is left of it.
pub(super) fn remove_in_guest(sandbox: &Sandbox, id: &str) {
    let request = RemoveContainerRequest {
        container_id: id.into(),
        force: true,
        ..Default::default()
    };
    if let Err(e) = sandbox.agent().remove_container(ctx(RPC_TIMEOUT), &request) {
        debug!("removing container {id} in the guest: {e}");
    }
}

fn display_exec(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}
