//! Wait, and the thread per running process that learns its exit from the
//! guest and reports it.

use std::{sync::Arc, thread, time::Duration};

use containerd_shim::api;
use log::{debug, warn};

use super::{oom_killed, process::VM_GONE_STATUS, ExitInfo, Process, Shared};
use crate::{error::Result, sandbox::GuestAgent};

/// How long the output streams may trail the exit before it is reported.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn wait(shared: &Shared, req: api::WaitRequest) -> Result<api::WaitResponse> {
    let process = shared.process(&req.id, &req.exec_id)?;
    let exit = process.wait();
    Ok(api::WaitResponse {
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    })
}

/// Waits in the guest for `process` to exit, lets its output drain, reports
/// an OOM kill of the container's init first, then the exit.
pub(super) fn spawn_waiter(shared: &Arc<Shared>, agent: GuestAgent, process: Arc<Process>) {
    let shared = shared.clone();
    let name = format!("wait-{}", process.pid());
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let exit = match agent.wait_process(&process.container_id, &process.exec_id) {
            Ok(reply) => ExitInfo::from_unix_nanos(reply.exit_status, reply.exited_at_unix_nanos),
            Err(e) => {
                // The agent is gone: the guest may have crashed before its
                // VM's exit is seen (QEMU drops its vhost-user backends
                // first), so the console goes to the log here too.
                let console = shared
                    .sandbox
                    .get()
                    .map(|s| crate::sandbox::console_report(&s))
                    .unwrap_or_default();
                warn!("{e}; last console lines:\n{console}");
                ExitInfo::now(VM_GONE_STATUS)
            }
        };
        let drain = process
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|io| io.take_output_drain());
        if drain.is_some_and(|drain| !drain.wait(OUTPUT_DRAIN_TIMEOUT)) {
            warn!(
                "output of {}/{} still open {OUTPUT_DRAIN_TIMEOUT:?} after exit",
                process.container_id, process.exec_id
            );
        }
        if process.exec_id.is_empty() {
            match agent.stats_container(&process.container_id) {
                Ok(stats) if oom_killed(&stats) => shared.report_oom(&process.container_id),
                Ok(_) => {}
                Err(e) => debug!("stats after exit of {}: {e}", process.container_id),
            }
        }
        shared.report_exit(&process, exit);
    });
    if let Err(e) = spawned {
        warn!("cannot start a wait thread: {e}");
    }
}
