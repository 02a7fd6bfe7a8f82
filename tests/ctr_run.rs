//! Firedoor through real containerd and `ctr`, as a user runs it: a private
//! containerd (Debian 12's 1.6 by default; `FIREDOOR_CONTAINERD=1.7|2.1`
//! for the builds of scripts/containerd-builds) on its own socket, the
//! busybox image built locally, the qemu backend (TCG on this host).

use std::{fs, io::Write, process::Stdio};

use firedoor_tests::{
    containerd::{Containerd, RUNTIME},
    hooks::HookProbes,
    image::BUSYBOX_IMAGE,
    processes_mentioning, TTY_SIZE_SCRIPT,
};

fn run_rm(ctrd: &Containerd, id: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "--runtime", RUNTIME, "--rm", BUSYBOX_IMAGE, id];
    full.extend_from_slice(args);
    ctrd.ctr_command(&full)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `ctr run --rm` of `true` with extra `ctr run` flags.
fn run_rm_with(ctrd: &Containerd, id: &str, flags: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "--runtime", RUNTIME, "--rm"];
    full.extend_from_slice(flags);
    full.extend_from_slice(&[BUSYBOX_IMAGE, id, "true"]);
    ctrd.ctr_command(&full)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `out` is a failure whose stderr names `what`.
fn assert_fails_naming(out: &std::process::Output, what: &str) {
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(what), "{}", text(&out.stderr));
}

/// [`run_rm`] that must succeed; returns what it printed.
fn run_rm_ok(ctrd: &Containerd, id: &str, args: &[&str]) -> String {
    let out = run_rm(ctrd, id, args);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        ctrd.log_tail(30)
    );
    text(&out.stdout)
}

#[test]
fn run_rm_echo_prints_and_exits_zero() {
    let ctrd = Containerd::start();
    let out = run_rm_ok(&ctrd, "fd-echo", &["echo", "hello from the microVM"]);
    assert_eq!(out, "hello from the microVM\n");
    ctrd.assert_sandbox_gone("fd-echo");
}

/// A shim that died without containerd's `delete` left its state dir (here
/// faked): the next sandbox with that id cleans it up and runs.
#[test]
fn stale_state_of_a_dead_shim_is_cleaned_up() {
    let ctrd = Containerd::start();
    let stale = Containerd::state_dir("fd-stale");
    fs::create_dir_all(stale.join("vm")).unwrap();
    fs::write(stale.join("vm/console.log"), "old").unwrap();
    fs::write(stale.join("vm.pids"), "999999999\n").unwrap();
    let out = run_rm_ok(&ctrd, "fd-stale", &["echo", "fresh"]);
    assert_eq!(out, "fresh\n");
    ctrd.assert_sandbox_gone("fd-stale");
}

#[test]
fn exit_code_propagates() {
    let ctrd = Containerd::start();
    let out = run_rm(
        &ctrd,
        "fd-exit",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    ctrd.assert_sandbox_gone("fd-exit");
}

/// Output far beyond every buffer on the way (pipe, vsock credit, Unix
/// socket, FIFO) arrives whole and in order: the guest waits for the host
/// rather than losing bytes. `cat` of a file writes in large chunks, which
/// the guest kernel sends as large vsock packets.
#[test]
fn large_output_arrives_whole() {
    let ctrd = Containerd::start();
    let lines = 200_000;
    let script = format!("seq 1 {lines} > /tmp/seq && cat /tmp/seq");
    let got = run_rm_ok(&ctrd, "fd-bigout", &["sh", "-c", &script]);
    let want: String = (1..=lines).map(|i| format!("{i}\n")).collect();
    assert_eq!(got.len(), want.len(), "bytes of output");
    assert!(got == want, "output differs from seq 1 {lines}");
    ctrd.assert_sandbox_gone("fd-bigout");
}

#[test]
fn stdin_is_forwarded_and_closed() {
    let ctrd = Containerd::start();
    let mut child = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            BUSYBOX_IMAGE,
            "fd-stdin",
            "sh",
            "-c",
            "cat; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n");
    ctrd.assert_sandbox_gone("fd-stdin");
}

