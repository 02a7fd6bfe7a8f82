//! Update: new cgroup resources for a container.

use containerd_shim::{api, api::Empty, protos::ttrpc::Code, TtrpcResult};
use firedoor_protocol::agent::UpdateContainerRequest;
use oci_spec::runtime::LinuxResources;

use super::{agent_error, status, Shared};
use crate::sandbox::{ctx, RPC_TIMEOUT};

pub(super) fn update(shared: &Shared, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
    shared.process(&req.id, "")?;
    let value = req
        .resources
        .as_ref()
        .map(|any| any.value.clone())
        .unwrap_or_default();
    // containerd sends LinuxResources as JSON; check it before the guest does.
    serde_json::from_slice::<LinuxResources>(&value).map_err(|e| {
        status(
            Code::INVALID_ARGUMENT,
            format!("resources are not OCI LinuxResources JSON: {e}"),
        )
    })?;
    let request = UpdateContainerRequest {
        container_id: req.id.clone(),
        resources_json: value,
        ..Default::default()
    };
    shared
        .sandbox
        .running()?
        .agent()
        .update_container(ctx(RPC_TIMEOUT), &request)
        .map_err(|e| agent_error("updating resources", e))?;
    Ok(Empty::default())
}
