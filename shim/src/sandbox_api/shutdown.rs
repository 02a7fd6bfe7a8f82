//! ShutdownSandbox: stop the VM if it still runs, remove the sandbox's
//! state and end the shim.

use super::{api, stop::stop_vm, SandboxService};
use crate::error::Result;

pub(super) fn shutdown(
    service: &SandboxService,
    req: api::ShutdownSandboxRequest,
) -> Result<api::ShutdownSandboxResponse> {
    service.check_id(&req.sandbox_id)?;
    stop_vm(service);
    log::info!("sandbox {} shut down; shim exiting", req.sandbox_id);
    service.shared.exit.signal();
    Ok(api::ShutdownSandboxResponse::default())
}
