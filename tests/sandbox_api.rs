//! containerd 2.x's Sandbox API (`sandboxer = "shim"`): containerd's CRI
//! creates and starts the pod's sandbox through the shim's Sandbox service
//! (the VM, sized from the pod's annotations), then the pod's containers
//! join it through the Task API; no pause container exists. Always runs on
//! containerd 2.1 (the API is 2.x's), whatever `FIREDOOR_CONTAINERD` says.

use std::{collections::HashMap, fs, path::Path};

use firedoor_tests::{
    containerd::{Build, Containerd, SANDBOX_API_HANDLER},
    cri::{
        self, connect, container_config, exec_sh, pod_state_dir, remove_pod, run_pod_on,
        start_container,
    },
    image::PAUSE_IMAGE,
    mounts_mentioning, processes_mentioning,
};
use k8s_cri::v1::{
    PodSandboxConfig, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest,
    StopContainerRequest,
};

/// A pod on the test's CNI network (containerd 2.1.9 itself crashes on a
/// host-network pod with `sandboxer = "shim"`: containerd issue 12983,
/// fixed in 2.2), whose VM the annotations size.
fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        annotations: HashMap::from([
            ("io.firedoor.vm.vcpus".to_string(), "2".to_string()),
            ("io.firedoor.vm.memory_mib".to_string(), "320".to_string()),
        ]),
        ..cri::pod_config(name, logs)
    }
}

#[test]
fn sandbox_api_pod_runs_in_one_vm_without_a_pause_container() {
    let ctrd = Containerd::start_cri_build(Build::named("2.1"));
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let config_of_pod = pod_config("sbx", &logs);
        let pod = run_pod_on(&mut cri, &ctrd, &config_of_pod, SANDBOX_API_HANDLER).await;
        let state_dir = pod_state_dir(&pod);
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
            let config = container_config(name, &["sleep", "600"]);
            let id = start_container(&mut cri, &ctrd, &pod, &config_of_pod, config).await;
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
        // Nothing is left: shim, VM processes, mounts, state.
        remove_pod(&mut cri, &ctrd, &pod).await;
        for id in &ids {
            assert_eq!(mounts_mentioning(id), Vec::<String>::new(), "mounts left");
        }
    });
}
