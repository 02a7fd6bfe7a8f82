//! CRI pod start through one containerd (`FIREDOOR_CONTAINERD`): from
//! RunPodSandbox to the pod's first container started (`true`), for runc,
//! Firedoor with a pause container and, on containerd 2.x, Firedoor
//! through the Sandbox API (`sandboxer = "shim"`), alternating run by run.
//! Pods are on the test's CNI network (containerd 2.1.9 crashes on
//! host-network pods with the shim sandboxer, so every handler gets the
//! same network). `cargo bench -p firedoor-benches --bench cri_pod [RUNS]`.

use std::time::{Duration, Instant};

use firedoor_tests::{
    containerd::{Containerd, SANDBOX_API_HANDLER},
    image::BUSYBOX_IMAGE,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

use firedoor_tests::cri::{connect, pod_config, Cri};

/// RunPodSandbox -> CreateContainer -> StartContainer; the pod is removed
/// afterwards (not timed). A handler that cannot run a pod here is
/// reported, not timed.
async fn pod_start(
    cri: &mut Cri,
    handler: &str,
    name: &str,
    logs: &std::path::Path,
) -> Result<Duration, String> {
    let config = pod_config(name, logs);
    let started = Instant::now();
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "true".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["true".into()],
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer ({handler}): {e}"))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container,
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer ({handler}): {e}"));
    let elapsed = started.elapsed();
    remove(cri, pod).await;
    Ok(elapsed)
}

async fn remove(cri: &mut Cri, pod: String) {
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut handlers = vec!["runc", "firedoor"];
    if ctrd.build().is_v2() {
        handlers.push(SANDBOX_API_HANDLER);
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    let mut failures: Vec<Option<String>> = vec![None; handlers.len()];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        for i in 0..runs {
            for (n, handler) in handlers.iter().enumerate() {
                if failures[n].is_some() {
                    continue;
                }
                let name = format!("bench-{n}-{i}");
                match pod_start(&mut cri, handler, &name, &logs).await {
                    Ok(elapsed) => samples[n].push(elapsed),
                    Err(e) => failures[n] = Some(e),
                }
            }
        }
    });
    println!(
        "CRI pod start (RunPodSandbox -> first container started), {runs} runs each, \
         alternating (wall time, containerd {})",
        ctrd.build().version
    );
    for ((handler, samples), failure) in handlers.iter().zip(&mut samples).zip(&failures) {
        if let Some(e) = failure {
            println!("  {handler:<18} failed: {e}");
            continue;
        }
        samples.sort();
        let all: Vec<String> = samples
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        println!(
            "  {handler:<18} median {:.2} s   (all: {} s)",
            samples[samples.len() / 2].as_secs_f64(),
            all.join(", ")
        );
    }
}
