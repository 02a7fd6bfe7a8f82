//! The real guest (kernel + initramfs + agent) booted through the qemu
//! backend: TCG on hosts without hardware KVM, as here.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use firedoor_hypervisor::{MicroVm, QemuBackend, VmError};
use firedoor_shim::sandbox::Sandbox;
use firedoor_tests::{assert_nothing_left, guest_spec, processes_mentioning};

#[test]
fn boots_guest_and_agent_answers_check() {
    let run_base = tempfile::tempdir().unwrap();
    let backend = QemuBackend::detect().unwrap();
    let sandbox = Sandbox::boot(&backend, &guest_spec(run_base.path())).unwrap();

    // While it runs, the VM's processes are found by its run directory.
    let vm_pids: Vec<u32> = processes_mentioning(run_base.path())
        .iter()
        .map(|p| p.0)
        .collect();
    assert!(vm_pids.contains(&sandbox.vm().vmm_pid()), "{vm_pids:?}");

    let reply = sandbox.check().unwrap();
    assert_eq!(reply.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(
        reply.kernel_release.starts_with("6.12"),
        "{}",
        reply.kernel_release
    );
    assert!(reply.boot_to_ready_ms > 0);
    assert!(reply.uptime_ms >= reply.boot_to_ready_ms);

    let (status, killed) = sandbox.shutdown().unwrap();
    drop(sandbox);
    assert!(!killed, "the guest had to be killed");
    assert!(status.success(), "QEMU exited with {status}");
    assert_nothing_left(run_base.path());
}

#[test]
fn two_vcpus_and_more_memory_boot() {
    let run_base = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.vcpus = 2;
    spec.memory_mib = 512;
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &spec).unwrap();
    sandbox.check().unwrap();
    let (status, killed) = sandbox.shutdown().unwrap();
    drop(sandbox);
    assert!(status.success() && !killed);
    assert_nothing_left(run_base.path());
}

/// Guest RAM from the host's huge page pool (grown by the test for itself,
/// then restored): the guest boots and its memory is in huge pages.
#[test]
fn huge_pages_back_the_guest() {
    let pool = "/proc/sys/vm/nr_hugepages";
    let total: u64 = std::fs::read_to_string(pool)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // 256 MiB of guest RAM: 128 pages of 2 MiB.
    std::fs::write(pool, (total + 128).to_string()).unwrap();
    let run_base = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.huge_pages = true;
    let booted = Sandbox::boot(&QemuBackend::detect().unwrap(), &spec);
    let in_use = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let field = |key: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap()
        };
        field("HugePages_Total:") - field("HugePages_Free:")
    };
    let used = in_use();
    let result = booted.map(|sandbox| {
        sandbox.check().unwrap();
        sandbox.shutdown().unwrap()
    });
    std::fs::write(pool, total.to_string()).unwrap();
    let (status, killed) = result.unwrap();
    assert!(status.success() && !killed);
    assert!(used > 0, "no huge page in use while the guest ran");
    assert_nothing_left(run_base.path());
}

#[test]
fn missing_kernel_is_named_and_nothing_starts() {
    let run_base = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.kernel = run_base.path().join("no-such-vmlinux");
    let err = MicroVm::start(&QemuBackend::detect().unwrap(), &spec)
        .err()
        .unwrap();
    assert!(matches!(err, VmError::KernelMissing(_)), "{err}");
    assert!(err.to_string().contains("no-such-vmlinux"), "{err}");
    assert_nothing_left(run_base.path());
}

#[test]
fn agent_on_another_port_times_out_and_leaves_nothing() {
    let run_base = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    // The agent listens on 2000 (last value wins); the host waits on 1024.
    spec.kernel_params = vec!["firedoor.port=2000".into()];
    spec.boot_timeout = Duration::from_secs(8);
    let started = Instant::now();
    let err = MicroVm::start(&QemuBackend::detect().unwrap(), &spec)
        .err()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, VmError::BootTimeout { port: 1024, .. }),
        "{err}"
    );
    assert!(elapsed >= spec.boot_timeout, "gave up early: {elapsed:?}");
    // Generous bound: the limit plus teardown, not a benchmark.
    assert!(
        elapsed < spec.boot_timeout + Duration::from_secs(10),
        "took {elapsed:?}"
    );
    assert!(
        err.to_string()
            .contains("did not answer on vsock port 1024"),
        "{err}"
    );
    assert_nothing_left(run_base.path());
}

