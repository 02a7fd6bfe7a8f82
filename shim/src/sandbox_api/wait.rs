//! WaitSandbox: block until the sandbox has stopped.

use super::{api, SandboxService, WAIT_POLL};
use crate::error::Result;

pub(super) fn wait(
    service: &SandboxService,
    req: api::WaitSandboxRequest,
) -> Result<api::WaitSandboxResponse> {
    service.check_id(&req.sandbox_id)?;
    let mut lifecycle = service.observe();
    let exit = loop {
        if let Some(exit) = lifecycle.exit {
            break exit;
        }
        drop(lifecycle);
        {
            let guard = service.lifecycle();
            // Woken by StopSandbox/ShutdownSandbox, or on each poll to see
            // whether the VM died.
            let _ = service.changed.wait_timeout(guard, WAIT_POLL);
        }
        lifecycle = service.observe();
    };
    Ok(api::WaitSandboxResponse {
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    })
}
