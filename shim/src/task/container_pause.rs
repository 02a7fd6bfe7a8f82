//! Pause and Resume: the guest freezes or thaws the container's cgroup.

use containerd_shim::api::Empty;

use super::Shared;
use crate::error::Result;

pub(super) fn pause(shared: &Shared, id: &str) -> Result<Empty> {
    set_paused(shared, id, true)
}

pub(super) fn resume(shared: &Shared, id: &str) -> Result<Empty> {
    set_paused(shared, id, false)
}

fn set_paused(shared: &Shared, id: &str, paused: bool) -> Result<Empty> {
    shared.process(id, "")?;
    let sandbox = shared.sandbox.running()?;
    if paused {
        sandbox.agent().pause_container(id)?;
    } else {
        sandbox.agent().resume_container(id)?;
    }
    if let Some(container) = shared.containers().get_mut(id) {
        container.paused = paused;
    }
    if paused {
        shared.events.paused(id);
    } else {
        shared.events.resumed(id);
    }
    Ok(Empty::default())
}
