//! SandboxMetrics: the pod's VM as a whole, as the guest's cgroups count
//! it: the containers' stats summed (memory in use, CPU time), in
//! containerd's cgroup v2 metrics type.

use containerd_shim_protos::{
    cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics},
    protobuf::{well_known_types::any::Any, Message},
};

use super::{api, SandboxService};
use crate::{
    error::{Result, ShimError},
    task::ExitInfo,
};

pub(super) fn metrics(
    service: &SandboxService,
    req: api::SandboxMetricsRequest,
) -> Result<api::SandboxMetricsResponse> {
    service.check_id(&req.sandbox_id)?;
    let sandbox = service.shared.sandbox.running()?;
    let ids: Vec<String> = service.shared.containers().keys().cloned().collect();
    let mut memory = MemoryStat::default();
    let mut cpu = CPUStat::default();
    for id in ids {
        // A container that just went is not an error of the sandbox's.
        let Ok(stats) = sandbox.agent().stats_container(&id) else {
            continue;
        };
        if let Some(m) = stats.memory.as_ref() {
            memory.usage = memory.usage.saturating_add(m.usage);
        }
        if let Some(c) = stats.cpu.as_ref() {
            cpu.usage_usec = cpu.usage_usec.saturating_add(c.usage_usec);
        }
    }
    let data = Metrics {
        memory: Some(memory).into(),
        cpu: Some(cpu).into(),
        ..Default::default()
    };
    let value = data
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(e.into()))?;
    let mut response = api::SandboxMetricsResponse::default();
    let metric = response.metrics.mut_or_insert_default();
    metric.id = req.sandbox_id;
    metric.timestamp = Some(ExitInfo::now(0).timestamp()).into();
    metric.data = Some(Any {
        type_url: "io.containerd.cgroups.v2.Metrics".into(),
        value,
        ..Default::default()
    })
    .into();
    Ok(response)
}
