//! Kubernetes' path: containerd's CRI plugin (Debian's containerd 1.6) with
//! a `firedoor` runtime handler, driven by a CRI client as the kubelet
//! drives it. One VM per pod; the containers of the pod run in it.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use firedoor_tests::{
    containerd::Containerd,
    cri::{
        self, connect, container_config, container_status, exec_sh, pod_state_dir, remove_pod,
        run_pod, start_container, wait_initialized, with_pod, Cri,
    },
    processes_mentioning, TTY_SIZE_SCRIPT,
};
use k8s_cri::v1::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerState, ExecSyncRequest,
    Int64Value, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, MountPropagation, NamespaceMode,
    NamespaceOption, PodSandboxConfig, RemoveContainerRequest, ReopenContainerLogRequest,
    SecurityProfile, StopContainerRequest,
};

/// A host-network pod (no CNI here) on the `firedoor` handler.
fn pod_config(name: &str, logs: &Path, annotations: HashMap<String, String>) -> PodSandboxConfig {
    PodSandboxConfig {
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
        ..cri::pod_config(name, logs)
    }
}

/// Waits for the container to exit; returns its exit code.
async fn exit_code(cri: &mut Cri, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = container_status(cri, id).await;
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
    let annotations = HashMap::from([("io.firedoor.vm.vcpus".to_string(), "2".to_string())]);
    let config = pod_config("web", &logs, annotations);
    with_pod(&ctrd, &config, async |cri, pod| {
        let state_dir = pod_state_dir(pod);
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
            let id =
                start_container(cri, &ctrd, pod, &config, container_config(name, &command)).await;
            ids.push(id);
        }
        assert_eq!(exit_code(cri, &ids[0]).await, 3);
        assert_eq!(exit_code(cri, &ids[1]).await, 0);
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
    });
}

fn with_security(
    mut config: ContainerConfig,
    security: LinuxContainerSecurityContext,
) -> ContainerConfig {
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    config
}

