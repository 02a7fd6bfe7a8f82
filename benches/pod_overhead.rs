//! The host CPU and memory of one idle pod, the figures behind
//! `overhead.podFixed` in deploy/runtimeclass.yaml: a CRI pod (pause
//! container plus one container running `sleep`) on the test's CNI
//! network, left alone to settle, then the CPU time (utime + stime from
//! /proc/PID/stat) of its shim and every process below it (for Firedoor:
//! the VMM, virtiofsd, the vsock helper) over SECONDS, and their PSS; a
//! runc pod on the same containerd beside it.
//!
//!     cargo bench -p firedoor-benches --bench pod_overhead [-- SECONDS]

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use firedoor_benches::backend_in_log;
use firedoor_tests::{
    containerd::Containerd,
    cri::{connect, container_config, pod_config, start_container, Cri},
};
use k8s_cri::v1::{RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest};

/// Linux's USER_HZ, the unit of /proc/PID/stat's CPU times (100 on every
/// architecture Firedoor runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// How long a new pod is left alone before the measurement (boot work and
/// the first container's start are not idle).
const SETTLE: Duration = Duration::from_secs(10);

/// (parent pid, utime + stime ticks, command name) of every process.
fn processes() -> HashMap<u32, (u32, u64, String)> {
    let mut all = HashMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("?", |(_, c)| c).to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after comm, from 0: state, ppid (1), ..., utime (11), stime (12).
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(ppid), Some(utime), Some(stime)) = (number(1), number(11), number(12)) {
            all.insert(pid, (u32::try_from(ppid).unwrap(), utime + stime, comm));
        }
    }
    all
}

/// `root` and every process below it.
fn tree(root: u32, all: &HashMap<u32, (u32, u64, String)>) -> Vec<u32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            all.iter()
                .filter(|(_, (ppid, _, _))| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found
}

fn pss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The shim process of `handler` serving `ctrd` (its command line names
/// containerd's socket).
fn shim_of(ctrd: &Containerd, handler: &str) -> u32 {
    let binary = match handler {
        "runc" => "containerd-shim-runc-v2",
        _ => "containerd-shim-firedoor-v2",
    };
    let shims: Vec<u32> = firedoor_tests::processes_mentioning(&ctrd.address())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(binary))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shims.len(), 1, "one {binary} expected: {shims:?}");
    shims[0]
}

struct Usage {
    handler: String,
    /// (command, millicores, PSS KiB) per process.
    processes: Vec<(String, f64, u64)>,
}

/// CPU per process of the pod's shim tree over `window`.
fn measure(ctrd: &Containerd, handler: &str, window: Duration) -> Usage {
    let before = processes();
    let pids = tree(shim_of(ctrd, handler), &before);
    let started = Instant::now();
    std::thread::sleep(window);
    let after = processes();
    let seconds = started.elapsed().as_secs_f64();
    let processes = pids
        .iter()
        .filter_map(|pid| {
            let (_, ticks_before, comm) = before.get(pid)?;
            let (_, ticks_after, _) = after.get(pid)?;
            let millicores =
                (ticks_after - ticks_before) as f64 / TICKS_PER_SECOND / seconds * 1000.0;
            Some((comm.clone(), millicores, pss_kib(*pid)))
        })
        .collect();
    Usage {
        handler: handler.into(),
        processes,
    }
}

async fn idle_pod(cri: &mut Cri, ctrd: &Containerd, handler: &str, window: Duration) -> Usage {
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let config = pod_config(&format!("idle-{handler}"), &logs);
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", ctrd.log_tail(30)))
        .into_inner()
        .pod_sandbox_id;
    start_container(
        cri,
        ctrd,
        &pod,
        &config,
        container_config("sleep", &["sleep", "1000000"]),
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    let usage = measure(ctrd, handler, window);
    let _ = cri
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = cri
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    usage
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let window = Duration::from_secs(seconds);
    let ctrd = Containerd::start_cri();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let usages = runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let mut usages = Vec::new();
        for handler in ["firedoor", "runc"] {
            usages.push(idle_pod(&mut cri, &ctrd, handler, window).await);
        }
        usages
    });
    let log = ctrd.log_tail(100_000);
    let backend = backend_in_log(&log);
    println!(
        "host CPU of one idle pod (pause + `sleep`) over {seconds} s after {} s to settle, \
         containerd {}, firedoor on {backend}; load average before: {}",
        SETTLE.as_secs(),
        ctrd.build().version,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for usage in &usages {
        let cpu: f64 = usage.processes.iter().map(|p| p.1).sum();
        let pss: u64 = usage.processes.iter().map(|p| p.2).sum();
        println!(
            "  {:<10} total {cpu:>6.1} millicores  PSS {:>6.1} MiB",
            usage.handler,
            pss as f64 / 1024.0
        );
        for (comm, millicores, pss) in &usage.processes {
            println!(
                "    {comm:<28} {millicores:>6.1} millicores  PSS {:>6.1} MiB",
                *pss as f64 / 1024.0
            );
        }
    }
}
