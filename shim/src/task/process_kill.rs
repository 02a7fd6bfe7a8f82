//! Kill: a signal to one process, or with `all` to every process of the
//! container.

use containerd_shim::{api, api::Empty, protos::ttrpc::Code, TtrpcResult};
use firedoor_protocol::agent::SignalProcessRequest;

use super::{agent_error, process::Phase, status, Shared};
use crate::sandbox::{ctx, RPC_TIMEOUT};

pub(super) fn kill(shared: &Shared, req: api::KillRequest) -> TtrpcResult<Empty> {
    let process = shared.process(&req.id, &req.exec_id)?;
    match process.phase() {
        // As runc's shim: containerd treats NOT_FOUND as "already gone".
        Phase::Stopped(_) => return Err(status(Code::NOT_FOUND, "process already finished")),
        Phase::Created if !req.exec_id.is_empty() => {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("exec {} was never started", req.exec_id),
            ))
        }
        _ => {}
    }
    let request = SignalProcessRequest {
        container_id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        signal: req.signal,
        all: req.all,
        ..Default::default()
    };
    shared
        .sandbox
        .running()?
        .agent()
        .signal_process(ctx(RPC_TIMEOUT), &request)
        .map_err(|e| agent_error(&format!("sending signal {} to {}", req.signal, req.id), e))?;
    Ok(Empty::default())
}
