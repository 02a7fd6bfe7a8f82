//! Exec: register an additional process; Start runs it.

use std::sync::Arc;

use containerd_shim::{api, api::Empty};
use firedoor_protocol::stdio::valid_id;
use oci_spec::runtime::Process as OciProcess;

use super::{process::Phase, Process, Shared};
use crate::{
    error::{Result, ShimError},
    stdio::StdioPaths,
};

pub(super) fn exec(shared: &Shared, req: api::ExecProcessRequest) -> Result<Empty> {
    let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
    if !valid_id(exec_id) {
        return Err(ShimError::InvalidArgument(format!(
            "exec id {exec_id:?}: use 1-128 of [A-Za-z0-9_.-]"
        )));
    }
    let spec = req
        .spec
        .as_ref()
        .map(|any| any.value.clone())
        .unwrap_or_default();
    let process: OciProcess = serde_json::from_slice(&spec)
        .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ShimError::InvalidArgument(
            "exec process spec: args is empty".into(),
        ));
    }
    {
        let mut containers = shared.containers();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))?;
        if container.init.phase() != Phase::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if container.execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id} already exists in container {id}"
            )));
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
