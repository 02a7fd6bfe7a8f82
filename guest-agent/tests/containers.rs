//! The agent in host test mode, driven through its real ttrpc API and stdio
//! streams, running busybox containers (needs root and /bin/busybox from
//! Debian's busybox-static). Each test runs its own agent with its own state
//! directory and cgroup, and checks that nothing is left afterwards.

use std::{
    fs,
    io::{Read, Write},
    os::unix::{fs::symlink, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use firedoor_protocol::{
    agent::*,
    agent_ttrpc::AgentClient,
    stdio::{Stream, StreamHeader},
};
use serde_json::json;
use ttrpc::Code;

const TIMEOUT: Duration = Duration::from_secs(30);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(TIMEOUT.as_nanos()).unwrap())
}

/// The host's cgroup2 mount (the unified hierarchy, also on hybrid hosts).
fn unified_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            fs.starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount.split(' ').nth(4).unwrap()))
        })
        .expect("no cgroup2 mount on this host")
}

/// A running agent and everything it uses; dropping it stops the agent and
/// checks that nothing is left.
struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    client: AgentClient,
    cgroup_parent: String,
}

/// Starts an agent on `dir` and connects to it.
fn spawn_agent(dir: &Path, cgroup_parent: &str) -> (Child, AgentClient) {
    let sock = dir.join("agent.sock");
    let _ = fs::remove_file(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_firedoor-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--stdio-listen")
        .arg(format!("unix://{}", dir.join("stdio.sock").display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-root")
        .arg(cgroup_parent)
        .arg("--allowed-root")
        .arg(dir.join("rootfs"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let addr = format!("unix://{}", sock.display());
    loop {
        if sock.exists() {
            if let Ok(client) = ttrpc::Client::connect(&addr) {
                let client = AgentClient::new(client);
                if client.check(ctx(), &CheckRequest::new()).is_ok() {
                    return (child, client);
                }
            }
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not come up");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        make_rootfs(&dir.path().join("rootfs"));
        let cgroup_parent = format!(
            "/firedoor-test-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let (child, client) = spawn_agent(dir.path(), &cgroup_parent);
        Agent {
            dir,
            child: Some(child),
            client,
            cgroup_parent,
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn restart(&mut self) {
        let (child, client) = spawn_agent(self.dir.path(), &self.cgroup_parent);
        self.child = Some(child);
        self.client = client;
    }

    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn cgroup_dir(&self) -> PathBuf {
        unified_mount().join(self.cgroup_parent.trim_start_matches('/'))
    }

    fn create(&self, id: &str, args: &[&str], stdio: Stdio) -> Result<u32, ttrpc::Error> {
        let spec = spec(args, stdio.terminal);
        self.create_raw(id, serde_json::to_vec(&spec).unwrap(), stdio)
    }

    fn create_raw(&self, id: &str, spec: Vec<u8>, stdio: Stdio) -> Result<u32, ttrpc::Error> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec,
            rootfs: self.dir.path().join("rootfs").display().to_string(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.client.create_container(ctx(), &req).map(|r| r.pid)
    }

    fn start_container(&self, id: &str) -> Result<Empty, ttrpc::Error> {
        let req = ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.start_container(ctx(), &req)
    }

    fn exec(&self, id: &str, exec_id: &str, args: &[&str], stdio: Stdio) -> u32 {
        let process = process(args, stdio.terminal);
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.client.exec_process(ctx(), &req).unwrap().pid
    }

    fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let req = ProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.wait_process(ctx(), &req).unwrap().exit_status
    }

    fn signal(&self, id: &str, exec_id: &str, signal: i32) {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: u32::try_from(signal).unwrap(),
            ..Default::default()
        };
        self.client.signal_process(ctx(), &req).unwrap();
    }

    fn remove(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        };
        self.client.remove_container(ctx(), &req).unwrap();
    }

    fn attach(&self, id: &str, exec_id: &str, stream: Stream) -> UnixStream {
        let mut conn = UnixStream::connect(self.sock("stdio.sock")).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        StreamHeader::new(id, exec_id, stream)
            .attach(&mut conn)
            .unwrap();
        conn
    }

    fn read_all(&self, id: &str, exec_id: &str, stream: Stream) -> String {
        let mut out = String::new();
        self.attach(id, exec_id, stream)
            .read_to_string(&mut out)
            .unwrap();
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.client.shutdown(ctx(), &ShutdownRequest::new());
            let deadline = Instant::now() + TIMEOUT;
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The agent removed its containers' groups; the parent is ours.
        let cgroup = self.cgroup_dir();
        if cgroup.exists() {
            let children: Vec<_> = fs::read_dir(&cgroup)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect();
            let _ = fs::remove_dir(&cgroup);
            if !thread::panicking() {
                assert!(children.is_empty(), "cgroups left: {children:?}");
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.path().display().to_string();
        if !thread::panicking() {
            assert!(!mountinfo.contains(&dir), "mounts left under {dir}");
        }
    }
}

/// A busybox rootfs: /bin/busybox plus a symlink per applet.
fn make_rootfs(root: &Path) {
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
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

fn process(args: &[&str], terminal: bool) -> serde_json::Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/tmp",
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
    })
}

/// What `runc spec` writes, minus the network namespace (no entry: the
/// agent's own, here the host's).
fn spec(args: &[&str], terminal: bool) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args, terminal),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "busybox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn stdio(stdin: bool, stdout: bool, stderr: bool, terminal: bool) -> Stdio {
    Stdio {
        terminal,
        stdin,
        stdout,
        stderr,
        ..Default::default()
    }
}

fn code(err: &ttrpc::Error) -> Code {
    match err {
        ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn echo_prints_and_exit_codes_come_back() {
    let agent = Agent::start();
    let pid = agent
        .create("echo", &["echo", "hello"], stdio(false, true, true, false))
        .unwrap();
    assert!(pid > 1);
    agent.start_container("echo").unwrap();
    assert_eq!(agent.read_all("echo", "", Stream::Stdout), "hello\n");
    assert_eq!(agent.read_all("echo", "", Stream::Stderr), "");
    assert_eq!(agent.wait("echo", ""), 0);
    // Waiting again answers at once until the container is removed.
    assert_eq!(agent.wait("echo", ""), 0);
    agent.remove("echo");

    agent
        .create(
            "three",
            &["sh", "-c", "exit 3"],
            stdio(false, false, false, false),
        )
        .unwrap();
    agent.start_container("three").unwrap();
    assert_eq!(agent.wait("three", ""), 3);
    agent.remove("three");
}

#[test]
fn stdin_reaches_cat_and_close_stdin_ends_it() {
    let agent = Agent::start();
    agent
        .create("cat", &["cat"], stdio(true, true, false, false))
        .unwrap();
    let mut stdin = agent.attach("cat", "", Stream::Stdin);
    let stdout = agent.attach("cat", "", Stream::Stdout);
    agent.start_container("cat").unwrap();
    stdin.write_all(b"one\ntwo\n").unwrap();
    let req = ProcessRequest {
        container_id: "cat".into(),
        ..Default::default()
    };
    // The data was sent before CloseStdin: cat must still get all of it.
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let mut stdout = stdout;
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    stdin.shutdown(std::net::Shutdown::Write).unwrap();
    agent.client.close_stdin(ctx(), &req).unwrap();
    assert_eq!(reader.join().unwrap(), "one\ntwo\n");
    assert_eq!(agent.wait("cat", ""), 0);
    agent.remove("cat");
}

#[test]
fn exec_into_running_container_and_signals() {
    let agent = Agent::start();
    agent
        .create("box", &["sleep", "1000"], stdio(false, false, false, false))
        .unwrap();
    agent.start_container("box").unwrap();

    agent.exec(
        "box",
        "hi",
        &["sh", "-c", "echo $((40 + 2)); id -G"],
        stdio(false, true, false, false),
    );
    let out = agent.read_all("box", "hi", Stream::Stdout);
    assert_eq!(out, "42\n0 10\n");
    assert_eq!(agent.wait("box", "hi"), 0);
    let remove = ProcessRequest {
        container_id: "box".into(),
        exec_id: "hi".into(),
        ..Default::default()
    };
    agent.client.remove_process(ctx(), &remove).unwrap();

    agent.exec(
        "box",
        "sleeper",
        &["sleep", "1000"],
        stdio(false, false, false, false),
    );
    let dup = ExecProcessRequest {
        container_id: "box".into(),
        exec_id: "sleeper".into(),
        process_json: serde_json::to_vec(&process(&["true"], false)).unwrap(),
        ..Default::default()
    };
    let err = agent.client.exec_process(ctx(), &dup).unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS, "{err:?}");
    agent.signal("box", "sleeper", libc::SIGTERM);
    assert_eq!(agent.wait("box", "sleeper"), 128 + libc::SIGTERM);

    let procs = agent
        .client
        .list_processes(
            ctx(),
            &ContainerRequest {
                container_id: "box".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(procs.pids.len(), 1, "{:?}", procs.pids);

    // Paused and resumed (the cgroup v2 freezer), it still runs execs.
    let req = ContainerRequest {
        container_id: "box".into(),
        ..Default::default()
    };
    agent.client.pause_container(ctx(), &req).unwrap();
    agent.client.resume_container(ctx(), &req).unwrap();
    agent.exec("box", "after", &["true"], stdio(false, false, false, false));
    assert_eq!(agent.wait("box", "after"), 0);

    // The pid namespace's init ignores SIGTERM without a handler, as in runc.
    agent.signal("box", "", libc::SIGKILL);
    assert_eq!(agent.wait("box", ""), 128 + libc::SIGKILL);
    agent.remove("box");
}

#[test]
fn terminal_gets_its_size() {
    let agent = Agent::start();
    agent
        .create("tty", &["stty", "size"], stdio(false, true, false, true))
        .unwrap();
    let resize = ResizeTtyRequest {
        container_id: "tty".into(),
        rows: 33,
        columns: 111,
        ..Default::default()
    };
    agent.client.resize_tty(ctx(), &resize).unwrap();
    let stdout = agent.attach("tty", "", Stream::Stdout);
    agent.start_container("tty").unwrap();
    let mut out = String::new();
    let mut stdout = stdout;
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "33 111\r\n");
    assert_eq!(agent.wait("tty", ""), 0);
    agent.remove("tty");
}

#[test]
fn containers_do_not_see_each_others_processes() {
    let agent = Agent::start();
    for (id, secs) in [("a", "1000"), ("b", "2000")] {
        agent
            .create(id, &["sleep", secs], stdio(false, false, false, false))
            .unwrap();
        agent.start_container(id).unwrap();
    }
    agent.exec(
        "a",
        "ps",
        &["ps", "-o", "pid,args"],
        stdio(false, true, false, false),
    );
    let out = agent.read_all("a", "ps", Stream::Stdout);
    assert_eq!(agent.wait("a", "ps"), 0);
    assert!(out.contains("sleep 1000"), "{out}");
    assert!(!out.contains("sleep 2000"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 1000")),
        "{out}"
    );
    agent.remove("a");
    agent.remove("b");
}

#[test]
fn bad_requests_get_clear_status_codes() {
    let agent = Agent::start();
    let quiet = || stdio(false, false, false, false);

    let mut bad = spec(&["true"], false);
    bad["process"]["user"]["uid"] = json!("root");
    let err = agent
        .create_raw("bad", serde_json::to_vec(&bad).unwrap(), quiet())
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(format!("{err:?}").contains("process.user.uid"), "{err:?}");

    let err = agent.create_raw("bad", b"{".to_vec(), quiet()).unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);

    let err = agent.create("../x", &["true"], quiet()).unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);

    let outside = CreateContainerRequest {
        container_id: "outside".into(),
        oci_spec_json: serde_json::to_vec(&spec(&["true"], false)).unwrap(),
        rootfs: "/".into(),
        ..Default::default()
    };
    let err = agent.client.create_container(ctx(), &outside).unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);

    let mut bind = spec(&["true"], false);
    bind["mounts"] =
        json!([{"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind"]}]);
    let err = agent
        .create_raw("bind", serde_json::to_vec(&bind).unwrap(), quiet())
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(format!("{err:?}").contains("mounts[0].source"), "{err:?}");

    let err = agent.start_container("nope").unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    let wait = ProcessRequest {
        container_id: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        code(&agent.client.wait_process(ctx(), &wait).unwrap_err()),
        Code::NOT_FOUND
    );

    agent.create("once", &["sleep", "1000"], quiet()).unwrap();
    let err = agent.create("once", &["true"], quiet()).unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS);
    let no_exec = ProcessRequest {
        container_id: "once".into(),
        exec_id: "ghost".into(),
        ..Default::default()
    };
    let err = agent.client.wait_process(ctx(), &no_exec).unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    agent.start_container("once").unwrap();
    let err = agent.start_container("once").unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    let keep = RemoveContainerRequest {
        container_id: "once".into(),
        force: false,
        ..Default::default()
    };
    let err = agent.client.remove_container(ctx(), &keep).unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);

    let err = agent
        .create("missing", &["/no/such/program"], quiet())
        .unwrap_err();
    assert!(format!("{err:?}").contains("/no/such/program"), "{err:?}");
    agent.remove("once");
    // The agent still serves after all this.
    agent.client.check(ctx(), &CheckRequest::new()).unwrap();
}

fn alive(pid: u32) -> bool {
    // A zombie (reparented to an init that does not reap) is dead too.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn restart_after_sigkill_removes_what_the_old_agent_left() {
    let mut agent = Agent::start();
    let pid = agent
        .create(
            "orphan",
            &["sleep", "1000"],
            stdio(false, false, false, false),
        )
        .unwrap();
    agent.start_container("orphan").unwrap();
    assert!(alive(pid));
    agent.kill();
    agent.restart();
    assert!(!alive(pid), "container process {pid} survived the restart");
    let state = fs::read_dir(agent.dir.path().join("state/containers"))
        .unwrap()
        .count();
    assert_eq!(state, 0);
    let err = agent.start_container("orphan").unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
}

/// containerd's default device rules: deny everything, allow mknod of any
/// node and full access to the usual ones.
fn containerd_device_rules() -> serde_json::Value {
    let mut rules = vec![
        json!({"allow": false, "access": "rwm"}),
        json!({"allow": true, "type": "c", "access": "m"}),
        json!({"allow": true, "type": "b", "access": "m"}),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 8),
        (1, 7),
        (5, 0),
        (1, 5),
        (1, 9),
        (5, 1),
        (5, 2),
    ] {
        rules.push(
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}),
        );
    }
    rules.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
    json!(rules)
}

