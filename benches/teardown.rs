//! Sandbox teardown as the shim does it: the share mounted, the shim's
//! GetOOMEvent long poll waiting in the agent, then Shutdown. Prints
//! Shutdown sent -> VMM exited -> helpers (vhost-device-vsock, virtiofsd)
//! gone, and how many VMs had to be killed.
//!
//!     cargo bench -p firedoor-benches --bench teardown [-- RUNS]
//!
//! Target (issue 12): <= 200 ms from Shutdown to helpers gone under TCG,
//! no SIGKILL.

use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use firedoor_benches::{guest_dir, summary};
use firedoor_hypervisor::{Backend, QemuBackend, VmSpec, SHARED_FS_TAG};
use firedoor_protocol::agent::CreateSandboxRequest;
use firedoor_shim::sandbox::Sandbox;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The shim's grace period before it kills the VMM.
const GRACE: Duration = Duration::from_secs(5);

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = guest_dir();
    let backend = QemuBackend::detect().expect("qemu backend");
    let (mut to_exit, mut to_gone) = (Vec::new(), Vec::new());
    let mut killed_runs = 0;
    for _ in 0..runs {
        let run_base = tempfile::tempdir().expect("temporary directory");
        let share = tempfile::tempdir().expect("temporary directory");
        let mut spec = VmSpec::new(dir.join("vmlinux"), dir.join("initramfs.img"));
        spec.run_base = run_base.path().to_owned();
        spec.shared_dir = Some(share.path().to_owned());
        let sandbox = Sandbox::boot(&backend, &spec).expect("boot");
        let setup = CreateSandboxRequest {
            sandbox_id: "bench".into(),
            shared_fs_tag: SHARED_FS_TAG.into(),
            ..Default::default()
        };
        sandbox
            .agent()
            .create_sandbox(&setup)
            .expect("CreateSandbox");
        let agent = sandbox.agent().clone();
        let oom_poll = std::thread::spawn(move || {
            let _ = agent.get_oom_event();
        });
        std::thread::sleep(Duration::from_millis(300));
        let vmm_exit = sandbox.vm().exit_notifier().expect("VMM exit notifier");

        let sent = Instant::now();
        let _ = sandbox.agent().shutdown();
        let mut fds = [PollFd::new(vmm_exit.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(GRACE).expect("grace in ms");
        let exited = poll(&mut fds, timeout).expect("waiting for the VMM") > 0;
        let vmm_gone = sent.elapsed();
        let (_, killed) = sandbox.vm().stop(Duration::ZERO).expect("stop");
        let helpers_gone = sent.elapsed();
        if !exited || killed {
            killed_runs += 1;
        }
        to_exit.push(vmm_gone);
        to_gone.push(helpers_gone);
        let _ = oom_poll.join();
    }
    println!(
        "teardown, backend {} (accelerator {}), share mounted, OOM poll waiting",
        backend.kind(),
        backend.accelerator()
    );
    println!("  Shutdown sent -> VMM exited:   {}", summary(&mut to_exit));
    println!("  Shutdown sent -> helpers gone: {}", summary(&mut to_gone));
    println!("  VMs killed after {GRACE:?}: {killed_runs} of {runs} (target: 0; <= 200 ms to helpers gone)");
}