#[test]
fn tty_gives_a_terminal_of_the_callers_size() {
    let ctrd = Containerd::start();
    // `ctr run -t` needs a terminal: give it one with script(1).
    let ctr = format!(
        "stty rows 33 cols 101; {} --address {} run -t --runtime {RUNTIME} --rm {BUSYBOX_IMAGE} fd-tty sh -c '{TTY_SIZE_SCRIPT}'",
        ctrd.build().ctr().display(),
        ctrd.address().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("33 101"), "{stdout:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
    ctrd.assert_sandbox_gone("fd-tty");
}

#[test]
fn detached_task_exec_ps_pause_resume_metrics_kill_delete() {
    let ctrd = Containerd::start();
    let id = "fd-detached";
    // PID 1 of a pid namespace ignores SIGTERM unless it handles it (as
    // with runc), so the init traps it.
    ctrd.run_detached(
        id,
        &[],
        &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
    );
    // The shim catches no SIGCHLD: nothing reaps the VM's processes behind
    // the back of the code that waits for them.
    for pid in ctrd.shim_pids() {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(
            caught & (1 << (nix::sys::signal::Signal::SIGCHLD as u32 - 1)),
            0,
            "shim {pid} catches SIGCHLD"
        );
    }

    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo from exec; hostname",
    ]);
    assert!(out.starts_with("from exec\n"), "{out}");
    let out = ctrd.ctr(&["task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));

    let ps = ctrd.ctr_ok(&["task", "ps", id]);
    assert!(ps.lines().count() >= 2, "{ps}");

    ctrd.ctr_ok(&["task", "pause", id]);
    ctrd.wait_status(id, "PAUSED");
    ctrd.ctr_ok(&["task", "resume", id]);
    ctrd.wait_status(id, "RUNNING");

    // cgroup v2 metrics from the guest: sh and sleep, memory and CPU used.
    let metrics = ctrd.ctr_ok(&["task", "metrics", id]);
    let metric = |key: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next() == Some(key)).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {key} in\n{metrics}"))
    };
    assert_eq!(metric("pids.current"), 2, "{metrics}");
    assert!(metric("memory.usage") > 0, "{metrics}");
    assert!(metric("cpu.usage_usec") > 0, "{metrics}");

    ctrd.kill_and_remove(id, "SIGTERM");
    ctrd.assert_sandbox_gone(id);
}

/// containerd restarted while a task runs (a node's containerd upgrade or
/// crash): it reconnects to the running shim from what the shim left in the
/// bundle, and the task stays manageable: exec, kill, delete.
#[test]
fn containerd_restart_keeps_the_task_manageable() {
    let mut ctrd = Containerd::start();
    let id = "fd-restart";
    ctrd.run_detached(
        id,
        &[],
        &["sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"],
    );
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");

    ctrd.restart();
    ctrd.wait_status(id, "RUNNING");
    assert_eq!(ctrd.shim_pids(), shims, "the same shim serves the task");
    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        id,
        "echo",
        "still here",
    ]);
    assert_eq!(out, "still here\n");
    // The exit reaches the new containerd as an event with its status.
    let mut events = ctrd
        .ctr_command(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    ctrd.ctr_ok(&["task", "kill", "-s", "SIGTERM", id]);
    ctrd.wait_status(id, "STOPPED");
    events.kill().unwrap();
    let seen = text(&events.wait_with_output().unwrap().stdout);
    let exit = seen
        .lines()
        .find(|l| l.contains("/tasks/exit"))
        .unwrap_or_else(|| {
            panic!(
                "no TaskExit event after the restart:\n{seen}\n{}",
                ctrd.log_tail(40)
            )
        });
    assert!(exit.contains("\"exit_status\":7"), "{exit}");
    ctrd.ctr_ok(&["task", "delete", id]);
    ctrd.ctr_ok(&["containers", "rm", id]);
    ctrd.assert_sandbox_gone(id);
}

