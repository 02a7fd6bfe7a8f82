//! SandboxStatus and PingSandbox.

use super::{api, namespaces::POD_PID, SandboxService};
use crate::{error::Result, task::ExitInfo};

/// The state names containerd's CRI uses for sandboxes.
const READY: &str = "SANDBOX_READY";
const NOT_READY: &str = "SANDBOX_NOTREADY";

pub(super) fn status(
    service: &SandboxService,
    req: api::SandboxStatusRequest,
) -> Result<api::SandboxStatusResponse> {
    service.check_id(&req.sandbox_id)?;
    let lifecycle = service.observe();
    let running = lifecycle.started_at.is_some() && lifecycle.exit.is_none();
    let mut response = api::SandboxStatusResponse {
        sandbox_id: req.sandbox_id,
        pid: if running { POD_PID } else { 0 },
        state: if running { READY } else { NOT_READY }.into(),
        created_at: lifecycle
            .started_at
            .map(|at| ExitInfo { status: 0, at }.timestamp())
            .into(),
        exited_at: lifecycle.exit.map(|exit| exit.timestamp()).into(),
        ..Default::default()
    };
    if req.verbose {
        if let Some(sandbox) = service.shared.sandbox.get() {
            let vm = sandbox.vm();
            response
                .info
                .insert("vmm_pid".into(), vm.vmm_pid().to_string());
            response
                .info
                .insert("boot_ms".into(), vm.boot_time().as_millis().to_string());
        }
        response.info.insert(
            "state_dir".into(),
            service.shared.state_dir.display().to_string(),
        );
    }
    Ok(response)
}

/// Alive means the guest's agent answers.
pub(super) fn ping(service: &SandboxService, req: api::PingRequest) -> Result<api::PingResponse> {
    service.check_id(&req.sandbox_id)?;
    service.shared.sandbox.running()?.check().map_err(|e| {
        crate::error::ShimError::Unavailable(format!("the sandbox's agent does not answer: {e:#}"))
    })?;
    Ok(api::PingResponse::default())
}