fn profile(profile_type: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// What a process reports about its confinement (see the checks below).
const CONFINEMENT: &str = "grep '^Seccomp:' /proc/self/status; \
    chmod 400 / 2>/dev/null && echo chmod allowed || echo chmod denied; \
    hostname x 2>/dev/null && echo hostname allowed || echo hostname denied";

/// What a container's first process wrote, once it has written all of it
/// (an ExecSync may come before the init's script has run to its end).
const INIT_OUTPUT: &str = "while [ ! -e /tmp/init ]; do usleep 20000; done; cat /tmp/init";

/// Issue 9 items 1 and 2: seccomp profiles apply to a container's first
/// process and to ExecSync'd ones; a setuid binary escalates unless
/// no_new_privs (allowPrivilegeEscalation: false) is on.
#[test]
fn seccomp_and_no_new_privs_hold_for_every_process() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    // A Localhost profile: a JSON file on the host that containerd reads.
    let localhost = ctrd.dir().join("deny-chmod-sethostname.json");
    fs::write(
        &localhost,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["chmod", "fchmod", "fchmodat", "fchmodat2", "sethostname"],
                          "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let config = pod_config("secure", &logs, HashMap::new());
    with_pod(&ctrd, &config, async |cri, pod| {
        let sleeper = |name: &str, init: &str| {
            container_config(
                name,
                &[
                    "sh",
                    "-c",
                    // Renamed into place once complete: see INIT_OUTPUT.
                    &format!(
                        "{{ {init}; }} > /tmp/init.part 2>&1; mv /tmp/init.part /tmp/init; \
                         exec sleep 1000000"
                    ),
                ],
            )
        };

        let id = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            with_security(
                sleeper("runtime-default", "grep '^Seccomp:' /proc/self/status"),
                LinuxContainerSecurityContext {
                    seccomp: profile(ProfileType::RuntimeDefault, ""),
                    ..Default::default()
                },
            ),
        )
        .await;
        assert_eq!(exec_sh(cri, &id, INIT_OUTPUT).await, "Seccomp:\t2\n");
        let exec = exec_sh(cri, &id, "grep -E '^(Seccomp|CapEff):' /proc/self/status").await;
        assert!(exec.contains("Seccomp:\t2\n"), "ExecSync: {exec}");
        // The exec'd process keeps containerd's default capabilities only.
        assert!(
            exec.contains("CapEff:\t00000000a80425fb"),
            "ExecSync: {exec}"
        );

        // Denied even with CAP_SYS_ADMIN, in init and in ExecSync.
        let id = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            with_security(
                sleeper("localhost", CONFINEMENT),
                LinuxContainerSecurityContext {
                    seccomp: profile(ProfileType::Localhost, localhost.to_str().unwrap()),
                    capabilities: Some(Capability {
                        add_capabilities: vec!["SYS_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await;
        let want = "Seccomp:\t2\nchmod denied\nhostname denied\n";
        assert_eq!(exec_sh(cri, &id, INIT_OUTPUT).await, want);
        assert_eq!(exec_sh(cri, &id, CONFINEMENT).await, want);

        let id = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            with_security(
                sleeper("unconfined", "grep '^Seccomp:' /proc/self/status"),
                LinuxContainerSecurityContext {
                    seccomp: profile(ProfileType::Unconfined, ""),
                    ..Default::default()
                },
            ),
        )
        .await;
        assert_eq!(exec_sh(cri, &id, INIT_OUTPUT).await, "Seccomp:\t0\n");
        let exec = exec_sh(cri, &id, "grep '^Seccomp:' /proc/self/status").await;
        assert_eq!(exec, "Seccomp:\t0\n");

        // /bin/euid (setuid root) exits with its effective uid: 0, or
        // 1000 & 255 = 232 when it did not escalate.
        for (name, no_new_privs, want) in [("escalate", false, "0"), ("no-escalate", true, "232")] {
            let id = start_container(
                cri,
                &ctrd,
                pod,
                &config,
                with_security(
                    sleeper(name, "/bin/euid; echo $?"),
                    LinuxContainerSecurityContext {
                        run_as_user: Some(Int64Value { value: 1000 }),
                        no_new_privs,
                        seccomp: profile(ProfileType::RuntimeDefault, ""),
                        ..Default::default()
                    },
                ),
            )
            .await;
            assert_eq!(
                exec_sh(cri, &id, INIT_OUTPUT).await.trim(),
                want,
                "{name} init"
            );
            assert_eq!(
                exec_sh(cri, &id, "/bin/euid; echo $?").await.trim(),
                want,
                "{name} exec"
            );
        }

        // Item 9: user, group, supplementary groups, read-only rootfs,
        // masked and read-only paths.
        let id = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            with_security(
                container_config("identity", &["sleep", "1000000"]),
                LinuxContainerSecurityContext {
                    run_as_user: Some(Int64Value { value: 1000 }),
                    run_as_group: Some(Int64Value { value: 3000 }),
                    supplemental_groups: vec![4000],
                    readonly_rootfs: true,
                    // What the kubelet sends (containerd replaces its
                    // defaults with these lists).
                    masked_paths: vec!["/proc/timer_list".into(), "/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into(), "/proc/bus".into()],
                    ..Default::default()
                },
            ),
        )
        .await;
        let out = exec_sh(
            cri,
            &id,
            "id -u; id -g; id -G; touch /x 2>/dev/null && echo rw || echo ro; \
             wc -c < /proc/timer_list; awk '$5 == \"/proc/sys\" { print substr($6, 1, 2) }' /proc/self/mountinfo",
        )
        .await;
        assert_eq!(out, "1000\n3000\n3000 4000\nro\n0\nro\n");
    });
}

/// Issue 9 items 3 and 7: the containers of a pod share its IPC and UTS
/// namespaces, its PID namespace in `POD` mode (not in `CONTAINER` mode;
/// `NODE` is the guest's own, the VM being the pod's node), and see the
/// pod's sysctls. (`net.*` sysctls need a pod network namespace, which a
/// host-network pod has not: the agent's host-mode test
/// `pod_containers_share_the_namespaces_they_name` covers them.)
#[test]
fn pod_namespaces_and_sysctls_are_the_pods() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let mut config = pod_config("shared", &logs, HashMap::new());
    let linux = config.linux.as_mut().unwrap();
    linux.sysctls = HashMap::from(
        [("kernel.shm_rmid_forced", "1"), ("kernel.msgmax", "4096")]
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let ns = linux
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.pid = NamespaceMode::Pod as i32;
    ns.ipc = NamespaceMode::Pod as i32;
    let with_pid = |name: &str, command: &[&str], pid: NamespaceMode| {
        with_security(
            container_config(name, command),
            LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: pid as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    };
    with_pod(&ctrd, &config, async |cri, pod| {
        // A POSIX message queue (IPC namespace) made by one container...
        let maker = with_pid(
            "maker",
            &[
                "sh",
                "-c",
                "touch /dev/mqueue/firedoor-q && exec sleep 1000001",
            ],
            NamespaceMode::Pod,
        );
        start_container(cri, &ctrd, pod, &config, maker).await;
        let viewer = with_pid("viewer", &["sleep", "1000002"], NamespaceMode::Pod);
        let viewer = start_container(cri, &ctrd, pod, &config, viewer).await;
        // ...is seen by another, which also sees the pod's processes (its
        // /proc/1 is the sandbox's), hostname and sysctls.
        let out = exec_sh(
            cri,
            &viewer,
            "ls /dev/mqueue; tr '\\0' ' ' < /proc/1/cmdline; echo; \
             ps -o args | grep -c '^sleep 100000[12]$'; hostname; \
             cat /proc/sys/kernel/shm_rmid_forced /proc/sys/kernel/msgmax",
        )
        .await;
        assert_eq!(out, "firedoor-q\nsleep 2147483647 \n2\nshared\n1\n4096\n");

        let own = with_pid("own-pid", &["sleep", "1000003"], NamespaceMode::Container);
        let own = start_container(cri, &ctrd, pod, &config, own).await;
        let out = exec_sh(
            cri,
            &own,
            "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o args | grep -c '^sleep'",
        )
        .await;
        assert_eq!(out, "sleep 1000003 \n1\n");
    });

    // hostPID (NODE, set on the pod as the kubelet does): the guest's
    // own PID namespace, whose PID 1 is the agent, with every process
    // of the pod in it.
    let mut config = pod_config("node", &logs, HashMap::new());
    let ns = config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    ns.namespace_options.as_mut().unwrap().pid = NamespaceMode::Node as i32;
    with_pod(&ctrd, &config, async |cri, pod| {
        let node = with_pid("node-pid", &["sleep", "1000004"], NamespaceMode::Node);
        let node = start_container(cri, &ctrd, pod, &config, node).await;
        let out = exec_sh(
            cri,
            &node,
            "ps -o pid,args | grep -E '^ *1 |sleep (2147483647|1000004)$'",
        )
        .await;
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("1 ") && !l.contains("sleep")),
            "{out}"
        );
        for sleep in ["2147483647", "1000004"] {
            assert!(out.contains(&format!("sleep {sleep}")), "{sleep}: {out}");
        }
    });
}

/// Stops a container with `timeout` seconds of grace; returns how long
/// StopContainer took.
async fn stop_container(cri: &mut Cri, id: &str, timeout: i64) -> Duration {
    let start = Instant::now();
    cri.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    start.elapsed()
}

/// Issue 9 items 5 and 6: an exec with a terminal works for 64-hex
/// container and exec ids (resize included); a failed exec leaves nothing
/// running once the pod is removed; StopContainer returns as soon as the
/// container has exited on SIGTERM, and SIGKILLs one that ignores it when
/// the timeout passes.
#[test]
fn terminal_exec_and_stop_are_exact() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let config = pod_config("stops", &logs, HashMap::new());
    with_pod(&ctrd, &config, async |cri, pod| {
        let polite = container_config(
            "polite",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 0.1; done",
            ],
        );
        let polite = start_container(cri, &ctrd, pod, &config, polite).await;
        // Ignores SIGTERM (as PID 1 of a PID namespace without a handler
        // would).
        let stubborn = container_config(
            "stubborn",
            &[
                "sh",
                "-c",
                "trap '' TERM; touch /tmp/ready; while true; do sleep 0.1; done",
            ],
        );
        let stubborn = start_container(cri, &ctrd, pod, &config, stubborn).await;
        assert_eq!(polite.len(), 64, "CRI ids are 64 hex characters");

        // A terminal exec with a 64-hex exec id, through ctr, its terminal
        // given by script(1) and sized by it: the size reaches the guest.
        let exec_id = "e".repeat(64);
        let ctr = format!(
            "stty rows 33 cols 101; /usr/bin/ctr --address {} -n k8s.io task exec -t --exec-id {exec_id} {polite} sh -c '{TTY_SIZE_SCRIPT}'",
            ctrd.address().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &ctr, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ctr}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("33 101"), "terminal size: {text:?}");

        // A failed exec: the program does not exist.
        let failed = cri
            .exec_sync(ExecSyncRequest {
                container_id: polite.clone(),
                cmd: vec!["/no/such/program".into()],
                timeout: 30,
            })
            .await;
        assert!(
            failed.as_ref().map_or(true, |r| r.get_ref().exit_code != 0),
            "{failed:?}"
        );

        exec_sh(cri, &polite, "test -e /tmp/ready").await;
        let took = stop_container(cri, &polite, 30).await;
        assert!(took < Duration::from_secs(5), "SIGTERM stop took {took:?}");
        assert_eq!(exit_code(cri, &polite).await, 0);

        exec_sh(cri, &stubborn, "test -e /tmp/ready").await;
        let took = stop_container(cri, &stubborn, 3).await;
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(8),
            "stop with a 3 s timeout took {took:?}"
        );
        assert_eq!(exit_code(cri, &stubborn).await, 128 + 9);
        for id in [&polite, &stubborn] {
            cri.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
        }
        // Nothing is left running, the failed exec's process record
        // included: the shim exits with the pod.
    });
}

