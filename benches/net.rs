//! TCP through a pod's network: throughput and request round trips,
//! host -> pod and pod -> pod, for Firedoor pods (their traffic through the
//! VM's virtio-net NIC: veth, tc redirect, tap) beside runc pods (the veth
//! in the pod's namespace), all on one bridge CNI network of the bench's own
//! (the conflist of tests/cri_network.rs, from tests/support/network.rs),
//! on one containerd (`FIREDOOR_CONTAINERD`), alternating round by round.
//!
//! Both ends are `netprobe` (benches/netprobe/): the bench builds it
//! statically with rustc and mounts it into the busybox pods; the host end
//! is the same code linked into this bench. Throughput: N MiB written on
//! one connection, timed until the receiver has read them all (its EOF).
//! Round trip: a 64-byte request echoed back, TCP_NODELAY, on one
//! connection; the mean of 1000 (a guest under TCG may have only a jiffies
//! clock, so no per-request times).
//!
//!     cargo bench -p firedoor-benches --bench net [-- ROUNDS [MIB]]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use firedoor_benches::netprobe as probe;
use firedoor_tests::{
    containerd::Containerd,
    cri::{connect, container_config, exec_sh, pod_config, start_container, Cri},
    network::{pod_ip, BridgeNetwork},
};
use k8s_cri::v1::{Mount, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest};

/// Round trips per measurement.
const ROUND_TRIPS: usize = 1000;

/// Where the probe is mounted in the pods' containers.
const PROBE_DIR: &str = "/netprobe";

