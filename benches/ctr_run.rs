//! `ctr run --rm IMAGE true` through one containerd: Firedoor beside runc,
//! crun and gVisor (runsc as the runc shim's binary), alternating run by
//! run on the same image; start-to-exit latency (median, p95), teardown
//! (`ctr task delete` of a stopped task: for Firedoor the VM's power-off and
//! its helpers' exit), and the memory of one Firedoor sandbox (shim + VMM +
//! helpers); then PARALLEL sandboxes (default 10) started one after another
//! and all at once (`ctr run -d ... sleep`): time until all run, each start's
//! latency, and the starts that failed. A peer that is not installed is
//! skipped with a line that says how to install it.
//!
//!     cargo bench -p firedoor-benches --bench ctr_run [-- RUNS [PARALLEL]]
//!
//! (PARALLEL 0: only the `ctr run --rm` and memory figures.)

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use firedoor_benches::{backend_in_log, bar_chart_svg, summary, Bar};
use firedoor_hypervisor::{host, qemu::Accel};
use firedoor_tests::{
    containerd::{Containerd, RUNTIME},
    image::BUSYBOX_IMAGE,
    processes_mentioning,
};

/// The runc peer's name: the ratio line is against it.
const RUNC: &str = "runc";

/// One runtime under test: a containerd runtime and, for the runc shim, the
/// OCI runtime binary it runs.
struct Peer {
    name: String,
    runtime: &'static str,
    binary: Option<PathBuf>,
    start: Vec<Duration>,
    teardown: Vec<Duration>,
}

impl Peer {
    fn new(name: &str, runtime: &'static str, binary: Option<PathBuf>) -> Peer {
        Peer {
            name: name.into(),
            runtime,
            binary,
            start: Vec::new(),
            teardown: Vec::new(),
        }
    }

    /// `ctr run` arguments up to the image.
    fn run_args(&self) -> Vec<String> {
        let mut args = vec!["run".to_string(), "--runtime".into(), self.runtime.into()];
        if let Some(binary) = &self.binary {
            args.extend(["--runc-binary".into(), binary.display().to_string()]);
        }
        args
    }

    /// `ctr run --rm IMAGE true` of `id`.
    fn run_rm_true(&self, ctrd: &Containerd, id: &str) -> std::process::Output {
        let mut args = self.run_args();
        args.extend([
            "--rm".into(),
            BUSYBOX_IMAGE.into(),
            id.into(),
            "true".into(),
        ]);
        ctr(ctrd, &args)
    }

    /// One untimed `ctr run --rm IMAGE true`: whether this peer runs here
    /// at all (crun 1.x refuses this host's hybrid cgroup layout), and why
    /// not.
    fn runs_here(&self, ctrd: &Containerd, id: &str) -> Result<(), String> {
        let out = self.run_rm_true(ctrd, id);
        if out.status.success() {
            return Ok(());
        }
        // A failed create may leave the container record.
        let _ = ctrd.ctr(&["task", "delete", id]);
        let _ = ctrd.ctr(&["containers", "rm", id]);
        Err(text(&out.stderr).trim().to_string())
    }

    /// `ctr run --rm IMAGE true`, wall time.
    fn time_run(&mut self, ctrd: &Containerd, id: &str) {
        let started = Instant::now();
        let out = self.run_rm_true(ctrd, id);
        self.start.push(started.elapsed());
        assert!(out.status.success(), "{}: {}", self.name, text(&out.stderr));
    }

    /// `ctr run -d IMAGE sleep` of `id`: the start's wall time, or why it
    /// failed.
    fn start_detached(&self, ctrd: &Containerd, id: &str) -> Result<Duration, String> {
        let mut args = self.run_args();
        args.extend([
            "-d".into(),
            BUSYBOX_IMAGE.into(),
            id.into(),
            "sleep".into(),
            "600".into(),
        ]);
        let started = Instant::now();
        let out = ctr(ctrd, &args);
        let took = started.elapsed();
        if out.status.success() {
            Ok(took)
        } else {
            Err(format!("{id}: {}", text(&out.stderr).trim()))
        }
    }

