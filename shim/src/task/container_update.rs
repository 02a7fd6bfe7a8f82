//! Update: new cgroup resources for a container.

use containerd_shim::{api, api::Empty};
use oci_spec::runtime::LinuxResources;

use super::Shared;
use crate::error::{Result, ShimError};

pub(super) fn update(shared: &Shared, req: api::UpdateTaskRequest) -> Result<Empty> {
    shared.process(&req.id, "")?;
    let value = req
        .resources
        .as_ref()
        .map(|any| any.value.clone())
        .unwrap_or_default();
    // containerd sends LinuxResources as JSON; check it before the guest does.
    serde_json::from_slice::<LinuxResources>(&value).map_err(|e| {
        ShimError::InvalidArgument(format!("resources are not OCI LinuxResources JSON: {e}"))
    })?;
    shared
        .sandbox
        .running()?
        .agent()
        .update_container(&req.id, value)?;
    Ok(Empty::default())
}
