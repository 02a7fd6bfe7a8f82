//! Kill: a signal to one process, or with `all` to every process of the
//! container.

use containerd_shim::{api, api::Empty};

use super::{process::Phase, ExitInfo, Shared};
use crate::error::{Result, ShimError};

pub(super) fn kill(shared: &Shared, req: api::KillRequest) -> Result<Empty> {
    let process = shared.process(&req.id, &req.exec_id)?;
    match process.phase() {
        // As runc's shim: containerd treats NOT_FOUND as "already gone".
        Phase::Stopped(_) => return Err(ShimError::NotFound("process already finished".into())),
        Phase::Created if !req.exec_id.is_empty() => {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} was never started",
                req.exec_id
            )))
        }
        _ => {}
    }
    // A container whose VM boots at start has nothing running yet: like a
    // runc container killed before start, it ends with the signal.
    let never_booted = req.exec_id.is_empty()
        && shared
            .containers()
            .get(&req.id)
            .is_some_and(|c| c.deferred.is_some());
    if never_booted {
        shared.report_exit(&process, ExitInfo::now(128 + req.signal));
        return Ok(Empty::default());
    }
    shared
        .sandbox
        .running()?
        .agent()
        .signal_process(&req.id, &req.exec_id, req.signal, req.all)?;
    Ok(Empty::default())
}
