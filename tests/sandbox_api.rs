//! containerd 2.x's Sandbox API (`sandboxer = "shim"`): containerd's CRI
//! creates and starts the pod's sandbox through the shim's Sandbox service
//! (the VM, sized from the pod's annotations), then the pod's containers
//! join it through the Task API; no pause container exists. Always runs on
//! containerd 2.1 (the API is 2.x's), whatever `FIREDOOR_CONTAINERD` says.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use firedoor_tests::{
    containerd::{Build, Containerd, SANDBOX_API_HANDLER},
    cri::{connect, container_config, exec_sh},
    image::PAUSE_IMAGE,
    processes_mentioning,
};
use k8s_cri::v1::{
    CreateContainerRequest, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};

/// A pod on the test's CNI network (containerd 2.1.9 itself crashes on a
/// host-network pod with `sandboxer = "shim"`: containerd issue 12983,
/// fixed in 2.2), whose VM the annotations size.
fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        annotations: HashMap::from([
            ("io.firedoor.vm.vcpus".to_string(), "2".to_string()),
            ("io.firedoor.vm.memory_mib".to_string(), "320".to_string()),
        ]),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// Mount points of this host that name `needle`.
fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

#[test]
fn sandbox_api_pod_runs_in_one_vm_without_a_pause_container() {
    let ctrd = Containerd::start_cri_build(Build::named("2.1"));
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let config = pod_config("sbx", &logs);
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: SANDBOX_API_HANDLER.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log_tail(40)))
            .into_inner()
            .pod_sandbox_id;
        let state_dir = Path::new("/run/firedoor/k8s.io").join(&pod);
        let status = cri
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        // StartSandbox booted the VM, sized from the pod's annotations.
        let vmms: Vec<String> = processes_mentioning(&state_dir)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .map(|(_, cmd)| cmd)
            .collect();
        assert_eq!(vmms.len(), 1, "one VM per pod: {vmms:?}");
        assert!(
            vmms[0].contains("-smp 2 ") && vmms[0].contains("-m 320M"),
            "the VM is not sized from the pod's annotations: {}",
            vmms[0]
        );

        let mut ids = Vec::new();
        for name in ["app", "sidecar"] {
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(name, &["sleep", "600"])),
                    sandbox_config: Some(config.clone()),
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
            ids.push(id);
        }
        // Both run in the pod's VM, which has the pod's two vCPUs, and share
        // its IPC namespace (the first container holds it for the pod).
        assert_eq!(exec_sh(&mut cri, &ids[0], "nproc").await.trim(), "2");
        let first_ipc = exec_sh(&mut cri, &ids[0], "readlink /proc/self/ns/ipc").await;
        let second_ipc = exec_sh(&mut cri, &ids[1], "readlink /proc/self/ns/ipc").await;
        assert_eq!(first_ipc, second_ipc, "the pod's containers share IPC");
        assert_eq!(exec_sh(&mut cri, &ids[1], "hostname").await.trim(), "sbx");
        assert_eq!(ctrd.shim_pids().len(), 1, "one shim per pod");

        // No pause container: containerd knows the two containers only.
        let containers = ctrd.ctr_ok(&["-n", "k8s.io", "containers", "ls"]);
        assert!(
            !containers.contains(&pod),
            "a container for the sandbox: {containers}"
        );
        assert!(
            !containers.contains(PAUSE_IMAGE),
            "a pause container: {containers}"
        );
        for id in &ids {
            assert!(
                containers.contains(id.as_str()),
                "{id} missing: {containers}"
            );
        }

        for id in &ids {
            cri.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await
            .unwrap();
            cri.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        }
        // The VM belongs to the sandbox, not to its last container.
        assert_eq!(
            processes_mentioning(&state_dir)
                .iter()
                .filter(|(_, cmd)| cmd.contains("qemu-system"))
                .count(),
            1,
            "the VM went with the last container"
        );
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", ctrd.log_tail(40)));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", ctrd.log_tail(40)));

        // Nothing is left: shim, VM processes, mounts, state.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (state_dir.exists()
            || !ctrd.shim_pids().is_empty()
            || !processes_mentioning(&state_dir).is_empty()
            || !mounts_mentioning(&pod).is_empty())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!state_dir.exists(), "{} left behind", state_dir.display());
        assert_eq!(ctrd.shim_pids(), Vec::<u32>::new(), "shim left behind");
        assert_eq!(processes_mentioning(&state_dir), vec![]);
        assert_eq!(mounts_mentioning(&pod), Vec::<String>::new(), "mounts left");
        for id in &ids {
            assert_eq!(mounts_mentioning(id), Vec::<String>::new(), "mounts left");
        }
    });
}
