//! Docker as a client: Debian sid's dockerd 28 against the test's own
//! containerd 2.1 (whatever `FIREDOOR_CONTAINERD` says), `docker run
//! --runtime io.containerd.firedoor.v2` with `--network none`, or on
//! Docker's bridge inside a network namespace of the test's own with `-p`;
//! OCI hooks through CDI; the busybox image loaded with `docker load`,
//! `--pull never`.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use firedoor_tests::{
    containerd::{Build, Containerd},
    docker::{run_args, Docker, DockerSetup},
    hooks::HookProbes,
    TTY_SIZE_SCRIPT,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker run --rm --runtime firedoor --network none FLAGS busybox ARGS`.
fn rm_args<'a>(flags: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    run_args(&[&["--rm", "--network", "none"], flags].concat(), args)
}

#[test]
fn docker_run_output_exit_codes_stdin_tty_and_volumes() {
    let ctrd = Containerd::start_build(Build::named("2.1"));
    let docker = Docker::start(&ctrd);

    let out = docker.docker(&rm_args(&[], &["echo", "hi from docker"]));
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stderr),
        docker.log_tail(20),
        ctrd.log_tail(20)
    );
    assert_eq!(text(&out.stdout), "hi from docker\n");

    let out = docker.docker(&rm_args(&[], &["sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // -i: stdin reaches the container and is closed after the last byte.
    let mut child = docker
        .command(&rm_args(&["-i"], &["sh", "-c", "cat; echo done"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "line one\ndone\n");

    // -t: a terminal of the caller's size (script(1) gives docker one).
    let tty = format!(
        "stty rows 31 cols 97; {} --host {} {}",
        docker.docker_path().display(),
        docker.host_arg(),
        rm_args(&["-t"], &["sh", "-c", &format!("'{TTY_SIZE_SCRIPT}'")]).join(" ")
    );
    let out = Command::new("script")
        .args(["-qec", &tty, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("31 97"), "{stdout:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");

    // -v: a host directory, read and written from the VM.
    let volume = docker.dir().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("in"), "from the host\n").unwrap();
    let bind = format!("{}:/data", volume.display());
    let out = docker.docker(&rm_args(
        &["-v", &bind],
        &["sh", "-c", "cat /data/in; echo from the vm > /data/out"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(volume.join("out")).unwrap(),
        "from the vm\n"
    );
}

#[test]
fn docker_exec_and_stop() {
    let ctrd = Containerd::start_build(Build::named("2.1"));
    let docker = Docker::start(&ctrd);
    let name = "fd-docker-stop";
    docker.run_detached(
        name,
        &["--network", "none"],
        &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
    );
    let out = docker.docker_ok(&["exec", name, "sh", "-c", "echo from exec; hostname"]);
    assert!(out.starts_with("from exec\n"), "{out}");
    let out = docker.docker(&["exec", name, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    docker.docker_ok(&["stop", "-t", "20", name]);
    let state = docker.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        name,
    ]);
    assert_eq!(state.trim(), "exited 0");
    docker.docker_ok(&["rm", name]);
}

/// Waits (up to 60 s) until no shim of `ctrd` runs and the shim left no
/// state dir for Docker's container `id`.
fn assert_vm_gone(ctrd: &Containerd, id: &str) {
    let dir = Path::new("/run/firedoor/moby").join(id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (dir.exists() || !ctrd.shim_pids().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(ctrd.shim_pids(), Vec::<u32>::new(), "shim left behind");
}

/// A /24 of this test's own inside 10.216.0.0/13 (apart from the CRI
/// tests' ranges), from its process id: the bridge lives in a private
/// network namespace, so only readability asks for distinct ranges.
fn private_bridge_ip() -> String {
    let seed = std::process::id();
    format!("10.{}.{}.1/24", 216 + (seed >> 8) % 8, seed % 256)
}

/// `docker run -p` on Docker's own bridge: dockerd moves the container's
/// veth into the network namespace of the pid create reported (a host
/// process of the shim's in a namespace of its own), the VM boots at start
/// with that veth's address on its NIC, and docker-proxy forwards the
/// published port to busybox httpd in the VM. dockerd, docker0 and the
/// proxy live in a network namespace the test made; the host's stays as
/// it was.
#[test]
fn docker_run_publishes_a_port_served_from_the_vm_on_a_private_bridge() {
    let ctrd = Containerd::start_build(Build::named("2.1"));
    let docker = Docker::start_with(
        &ctrd,
        DockerSetup {
            bridge_ip: Some(private_bridge_ip()),
            ..Default::default()
        },
    );
    let netns = docker.netns().unwrap();
    let name = "fd-docker-web";
    let id = docker
        .run_detached(
            name,
            &["-p", "8080:80"],
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo served from the vm > /www/index.html && \
                 exec httpd -f -p 80 -h /www",
            ],
        )
        .trim()
        .to_string();
    let inspect = docker.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}} {{.State.Pid}}",
        name,
    ]);
    let (ip, pid) = inspect.trim().split_once(' ').unwrap();
    assert!(!ip.is_empty(), "no address: {inspect}");

    // The page, through docker-proxy on the published port (httpd may take
    // a moment to listen in a loaded VM).
    let deadline = Instant::now() + Duration::from_secs(90);
    let response = loop {
        match netns.http_get(8080, "/index.html") {
            Ok(r) if r.contains("200 OK") => break r,
            other if Instant::now() > deadline => panic!(
                "no page on port 8080: {other:?}\n{}\n{}",
                docker.log_tail(30),
                ctrd.log_tail(30)
            ),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(
        response.ends_with("\r\n\r\nserved from the vm\n"),
        "{response:?}"
    );
    // The container's address is on the VM's NIC, in the guest.
    let guest = docker.docker_ok(&["exec", name, "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(guest.contains(&format!(" {ip}/24 ")), "{guest}");
    // Docker's pid is a host process in a namespace of its own holding the
    // veth, not a process of the host's network namespace.
    let own = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(own, fs::read_link("/proc/self/ns/net").unwrap());
    // Other tests change the host's addresses meanwhile: only ours counts.
    let host = host_addresses();
    assert!(
        !host.contains(&format!("{ip}/")),
        "{ip} on the host: {host}"
    );

    docker.docker_ok(&["rm", "-f", name]);
    assert_vm_gone(&ctrd, &id);
}

/// The host's IPv4 addresses (`ip -o -4 addr`), to show that the
/// container's was not configured there.
fn host_addresses() -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect();
    lines.sort();
    lines.join(" ")
}

/// OCI hooks through Docker's CDI support: a CDI device whose edits are
/// only hooks (createRuntime, poststart, poststop: each writes the state it
/// read and what it saw before it; one more createRuntime hook wires an
/// interface into the pid's network namespace), `docker run --device`; they
/// run on the host, in order, with the state the OCI spec defines, and the
/// create hooks before the VM boots.
#[test]
fn docker_runs_cdi_hooks_on_the_host_in_order_with_the_state() {
    let ctrd = Containerd::start_build(Build::named("2.1"));
    let cdi = ctrd.dir().join("cdi");
    let probes = HookProbes::new(&ctrd.dir().join("hook-out"));
    fs::create_dir_all(&cdi).unwrap();
    let hook = |name: &str, phase: &str| {
        serde_json::json!({
            "hookName": name,
            "path": "/bin/sh",
            "args": ["sh", "-c", probes.script(phase, "")],
            "env": ["PATH=/usr/bin:/bin"],
            "timeout": 30
        })
    };
    // A createRuntime hook that puts an interface with an address into the
    // namespace of the state's pid, as a CNI-calling hook would: it runs
    // before the VM reads that namespace, so the VM's NIC has the address.
    let wire = serde_json::json!({
        "hookName": "createRuntime",
        "path": "/bin/sh",
        "args": ["sh", "-c", "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); \
            nsenter --net=/proc/$pid/ns/net sh -c 'ip link add fdhook0 type veth peer name fdhook1 && \
            ip addr add 10.231.7.2/24 dev fdhook0 && ip link set fdhook0 up && ip link set fdhook1 up'"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "timeout": 30
    });
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "firedoor.test/hooks",
        "devices": [{
            "name": "probe",
            "containerEdits": {"hooks": [
                hook("createRuntime", "create"),
                wire,
                hook("poststart", "poststart"),
                hook("poststop", "poststop"),
            ]}
        }, {
            "name": "refusing",
            "containerEdits": {"hooks": [{
                "hookName": "createRuntime",
                "path": "/bin/sh",
                "args": ["sh", "-c", "echo the hook refused >&2; exit 3"],
                "timeout": 30
            }]}
        }]
    });
    fs::write(cdi.join("firedoor-hooks.json"), spec.to_string()).unwrap();
    let docker = Docker::start_with(
        &ctrd,
        DockerSetup {
            cdi_spec_dir: Some(cdi),
            ..Default::default()
        },
    );
    let name = "fd-docker-hooks";
    let out = docker.docker(&run_args(
        &[
            "--name",
            name,
            "--network",
            "none",
            "--device",
            "firedoor.test/hooks=probe",
        ],
        &["sh", "-c", "echo hooked; ip -o -4 addr show eth0"],
    ));
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stderr),
        docker.log_tail(30),
        ctrd.log_tail(30)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("hooked\n"), "{stdout}");
    assert!(
        stdout.contains(" 10.231.7.2/24 "),
        "no NIC from the hook: {stdout}"
    );
    let id = docker.docker_ok(&["inspect", "-f", "{{.Id}}", name]);
    let id = id.trim();
    // poststop runs when the task is deleted: docker rm.
    docker.docker_ok(&["rm", name]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while probes.read("poststop.before").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    probes.assert_ran_in_order(id, || ctrd.log_tail(30));
    assert_vm_gone(&ctrd, id);

    // A failing createRuntime hook fails the run, naming it, and leaves
    // nothing behind.
    let out = docker.docker(&run_args(
        &[
            "--name",
            "fd-docker-refused",
            "--network",
            "none",
            "--device",
            "firedoor.test/hooks=refusing",
        ],
        &["echo", "never"],
    ));
    assert!(!out.status.success(), "ran despite the failing hook");
    assert!(
        text(&out.stderr).contains("the hook refused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    let refused = docker.docker_ok(&["inspect", "-f", "{{.Id}}", "fd-docker-refused"]);
    assert_vm_gone(&ctrd, refused.trim());
}
