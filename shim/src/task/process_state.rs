//! State and Pids.

use containerd_shim::{
    api,
    protos::types::task::{ProcessInfo, Status},
};

use super::Shared;
use crate::error::Result;

pub(super) fn state(shared: &Shared, req: api::StateRequest) -> Result<api::StateResponse> {
    let process = shared.process(&req.id, &req.exec_id)?;
    let (bundle, paused) = {
        let containers = shared.containers();
        let container = containers.get(&req.id);
        (
            container
                .map(|c| c.bundle.display().to_string())
                .unwrap_or_default(),
            container.is_some_and(|c| c.paused),
        )
    };
    let mut status = process.status();
    if paused && status == Status::RUNNING {
        status = Status::PAUSED;
    }
    let exit = process.exit();
    Ok(api::StateResponse {
        id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        bundle,
        pid: process.pid(),
        status: status.into(),
        stdin: process.stdio.stdin.clone(),
        stdout: process.stdio.stdout.clone(),
        stderr: process.stdio.stderr.clone(),
        terminal: process.stdio.terminal,
        exit_status: exit.map_or(0, |e| e.status),
        exited_at: exit.map(|e| e.timestamp()).into(),
        ..Default::default()
    })
}

pub(super) fn pids(shared: &Shared, req: api::PidsRequest) -> Result<api::PidsResponse> {
    shared.process(&req.id, "")?;
    let reply = shared.sandbox.running()?.agent().list_processes(&req.id)?;
    Ok(api::PidsResponse {
        processes: reply
            .pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}
