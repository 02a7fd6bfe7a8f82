//! Boot-to-agent of the builtin backend beside the qemu backend with KVM,
//! inside the nested hardware-KVM harness (scripts/nested-kvm), which is
//! where this machine has a KVM that boots stock Linux.
//!
//!     cargo build --release -p firedoor-shim -p firedoor-vmm
//!     cargo bench -p firedoor-benches --bench nested [-- RUNS]
//!
//! One L1 VM runs `firedoor check --boot` RUNS times per backend,
//! alternating. Each boot also times ROUND_TRIPS agent Check RPCs: host ->
//! hybrid vsock (firedoor-vmm's own, or vhost-device-vsock for qemu) ->
//! agent -> back, the latency every container operation pays. Figures are L2 boots under L1's KVM, which itself runs under
//! software emulation: compare the backends with each other, not with
//! bare-metal numbers.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use firedoor_benches::summary;

/// The binaries of the profile this bench was built with (target/release).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// (host-clock ms, guest-uptime ms) from
/// "agent ready after 812 ms (launch to agent, host clock; 640 ms of guest uptime)".
fn parse_ready(line: &str) -> Option<(u64, u64)> {
    let host = line.split("agent ready after ").nth(1)?;
    let host = host.split_whitespace().next()?.parse().ok()?;
    let guest = line
        .split("; ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((host, guest))
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    const ROUND_TRIPS: usize = 500;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let firedoor = bin_dir().join("firedoor");
    for bin in [&firedoor, &bin_dir().join("firedoor-vmm")] {
        if !bin.is_file() {
            eprintln!(
                "{} is missing: build it first (cargo build --release -p firedoor-shim -p firedoor-vmm)",
                bin.display()
            );
            std::process::exit(1);
        }
    }
    // A failed check's last lines come back marked `!! ` so that the bench
    // can say why it failed.
    let script = format!(
        "for i in $(seq {runs}); do for b in builtin qemu; do \
           echo \"== $b\"; \
           if out=$(\"$0\" check --boot --backend $b --round-trips {ROUND_TRIPS} 2>&1); then \
             echo \"$out\"; \
           else echo \"$out\" | tail -n 3 | sed 's/^/!! /'; echo \"== failed\"; fi; \
         done; done"
    );
    let started = Instant::now();
    let out = Command::new(root.join("scripts/nested-kvm"))
        .args(["--timeout", "1800", "--", "/bin/bash", "-c", &script])
        .arg(&firedoor)
        .output()
        .expect("run scripts/nested-kvm");
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        panic!("nested run failed: {}", out.status);
    }

    // (host clock, guest uptime, failed boots, round-trip lines, why the
    // failed ones failed) per backend.
    let (mut builtin, mut qemu) = (
        (vec![], vec![], 0, vec![], vec![]),
        (vec![], vec![], 0, vec![], vec![]),
    );
    let mut current = None;
    for line in stdout.lines() {
        match line {
            "== builtin" => current = Some(&mut builtin),
            "== qemu" => current = Some(&mut qemu),
            "== failed" => {
                if let Some(samples) = current.as_mut() {
                    samples.2 += 1;
                }
            }
            _ if line.starts_with("!! ") => {
                if let Some(samples) = current.as_mut() {
                    samples.4.push(line[3..].to_owned());
                }
            }
            _ if line.contains("Check RPC round trip") => {
                if let (Some(summary), Some(samples)) = (line.split(": ").nth(1), current.as_mut())
                {
                    samples.3.push(summary.to_owned());
                }
            }
            _ => {
                if let (Some((host, guest)), Some(samples)) = (parse_ready(line), current.as_mut())
                {
                    samples.0.push(Duration::from_millis(host));
                    samples.1.push(Duration::from_millis(guest));
                }
            }
        }
    }
    let accel = stdout
        .lines()
        .find(|l| l.contains("booting a microVM with the qemu backend"))
        .unwrap_or("");
    println!(
        "boot to agent inside scripts/nested-kvm (L1 under TCG with emulated AMD-V), 1 vCPU, 256 MiB; \
         {runs} runs each, {:.0} s wall in all",
        wall.as_secs_f64()
    );
    for (name, samples) in [("builtin", &mut builtin), ("qemu (KVM)", &mut qemu)] {
        println!("  {name}");
        println!(
            "    host clock (launch -> vsock connect): {}",
            summary(&mut samples.0)
        );
        println!(
            "    guest uptime at agent ready:          {}",
            summary(&mut samples.1)
        );
        for (i, trips) in samples.3.iter().enumerate() {
            println!("    Check RPC round trip, boot {}:      {trips}", i + 1);
        }
        if samples.2 > 0 {
            println!("    failed boots: {} of {runs}", samples.2);
            for why in &samples.4 {
                println!("      {why}");
            }
        }
    }
    if !accel.contains("(kvm)") {
        println!("  note: the qemu backend did not use KVM in L1: {accel:?}");
    }
}
