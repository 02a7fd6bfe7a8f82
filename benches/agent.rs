//! The agent inside the guest, without containerd: container
//! create + start + wait latency (the VM's first create apart), exec
//! latency in a running container, and stdout throughput from a container
//! to the host through the agent's raw vsock stream.
//!
//!     cargo bench -p firedoor-benches --bench agent [-- RUNS [MIB]]
//!
//! Qemu backend (TCG on hosts without hardware KVM), rootfs on virtio-fs.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use firedoor_benches::{guest_dir, summary};
use firedoor_hypervisor::{Backend, QemuBackend, VmSpec};
use firedoor_shim::sandbox::Sandbox;
use firedoor_tests::guest::{make_rootfs, spec, Guest};

const TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = numbers.first().copied().unwrap_or(10).max(1);
    let mib = numbers.get(1).copied().unwrap_or(64);

    let run_base = tempfile::tempdir().expect("temporary directory");
    let share = tempfile::tempdir().expect("temporary directory");
    make_rootfs(&share.path().join("rootfs"));
    let dir = guest_dir();
    let mut vm = VmSpec::new(dir.join("vmlinux"), dir.join("initramfs.img"));
    vm.run_base = run_base.path().to_owned();
    vm.shared_dir = Some(share.path().to_owned());
    vm.memory_mib = 512;
    let backend = QemuBackend::detect().expect("qemu backend");
    let guest = Guest::new(Sandbox::boot(&backend, &vm).expect("boot"), TIMEOUT);
    println!(
        "agent in the guest, backend {} (accelerator {}), {} vCPU, {} MiB, rootfs on virtio-fs",
        backend.kind(),
        backend.accelerator(),
        vm.vcpus,
        vm.memory_mib
    );

    let (mut create, mut start, mut wait, mut total) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let id = format!("true-{run}");
        let t0 = Instant::now();
        guest.create(&id, spec(&["true"], None), false);
        let t1 = Instant::now();
        guest.start(&id);
        let t2 = Instant::now();
        assert_eq!(guest.wait(&id), 0, "exit status of true");
        let t3 = Instant::now();
        guest.remove(&id);
        create.push(t1 - t0);
        start.push(t2 - t1);
        wait.push(t3 - t2);
        total.push(t3 - t0);
    }
    println!("container `true`, {runs} runs (host clock, through ttrpc over vsock)");
    // The VM's first create also runs libcontainer's code for the first
    // time (under TCG: translates it), which later creates do not.
    let first_create = create.remove(0);
    println!("  create, the VM's first: {} ms", first_create.as_millis());
    println!("  create, later ones: {}", summary(&mut create));
    println!("  start:              {}", summary(&mut start));
    println!("  wait (to exit):     {}", summary(&mut wait));
    println!("  create+start+wait:  {}", summary(&mut total));

    // Exec `true` in a running container: the exec RPC until it exited.
    guest.create("sleeper", spec(&["sleep", "3600"], None), false);
    guest.start("sleeper");
    let mut exec = vec![];
    for run in 0..runs {
        let exec_id = format!("true-{run}");
        let t0 = Instant::now();
        guest.exec("sleeper", &exec_id, &["true"]);
        assert_eq!(
            guest.wait_process("sleeper", &exec_id),
            0,
            "exit status of exec true"
        );
        exec.push(t0.elapsed());
    }
    guest.remove("sleeper");
    println!(
        "exec `true` in a running container, {runs} runs: exec+wait {}",
        summary(&mut exec)
    );

    // dd writes 64 KiB blocks as fast as the guest can; the host only reads.
    let count = mib * 16;
    let args = ["dd", "if=/dev/zero", "bs=64k", &format!("count={count}")];
    guest.create("dd", spec(&args, None), true);
    let mut stdout = guest.stdout("dd");
    let started = Instant::now();
    guest.start("dd");
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0usize;
    loop {
        match stdout.read(&mut buf).expect("reading the stdout stream") {
            0 => break,
            n => received += n,
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(guest.wait("dd"), 0, "exit status of dd");
    guest.remove("dd");
    assert_eq!(received, mib << 20, "bytes received");
    println!(
        "stdout throughput, container -> agent -> vsock -> host: {mib} MiB in {:.2} s = {:.1} MiB/s",
        elapsed.as_secs_f64(),
        mib as f64 / elapsed.as_secs_f64()
    );
    guest.shut_down();
}
