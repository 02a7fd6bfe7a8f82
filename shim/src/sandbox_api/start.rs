//! StartSandbox: boot the pod's VM, sized from what CreateSandbox carried.

use std::time::SystemTime;

use super::{api, namespaces::POD_PID, SandboxService};
use crate::{
    error::{Result, ShimError},
    sandbox::slot::{BootRequest, SandboxSlot},
    task::ExitInfo,
};

pub(super) fn start(
    service: &SandboxService,
    req: api::StartSandboxRequest,
) -> Result<api::StartSandboxResponse> {
    service.check_id(&req.sandbox_id)?;
    let mut lifecycle = service.lifecycle();
    let Some(pod) = lifecycle.pod.clone() else {
        return Err(ShimError::FailedPrecondition(format!(
            "sandbox {} was not created: call CreateSandbox first",
            req.sandbox_id
        )));
    };
    if lifecycle.exit.is_some() {
        return Err(ShimError::FailedPrecondition(format!(
            "sandbox {} has stopped: create a new one",
            req.sandbox_id
        )));
    }
    let shared = &service.shared;
    let started_at = match lifecycle.started_at {
        Some(at) => at,
        None => {
            let sandbox = SandboxSlot::get_or_boot(
                shared,
                BootRequest {
                    config: &shared.config,
                    state_dir: &shared.state_dir,
                    annotations: &pod.annotations,
                    first: pod.first_container(),
                    options: None,
                },
            )?;
            let vm = sandbox.vm();
            log::info!(
                "started sandbox {} (VM pid {}, agent after {:?})",
                req.sandbox_id,
                vm.vmm_pid(),
                vm.boot_time()
            );
            drop(vm);
            let at = SystemTime::now();
            lifecycle.started_at = Some(at);
            at
        }
    };
    Ok(api::StartSandboxResponse {
        pid: POD_PID,
        created_at: Some(
            ExitInfo {
                status: 0,
                at: started_at,
            }
            .timestamp(),
        )
        .into(),
        ..Default::default()
    })
}