/// A pod on a network of its own (the loopback-only CNI network of the
/// test's containerd), not the host's: its containers share the pod's
/// network namespace in the guest, where the pod's `net.*` sysctls apply —
/// its own, and on containerd 2.x the two every such pod gets
/// (`net.ipv4.ip_unprivileged_port_start`, `net.ipv4.ping_group_range`),
/// which made every pod fail to start before there was a pod netns.
#[test]
fn pod_network_namespace_takes_the_pods_net_sysctls() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let mut config = pod_config("netpod", &logs, HashMap::new());
    let linux = config.linux.as_mut().unwrap();
    // The pod's own network namespace (CRI's default).
    linux.security_context = None;
    linux.sysctls = HashMap::from([(
        "net.ipv4.ip_local_port_range".to_string(),
        "40000 50000".to_string(),
    )]);
    with_pod(&ctrd, &config, async |cri, pod| {
        let app = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            container_config("app", &["sleep", "1000"]),
        )
        .await;
        let sidecar = start_container(
            cri,
            &ctrd,
            pod,
            &config,
            container_config("sidecar", &["sleep", "1000"]),
        )
        .await;
        let read = "cat /proc/sys/net/ipv4/ip_local_port_range \
                    /proc/sys/net/ipv4/ip_unprivileged_port_start; readlink /proc/self/ns/net";
        let seen_app = exec_sh(cri, &app, read).await;
        let seen_sidecar = exec_sh(cri, &sidecar, read).await;
        let lines: Vec<&str> = seen_app.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["40000", "50000"],
            "{seen_app}"
        );
        let unprivileged_ports = if ctrd.build().is_v2() { "0" } else { "1024" };
        assert_eq!(lines[1], unprivileged_ports, "{seen_app}");
        // One network namespace for the pod.
        assert_eq!(seen_app, seen_sidecar, "the pod's containers share it");
        assert!(lines[2].starts_with("net:["), "{seen_app}");
    });
}