/// Runs `script` as an exec in `id`; returns its exit status and stderr.
fn exec_script(agent: &Agent, id: &str, exec_id: &str, script: &str) -> (i32, String) {
    agent.exec(
        id,
        exec_id,
        &["sh", "-c", script],
        stdio(false, false, true, false),
    );
    let stderr = agent.read_all(id, exec_id, Stream::Stderr);
    (agent.wait(id, exec_id), stderr)
}

#[test]
fn device_rules_are_enforced_and_updates_replace_them() {
    let agent = Agent::start();
    let mut spec = spec(&["sleep", "1000"], false);
    spec["linux"]["resources"] = json!({"devices": containerd_device_rules()});
    agent
        .create_raw(
            "devs",
            serde_json::to_vec(&spec).unwrap(),
            stdio(false, false, false, false),
        )
        .unwrap();
    agent.start_container("devs").unwrap();

    // Allowed devices work.
    let (status, stderr) = exec_script(
        &agent,
        "devs",
        "null",
        "echo x > /dev/null && head -c 4 /dev/zero > /dev/null",
    );
    assert_eq!((status, stderr.as_str()), (0, ""));
    // With CAP_MKNOD the container can make a node for the loop device
    // (b 7:0, present on this host; its open has no side effects), but the
    // filter refuses to open it: without the filter the open succeeds.
    let (status, stderr) = exec_script(
        &agent,
        "devs",
        "loop",
        "mknod /dev/loop b 7 0 && : < /dev/loop",
    );
    assert_ne!(status, 0, "opening a denied device succeeded");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(!stderr.contains("mknod"), "mknod is allowed: {stderr}");

    // An update that allows reading it replaces (not adds to) the filter.
    let mut rules = containerd_device_rules();
    rules
        .as_array_mut()
        .unwrap()
        .push(json!({"allow": true, "type": "b", "major": 7, "minor": 0, "access": "r"}));
    let update = UpdateContainerRequest {
        container_id: "devs".into(),
        resources_json: serde_json::to_vec(&json!({"devices": rules})).unwrap(),
        ..Default::default()
    };
    agent.client.update_container(ctx(), &update).unwrap();
    let (status, stderr) = exec_script(&agent, "devs", "read", ": < /dev/loop");
    assert_eq!((status, stderr.as_str()), (0, ""));
    // Read only: writing stays denied.
    let (status, stderr) = exec_script(&agent, "devs", "write", ": > /dev/loop");
    assert_ne!(status, 0);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    // A bad rule is refused and leaves the filter as it was.
    let bad = UpdateContainerRequest {
        container_id: "devs".into(),
        resources_json: serde_json::to_vec(&json!({"devices": [{"allow": true, "access": "rwx"}]}))
            .unwrap(),
        ..Default::default()
    };
    let err = agent.client.update_container(ctx(), &bad).unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{err:?}");
    let (status, _) = exec_script(&agent, "devs", "again", ": < /dev/loop");
    assert_eq!(status, 0);
    agent.remove("devs");
}

