//! A CRI client on a test's containerd, and pods that are always removed:
//! [`with_pod`] runs a test against a pod and then stops and removes it,
//! even when the test panics, so that no shim, VM or state dir of a failed
//! test stays behind.

use std::{
    future::Future,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    task::Poll,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    containerd::Containerd, image::BUSYBOX_IMAGE, mounts_mentioning, processes_mentioning,
};

/// A CRI runtime-service client.
pub type Cri = RuntimeServiceClient<Channel>;

/// The runtime handler of Firedoor in the test containerd's CRI config.
pub const HANDLER: &str = "firedoor";

/// A CRI client on containerd's socket.
pub async fn connect(socket: PathBuf) -> Cri {
    let channel = Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// Waits (up to 60 s) until containerd's CRI plugin serves requests: after
/// a (re)start it answers "server is not initialized yet" while it
/// restores its pods, although containerd itself already answers.
pub async fn wait_initialized(cri: &mut Cri) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cri.list_pod_sandbox(ListPodSandboxRequest::default()).await {
            Ok(_) => return,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the CRI plugin never initialized: {e}"),
        }
    }
}

/// Runs a pod on the `firedoor` handler; returns its id.
pub async fn run_pod(cri: &mut Cri, ctrd: &Containerd, config: &PodSandboxConfig) -> String {
    run_pod_on(cri, ctrd, config, HANDLER).await
}

/// Runs a pod on runtime handler `handler`; returns its id.
pub async fn run_pod_on(
    cri: &mut Cri,
    ctrd: &Containerd,
    config: &PodSandboxConfig,
    handler: &str,
) -> String {
    cri.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log_tail(30)))
    .into_inner()
    .pod_sandbox_id
}

/// The shim's state dir of pod `pod` (namespace `k8s.io`, CRI's).
pub fn pod_state_dir(pod: &str) -> PathBuf {
    Path::new("/run/firedoor/k8s.io").join(pod)
}

/// Stops and removes the pod and checks that its shim, VM processes, mounts
/// and state are gone (waiting up to 30 s for them to go).
pub async fn remove_pod(cri: &mut Cri, ctrd: &Containerd, pod: &str) {
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e}\n{}", ctrd.log_tail(30)));
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}\n{}", ctrd.log_tail(30)));
    let state_dir = pod_state_dir(pod);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (state_dir.exists()
        || !ctrd.shim_pids().is_empty()
        || !processes_mentioning(&state_dir).is_empty()
        || !mounts_mentioning(pod).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    assert_eq!(ctrd.shim_pids(), Vec::<u32>::new(), "shim left behind");
    assert_eq!(
        processes_mentioning(&state_dir),
        vec![],
        "VM processes left behind"
    );
    assert_eq!(mounts_mentioning(pod), Vec::<String>::new(), "mounts left");
}

/// Runs a pod of `config` on `ctrd`'s CRI plugin, then `test` with a
/// client and the pod's id, then stops and removes the pod and checks that
/// nothing of it is left ([`remove_pod`]). When `test` panics the pod is
/// removed all the same (without the checks) and the panic goes on.
pub fn with_pod(
    ctrd: &Containerd,
    config: &PodSandboxConfig,
    test: impl AsyncFnOnce(&mut Cri, &str),
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let pod = run_pod(&mut cri, ctrd, config).await;
        let outcome = catch_panic(test(&mut cri, &pod)).await;
        match outcome {
            Ok(()) => remove_pod(&mut cri, ctrd, &pod).await,
            Err(panic) => {
                // Best effort: the test's own failure is the one to report.
                let _ = cri
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                let _ = cri
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                resume_unwind(panic)
            }
        }
    });
}

/// Runs `future`, turning a panic while it is polled into an error.
async fn catch_panic<T>(future: impl Future<Output = T>) -> std::thread::Result<T> {
    let mut future = Box::pin(future);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        },
    )
    .await
}

/// A pod `name` (Kubernetes namespace `default`) on the CNI network, its
/// container logs under `logs`.
pub fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A busybox container `name` running `command`, logging to `<name>.log`.
pub fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|c| c.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// ExecSync of `sh -c script`; returns its stdout, asserting exit code 0.
pub async fn exec_sh(cri: &mut Cri, id: &str, script: &str) -> String {
    let out = cri
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 180,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?} in {id}: {e}"))
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.exit_code,
        0,
        "{script:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// ContainerStatus of container `id`: its `status`.
pub async fn container_status(cri: &mut Cri, id: &str) -> ContainerStatus {
    cri.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
    .into_inner()
    .status
    .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"))
}

/// CreateContainer + StartContainer of `config` in `pod`; its id.
pub async fn start_container(
    cri: &mut Cri,
    ctrd: &Containerd,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctrd.log_tail(40)))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", ctrd.log_tail(40)));
    id
}
