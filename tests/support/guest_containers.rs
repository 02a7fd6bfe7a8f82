//! Containers inside the real guest, run by firedoor-agent from a busybox
//! rootfs shared by virtiofsd, with cgroup v2 limits, OOM events, statistics
//! and the freezer. One scenario, run with each backend: the qemu backend
//! (tests/agent_in_guest.rs) and the built-in VMM (tests/nested_kvm.rs,
//! inside scripts/nested-kvm). Prints the measured latency.

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

/// Generous: everything runs in an instruction emulator.
const TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_ROOTFS: &str = "/run/firedoor/shared/rootfs";

fn make_rootfs(root: &Path) {
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
fn spec(args: &[&str], memory_limit: Option<u64>) -> Vec<u8> {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let resources = memory_limit.map_or(String::new(), |limit| {
        format!(r#","resources":{{"memory":{{"limit":{limit},"swap":{limit}}}}}"#)
    });
    format!(
        r#"{{"ociVersion":"1.0.2",
  "process":{{"user":{{"uid":0,"gid":0}},"args":[{args}],"env":["PATH=/bin"],"cwd":"/",
    "capabilities":{{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}},
    "noNewPrivileges":true}},
  "root":{{"path":"rootfs"}},
  "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
    {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}}],
  "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}},{{"type":"ipc"}},{{"type":"uts"}}]{resources}}}}}"#,
        args = args.join(",")
    )
    .into_bytes()
}

struct Guest {
    sandbox: Sandbox,
}

impl Guest {
    fn create(&self, id: &str, spec: Vec<u8>, stdout: bool) -> u32 {
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
        self.sandbox
            .agent()
            .create_container(ctx(TIMEOUT), &req)
            .unwrap()
            .pid
    }

    fn container(id: &str) -> ContainerRequest {
        ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    fn start(&self, id: &str) {
        let agent = self.sandbox.agent();
        agent
            .start_container(ctx(TIMEOUT), &Self::container(id))
            .unwrap();
    }

    fn stdout(&self, id: &str) -> UnixStream {
        let mut conn = self.sandbox.connect_stdio().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        StreamHeader::new(id, "", Stream::Stdout)
            .attach(&mut conn)
            .unwrap();
        conn
    }

    fn wait(&self, id: &str) -> i32 {
        let req = ProcessRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let agent = self.sandbox.agent();
        agent.wait_process(ctx(TIMEOUT), &req).unwrap().exit_status
    }

    fn remove(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        };
        let agent = self.sandbox.agent();
        agent.remove_container(ctx(TIMEOUT), &req).unwrap();
    }
}

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
    let sandbox = Sandbox::boot(backend, &vm).unwrap();
    let guest = Guest { sandbox };
    let agent = guest.sandbox.agent();
    let req = CreateSandboxRequest {
        sandbox_id: "pod".into(),
        hostname: "pod".into(),
        shared_fs_tag: SHARED_FS_TAG.into(),
        ..Default::default()
    };
    agent.create_sandbox(ctx(TIMEOUT), &req).unwrap();

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
    let event = agent
        .get_oom_event(ctx(Duration::from_secs(10)), &GetOOMEventRequest::new())
        .unwrap();
    assert_eq!(event.container_id, "oom");
    guest.remove("oom");

    // A running container: stats, pause and resume.
    guest.create("sleep", spec(&["sleep", "1000"], Some(64 << 20)), false);
    guest.start("sleep");
    let stats = agent
        .stats_container(ctx(TIMEOUT), &Guest::container("sleep"))
        .unwrap();
    let memory = stats.memory.as_ref().expect("memory stats");
    assert!(memory.usage > 0, "{stats:?}");
    assert_eq!(memory.limit, 64 << 20);
    assert_eq!(stats.pids.as_ref().expect("pids stats").current, 1);
    assert!(stats.cpu.is_some());
    agent
        .pause_container(ctx(TIMEOUT), &Guest::container("sleep"))
        .unwrap();
    agent
        .resume_container(ctx(TIMEOUT), &Guest::container("sleep"))
        .unwrap();
    guest.remove("sleep");

    agent
        .destroy_sandbox(ctx(TIMEOUT), &DestroySandboxRequest::new())
        .unwrap();
    let (status, killed) = guest.sandbox.shutdown().unwrap();
    assert!(!killed && status.success(), "{status}");
    drop(guest);
    assert_nothing_left(run_base.path());
}