/// Issue 9 item 8: a privileged container and one with NET_ADMIN added
/// build a bridge, a veth pair and a NAT rule (iptables-nft, copied into
/// the test image) in the pod's network namespace, the privileged one a tap
/// device too; privileged
/// means privileged in the guest: none of the host's device nodes appear.
#[test]
fn privileged_and_net_admin_containers_manage_the_network() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let mut config = pod_config("netadmin", &logs, HashMap::new());
    // containerd admits privileged containers in privileged pods only.
    let linux = config.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().privileged = true;
    with_pod(&ctrd, &config, async |cri, pod| {
        let setup = |n: u32| {
            format!(
                "ip link add br{n} type bridge && ip link add vpair{n} type veth && \
                 brctl addif br{n} vpair{n} && \
                 /sbin/iptables -t nat -A POSTROUTING -o br{n} -j MASQUERADE && \
                 /sbin/iptables -t nat -S POSTROUTING | grep -c 'br{n} -j MASQUERADE' && \
                 ls /sys/class/net/br{n}/brif | grep -c vpair{n}"
            )
        };
        let privileged = with_security(
            container_config("privileged", &["sleep", "1000000"]),
            LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        );
        let privileged = start_container(cri, &ctrd, pod, &config, privileged).await;
        assert_eq!(exec_sh(cri, &privileged, &setup(0)).await, "1\n1\n");
        // /dev/net/tun is the guest's own (the host's entry is kept: every
        // kernel numbers it alike).
        let tap = "tunctl -t tap0 >/dev/null && ip -o link | grep -c tap0";
        assert_eq!(exec_sh(cri, &privileged, tap).await, "1\n");
        // The host's devices (containerd lists all of them for a privileged
        // container) are not made in the guest.
        assert!(Path::new("/dev/kvm").exists() || Path::new("/dev/vda").exists());
        let devices = exec_sh(cri, &privileged, "ls /dev").await;
        for host_only in ["kvm", "vda", "vhost-vsock", "loop0"] {
            assert!(
                !devices.lines().any(|d| d == host_only),
                "/dev/{host_only} in the guest: {devices}"
            );
        }

        let net_admin = with_security(
            container_config("net-admin", &["sleep", "1000000"]),
            LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let net_admin = start_container(cri, &ctrd, pod, &config, net_admin).await;
        assert_eq!(exec_sh(cri, &net_admin, &setup(1)).await, "1\n1\n");
    });
}

