//! Containers in a real guest through the agent API, without containerd: a
//! busybox rootfs shared by virtiofsd, thin wrappers over the RPCs, and one
//! scenario run with each backend (tests/agent_in_guest.rs: qemu;
//! tests/nested_kvm.rs: the built-in VMM inside scripts/nested-kvm). Also
//! used by the agent benchmark.

use std::{
    fs,
    io::Read,
    os::unix::{fs::symlink, net::UnixStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{assert_nothing_left, guest_spec};
use firedoor_hypervisor::{Backend, SHARED_FS_TAG};
use firedoor_protocol::{
    agent::*,
    stdio::{Stream, StreamHeader},
};
use firedoor_shim::sandbox::{ctx, Sandbox};

/// Where the guest sees the `rootfs` directory of the shared dir.
pub const GUEST_ROOTFS: &str = "/run/firedoor/shared/rootfs";

/// A busybox rootfs at `root`, from the host's busybox-static.
pub fn make_rootfs(root: &Path) {
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
}

/// A runc-style spec running `args`, with an optional memory limit.
pub fn spec(args: &[&str], memory_limit: Option<u64>) -> Vec<u8> {
    let resources =
        memory_limit.map(|limit| format!(r#""memory":{{"limit":{limit},"swap":{limit}}}"#));
    runc_spec(args, &["CAP_KILL"], resources.as_deref())
}

/// containerd's default `linux.resources.devices`: deny everything, then
/// allow mknod of any node and full access to the usual ones.
pub const CONTAINERD_DEVICE_RULES: &str = r#"[
    {"allow":false,"access":"rwm"},
    {"allow":true,"type":"c","access":"m"},{"allow":true,"type":"b","access":"m"},
    {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
    {"allow":true,"type":"c","major":1,"minor":8,"access":"rwm"},
    {"allow":true,"type":"c","major":1,"minor":7,"access":"rwm"},
    {"allow":true,"type":"c","major":5,"minor":0,"access":"rwm"},
    {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
    {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
    {"allow":true,"type":"c","major":5,"minor":1,"access":"rwm"},
    {"allow":true,"type":"c","major":136,"access":"rwm"},
    {"allow":true,"type":"c","major":5,"minor":2,"access":"rwm"}]"#;

/// Like `spec`, with CAP_MKNOD (containerd grants it by default) and the
/// device rules `rules_json` (a `linux.resources.devices` array).
pub fn spec_with_devices(args: &[&str], rules_json: &str) -> Vec<u8> {
    let resources = format!(r#""devices":{rules_json}"#);
    runc_spec(args, &["CAP_KILL", "CAP_MKNOD"], Some(&resources))
}

/// `resources` is the inside of `linux.resources`.
fn runc_spec(args: &[&str], capabilities: &[&str], resources: Option<&str>) -> Vec<u8> {
    let quoted = |words: &[&str]| {
        words
            .iter()
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (args, caps) = (quoted(args), quoted(capabilities));
    let resources = resources.map_or(String::new(), |r| format!(r#","resources":{{{r}}}"#));
    format!(
        r#"{{"ociVersion":"1.0.2",
  "process":{{"user":{{"uid":0,"gid":0}},"args":[{args}],"env":["PATH=/bin"],"cwd":"/",
    "capabilities":{{"bounding":[{caps}],"effective":[{caps}],"permitted":[{caps}]}},
    "noNewPrivileges":true}},
  "root":{{"path":"rootfs"}},
  "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
    {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}}],
  "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}},{{"type":"ipc"}},{{"type":"uts"}}]{resources}}}}}"#
    )
    .into_bytes()
}

/// A booted guest serving the agent API, with one sandbox created.
#[derive(Debug)]
pub struct Guest {
    pub sandbox: Sandbox,
    /// Deadline of every RPC.
    pub timeout: std::time::Duration,
}

impl Guest {
    /// Creates the sandbox (hostname `pod`) on the shared filesystem.
    pub fn new(sandbox: Sandbox, timeout: std::time::Duration) -> Guest {
        let req = CreateSandboxRequest {
            sandbox_id: "pod".into(),
            hostname: "pod".into(),
            shared_fs_tag: SHARED_FS_TAG.into(),
            ..Default::default()
        };
        let agent = sandbox.agent();
        agent
            .block_on(agent.client().create_sandbox(ctx(timeout), &req))
            .unwrap();
        Guest { sandbox, timeout }
    }

    /// The agent's raw client; run its calls with [`Guest::rpc`].
    pub fn agent(&self) -> &firedoor_protocol::agent_ttrpc_async::AgentClient {
        self.sandbox.agent().client()
    }

    /// Runs one of [`Guest::agent`]'s calls to its end.
    pub fn rpc<F: std::future::Future>(&self, call: F) -> F::Output {
        self.sandbox.agent().block_on(call)
    }

    /// Creates container `id`; returns its guest pid.
    pub fn create(&self, id: &str, spec: Vec<u8>, stdout: bool) -> u32 {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec,
            rootfs: GUEST_ROOTFS.into(),
            stdio: Some(Stdio {
                stdout,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.rpc(self.agent().create_container(ctx(self.timeout), &req))
            .unwrap()
            .pid
    }

    pub fn container(id: &str) -> ContainerRequest {
        ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    pub fn start(&self, id: &str) {
        self.rpc(
            self.agent()
                .start_container(ctx(self.timeout), &Self::container(id)),
        )
        .unwrap();
    }

    /// The container's stdout stream (it must have been created with one).
    pub fn stdout(&self, id: &str) -> UnixStream {
        let mut conn = self.sandbox.connect_stdio().unwrap();
        conn.set_read_timeout(Some(self.timeout)).unwrap();
        StreamHeader::new(id, "", Stream::Stdout)
            .attach(&mut conn)
            .unwrap();
        conn
    }

    /// Runs `args` in the running container `id` as exec `exec_id` (no
    /// stdio); returns its guest pid.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> u32 {
        let args = args
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(",");
        let process = format!(
            r#"{{"args":[{args}],"cwd":"/","env":["PATH=/bin"],"user":{{"uid":0,"gid":0}}}}"#
        );
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: process.into_bytes(),
            ..Default::default()
        };
        self.rpc(self.agent().exec_process(ctx(self.timeout), &req))
            .unwrap()
            .pid
    }

    /// The exit status of the container's init.
    pub fn wait(&self, id: &str) -> i32 {
        self.wait_process(id, "")
    }

    /// The exit status of exec `exec_id` of container `id` (`""`: its init).
    pub fn wait_process(&self, id: &str, exec_id: &str) -> i32 {
        let req = ProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.rpc(self.agent().wait_process(ctx(self.timeout), &req))
            .unwrap()
            .exit_status
    }

    pub fn remove(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        };
        self.rpc(self.agent().remove_container(ctx(self.timeout), &req))
            .unwrap();
    }

    /// Destroys the sandbox and powers the guest off; panics unless the VM
    /// ended by itself with status 0.
    pub fn shut_down(self) {
        self.rpc(
            self.agent()
                .destroy_sandbox(ctx(self.timeout), &DestroySandboxRequest::new()),
        )
        .unwrap();
        let (status, killed) = self.sandbox.shutdown().unwrap();
        assert!(!killed && status.success(), "{status}");
    }
}

/// Generous: the guest runs on emulated hardware (TCG, or the nested
/// harness) on a shared, loaded machine.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Boots the guest with `backend` and a virtiofs share holding a busybox
/// rootfs, and runs containers from it: stdout, exit status, a file read from
/// and one written back to the host through virtio-fs, OOM kill and event,
/// stats, pause and resume. Leaves nothing behind.
pub fn containers_run_from_the_virtiofs_share(backend: &dyn Backend) {
    let run_base = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    make_rootfs(&share.path().join("rootfs"));
    let mut vm = guest_spec(run_base.path());
    vm.shared_dir = Some(share.path().to_owned());
    vm.memory_mib = 512;
    // Emulated hardware (TCG, or the nested harness) on a shared, loaded
    // machine can take far longer than the default to boot.
    vm.boot_timeout = TIMEOUT;
    let guest = Guest::new(Sandbox::boot(backend, &vm).unwrap(), TIMEOUT);
    let agent = guest.agent();

    // echo: stdout and exit status, and the latency of the whole cycle.
    let started = Instant::now();
    guest.create("echo", spec(&["echo", "hello"], None), true);
    let mut stdout = guest.stdout("echo");
    guest.start("echo");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "hello\n");
    assert_eq!(guest.wait("echo"), 0);
    let cycle = started.elapsed();
    guest.remove("echo");
    eprintln!(
        "create+start+wait of echo in the guest ({} backend, {}): {cycle:?}",
        backend.kind(),
        backend.accelerator()
    );

    // A file the host wrote is read in the guest, and one the guest writes
    // appears on the host: both through virtio-fs.
    let token = format!("host-token-{}", std::process::id());
    fs::write(share.path().join("rootfs/from-host"), &token).unwrap();
    let script = "cat /from-host && echo written-in-guest > /from-guest";
    guest.create("files", spec(&["sh", "-c", script], None), true);
    let mut stdout = guest.stdout("files");
    guest.start("files");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(guest.wait("files"), 0, "{out}");
    assert_eq!(out, token);
    let written = fs::read_to_string(share.path().join("rootfs/from-guest")).unwrap();
    assert_eq!(written, "written-in-guest\n");
    guest.remove("files");

    // A 16 MiB limit and a 64 MiB allocation: OOM-killed, event before exit.
    guest.create(
        "oom",
        spec(
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            Some(16 << 20),
        ),
        false,
    );
    guest.start("oom");
    assert_eq!(guest.wait("oom"), 137);
    let event = guest
        .rpc(agent.get_oom_event(ctx(Duration::from_secs(10)), &GetOOMEventRequest::new()))
        .unwrap();
    assert_eq!(event.container_id, "oom");
    guest.remove("oom");

    // A running container: stats, pause and resume.
    guest.create("sleep", spec(&["sleep", "1000"], Some(64 << 20)), false);
    guest.start("sleep");
    let stats = guest
        .rpc(agent.stats_container(ctx(TIMEOUT), &Guest::container("sleep")))
        .unwrap();
    let memory = stats.memory.as_ref().expect("memory stats");
    assert!(memory.usage > 0, "{stats:?}");
    assert_eq!(memory.limit, 64 << 20);
    assert_eq!(stats.pids.as_ref().expect("pids stats").current, 1);
    assert!(stats.cpu.is_some());
    guest
        .rpc(agent.pause_container(ctx(TIMEOUT), &Guest::container("sleep")))
        .unwrap();
    guest
        .rpc(agent.resume_container(ctx(TIMEOUT), &Guest::container("sleep")))
        .unwrap();
    guest.remove("sleep");

    guest.shut_down();
    assert_nothing_left(run_base.path());
}