/// OCI hooks that belong to the host run on the host, in order, with the
/// container's state on stdin; the state's pid is a host process in the
/// container's own network namespace (not the host's).
#[test]
fn host_hooks_run_with_the_state_and_a_pid_in_the_containers_netns() {
    let ctrd = Containerd::start();
    let id = "fd-hooks";
    let probes = HookProbes::new(&ctrd.dir().join("hooks"));
    let hook = |phase: &str| {
        // Also the network namespace of the state's pid.
        let netns = format!(
            "pid=$(echo \"$state\" | sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); \
             readlink /proc/$pid/ns/net > {dir}/{phase}.netns; ",
            dir = probes.dir().display()
        );
        let script = probes.script(phase, &netns);
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", script],
            "env": ["PATH=/usr/bin:/bin"],
            "timeout": 20
        })
    };
    let spec_text = ctrd.ctr_ok(&["oci", "spec"]);
    let mut spec: serde_json::Value = serde_json::from_str(&spec_text).unwrap();
    spec["process"]["args"] = serde_json::json!(["echo", "hooked"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    // With a whole spec, ctr takes no image: a busybox root of our own.
    let rootfs = ctrd.dir().join("hooks-rootfs");
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    spec["hooks"] = serde_json::json!({
        "createRuntime": [hook("create")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    let spec_file = ctrd.dir().join("hooks-spec.json");
    fs::write(&spec_file, spec.to_string()).unwrap();

    let out = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--config",
            spec_file.to_str().unwrap(),
            id,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        ctrd.log_tail(30)
    );
    assert_eq!(text(&out.stdout), "hooked\n");
    probes.assert_ran_in_order(id, || ctrd.log_tail(30));
    // The pid was a live host process in a network namespace of its own.
    let netns = probes.read("create.netns");
    assert!(netns.starts_with("net:["), "{netns:?}");
    assert_eq!(probes.read("poststop.netns"), netns);
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(netns.trim(), host.to_string_lossy());
    ctrd.assert_sandbox_gone(id);
}

/// The VM's size from containerd's runtime options (`--runtime-config-path`,
/// as CRI's `ConfigPath`) and from the pod's annotations.
#[test]
fn runtime_options_and_annotations_size_the_vm() {
    let ctrd = Containerd::start();
    let config = ctrd.dir().join("two-cpus.toml");
    fs::write(&config, "vcpus = 2\nmemory_mib = 192\n").unwrap();
    let out = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            config.to_str().unwrap(),
            "--annotation",
            "io.firedoor.vm.memory_mib=320",
            "--rm",
            BUSYBOX_IMAGE,
            "fd-sized",
            "sh",
            "-c",
            "nproc; head -n1 /proc/meminfo",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        ctrd.log_tail(30)
    );
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("2"), "{stdout}");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {stdout}"));
    // 320 MiB of RAM less what the kernel keeps for itself.
    assert!((250 << 10..=320 << 10).contains(&kib), "MemTotal {kib} kB");

    // A bad annotation: a clear error, nothing left.
    let bad = run_rm_with(
        &ctrd,
        "fd-badsize",
        &["--annotation", "io.firedoor.vm.vcpus=lots"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("io.firedoor.vm.vcpus"),
        "{}",
        text(&bad.stderr)
    );
    ctrd.assert_sandbox_gone("fd-sized");
    ctrd.assert_sandbox_gone("fd-badsize");
}

#[test]
fn two_containers_of_a_pod_share_one_vm() {
    let ctrd = Containerd::start();
    let pod = "fd-pod";
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    for id in [pod, "fd-pod-app"] {
        ctrd.run_detached(id, &["--annotation", &annotation], &["sleep", "1000"]);
    }
    assert_eq!(ctrd.shim_pids().len(), 1, "one shim per pod");
    let vm_processes = processes_mentioning(&Containerd::state_dir(pod));
    let vmms = vm_processes
        .iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .count();
    assert_eq!(vmms, 1, "one VM per pod: {vm_processes:?}");
    // Each container has its own pid namespace: only its own sleep.
    let ps = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "ps",
        "fd-pod-app",
        "ps",
        "-o",
        "pid,args",
    ]);
    assert_eq!(ps.matches("sleep 1000").count(), 1, "{ps}");
    for id in ["fd-pod-app", pod] {
        ctrd.kill_and_remove(id, "SIGKILL");
    }
    ctrd.assert_sandbox_gone(pod);
}

#[test]
fn command_missing_from_the_image_fails_cleanly() {
    let ctrd = Containerd::start();
    let out = run_rm(&ctrd, "fd-nocmd", &["/bin/no-such-command"]);
    assert_fails_naming(&out, "no-such-command");
    ctrd.assert_sandbox_gone("fd-nocmd");
}

#[test]
fn bad_config_json_fails_naming_the_problem() {
    let ctrd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("config.json");
    fs::write(
        &spec,
        r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}, "root": {"path": "rootfs"}}"#,
    )
    .unwrap();
    let out = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--config",
            spec.to_str().unwrap(),
            "fd-badspec",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_fails_naming(&out, "process.args is empty");
    ctrd.assert_sandbox_gone("fd-badspec");
}