/// Unmounts (lazily) what a test mounted on the host, whatever happens.
struct HostMounts(Vec<PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(path)
                .status();
        }
    }
}

fn host(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{args:?}");
}

/// Mount points below `dir` on the host (from /proc/self/mountinfo).
fn host_mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort();
    found
}

/// Issue 9 item 4: volumes with HostToContainer (`rslave`) and
/// Bidirectional (`rshared`) propagation; pins down which directions cross
/// the VM boundary (see the README's known limits). One host directory is
/// one volume of the pod: a mount one container makes below it reaches the
/// pod's other containers that asked for propagation, not a private one.
#[test]
fn propagated_volumes_start_and_directions_are_pinned() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    // containerd requires the source of a propagated volume to be on a
    // shared mount: a tmpfs of the test's own, made shared.
    let vol = ctrd.dir().join("vol");
    fs::create_dir_all(&vol).unwrap();
    let mut mounts = HostMounts(vec![]);
    host(&[
        "mount",
        "-t",
        "tmpfs",
        "firedoor-test",
        vol.to_str().unwrap(),
    ]);
    mounts.0.push(vol.clone());
    host(&["mount", "--make-shared", vol.to_str().unwrap()]);
    fs::write(vol.join("before"), "before\n").unwrap();
    let mut config = pod_config("propagation", &logs, HashMap::new());
    let linux = config.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().privileged = true;
    with_pod(&ctrd, &config, async |cri, pod| {
        let with_volume = |name: &str, path: &str, propagation: MountPropagation| {
            let mut c = with_security(
                container_config(name, &["sleep", "1000000"]),
                LinuxContainerSecurityContext {
                    privileged: true,
                    ..Default::default()
                },
            );
            c.mounts = vec![k8s_cri::v1::Mount {
                container_path: path.into(),
                host_path: vol.display().to_string(),
                propagation: propagation as i32,
                ..Default::default()
            }];
            c
        };
        let slave = with_volume(
            "slave",
            "/data",
            MountPropagation::PropagationHostToContainer,
        );
        let slave = start_container(cri, &ctrd, pod, &config, slave).await;
        let shared = with_volume(
            "shared",
            "/data",
            MountPropagation::PropagationBidirectional,
        );
        let shared = start_container(cri, &ctrd, pod, &config, shared).await;
        // No propagation (private): started before the mounts below, so
        // that it would have them if propagation reached it.
        let private = with_volume("private", "/data", MountPropagation::PropagationPrivate);
        let private = start_container(cri, &ctrd, pod, &config, private).await;
        for id in [&slave, &shared, &private] {
            assert_eq!(exec_sh(cri, id, "cat /data/before").await, "before\n");
        }

        // Host -> container: a mount made on the host under the volume
        // after the containers started.
        let sub = vol.join("sub");
        fs::create_dir_all(&sub).unwrap();
        host(&[
            "mount",
            "-t",
            "tmpfs",
            "firedoor-test-sub",
            sub.to_str().unwrap(),
        ]);
        mounts.0.push(sub.clone());
        fs::write(sub.join("after"), "after\n").unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = exec_sh(
            cri,
            &slave,
            "cat /data/sub/after 2>/dev/null || echo unseen",
        )
        .await;
        // Container -> pod and host: a mount made by the Bidirectional one.
        exec_sh(
            cri,
            &shared,
            "mkdir -p /data/inner && mount -t tmpfs inner /data/inner && echo inner > /data/inner/f",
        )
        .await;
        let unseen = "cat /data/inner/f 2>/dev/null || echo unseen";
        let in_pod = exec_sh(cri, &slave, unseen).await;
        let in_private = exec_sh(cri, &private, unseen).await;
        let on_host = fs::read_to_string(vol.join("inner/f")).unwrap_or_else(|_| "unseen\n".into());
        // Pinned: host -> container works (virtiofsd and the shim's bind
        // see the host's new mount); a container's own mount reaches the
        // pod's containers that mount the volume with propagation (one
        // guest mount per volume, in a peer group of its own), not a
        // private one, and not the host (virtio-fs carries files, not
        // mounts).
        assert_eq!(seen, "after\n", "host -> container");
        assert_eq!(in_pod, "inner\n", "container -> rslave container");
        assert_eq!(in_private, "unseen\n", "container -> private container");
        assert_eq!(on_host, "unseen\n", "container -> host");
    });
    // Nothing of the pod is left on the host: its state dir went (checked
    // by with_pod), and below the volume only the test's own mount stays.
    assert_eq!(host_mounts_under(&vol), [vol.clone(), vol.join("sub")]);
}