/// Builds `netprobe` statically (std only) into `dir`.
fn build_probe(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("netprobe/main.rs");
    let binary = dir.join("netprobe");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("{rustc}: {e}"));
    assert!(
        out.status.success(),
        "building {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// A pod with one container running `command`, the probe mounted.
struct Pod {
    id: String,
    ip: String,
    container: String,
}

async fn start_pod(
    cri: &mut Cri,
    ctrd: &Containerd,
    handler: &str,
    name: &str,
    command: &[&str],
    probe_dir: &Path,
) -> Pod {
    let logs = ctrd.dir().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = pod_config(name, &logs);
    let id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {name} ({handler}): {e}\n{}",
                ctrd.log_tail(30)
            )
        })
        .into_inner()
        .pod_sandbox_id;
    let ip = pod_ip(cri, &id).await;
    let mut container = container_config(name, command);
    container.mounts = vec![Mount {
        container_path: PROBE_DIR.into(),
        host_path: probe_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let container = start_container(cri, ctrd, &id, &config, container).await;
    Pod { id, ip, container }
}

async fn remove_pod(cri: &mut Cri, pod: &Pod) {
    let _ = cri
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await;
    let _ = cri
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await;
}

/// One runtime's server and client pod, and what was measured.
struct Peer {
    name: String,
    server: Pod,
    client: Pod,
    /// The clock source the client pod's timing runs on.
    clock: String,
    /// MiB/s
    host_to_pod: Vec<f64>,
    pod_to_pod: Vec<f64>,
    /// Mean round trips, µs
    host_rtt: Vec<f64>,
    pod_rtt: Vec<f64>,
}

fn address(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Waits until the server pod's probe answers a round trip from the host.
fn wait_for_server(ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match probe::round_trip(address(ip, probe::ECHO_PORT), 1) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("netprobe in pod {ip}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

impl Peer {
    async fn measure(&mut self, cri: &mut Cri, mib: usize) {
        let server = self.server.ip.clone();
        let took = probe::send(address(&server, probe::SINK_PORT), mib)
            .unwrap_or_else(|e| panic!("{}: host -> pod: {e}", self.name));
        self.host_to_pod.push(mib as f64 / took.as_secs_f64());
        let mean = probe::round_trip(address(&server, probe::ECHO_PORT), ROUND_TRIPS)
            .unwrap_or_else(|e| panic!("{}: host -> pod: {e}", self.name));
        self.host_rtt.push(mean.as_secs_f64() * 1e6);

        let out = exec_sh(
            cri,
            &self.client.container,
            &format!("{PROBE_DIR}/netprobe send {server} {mib}"),
        )
        .await;
        let seconds: f64 = out
            .trim()
            .strip_prefix("seconds ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: netprobe send said {out:?}", self.name));
        self.pod_to_pod.push(mib as f64 / seconds);
        let out = exec_sh(
            cri,
            &self.client.container,
            &format!("{PROBE_DIR}/netprobe rtt {server} {ROUND_TRIPS}"),
        )
        .await;
        let micros: f64 = out
            .trim()
            .strip_prefix("micros ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: netprobe rtt said {out:?}", self.name));
        self.pod_rtt.push(micros);
    }
}

fn median_f64(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// "qemu backend, tcg" as the shim logged it when it booted the VMs.
fn backend_of(ctrd: &Containerd) -> String {
    let log = ctrd.log_tail(100_000);
    log.split("booting the sandbox VM with the ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(|s| s.replace(" backend (", ", "))
        .unwrap_or_else(|| "backend not logged".into())
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = numbers.first().copied().unwrap_or(3).max(1);
    let mib = numbers.get(1).copied().unwrap_or(64).max(1);
    let ctrd = Containerd::start_cri();
    let _network = BridgeNetwork::install(&ctrd);
    let probe_dir = tempfile::Builder::new()
        .prefix("fd-netprobe-")
        .tempdir()
        .unwrap();
    build_probe(probe_dir.path());
    let load_before = load_average();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut peers = runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let mut peers = Vec::new();
        for handler in ["runc", "firedoor"] {
            let serve = [&format!("{PROBE_DIR}/netprobe") as &str, "serve"];
            let server = start_pod(
                &mut cri,
                &ctrd,
                handler,
                &format!("{handler}-server"),
                &serve,
                probe_dir.path(),
            )
            .await;
            let client = start_pod(
                &mut cri,
                &ctrd,
                handler,
                &format!("{handler}-client"),
                &["sleep", "1000000"],
                probe_dir.path(),
            )
            .await;
            wait_for_server(&server.ip);
            let clock = exec_sh(
                &mut cri,
                &client.container,
                "cat /sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .await
            .trim()
            .to_string();
            peers.push(Peer {
                name: handler.into(),
                server,
                client,
                clock,
                host_to_pod: Vec::new(),
                pod_to_pod: Vec::new(),
                host_rtt: Vec::new(),
                pod_rtt: Vec::new(),
            });
        }
        for _ in 0..rounds {
            for peer in &mut peers {
                peer.measure(&mut cri, mib).await;
            }
        }
        for peer in &peers {
            remove_pod(&mut cri, &peer.server).await;
            remove_pod(&mut cri, &peer.client).await;
        }
        peers
    });
    peers[1].name = format!("firedoor ({})", backend_of(&ctrd));

    println!(
        "TCP through the pod network (bridge CNI), containerd {}, {rounds} rounds alternating; \
         load average {load_before} before, {} after",
        ctrd.build().version,
        load_average()
    );
    println!(
        "  throughput: {mib} MiB on one connection until the receiver read them all (median of \
         {rounds}); round trip: 64-byte request echoed, mean of {ROUND_TRIPS}, median of {rounds}"
    );
    println!(
        "  {:<32} {:>15} {:>15} {:>16} {:>16}  pod clock",
        "runtime", "host->pod MiB/s", "pod->pod MiB/s", "host->pod RTT µs", "pod->pod RTT µs"
    );
    for peer in &mut peers {
        println!(
            "  {:<32} {:>15.0} {:>15.0} {:>16.0} {:>16.0}  {}",
            peer.name,
            median_f64(&mut peer.host_to_pod),
            median_f64(&mut peer.pod_to_pod),
            median_f64(&mut peer.host_rtt),
            median_f64(&mut peer.pod_rtt),
            peer.clock
        );
    }
}