    /// `count` sandboxes started one after another, then `count` at once.
    fn time_many(&self, ctrd: &Containerd, count: usize) -> [Many; 2] {
        let serial_ids: Vec<String> = (0..count).map(|i| format!("bench-serial-{i}")).collect();
        let started = Instant::now();
        let serial: Vec<_> = serial_ids
            .iter()
            .map(|id| self.start_detached(ctrd, id))
            .collect();
        let serial = Many::of(started.elapsed(), serial);
        remove_all(ctrd, &serial_ids);

        let parallel_ids: Vec<String> = (0..count).map(|i| format!("bench-par-{i}")).collect();
        let started = Instant::now();
        let parallel: Vec<_> = std::thread::scope(|scope| {
            let starts: Vec<_> = parallel_ids
                .iter()
                .map(|id| scope.spawn(move || self.start_detached(ctrd, id)))
                .collect();
            starts
                .into_iter()
                .map(|s| s.join().unwrap_or_else(|_| Err("panicked".into())))
                .collect()
        });
        let parallel = Many::of(started.elapsed(), parallel);
        remove_all(ctrd, &parallel_ids);
        [serial, parallel]
    }

    /// `ctr run -d IMAGE true`, then the time of `ctr task delete` once
    /// it has stopped.
    fn time_teardown(&mut self, ctrd: &Containerd, id: &str) {
        let mut args = self.run_args();
        args.extend(["-d".into(), BUSYBOX_IMAGE.into(), id.into(), "true".into()]);
        let out = ctr(ctrd, &args);
        assert!(out.status.success(), "{}: {}", self.name, text(&out.stderr));
        ctrd.wait_status(id, "STOPPED");
        let started = Instant::now();
        let out = ctrd.ctr(&["task", "delete", id]);
        self.teardown.push(started.elapsed());
        assert!(out.status.success(), "{}: {}", self.name, text(&out.stderr));
        let _ = ctrd.ctr(&["containers", "rm", id]);
    }
}

/// Many starts: until the last returned, each one's latency, the failures.
struct Many {
    total: Duration,
    each: Vec<Duration>,
    errors: Vec<String>,
}

impl Many {
    fn of(total: Duration, results: Vec<Result<Duration, String>>) -> Many {
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        Many {
            total,
            each: ok.into_iter().flatten().collect(),
            errors: failed.into_iter().filter_map(Result::err).collect(),
        }
    }
}

/// Kills and removes the tasks and containers `ids`, whatever state they
/// are in.
fn remove_all(ctrd: &Containerd, ids: &[String]) {
    for id in ids {
        let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    }
    for id in ids {
        // A killed task stops asynchronously; a start that failed left none.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listed = text(&ctrd.ctr(&["task", "ls", "-q"]).stdout)
                .lines()
                .any(|l| l == id);
            if !listed
                || ctrd.ctr(&["task", "delete", id]).status.success()
                || Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = ctrd.ctr(&["containers", "rm", id]);
    }
}