/// Waits (up to two minutes: TCG under load) until `done` holds for the
/// messages of log file `path`; returns them.
async fn wait_for_log(path: &Path, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let messages = if path.exists() {
            log_messages(path)
        } else {
            Vec::new()
        };
        if done(&messages) {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {messages:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 9 item 9, the kubelet's side of a container's end and of its log:
/// a container over its memory limit ends OOMKilled with exit code 137 in
/// ContainerStatus; after the kubelet renamed a log file (rotation),
/// ReopenContainerLog makes the container's further output land in a new
/// file at the log path, and none of it in the rotated one.
#[test]
fn oom_killed_reason_and_log_reopen() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let config = pod_config("kubelet", &logs, HashMap::new());
    with_pod(&ctrd, &config, async |cri, pod| {
        // A 16 MiB limit and a 64 MiB buffer filled by dd, its first process.
        let mut hog = container_config(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        );
        hog.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hog = start_container(cri, &ctrd, pod, &config, hog).await;
        assert_eq!(exit_code(cri, &hog).await, 137);
        // containerd takes the reason from the TaskOOM event, which may
        // follow the exit.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = container_status(cri, &hog).await;
            if status.reason == "OOMKilled" {
                break;
            }
            assert!(Instant::now() < deadline, "not OOMKilled: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Says what /tmp/say holds, once per file (written whole by mv).
        let talker = container_config(
            "talker",
            &[
                "sh",
                "-c",
                "while true; do if [ -e /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 0.1; done",
            ],
        );
        let talker = start_container(cri, &ctrd, pod, &config, talker).await;
        let say = |word: &str| format!("echo {word} > /tmp/say.new && mv /tmp/say.new /tmp/say");
        let log = logs.join("talker.log");
        exec_sh(cri, &talker, &say("before")).await;
        wait_for_log(&log, |m| m.iter().any(|l| l == "before")).await;

        let rotated = logs.join("talker.log.1");
        fs::rename(&log, &rotated).unwrap();
        cri.reopen_container_log(ReopenContainerLogRequest {
            container_id: talker.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReopenContainerLog: {e}\n{}", ctrd.log_tail(30)));
        exec_sh(cri, &talker, &say("after")).await;
        let messages = wait_for_log(&log, |m| m.iter().any(|l| l == "after")).await;
        assert_eq!(messages, ["after"], "the new log file");
        assert_eq!(log_messages(&rotated), ["before"], "the rotated one");
    });
}

/// The harness's `with_pod` removes the pod even when the test in it
/// panics: no shim, VM or state dir outlives a failed test.
/// containerd restarted while a pod runs (a node's containerd upgrade):
/// the pod's shim and VM stay, containerd reconnects to them, and exec,
/// StopContainer and the pod's removal still work (CI runs this file on
/// containerd 1.6 and 2.1).
#[test]
fn containerd_restart_keeps_the_pod_manageable() {
    let mut ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let config = pod_config("restarted", &logs, HashMap::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pod, app) = runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        let pod = run_pod(&mut cri, &ctrd, &config).await;
        let app = container_config(
            "app",
            &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        );
        let app = start_container(&mut cri, &ctrd, &pod, &config, app).await;
        assert_eq!(
            exec_sh(&mut cri, &app, "echo before").await.trim(),
            "before"
        );
        (pod, app)
    });
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod");
    ctrd.restart();
    assert_eq!(
        ctrd.shim_pids(),
        shims,
        "the shim outlives containerd's restart"
    );
    runtime.block_on(async {
        let mut cri = connect(ctrd.address()).await;
        wait_initialized(&mut cri).await;
        assert_eq!(exec_sh(&mut cri, &app, "echo after").await.trim(), "after");
        stop_container(&mut cri, &app, 30).await;
        assert_eq!(
            exit_code(&mut cri, &app).await,
            0,
            "the container's TERM trap ran"
        );
        cri.remove_container(RemoveContainerRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", ctrd.log_tail(30)));
        remove_pod(&mut cri, &ctrd, &pod).await;
    });
}

#[test]
fn a_pod_whose_test_panics_is_removed_all_the_same() {
    let ctrd = Containerd::start_cri();
    let logs = ctrd.dir().join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let config = pod_config("doomed", &logs, HashMap::new());
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_pod(&ctrd, &config, async |_, pod| {
            seen = Some(pod.to_string());
            panic!("a failing test (on purpose)");
        });
    }));
    assert!(outcome.is_err(), "the test's panic goes on");
    let pod = seen.expect("the test ran");
    let state_dir = pod_state_dir(&pod);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (state_dir.exists() || !ctrd.shim_pids().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    assert_eq!(ctrd.shim_pids(), Vec::<u32>::new(), "shim left behind");
    assert_eq!(
        processes_mentioning(&state_dir),
        vec![],
        "VM processes left behind"
    );
}
