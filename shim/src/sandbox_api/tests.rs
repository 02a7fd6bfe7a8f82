//! The Sandbox service against the Task service's fake agent and VM
//! (`task/tests.rs`): the VM is "booted" (installed) before StartSandbox,
//! which then finds it running, as a boot would leave it.

use std::{collections::HashMap, sync::atomic::Ordering};

use containerd_shim::protos::{protobuf::well_known_types::any::Any, ttrpc::Code};
use oci_spec::runtime::Spec;

use super::{api, namespaces::POD_PID, platform::oci_architecture, SandboxService};
use crate::{error::ShimError, task::tests::Harness};

const SIGKILL: u32 = 9;

fn service(h: &Harness) -> SandboxService {
    SandboxService::new(h.shared.clone())
}

fn id(service: &SandboxService) -> String {
    service.id()
}

fn create(service: &SandboxService) -> Result<api::CreateSandboxResponse, ShimError> {
    super::create::create(
        service,
        api::CreateSandboxRequest {
            sandbox_id: id(service),
            annotations: HashMap::from([("io.firedoor.vm.vcpus".into(), "2".into())]),
            options: Some(Any {
                type_url: "runtime.v1.PodSandboxConfig".into(),
                // hostname = "pod-a"
                value: b"\x12\x05pod-a".to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        },
    )
}

fn start(service: &SandboxService) -> Result<api::StartSandboxResponse, ShimError> {
    super::start::start(
        service,
        api::StartSandboxRequest {
            sandbox_id: id(service),
            ..Default::default()
        },
    )
}

fn status(service: &SandboxService) -> api::SandboxStatusResponse {
    super::status::status(
        service,
        api::SandboxStatusRequest {
            sandbox_id: id(service),
            verbose: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn code<T: std::fmt::Debug>(result: Result<T, ShimError>) -> Code {
    result.expect_err("the request should have failed").code()
}

fn namespace_paths(spec: &Spec) -> Vec<Option<String>> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .iter()
        .flatten()
        .map(|ns| ns.path().as_ref().map(|p| p.display().to_string()))
        .collect()
}

/// As containerd's CRI writes a pod container's namespaces, with the pid
/// StartSandbox returned.
const POD_NAMESPACES: &str = r#"[{"type": "ipc", "path": "/proc/1/ns/ipc"},
    {"type": "uts", "path": "/proc/1/ns/uts"}, {"type": "pid"}, {"type": "mount"}]"#;

#[test]
fn create_start_status_stop_wait_shutdown() {
    let h = Harness::new();
    let sandbox = service(&h);
    // Start needs a created sandbox; requests name this shim's sandbox.
    assert_eq!(code(start(&sandbox)), Code::FAILED_PRECONDITION);
    let other = api::PingRequest {
        sandbox_id: "another".into(),
        ..Default::default()
    };
    assert_eq!(code(super::status::ping(&sandbox, other)), Code::NOT_FOUND);

    create(&sandbox).unwrap();
    assert_eq!(code(create(&sandbox)), Code::ALREADY_EXISTS);
    assert!(h.shared.sandbox_api());
    let lifecycle = sandbox.lifecycle();
    let pod = lifecycle.pod.as_ref().unwrap();
    assert_eq!(pod.hostname, "pod-a");
    assert_eq!(pod.annotations["io.firedoor.vm.vcpus"], "2");
    drop(lifecycle);
    assert_eq!(status(&sandbox).state, "SANDBOX_NOTREADY");

    let started = start(&sandbox).unwrap();
    assert_eq!(started.pid, POD_PID);
    assert!(started.created_at.is_some());
    let ready = status(&sandbox);
    assert_eq!(
        (ready.state.as_str(), ready.pid),
        ("SANDBOX_READY", POD_PID)
    );
    assert!(ready.info.contains_key("vmm_pid"), "{:?}", ready.info);
    super::status::ping(
        &sandbox,
        api::PingRequest {
            sandbox_id: id(&sandbox),
            ..Default::default()
        },
    )
    .unwrap();
    let metrics = super::metrics::metrics(
        &sandbox,
        api::SandboxMetricsRequest {
            sandbox_id: id(&sandbox),
            ..Default::default()
        },
    )
    .unwrap();
    let metric = metrics.metrics.unwrap();
    assert_eq!(metric.id, id(&sandbox));
    assert_eq!(metric.data.type_url, "io.containerd.cgroups.v2.Metrics");
    let platform = super::platform::platform(
        &sandbox,
        api::PlatformRequest {
            sandbox_id: id(&sandbox),
            ..Default::default()
        },
    )
    .unwrap()
    .platform
    .unwrap();
    assert_eq!(platform.os, "linux");
    assert_eq!(
        platform.architecture,
        oci_architecture(std::env::consts::ARCH)
    );

    // A container of the pod outlives nothing: StopSandbox takes the VM and
    // the container's init exits with it.
    h.create_with_namespaces("c1", POD_NAMESPACES).unwrap();
    h.start("c1", "").unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            super::wait::wait(
                &sandbox,
                api::WaitSandboxRequest {
                    sandbox_id: id(&sandbox),
                    ..Default::default()
                },
            )
            .unwrap()
        });
        super::stop::stop(
            &sandbox,
            api::StopSandboxRequest {
                sandbox_id: id(&sandbox),
                ..Default::default()
            },
        )
        .unwrap();
        let exited = waiter.join().unwrap();
        assert_eq!(exited.exit_status, 0);
        assert!(exited.exited_at.is_some());
    });
    assert!(h.stopped.load(Ordering::SeqCst), "the VM was not stopped");
    assert_eq!(h.wait("c1", ""), crate::task::VM_GONE_STATUS);
    assert!(!h.shared.state_dir.exists(), "state dir left behind");
    assert_eq!(status(&sandbox).state, "SANDBOX_NOTREADY");
    assert_eq!(code(start(&sandbox)), Code::FAILED_PRECONDITION);

    super::shutdown::shutdown(
        &sandbox,
        api::ShutdownSandboxRequest {
            sandbox_id: id(&sandbox),
            ..Default::default()
        },
    )
    .unwrap();
    // The shim's exit signal is set: this returns.
    h.shared.exit.wait();
}