/// A seccomp profile that allows everything but chmod(2) and sethostname(2)
/// (what a containerd `Localhost` profile becomes in the spec).
fn deny_chmod_and_sethostname() -> serde_json::Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{
            "names": ["chmod", "fchmod", "fchmodat", "fchmodat2", "sethostname"],
            "action": "SCMP_ACT_ERRNO", "errnoRet": 1
        }]
    })
}

/// Runs `script` as an exec of `id` (with `process` as its base) and
/// returns its stdout.
fn exec_output(agent: &Agent, id: &str, exec_id: &str, process: serde_json::Value) -> String {
    let req = ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process_json: serde_json::to_vec(&process).unwrap(),
        stdio: Some(stdio(false, true, false, false)).into(),
        ..Default::default()
    };
    agent.client.exec_process(ctx(), &req).unwrap();
    let out = agent.read_all(id, exec_id, Stream::Stdout);
    assert_eq!(agent.wait(id, exec_id), 0, "{exec_id}: {out}");
    out
}

/// What a process reports about its confinement: its Seccomp and CapEff
/// lines, and whether chmod and hostname were refused.
const CONFINEMENT: &str = "grep -E '^(Seccomp|CapEff):' /proc/self/status; \
    chmod 400 /tmp 2>/dev/null && echo chmod allowed || echo chmod denied; \
    hostname x 2>/dev/null && echo hostname allowed || echo hostname denied";

