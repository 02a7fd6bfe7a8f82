//! StopSandbox: stop the pod's VM. containerd's CRI stops the containers
//! first; any still running die with the VM (status 137, TaskExit sent).

use super::{api, SandboxService};
use crate::{error::Result, sandbox::SandboxOwner, task::ExitInfo};

pub(super) fn stop(
    service: &SandboxService,
    req: api::StopSandboxRequest,
) -> Result<api::StopSandboxResponse> {
    service.check_id(&req.sandbox_id)?;
    stop_vm(service);
    Ok(api::StopSandboxResponse::default())
}

/// Stops the VM if it runs and records the sandbox's exit (0: stopped on
/// request), waking WaitSandbox.
pub(super) fn stop_vm(service: &SandboxService) {
    let shared = &service.shared;
    service.lifecycle().stopping = true;
    let was_running = shared.sandbox.get().is_some();
    // Tasks the VM takes with it: their exits go out before it stops.
    if was_running {
        shared.sandbox_failed();
    }
    shared.sandbox.shut_down(&shared.state_dir);
    let mut lifecycle = service.lifecycle();
    if lifecycle.exit.is_none() {
        lifecycle.exit = Some(ExitInfo::now(0));
        if was_running {
            log::info!("stopped sandbox {}", service.id());
        }
    }
    service.changed.notify_all();
}