#[test]
fn agent_with_bad_setting_powers_off_and_says_why() {
    let run_base = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.kernel_params = vec!["firedoor.log=chatty".into()];
    let err = MicroVm::start(&QemuBackend::detect().unwrap(), &spec)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(matches!(err, VmError::GuestExited { .. }), "{text}");
    assert!(
        text.contains("firedoor.log=chatty: unknown log level"),
        "{text}"
    );
    assert!(text.contains("powering off"), "{text}");
    assert_nothing_left(run_base.path());
}

#[test]
fn vmm_killed_with_sigkill_is_noticed_and_cleaned_up() {
    let run_base = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::boot(
        &QemuBackend::detect().unwrap(),
        &guest_spec(run_base.path()),
    )
    .unwrap();
    let pid = sandbox.vm().vmm_pid();
    let helpers = sandbox.vm().helper_pids();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());

    let err = sandbox
        .check()
        .expect_err("Check must fail once the VM is gone");
    assert!(!err.to_string().is_empty());
    let (status, killed) = sandbox.shutdown().unwrap();
    drop(sandbox);
    assert!(!killed, "already dead, nothing to kill");
    assert!(!status.success(), "{status}");
    for helper in helpers {
        assert!(
            !std::path::Path::new(&format!("/proc/{helper}")).exists(),
            "helper {helper} left"
        );
    }
    assert_nothing_left(run_base.path());
}

#[test]
fn boots_with_a_shared_directory_and_stops_virtiofsd() {
    let run_base = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.shared_dir = Some(shared.path().to_owned());
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &spec).unwrap();
    // vhost-device-vsock and virtiofsd.
    assert_eq!(sandbox.vm().helper_pids().len(), 2);
    sandbox.check().unwrap();
    let (status, killed) = sandbox.shutdown().unwrap();
    drop(sandbox);
    assert!(status.success() && !killed, "{status}");
    assert_nothing_left(run_base.path());
}

/// What the shim does: the share is mounted (CreateSandbox) and a
/// GetOOMEvent long poll is waiting in the agent when Shutdown comes. The
/// guest must end by its own reset, without the SIGKILL after the grace
/// period, and the long poll must end with an answer.
#[test]
fn powers_off_by_itself_with_the_share_and_an_oom_poll() {
    use firedoor_hypervisor::SHARED_FS_TAG;
    use firedoor_protocol::agent::CreateSandboxRequest;

    let run_base = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(run_base.path());
    spec.shared_dir = Some(shared.path().to_owned());
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &spec).unwrap();
    let req = CreateSandboxRequest {
        sandbox_id: "pod".into(),
        shared_fs_tag: SHARED_FS_TAG.into(),
        ..Default::default()
    };
    sandbox.agent().create_sandbox(&req).unwrap();
    let agent = sandbox.agent().clone();
    // The shim's long poll, without a deadline: it ends with an answer or
    // with the VM (killed after the grace period at worst).
    let poll = std::thread::spawn(move || agent.get_oom_event());
    // Let the request reach the agent before Shutdown does.
    std::thread::sleep(Duration::from_millis(500));
    let (status, killed) = sandbox.shutdown().unwrap();
    let console = sandbox.vm().console_tail(20);
    drop(sandbox);
    assert!(
        !killed && status.success(),
        "{status}, killed: {killed}; console:\n{console}"
    );
    let answer = poll.join().unwrap();
    assert!(answer.is_err(), "an OOM event at shutdown: {answer:?}");
    assert_nothing_left(run_base.path());
}
