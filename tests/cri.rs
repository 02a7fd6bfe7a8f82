//! Kubernetes' path: containerd's CRI plugin (Debian's containerd 1.6) with
//! a `firedoor` runtime handler, driven by a CRI client as the kubelet
//! drives it. One VM per pod; the containers of the pod run in it.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use firedoor_tests::{containerd::Containerd, image::BUSYBOX_IMAGE, processes_mentioning};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

type Cri = RuntimeServiceClient<Channel>;

/// A CRI client on containerd's socket.
async fn connect(socket: PathBuf) -> Cri {
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

/// A host-network pod (no CNI here) on the `firedoor` handler.
fn pod_config(name: &str, logs: &Path, annotations: HashMap<String, String>) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
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

/// Waits for the container to exit; returns its exit code.
async fn exit_code(cri: &mut Cri, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cri
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == ContainerState::ContainerExited as i32 {
            return status.exit_code;
        }
        assert!(Instant::now() < deadline, "{id} never exited: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The messages of a CRI log file ("<time> <stream> <F|P> <message>").
fn log_messages(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
        .collect()
}

#[test]
fn pod_with_two_containers_runs_in_one_vm() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let annotations = HashMap::from([("io.firedoor.vm.vcpus".to_string(), "2".to_string())]);
        let config = pod_config("web", &logs, annotations);
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: "firedoor".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log_tail(30)))
            .into_inner()
            .pod_sandbox_id;
        let state_dir = Path::new("/run/firedoor/k8s.io").join(&pod);
        assert!(
            state_dir.is_dir(),
            "the pod's VM runs from {}",
            state_dir.display()
        );

        let mut ids = Vec::new();
        for (name, command) in [
            (
                "app",
                vec!["sh", "-c", "echo hello from the pod; nproc; exit 3"],
            ),
            ("sidecar", vec!["sh", "-c", "hostname"]),
        ] {
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(name, &command)),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctrd.log_tail(30)))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
            ids.push(id);
        }
        assert_eq!(exit_code(&mut cri, &ids[0]).await, 3);
        assert_eq!(exit_code(&mut cri, &ids[1]).await, 0);
        // The pod's size came from its annotation; output reached the logs.
        assert_eq!(
            log_messages(&logs.join("app.log")),
            ["hello from the pod", "2"]
        );
        assert_eq!(log_messages(&logs.join("sidecar.log")), ["web"]);

        // One shim and one VM for the pod (sandbox + two containers).
        assert_eq!(ctrd.shim_pids().len(), 1, "one shim per pod");
        let vmms = processes_mentioning(&state_dir)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .count();
        assert_eq!(vmms, 1, "one VM per pod");

        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (state_dir.exists()
            || !ctrd.shim_pids().is_empty()
            || !processes_mentioning(&state_dir).is_empty())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!state_dir.exists(), "{} left behind", state_dir.display());
        assert_eq!(ctrd.shim_pids(), Vec::<u32>::new(), "shim left behind");
        assert_eq!(processes_mentioning(&state_dir), vec![]);
    });
}
