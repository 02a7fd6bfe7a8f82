//! ExecProcess: a further process in a running container.

use std::fs;

use firedoor_protocol::agent::ExecProcessRequest;
use log::info;

use super::{check_id, enabled, lock, Process, Runtime};
use crate::{
    error::{AgentError, Result},
    helper, signals, spec,
    streams::Streams,
};

impl Runtime {
    pub fn exec(&self, req: &ExecProcessRequest) -> Result<u32> {
        let (id, exec_id) = (req.container_id.as_str(), req.exec_id.as_str());
        let container = self.container(id)?;
        check_id("exec_id", exec_id)?;
        container.require_running()?;
        let exists = lock(&container.execs).contains_key(exec_id);
        let _reservation = self.reserve(format!("exec {exec_id} of container {id}"), exists)?;
        let (enabled, terminal) = enabled(req.stdio.as_ref());
        let mut process = spec::parse_process(&req.process_json)?;
        process.set_terminal(Some(terminal));
        let console_size = crate::streams::console_size(Some(&process));
        let seccomp = spec::exec_seccomp(&mut process, container.seccomp.as_ref());

        let what = format!("exec {exec_id} in container {id}");
        let process_file = container.dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| AgentError::internal(&what, e))?;
        fs::write(&process_file, json).map_err(|e| AgentError::internal(&what, e))?;
        let (side, streams) =
            Streams::new(enabled, terminal).map_err(|e| AgentError::internal(&what, e))?;
        let request = helper::Request {
            state_root: self.runtime_dir(),
            id: id.into(),
            result: container.dir.join(format!("exec-{exec_id}.result")),
            console_socket: terminal.then(|| self.console_socket()),
            job: helper::Job::Exec {
                process: process_file.clone(),
                seccomp: seccomp.map(Box::new),
            },
        };
        let result = self.run_helper(&request, side, &what);
        let _ = fs::remove_file(&process_file);
        let (pid, master) = result?;
        if let Some(master) = master {
            streams
                .set_terminal(master, enabled[0], true, console_size)
                .map_err(|e| AgentError::internal(&what, e))?;
        }
        let process = Process::new(pid, streams);
        lock(&container.execs).insert(exec_id.into(), process.clone());
        signals::watch(pid, move |exit| process.set_exit(exit));
        info!("{what}: pid {pid}");
        // The PID of a process that started is positive.
        Ok(pid.cast_unsigned())
    }
}