#[test]
fn missing_kernel_fails_naming_the_path() {
    let ctrd = Containerd::start_with_config("kernel = \"/nonexistent/vmlinux\"\n");
    let out = run_rm(&ctrd, "fd-nokernel", &["true"]);
    assert_fails_naming(&out, "/nonexistent/vmlinux");
    ctrd.assert_sandbox_gone("fd-nokernel");
}

#[test]
fn guest_that_never_answers_times_out() {
    let ctrd = Containerd::start_with_config(
        "boot_timeout_secs = 5\nkernel_params = [\"firedoor.port=3000\"]\n",
    );
    let out = run_rm(&ctrd, "fd-timeout", &["true"]);
    assert_fails_naming(&out, "did not answer");
    ctrd.assert_sandbox_gone("fd-timeout");
}

#[test]
fn vmm_killed_with_sigkill_ends_the_task_and_cleans_up() {
    sandbox_process_killed_ends_the_task_and_cleans_up("qemu-system", "fd-vmkill", false);
}

/// The sandbox VM ends by the guest's own reset once the container is
/// deleted: the shim never has to kill it (it used to, 5 s after Shutdown,
/// on every sandbox).
#[test]
fn run_rm_vm_powers_off_by_itself() {
    let ctrd = Containerd::start();
    let out = run_rm(&ctrd, "fd-poweroff", &["true"]);
    let log = ctrd.log_tail(400);
    assert!(out.status.success(), "{}\n{log}", text(&out.stderr));
    ctrd.assert_sandbox_gone("fd-poweroff");
    assert!(!log.contains("killing it"), "the VM was killed:\n{log}");
    assert!(
        log.contains("sandbox VM stopped (exit status: 0)"),
        "no clean power-off in the log:\n{log}"
    );
}

/// Resident memory of process `pid` in MiB (guest RAM it touched included).
fn rss_mib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// Free page reporting: 160 MiB the container writes to a tmpfs show in
/// the VMM's resident memory, and once it deletes the file the guest hands
/// most of it back (without a balloon the VMM keeps every page it touched).
#[test]
fn memory_the_guest_frees_goes_back_to_the_host() {
    let ctrd = Containerd::start_with_config("memory_mib = 384\n");
    let id = format!("fd-balloon-{}", std::process::id());
    ctrd.run_detached(
        &id,
        &["--mount", "type=tmpfs,src=none,dst=/big,options=size=200m"],
        &["sleep", "1000"],
    );
    let vmm = Containerd::sandbox_process(&id, "qemu-system");
    let exec = |script: &str| {
        ctrd.ctr_ok(&["task", "exec", "--exec-id", "fill", &id, "sh", "-c", script]);
    };
    let before = rss_mib(vmm);
    exec("dd if=/dev/zero of=/big/fill bs=1M count=160 2>/dev/null");
    let filled = rss_mib(vmm);
    assert!(
        filled >= before + 120,
        "160 MiB written in the guest, VMM RSS {before} -> {filled} MiB"
    );
    exec("rm /big/fill");
    // The guest reports freed pages in 2 MiB blocks a few seconds later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while rss_mib(vmm) + 100 > filled && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let after = rss_mib(vmm);
    assert!(
        after + 100 <= filled,
        "the guest freed 160 MiB, VMM RSS {before} -> {filled} -> {after} MiB"
    );
    ctrd.kill_and_remove(&id, "KILL");
    ctrd.assert_sandbox_gone(&id);
}

/// The resident KiB of QEMU's translated-code cache: its one anonymous
/// mapping that is readable, writable and executable at once.
fn tcg_code_cache_kib(pid: i32) -> Option<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "start-end perms offset dev inode [path]": no path, inode 0.
        if fields.len() == 5 && fields[1] == "rwxp" && fields[4] == "0" {
            return lines
                .find_map(|l| l.strip_prefix("Rss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok());
        }
    }
    None
}