fn ctr(ctrd: &Containerd, args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctrd.ctr_command(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Median and 95th percentile, in milliseconds.
/// (median, p95) of `samples` in milliseconds (sorts them).
fn median_p95_ms(samples: &mut [Duration]) -> Option<(f64, f64)> {
    samples.sort();
    if samples.is_empty() {
        return None;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = samples[(samples.len() * 95).div_ceil(100).clamp(1, samples.len()) - 1];
    Some((ms(samples[samples.len() / 2]), ms(p95)))
}

/// The median of `samples` in milliseconds, without sorting them in place.
fn median_ms(samples: &[Duration]) -> Option<f64> {
    median_p95_ms(&mut samples.to_vec()).map(|(median, _)| median)
}

fn median_p95(samples: &mut [Duration]) -> String {
    match median_p95_ms(samples) {
        None => "no samples".into(),
        Some((median, p95)) => format!("median {median:>6.0} ms  p95 {p95:>6.0} ms"),
    }
}

fn find(program: &str) -> Option<PathBuf> {
    host::find_program(program)
}

/// gVisor has no containerd shim in Debian: runsc runs as the runc shim's
/// binary, through a wrapper that adds the flags it needs there.
fn runsc_wrapper(runsc: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("runsc-wrapper");
    let script = format!(
        "#!/bin/sh\nexec {} --network=none --ignore-cgroups \"$@\"\n",
        runsc.display()
    );
    fs::write(&wrapper, script).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
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
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = numbers.first().copied().unwrap_or(5);
    let parallel = numbers.get(1).copied().unwrap_or(10);
    let ctrd = Containerd::start();
    let accel = match Accel::best_for(&host::probe_kvm()) {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let wrappers = tempfile::tempdir().unwrap();

    let mut peers = vec![Peer::new(RUNC, "io.containerd.runc.v2", None)];
    match find("crun") {
        Some(crun) => peers.push(Peer::new("crun", "io.containerd.runc.v2", Some(crun))),
        None => println!("crun: skipped, not installed (apt-get install crun)"),
    }
    match find("runsc") {
        Some(runsc) => {
            let wrapper = runsc_wrapper(&runsc, wrappers.path());
            peers.push(Peer::new(
                "gVisor (runsc)",
                "io.containerd.runc.v2",
                Some(wrapper),
            ));
        }
        None => println!("gVisor: skipped, runsc not installed (apt-get install runsc)"),
    }
    peers.retain(|peer| match peer.runs_here(&ctrd, "bench-probe") {
        Ok(()) => true,
        Err(e) => {
            println!("{}: skipped, it fails here: {e}", peer.name);
            false
        }
    });
    peers.push(Peer::new("firedoor", RUNTIME, None));

    for i in 0..runs {
        for (n, peer) in peers.iter_mut().enumerate() {
            peer.time_run(&ctrd, &format!("bench-{n}-{i}"));
            peer.time_teardown(&ctrd, &format!("bench-td-{n}-{i}"));
        }
    }
    // The shim picks its backend itself (`auto`: built-in VMM on hardware KVM).
    if let Some(firedoor) = peers.last_mut() {
        firedoor.name = format!("firedoor ({})", backend_in_log(&ctrd.log_tail(100_000)));
    }
    println!(
        "ctr run --rm {BUSYBOX_IMAGE} true, {runs} runs each, alternating (wall time, containerd {})",
        ctrd.build().version
    );
    println!(
        "  {:<24} {:<34} teardown (ctr task delete)",
        "runtime", "ctr run --rm"
    );
    for peer in &mut peers {
        println!(
            "  {:<24} {:<34} {}",
            peer.name,
            median_p95(&mut peer.start),
            median_p95(&mut peer.teardown)
        );
    }
    let bars: Vec<Bar> = peers
        .iter_mut()
        .filter_map(|peer| {
            let (median_ms, p95_ms) = median_p95_ms(&mut peer.start)?;
            Some(Bar {
                label: peer.name.clone(),
                median_ms,
                p95_ms,
            })
        })
        .collect();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/ctr_run.svg");
    let title = format!(
        "ctr run --rm true: median (bar) and p95 (line), containerd {}, {accel}",
        ctrd.build().version
    );
    match std::fs::create_dir_all(chart.parent().unwrap())
        .map_err(|e| e.to_string())
        .and_then(|()| bar_chart_svg(&chart, &title, &bars))
    {
        Ok(()) => println!("  chart: {}", chart.display()),
        Err(e) => println!("  chart not drawn: {e}"),
    }
    // Firedoor is the last peer, always there; runc may have been skipped.
    let firedoor = peers.last().expect("firedoor is always measured");
    let runc = peers.iter().find(|peer| peer.name == RUNC);
    match runc.map(|runc| (median_ms(&runc.start), median_ms(&firedoor.start))) {
        Some((Some(runc_ms), Some(firedoor_ms))) => println!(
            "  firedoor / runc: {:.1}x   (all: {})",
            firedoor_ms / runc_ms,
            summary(&mut firedoor.start.clone())
        ),
        Some(_) => println!("  firedoor / runc: no ratio, no samples (0 runs)"),
        None => println!("  firedoor / runc: no ratio, runc was skipped (see above)"),
    }

    // PARALLEL 0 skips the many-sandboxes part (the per-version figures).
    if parallel > 0 {
        println!(
            "{parallel} sandboxes (`ctr run -d ... sleep`), one after another, then all at once:"
        );
        println!(
            "  {:<24} {:<10} {:<13} {:<34} failed",
            "runtime", "mode", "all running", "each start"
        );
        for peer in &peers {
            for (mode, mut many) in ["serial", "parallel"]
                .into_iter()
                .zip(peer.time_many(&ctrd, parallel))
            {
                println!(
                    "  {:<24} {:<10} {:>8.2} s    {:<34} {}",
                    peer.name,
                    mode,
                    many.total.as_secs_f64(),
                    median_p95(&mut many.each),
                    many.errors.len()
                );
                for error in &many.errors {
                    println!("    {error}");
                }
            }
        }
    }

    idle_sandbox_memory(
        &ctrd,
        "bench-fd-mem",
        "free page reporting on (the default)",
    );
    let without = Containerd::start_with_config("free_page_reporting = false\n");
    idle_sandbox_memory(
        &without,
        "bench-fd-mem-nofpr",
        "free_page_reporting = false",
    );
}

/// Starts `id` on `ctrd`, prints the RSS/PSS of each process of its
/// sandbox once idle, then removes it.
fn idle_sandbox_memory(ctrd: &Containerd, id: &str, label: &str) {
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
    // Idle: the guest reports the pages it freed after boot a few
    // seconds later.
    std::thread::sleep(Duration::from_secs(10));
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
    println!("memory of one idle sandbox (1 vCPU, 256 MiB guest) running `sleep`, 10 s after its start, {label}:");
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
