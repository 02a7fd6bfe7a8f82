//! Stats: the guest's cgroup v2 figures as containerd's cgroups v2 Metrics,
//! which `ctr task metrics`, the CRI plugin and cAdvisor-style readers decode.

use containerd_shim::{
    api,
    protos::{
        cgroups_v2::metrics::{
            CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        },
        protobuf::{well_known_types::any::Any, Message},
    },
};
use firedoor_protocol::agent::StatsContainerResponse;

use super::Shared;
use crate::error::{Result, ShimError};

/// The type URL containerd registers for these metrics.
const METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

pub(super) fn stats(shared: &Shared, req: api::StatsRequest) -> Result<api::StatsResponse> {
    shared.process(&req.id, "")?;
    let stats = shared.sandbox.running()?.agent().stats_container(&req.id)?;
    let value = to_metrics(&stats)
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(e.into()))?;
    Ok(api::StatsResponse {
        stats: Some(Any {
            type_url: METRICS_TYPE.into(),
            value,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

/// containerd's metrics from the agent's stats reply (public for the fuzz target
/// `agent_replies`: the reply comes from the guest).
pub fn to_metrics(stats: &StatsContainerResponse) -> Metrics {
    let mut metrics = Metrics::new();
    if let Some(cpu) = stats.cpu.as_ref() {
        metrics.cpu = Some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = stats.memory.as_ref() {
        let stat = |key: &str| mem.stat.get(key).copied().unwrap_or(0);
        metrics.memory = Some(MemoryStat {
            usage: mem.usage,
            usage_limit: mem.limit,
            swap_usage: mem.swap_usage,
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            slab_reclaimable: stat("slab_reclaimable"),
            slab_unreclaimable: stat("slab_unreclaimable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            ..Default::default()
        })
        .into();
        metrics.memory_events = Some(MemoryEvents {
            oom: mem.oom,
            oom_kill: mem.oom_kill,
            ..Default::default()
        })
        .into();
    }
    if let Some(pids) = stats.pids.as_ref() {
        metrics.pids = Some(PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        })
        .into();
    }
    metrics.io = Some(IOStat {
        usage: stats
            .io
            .iter()
            .map(|io| IOEntry {
                major: io.major,
                minor: io.minor,
                rbytes: io.rbytes,
                wbytes: io.wbytes,
                rios: io.rios,
                wios: io.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .into();
    metrics
}

#[cfg(test)]
mod tests {
    use firedoor_protocol::agent::{CpuStats, MemoryStats};

    use super::*;

    #[test]
    fn maps_cgroup_figures() {
        let mut memory = MemoryStats {
            usage: 10,
            limit: 20,
            oom_kill: 1,
            ..Default::default()
        };
        memory.stat.insert("anon".into(), 7);
        let stats = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 5,
                ..Default::default()
            })
            .into(),
            memory: Some(memory).into(),
            ..Default::default()
        };
        let metrics = to_metrics(&stats);
        assert_eq!(metrics.cpu.usage_usec, 5);
        assert_eq!(
            (
                metrics.memory.usage,
                metrics.memory.usage_limit,
                metrics.memory.anon
            ),
            (10, 20, 7)
        );
        assert_eq!(metrics.memory_events.oom_kill, 1);
        let decoded = Metrics::parse_from_bytes(&metrics.write_to_bytes().unwrap()).unwrap();
        assert_eq!(decoded, metrics);
    }
}
