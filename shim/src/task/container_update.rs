//! Update: new cgroup resources for a container.

use containerd_shim::{api, api::Empty};

use super::Shared;
use crate::error::Result;

pub(super) fn update(shared: &Shared, req: api::UpdateTaskRequest) -> Result<Empty> {
    shared.process(&req.id, "")?;
    // containerd sends LinuxResources as JSON; the agent checks it (and
    // answers INVALID_ARGUMENT, naming the field, when it does not parse).
    let value = req
        .resources
        .as_ref()
        .map(|any| any.value.clone())
        .unwrap_or_default();
    shared
        .sandbox
        .running()?
        .agent()
        .update_container(&req.id, value)?;
    Ok(Empty::default())
}
