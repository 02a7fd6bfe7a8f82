//! Pause and Resume: the guest freezes or thaws the container's cgroup.

use containerd_shim::{api::Empty, TtrpcResult};
use firedoor_protocol::agent::ContainerRequest;

use super::{agent_error, Shared};
use crate::sandbox::{ctx, RPC_TIMEOUT};

pub(super) fn pause(shared: &Shared, id: &str) -> TtrpcResult<Empty> {
    set_paused(shared, id, true)
}

pub(super) fn resume(shared: &Shared, id: &str) -> TtrpcResult<Empty> {
    set_paused(shared, id, false)
}

fn set_paused(shared: &Shared, id: &str, paused: bool) -> TtrpcResult<Empty> {
    shared.process(id, "")?;
    let agent = shared.sandbox.running()?;
    let request = ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let result = if paused {
        agent.agent().pause_container(ctx(RPC_TIMEOUT), &request)
    } else {
        agent.agent().resume_container(ctx(RPC_TIMEOUT), &request)
    };
    result.map_err(|e| agent_error(if paused { "pausing" } else { "resuming" }, e))?;
    if let Some(container) = shared.containers().get_mut(id) {
        container.paused = paused;
    }
    if paused {
        shared.events.paused(id);
    } else {
        shared.events.resumed(id);
    }
    Ok(Empty::default())
}