#[test]
fn seccomp_applies_to_init_and_exec_processes() {
    let agent = Agent::start();
    // no_new_privs off (the Kubernetes default) and on.
    for (id, no_new_privs) in [("nnp-off", json!(null)), ("nnp-on", json!(true))] {
        let mut confined = spec(&["sh", "-c", CONFINEMENT], false);
        confined["process"]["noNewPrivileges"] = no_new_privs.clone();
        // CAP_SYS_ADMIN: sethostname must fail for seccomp's sake alone.
        for set in ["bounding", "effective", "permitted"] {
            confined["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_ADMIN"));
        }
        confined["linux"]["seccomp"] = deny_chmod_and_sethostname();
        agent
            .create_raw(
                id,
                serde_json::to_vec(&confined).unwrap(),
                stdio(false, true, false, false),
            )
            .unwrap();
        agent.start_container(id).unwrap();
        let init = agent.read_all(id, "", Stream::Stdout);
        assert_eq!(agent.wait(id, ""), 0, "{init}");
        assert!(init.contains("Seccomp:\t2"), "{id} init: {init}");
        assert!(init.contains("chmod denied"), "{id} init: {init}");
        assert!(init.contains("hostname denied"), "{id} init: {init}");
        agent.remove(id);

        // Exec'd processes, with the process's own capabilities.
        let mut sleeper = spec(&["sleep", "1000"], false);
        sleeper["process"]["noNewPrivileges"] = no_new_privs.clone();
        sleeper["linux"]["seccomp"] = deny_chmod_and_sethostname();
        agent
            .create_raw(
                id,
                serde_json::to_vec(&sleeper).unwrap(),
                stdio(false, false, false, false),
            )
            .unwrap();
        agent.start_container(id).unwrap();
        let mut process = process(&["sh", "-c", CONFINEMENT], false);
        process["noNewPrivileges"] = no_new_privs.clone();
        let out = exec_output(&agent, id, "confined", process.clone());
        assert!(out.contains("Seccomp:\t2"), "{id} exec: {out}");
        assert!(out.contains("chmod denied"), "{id} exec: {out}");
        assert!(out.contains("hostname denied"), "{id} exec: {out}");
        // The CAP_SYS_ADMIN the filter was loaded with is gone again.
        let cap_eff = out
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(cap_eff & (1 << 21), 0, "{id}: CAP_SYS_ADMIN left: {out}");
        assert_ne!(cap_eff, 0, "{id}: {out}");
        agent.signal(id, "", libc::SIGKILL);
        agent.wait(id, "");
        agent.remove(id);
    }

    // Without a profile, processes run unconfined.
    agent
        .create(
            "free",
            &["sleep", "1000"],
            stdio(false, false, false, false),
        )
        .unwrap();
    agent.start_container("free").unwrap();
    let out = exec_output(
        &agent,
        "free",
        "e",
        process(&["grep", "^Seccomp:", "/proc/self/status"], false),
    );
    assert_eq!(out, "Seccomp:\t0\n");
    agent.remove("free");
}

