//! Docker as a client: Debian sid's dockerd 28 against the test's own
//! containerd 2.1 (whatever `FIREDOOR_CONTAINERD` says), `docker run
//! --runtime io.containerd.firedoor.v2` with `--network none`, the busybox
//! image loaded with `docker load`, `--pull never`.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use firedoor_tests::{
    containerd::{Build, Containerd, RUNTIME},
    docker::{Docker, BUSYBOX},
    TTY_SIZE_SCRIPT,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker run --rm --runtime firedoor --network none FLAGS busybox ARGS`.
fn run_args<'a>(flags: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "run",
        "--rm",
        "--pull",
        "never",
        "--runtime",
        RUNTIME,
        "--network",
        "none",
    ];
    all.extend_from_slice(flags);
    all.push(BUSYBOX);
    all.extend_from_slice(args);
    all
}

#[test]
fn docker_run_output_exit_codes_stdin_tty_and_volumes() {
    let ctrd = Containerd::start_build(Build::named("2.1"));
    let docker = Docker::start(&ctrd);

    let out = docker.docker(&run_args(&[], &["echo", "hi from docker"]));
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stderr),
        docker.log_tail(20),
        ctrd.log_tail(20)
    );
    assert_eq!(text(&out.stdout), "hi from docker\n");

    let out = docker.docker(&run_args(&[], &["sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // -i: stdin reaches the container and is closed after the last byte.
    let mut child = docker
        .command(&run_args(&["-i"], &["sh", "-c", "cat; echo done"]))
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
        run_args(&["-t"], &["sh", "-c", &format!("'{TTY_SIZE_SCRIPT}'")]).join(" ")
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
    let out = docker.docker(&run_args(
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
    docker.docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--pull",
        "never",
        "--runtime",
        RUNTIME,
        "--network",
        "none",
        BUSYBOX,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 1000 & wait",
    ]);
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
