//! Exec: register an additional process; Start runs it.

use std::sync::Arc;

use containerd_shim::{api, api::Empty, protos::ttrpc::Code, TtrpcResult};
use firedoor_protocol::stdio::valid_id;
use oci_spec::runtime::Process as OciProcess;

use super::{process::Phase, status, Process, Shared};
use crate::stdio::StdioPaths;

pub(super) fn exec(shared: &Shared, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
    let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
    if !valid_id(exec_id) {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("exec id {exec_id:?}: use 1-128 of [A-Za-z0-9_.-]"),
        ));
    }
    let spec = req
        .spec
        .as_ref()
        .map(|any| any.value.clone())
        .unwrap_or_default();
    let process: OciProcess = serde_json::from_slice(&spec)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(status(
            Code::INVALID_ARGUMENT,
            "exec process spec: args is empty",
        ));
    }
    {
        let mut containers = shared.containers();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))?;
        if container.init.phase() != Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is not running"),
            ));
        }
        if container.execs.contains_key(exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {exec_id} already exists in container {id}"),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container.execs.insert(
            exec_id.into(),
            Arc::new(Process::new(id, exec_id, stdio, Some(spec))),
        );
    }
    shared.events.exec_added(id, exec_id);
    Ok(Empty::default())
}