/// A 136-byte static x86-64 program that exits with its effective uid
/// (geteuid; exit): 0 when a setuid-root copy escalated, 1000 & 255 = 232
/// when it did not.
const EUID_PROGRAM: &str = "f0VMRgIBAQAAAAAAAAAAAAIAPgABAAAAeABAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAEAAOAABAAAAAAAAAAEAAAAFAAAAAAAAAAAAAAAAAEAAAAAAAAAAQAAAAAAAiAAAAAAAAACIAAAAAAAAAAAQAAAAAAAAuGsAAAAPBYnHuDwAAAAPBQ==";

#[test]
fn no_new_privileges_decides_whether_setuid_escalates() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start();
    let euid = agent.sock("rootfs/bin/euid");
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(EUID_PROGRAM.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    fs::write(&euid, decoded.stdout).unwrap();
    fs::set_permissions(&euid, fs::Permissions::from_mode(0o4755)).unwrap();
    for (id, no_new_privs, status) in [("allowed", json!(null), 0), ("denied", json!(true), 232)] {
        let mut euid = spec(&["/bin/euid"], false);
        euid["process"]["noNewPrivileges"] = no_new_privs;
        euid["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        agent
            .create_raw(
                id,
                serde_json::to_vec(&euid).unwrap(),
                stdio(false, false, false, false),
            )
            .unwrap();
        agent.start_container(id).unwrap();
        assert_eq!(agent.wait(id, ""), status, "{id}");
        agent.remove(id);
    }
}

#[test]
fn pod_containers_share_the_namespaces_they_name() {
    let agent = Agent::start();
    let pod_netns = agent.sock("state/netns/pod");
    let mut sandbox = spec(&["sleep", "1000"], false);
    sandbox["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network", "path": pod_netns}));
    sandbox["linux"]["sysctl"] = json!({
        "kernel.shm_rmid_forced": "1",
        "net.ipv4.ip_local_port_range": "40000 50000"
    });
    let pause = agent
        .create_raw(
            "pause",
            serde_json::to_vec(&sandbox).unwrap(),
            stdio(false, false, false, false),
        )
        .unwrap();
    agent.start_container("pause").unwrap();

    // The app joins the sandbox's pid, ipc and uts namespaces by the paths
    // containerd's CRI writes, and the pod network namespace.
    let mut app = spec(
        &[
            "sh",
            "-c",
            "ps -o pid,args | grep -q '^ *1 sleep 1000' && echo pid shared; \
             cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_local_port_range; \
             hostname; \
             ip -o link | grep -c ': lo:.*UP'; ip -o link | wc -l",
        ],
        false,
    );
    app["linux"]["namespaces"] = json!([
        {"type": "pid", "path": format!("/proc/{pause}/ns/pid")},
        {"type": "ipc", "path": format!("/proc/{pause}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{pause}/ns/uts")},
        {"type": "network", "path": pod_netns},
        {"type": "mount"}
    ]);
    app["hostname"] = json!(null);
    agent
        .create_raw(
            "app",
            serde_json::to_vec(&app).unwrap(),
            stdio(false, true, false, false),
        )
        .unwrap();
    agent.start_container("app").unwrap();
    let out = agent.read_all("app", "", Stream::Stdout);
    assert_eq!(agent.wait("app", ""), 0, "{out}");
    // Only lo, up, in the pod network namespace.
    assert_eq!(out, "pid shared\n1\n40000\t50000\nbusybox\n1\n1\n");
    agent.remove("app");

    // A path naming a process that is not a container's init is refused.
    let mut bad = spec(&["true"], false);
    bad["linux"]["namespaces"] = json!([{"type": "ipc", "path": "/proc/1/ns/ipc"}]);
    let err = agent
        .create_raw(
            "bad",
            serde_json::to_vec(&bad).unwrap(),
            stdio(false, false, false, false),
        )
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{err:?}");
    agent.remove("pause");
}
