//! `ctr run --rm IMAGE true` through containerd: Firedoor beside runc on the
//! same machine and image, and the memory of one Firedoor sandbox (shim +
//! VMM + helpers).
//!
//!     cargo bench -p firedoor-benches --bench ctr_run [-- RUNS]

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use firedoor_benches::summary;
use firedoor_hypervisor::{host, qemu::Accel};
use firedoor_tests::{
    containerd::{Containerd, RUNTIME},
    image::BUSYBOX_IMAGE,
    processes_mentioning,
};

fn time_run(ctrd: &Containerd, runtime: &str, id: &str) -> Duration {
    let started = Instant::now();
    let out = ctrd
        .ctr_command(&[
            "run",
            "--runtime",
            runtime,
            "--rm",
            BUSYBOX_IMAGE,
            id,
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{runtime}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// (RSS, PSS) in KiB of a process, from smaps_rollup.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let ctrd = Containerd::start();
    let accel = match Accel::best_for(&host::probe_kvm()) {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };

    let mut runc: Vec<Duration> = (0..runs)
        .map(|i| time_run(&ctrd, "io.containerd.runc.v2", &format!("bench-runc-{i}")))
        .collect();
    let mut firedoor: Vec<Duration> = (0..runs)
        .map(|i| time_run(&ctrd, RUNTIME, &format!("bench-fd-{i}")))
        .collect();
    println!("ctr run --rm {BUSYBOX_IMAGE} true (wall time, containerd 1.6)");
    println!("  runc:                          {}", summary(&mut runc));
    println!(
        "  firedoor (qemu backend, {accel}):  {}",
        summary(&mut firedoor)
    );

    let id = "bench-fd-mem";
    let out = ctrd
        .ctr_command(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut pids: Vec<(u32, String)> = ctrd
        .shim_pids()
        .into_iter()
        .map(|p| (p, "containerd-shim-firedoor-v2".to_string()))
        .collect();
    pids.extend(
        processes_mentioning(std::path::Path::new(&format!("/run/firedoor/default/{id}")))
            .into_iter()
            .map(|(p, cmd)| {
                (
                    p,
                    cmd.split_whitespace()
                        .next()
                        .unwrap_or("?")
                        .rsplit('/')
                        .next()
                        .unwrap_or("?")
                        .to_string(),
                )
            }),
    );
    println!("memory of one sandbox (1 vCPU, 256 MiB guest) running `sleep`:");
    let (mut rss_total, mut pss_total) = (0, 0);
    for (pid, name) in &pids {
        let (rss, pss) = memory_kib(*pid);
        rss_total += rss;
        pss_total += pss;
        println!(
            "  {name:<32} pid {pid:<8} RSS {:>7.1} MiB  PSS {:>7.1} MiB",
            rss as f64 / 1024.0,
            pss as f64 / 1024.0
        );
    }
    println!(
        "  total                                          RSS {:>7.1} MiB  PSS {:>7.1} MiB (guest memory it touched included)",
        rss_total as f64 / 1024.0,
        pss_total as f64 / 1024.0
    );
    let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctrd.ctr(&["task", "delete", id]).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ctrd.ctr(&["containers", "rm", id]);
}