/// Under TCG every exec in a container has QEMU translate code it had not
/// seen (~3.4 MiB each, measured), and QEMU's default cache is 1 GiB: the
/// backend caps it, so execs in a long-lived pod do not grow the VMM.
#[test]
fn execs_do_not_grow_the_tcg_code_cache_past_its_cap() {
    let ctrd = Containerd::start();
    let id = format!("fd-codecache-{}", std::process::id());
    ctrd.run_detached(&id, &[], &["sleep", "1000"]);
    let vmm = Containerd::sandbox_process(&id, "qemu-system");
    let Some(booted) = tcg_code_cache_kib(vmm) else {
        eprintln!("skipped: the VMM has no TCG code cache (hardware KVM)");
        ctrd.kill_and_remove(&id, "KILL");
        return;
    };
    for i in 0..12 {
        let exec_id = format!("e{i}");
        ctrd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            &id,
            "sh",
            "-c",
            "ls -la /bin | wc -l",
        ]);
    }
    let after = tcg_code_cache_kib(vmm).expect("the code cache is still mapped");
    // 64 MiB, hypervisor/src/qemu.rs TCG_CODE_CACHE_MIB; uncapped it was
    // 42 MiB after the boot and 76 MiB after these execs (measured).
    assert!(
        after <= 64 * 1024,
        "TCG code cache {booted} KiB after the boot, {after} KiB after 12 execs"
    );
    ctrd.kill_and_remove(&id, "KILL");
    ctrd.assert_sandbox_gone(&id);
}

/// A process of the sandbox (the VMM, virtiofsd, vhost-device-vsock) killed
/// with SIGKILL under a running container: the sandbox fails at once, the
/// task exits 137 (the attached `ctr` exits with the status containerd
/// reports), and nothing of the sandbox is left. QEMU quits by itself when
/// virtiofsd goes (or the shim's watcher stops it first); it keeps running
/// without its vsock backend, and then only the watcher stops it
/// (`shim_stops_the_vm`). The built-in VMM outlives either helper, so there
/// the watcher always does.
fn sandbox_process_killed_ends_the_task_and_cleans_up(
    helper: &str,
    id: &str,
    shim_stops_the_vm: bool,
) {
    let ctrd = Containerd::start();
    let mut run = ctrd.run_attached(id, &["sleep", "1000"]);
    let victim = Containerd::sandbox_process(id, helper);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(137),
        "exit status reported for the task\n{}",
        ctrd.log_tail(20)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the task took {:?} to end after {helper} died",
        started.elapsed()
    );
    let log = fs::read_to_string(ctrd.dir().join("containerd.log")).unwrap();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .collect();
    // The shim noticed: the VM's exit, or the helper's death first (then
    // the task may be deleted before the VM's exit is seen).
    let helper_died = log.contains(&format!(
        "{helper} (pid {victim}) exited under a running sandbox"
    ));
    assert!(
        helper_died || log.contains("the sandbox VM exited unexpectedly"),
        "{}",
        problems.join("\n")
    );
    if shim_stops_the_vm {
        assert!(helper_died, "{}", problems.join("\n"));
    }
    ctrd.ctr_ok(&["containers", "rm", id]);
    ctrd.assert_sandbox_gone(id);
}

#[test]
fn virtiofsd_killed_ends_the_task_and_cleans_up() {
    sandbox_process_killed_ends_the_task_and_cleans_up("virtiofsd", "fd-fskill", false);
}

#[test]
fn vhost_device_vsock_killed_ends_the_task_and_cleans_up() {
    sandbox_process_killed_ends_the_task_and_cleans_up("vhost-device-vsock", "fd-vsockkill", true);
}

/// A test that fails leaves its tasks running; dropping the harness's
/// containerd must still leave nothing behind: no shim, no VM process, no
/// state dir in the host-wide /run/firedoor (it runs the shim's `delete`
/// for the sandboxes of its own shims, as containerd would).
#[test]
fn dropping_the_harness_cleans_up_a_running_sandbox() {
    let ctrd = Containerd::start();
    let id = format!("fd-dropped-{}", std::process::id());
    ctrd.run_detached(&id, &[], &["sleep", "1000"]);
    let state_dir = Containerd::state_dir(&id);
    assert!(state_dir.is_dir(), "{} while running", state_dir.display());
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    drop(ctrd);
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    // SIGKILLed processes vanish once reaped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !processes_mentioning(&state_dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        processes_mentioning(&state_dir),
        vec![],
        "VM processes left"
    );
    for pid in shims {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "shim {pid} left"
        );
    }
}
