//! Connect and Shutdown.

use containerd_shim::{api, api::Empty};
use log::info;

use super::Shared;
use crate::error::Result;

pub(super) fn connect(shared: &Shared, req: api::ConnectRequest) -> Result<api::ConnectResponse> {
    let task_pid = shared.containers().get(&req.id).map_or(0, |c| c.init.pid());
    Ok(api::ConnectResponse {
        shim_pid: std::process::id(),
        task_pid,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    })
}

/// containerd asks every shim to shut down once its task is deleted; the
/// shim of a pod keeps running while other containers remain, and the shim
/// of a Sandbox API sandbox until ShutdownSandbox.
pub(super) fn shutdown(shared: &Shared, req: api::ShutdownRequest) -> Result<Empty> {
    if (!shared.containers().is_empty() || shared.sandbox_api()) && !req.now {
        return Ok(Empty::default());
    }
    info!("shutting down");
    shared.sandbox.shut_down(&shared.state_dir);
    shared.exit.signal();
    Ok(Empty::default())
}
