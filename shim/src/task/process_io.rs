//! ResizePty and CloseIO.

use containerd_shim::{api, api::Empty};

use super::Shared;
use crate::error::Result;

pub(super) fn resize_pty(shared: &Shared, req: api::ResizePtyRequest) -> Result<Empty> {
    shared.process(&req.id, &req.exec_id)?;
    shared
        .sandbox
        .running()?
        .agent()
        .resize_tty(&req.id, &req.exec_id, req.height, req.width)?;
    Ok(Empty::default())
}

/// The stdin stream is closed after the bytes already in the FIFO: the
/// agent sees EOF in order and closes the process's stdin.
pub(super) fn close_io(shared: &Shared, req: api::CloseIORequest) -> Result<Empty> {
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
