//! ResizePty and CloseIO.

use containerd_shim::{api, api::Empty, TtrpcResult};
use firedoor_protocol::agent::ResizeTtyRequest;

use super::{agent_error, Shared};
use crate::sandbox::{ctx, RPC_TIMEOUT};

pub(super) fn resize_pty(shared: &Shared, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
    shared.process(&req.id, &req.exec_id)?;
    let request = ResizeTtyRequest {
        container_id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        rows: req.height,
        columns: req.width,
        ..Default::default()
    };
    shared
        .sandbox
        .running()?
        .agent()
        .resize_tty(ctx(RPC_TIMEOUT), &request)
        .map_err(|e| agent_error("resizing the terminal", e))?;
    Ok(Empty::default())
}

/// The stdin stream is closed after the bytes already in the FIFO: the
/// agent sees EOF in order and closes the process's stdin.
pub(super) fn close_io(shared: &Shared, req: api::CloseIORequest) -> TtrpcResult<Empty> {
    let process = shared.process(&req.id, &req.exec_id)?;
    if req.stdin {
        if let Some(io) = process
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            io.close_stdin();
        }
    }
    Ok(Empty::default())
}
