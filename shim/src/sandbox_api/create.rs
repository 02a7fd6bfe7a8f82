//! CreateSandbox: remember the pod (its VM is booted by StartSandbox).

use super::{api, pod::PodRequest, PodNamespaces, SandboxService};
use crate::error::{Result, ShimError};

pub(super) fn create(
    service: &SandboxService,
    req: api::CreateSandboxRequest,
) -> Result<api::CreateSandboxResponse> {
    service.check_id(&req.sandbox_id)?;
    if !req.rootfs.is_empty() {
        // containerd's CRI passes none; a sandbox image would be a pause
        // container, which Firedoor's VM replaces.
        return Err(ShimError::InvalidArgument(format!(
            "sandbox {}: a sandbox rootfs ({} mounts) is not supported by Firedoor: its \
             sandbox is the VM; create the sandbox without rootfs mounts, or leave \
             `sandboxer` unset (\"podsandbox\") to run the pod with a pause container",
            req.sandbox_id,
            req.rootfs.len()
        )));
    }
    let mut pod = PodRequest::new(&req.annotations, req.options.as_ref())
        .map_err(ShimError::InvalidArgument)?;
    pod.netns = (!req.netns_path.is_empty()).then(|| req.netns_path.clone().into());
    let mut lifecycle = service.lifecycle();
    if lifecycle.pod.is_some() {
        return Err(ShimError::AlreadyExists(format!(
            "sandbox {} already exists",
            req.sandbox_id
        )));
    }
    // From now on the VM belongs to the sandbox, not to its last task.
    let _ = service
        .shared
        .pod_namespaces
        .set(std::sync::Arc::new(PodNamespaces::default()));
    log::info!(
        "created sandbox {} (hostname {:?}, netns {:?})",
        req.sandbox_id,
        pod.hostname,
        req.netns_path
    );
    lifecycle.pod = Some(pod);
    Ok(api::CreateSandboxResponse::default())
}