#[test]
fn the_pod_containers_share_the_first_ones_namespaces_and_the_vm_outlives_them() {
    let h = Harness::new();
    let sandbox = service(&h);
    create(&sandbox).unwrap();
    start(&sandbox).unwrap();
    let (first_pid, first) = h.create_with_namespaces("a", POD_NAMESPACES).unwrap();
    assert_eq!(namespace_paths(&first), [None, None, None, None]);
    let (_, second) = h.create_with_namespaces("b", POD_NAMESPACES).unwrap();
    assert_eq!(
        namespace_paths(&second),
        [
            Some(format!("/proc/{first_pid}/ns/ipc")),
            Some(format!("/proc/{first_pid}/ns/uts")),
            None,
            None
        ]
    );
    // The last container goes; the VM stays for the sandbox.
    for id in ["a", "b"] {
        h.start(id, "").unwrap();
        h.kill(id, "", SIGKILL).unwrap();
        h.wait(id, "");
        h.delete(id, "").unwrap();
    }
    assert!(
        !h.stopped.load(Ordering::SeqCst),
        "the VM went with its last task"
    );
    assert!(!h.agent_calls().contains(&"shutdown".to_string()));
    assert_eq!(status(&sandbox).state, "SANDBOX_READY");
    // A new container holds new pod namespaces.
    let (_, third) = h.create_with_namespaces("c", POD_NAMESPACES).unwrap();
    assert_eq!(namespace_paths(&third)[..2], [None, None]);
}

#[test]
fn a_sandbox_rootfs_is_refused_with_what_to_do_instead() {
    let h = Harness::new();
    let sandbox = service(&h);
    let err = super::create::create(
        &sandbox,
        api::CreateSandboxRequest {
            sandbox_id: id(&sandbox),
            rootfs: vec![Default::default()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(err.to_string().contains("podsandbox"), "{err}");
    assert!(!h.shared.sandbox_api());
}
