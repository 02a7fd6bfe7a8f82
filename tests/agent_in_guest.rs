//! Containers inside the real guest (qemu backend, TCG here): a busybox
//! rootfs shared by virtiofsd, run by firedoor-agent with cgroup v2 limits,
//! OOM events, statistics, the freezer and device rules. Prints the measured
//! latency.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use firedoor_hypervisor::QemuBackend;
use firedoor_protocol::agent::GetOOMEventRequest;
use firedoor_shim::sandbox::{ctx, Sandbox};
use firedoor_tests::{
    assert_nothing_left,
    guest::{make_rootfs, spec, spec_with_devices, Guest, CONTAINERD_DEVICE_RULES},
    guest_spec,
};

/// Generous: everything runs in an instruction emulator.
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn containers_run_in_the_guest_from_the_virtiofs_share() {
    let run_base = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    make_rootfs(&share.path().join("rootfs"));
    let mut vm = guest_spec(run_base.path());
    vm.shared_dir = Some(share.path().to_owned());
    vm.memory_mib = 512;
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &vm).unwrap();
    let guest = Guest::new(sandbox, TIMEOUT);
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
    eprintln!("create+start+wait of echo in the guest (TCG): {cycle:?}");

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

    guest.shut_down();
    assert_nothing_left(run_base.path());
}

#[test]
fn device_rules_hold_in_the_guest() {
    let run_base = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    make_rootfs(&share.path().join("rootfs"));
    let mut vm = guest_spec(run_base.path());
    vm.shared_dir = Some(share.path().to_owned());
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &vm).unwrap();
    let guest = Guest::new(sandbox, TIMEOUT);

    // With containerd's rules and CAP_MKNOD the container may make device
    // nodes but open only the allowed devices. Without the filter the
    // block device would fail differently (no SCSI disk: "No such device or
    // address") and /dev/fuse (built into the guest kernel) would open.
    let script = "exec 2>&1
        echo x > /dev/null && echo null: ok
        mknod /dev/sda b 8 0 && true < /dev/sda && echo sda: opened
        mknod /dev/fuse c 10 229 && true > /dev/fuse && echo fuse: opened
        true";
    guest.create(
        "devs",
        spec_with_devices(&["sh", "-c", script], CONTAINERD_DEVICE_RULES),
        true,
    );
    let mut stdout = guest.stdout("devs");
    guest.start("devs");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(guest.wait("devs"), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "null: ok");
    for (line, node) in lines[1..].iter().zip(["/dev/sda", "/dev/fuse"]) {
        assert!(
            line.contains(node)
                && !line.contains("mknod")
                && line.ends_with("Operation not permitted"),
            "{node}: {line}"
        );
    }
    guest.remove("devs");

    guest.shut_down();
    assert_nothing_left(run_base.path());
}
