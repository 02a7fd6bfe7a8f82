//! Boot-to-agent time of the qemu backend, and the guest image's sizes.
//!
//!     cargo bench -p firedoor-benches --bench boot [-- RUNS]
//!
//! Boot-to-agent is measured on the host from launching the VMM to the
//! agent's first accepted vsock connection; the guest's own view (uptime
//! when the agent became ready) is printed beside it.

use std::time::Duration;

use firedoor_benches::{guest_dir, size_of, summary};
use firedoor_hypervisor::{Backend, QemuBackend, VmSpec};
use firedoor_shim::sandbox::Sandbox;

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = guest_dir();
    let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initramfs.img"));
    let agent = dir.join("../x86_64-unknown-linux-gnu/guest/firedoor-agent");
    println!("guest image");
    println!("  kernel (vmlinux):  {}", size_of(&kernel));
    println!("  initramfs:         {}", size_of(&initrd));
    println!("  agent (static):    {}", size_of(&agent));

    let backend = QemuBackend::detect().expect("qemu backend");
    let spec = VmSpec::new(&kernel, &initrd);
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let sandbox = Sandbox::boot(&backend, &spec).expect("boot");
        let reply = sandbox.check().expect("check");
        host.push(sandbox.vm().boot_time());
        guest.push(Duration::from_millis(reply.boot_to_ready_ms));
        sandbox.shutdown().expect("shutdown");
    }
    println!(
        "boot to agent, backend {} (accelerator {}), 1 vCPU, 256 MiB",
        backend.kind(),
        backend.accelerator()
    );
    println!(
        "  host clock (launch -> vsock connect): {}",
        summary(&mut host)
    );
    println!(
        "  guest uptime at agent ready:          {}",
        summary(&mut guest)
    );
}
