//! The built-in VMM on its own: process start to the guest's first
//! instructions, the CPU one start costs, and the VMM's memory beside the
//! guest's; Firecracker beside it when a binary is named.
//!
//!     cargo build --release -p firedoor-vmm
//!     cargo bench -p firedoor-benches --bench vmm [-- RUNS] [--firecracker PATH]
//!
//! `FIREDOOR_VMM=PATH` picks another firedoor-vmm binary (default: the one
//! next to this bench, target/release), `FIRECRACKER=PATH` is the same as
//! `--firecracker PATH`. Without Firecracker the issue's figures for it
//! (issue 12, measured elsewhere) are printed as the reference, labelled so.
//!
//! CPU is the user + system time of the whole process tree (supervisor and
//! VMM when jailed), from spawn to exit, taken from `getrusage(RUSAGE_CHILDREN)`
//! around each run: the guest halts at once, so this is the cost of a start
//! and a stop. Firecracker runs unjailed (`--no-api --config-file`,
//! `--boot-timer`), as the issue measured it.
//!
//! The guest is a few hand-assembled instructions that write the boot-timer
//! port (0x440) and halt, so this runs on any KVM, PVM included. Two clocks:
//! the host's, from spawning the process to the VMM logging the port write,
//! and the VMM's own, from its `main` to the write (without exec and dynamic
//! loading). RSS is read from /proc/PID/smaps once the guest has run; the
//! guest-memory mapping is subtracted. Both with the jail (as root: the
//! process splits into a supervisor and the VMM in its own namespaces; the
//! figure is the VMM's RSS plus the supervisor's private pages) and without
//! (`--no-jail`).

#[path = "../vmm/src/test_utils.rs"]
mod test_utils;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use firedoor_benches::summary;
use nix::{
    sys::resource::{getrusage, UsageWho},
    sys::signal::{kill, Signal},
    sys::time::TimeVal,
    unistd::Pid,
};
use test_utils::{build_elf, Asm};

const GUEST_MEMORY_MIB: u64 = 128;

/// The binaries of the profile this bench was built with (target/release).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

struct Sample {
    host: Duration,
    /// User + system CPU of the process tree, spawn to exit.
    cpu: Duration,
    vmm: Duration,
    rss_kib: u64,
    supervisor_rss_kib: u64,
    guest_rss_kib: u64,
}

/// The jailed VMM under the supervisor `pid` (its only child, found in
/// /proc/*/status), or `pid` itself when it runs unjailed.
fn vmm_process(pid: u32) -> u32 {
    let ppid_line = format!("PPid:\t{pid}");
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|child| {
            fs::read_to_string(format!("/proc/{child}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == ppid_line))
        })
        .unwrap_or(pid)
}

/// (RSS outside the guest-memory mapping, RSS of that mapping) in KiB.
fn rss_kib(pid: u32, guest_bytes: u64) -> (u64, u64) {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let (mut other, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(range) = line.split_whitespace().next().filter(|r| r.contains('-')) {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    in_guest = e - s == guest_bytes;
                    continue;
                }
            }
        }
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib.trim().trim_end_matches(" kB").parse().unwrap_or(0);
            if in_guest {
                guest += kib;
            } else {
                other += kib;
            }
        }
    }
    (other, guest)
}

/// Memory only `pid` holds (private pages; the binary and libc it shares
/// with the VMM do not count): what the jail's supervisor adds.
fn private_kib(pid: u32) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("read smaps_rollup");
    smaps
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU time (user + system) of every waited-for child so far.
fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage(RUSAGE_CHILDREN)");
    let tv = |t: TimeVal| {
        Duration::from_secs(t.tv_sec().unsigned_abs())
            + Duration::from_micros(t.tv_usec().unsigned_abs())
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn stop(mut child: Child, must_succeed: bool) {
    let pid = i32::try_from(child.id()).expect("pid");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let status = child.wait().expect("wait for the VMM");
    assert!(
        status.success() || !must_succeed,
        "the VMM exited with {status}"
    );
}

fn one_run(vmm: &Path, kernel: &Path, jail_flag: &str) -> Sample {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child = Command::new(vmm)
        .arg(jail_flag)
        .args(["--kernel", kernel.to_str().unwrap()])
        .args(["--memory-mib", &GUEST_MEMORY_MIB.to_string()])
        .args(["--serial", "/dev/null"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start firedoor-vmm");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    // "guest boot done 1.234 ms after VMM start (value 0x1)"
    let vmm_ms: f64 = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            stop(child, true);
            panic!("firedoor-vmm ended before the guest wrote the boot-timer port");
        }
        if let Some(rest) = line.split("guest boot done ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let host = started.elapsed();
    let inner = vmm_process(child.id());
    let (vmm_rss_kib, guest_rss_kib) = rss_kib(inner, GUEST_MEMORY_MIB << 20);
    let supervisor_rss_kib = if inner == child.id() {
        0
    } else {
        private_kib(child.id())
    };
    // Nothing else is logged until the stop; the pipe cannot fill up.
    stop(child, true);
    Sample {
        host,
        cpu: children_cpu() - cpu_before,
        vmm: Duration::from_secs_f64(vmm_ms / 1000.0),
        rss_kib: vmm_rss_kib + supervisor_rss_kib,
        supervisor_rss_kib,
        guest_rss_kib,
    }
}

/// One Firecracker start of the same guest: spawn to its boot-timer log
/// line, and its CPU; RSS is not compared.
fn one_firecracker_run(firecracker: &Path, kernel: &Path, dir: &Path) -> (Duration, Duration) {
    let config = dir.join("firecracker.json");
    fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
               "machine-config": {{"vcpu_count": 1, "mem_size_mib": {GUEST_MEMORY_MIB}}},
               "drives": []}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child = Command::new(firecracker)
        .args(["--no-api", "--boot-timer", "--level", "Info"])
        .arg("--config-file")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start firecracker");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // "Guest-boot-time = ... us ... ms, ... CPU us ... CPU ms"
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            stop(child, false);
            panic!("firecracker ended before the guest wrote its boot-timer port");
        }
        if line.contains("Guest-boot-time") {
            break;
        }
    }
    let host = started.elapsed();
    stop(child, false);
    (host, children_cpu() - cpu_before)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let firecracker = args
        .iter()
        .position(|a| a == "--firecracker")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("FIRECRACKER").map(PathBuf::from));
    let vmm = std::env::var_os("FIREDOOR_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("firedoor-vmm"));
    if !vmm.is_file() {
        eprintln!(
            "{} is missing: build it first (cargo build --release -p firedoor-vmm)",
            vmm.display()
        );
        std::process::exit(1);
    }
    let dir = std::env::temp_dir().join(format!("firedoor-bench-vmm-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinux");
    // Our boot-timer port, then Firecracker's (x86: port 0x3f0, value 123);
    // each VMM ignores the other's port.
    let code = Asm::default()
        .mov_dx(0x440)
        .mov_al(1)
        .out_dx_al()
        .mov_dx(0x3f0)
        .mov_al(123)
        .out_dx_al()
        .halt_forever()
        .code
        .clone();
    fs::write(&kernel, build_elf(0x20_0000, &code)).unwrap();

    println!(
        "firedoor-vmm ({}), tiny guest, 1 vCPU, {GUEST_MEMORY_MIB} MiB",
        vmm.display()
    );
    // Alternating, so both modes see the same machine load.
    let (mut jailed, mut unjailed, mut fc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        jailed.push(one_run(&vmm, &kernel, "--jail"));
        unjailed.push(one_run(&vmm, &kernel, "--no-jail"));
        if let Some(firecracker) = &firecracker {
            fc.push(one_firecracker_run(firecracker, &kernel, &dir));
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    report("jailed (--jail, needs root)", &jailed);
    report("unjailed (--no-jail)", &unjailed);
    let median_cpu = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let ours = median_cpu(jailed.iter().map(|s| s.cpu).collect());
    let (fc_cpu, source) = if fc.is_empty() {
        println!(
            "  Firecracker: not run (name a binary with --firecracker PATH or FIRECRACKER=PATH); \
             reference from issue 12, measured elsewhere, not here: 28 ms wall, 6 ms CPU"
        );
        (Duration::from_millis(6), "issue 12's reference figure")
    } else {
        let mut wall: Vec<Duration> = fc.iter().map(|s| s.0).collect();
        let mut cpu: Vec<Duration> = fc.iter().map(|s| s.1).collect();
        println!(
            "  Firecracker ({}), unjailed",
            firecracker.unwrap().display()
        );
        println!(
            "    spawn -> boot-timer log line (host clock): {}",
            summary_us(&mut wall)
        );
        println!("    CPU per start and stop: {}", summary_us(&mut cpu));
        (median_cpu(cpu), "measured in this run")
    };
    println!(
        "  CPU ratio, jailed firedoor-vmm / Firecracker ({source}): {:.2} ({:.2} ms / {:.2} ms, medians)",
        ours.as_secs_f64() / fc_cpu.as_secs_f64(),
        ours.as_secs_f64() * 1000.0,
        fc_cpu.as_secs_f64() * 1000.0
    );
    println!("  (vsock round trip: needs a real guest; see the nested bench)");
}

fn report(mode: &str, samples: &[Sample]) {
    let mut host: Vec<Duration> = samples.iter().map(|s| s.host).collect();
    let mut inner: Vec<Duration> = samples.iter().map(|s| s.vmm).collect();
    let mut cpu: Vec<Duration> = samples.iter().map(|s| s.cpu).collect();
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    rss.sort();
    let supervisor = samples
        .iter()
        .map(|s| s.supervisor_rss_kib)
        .max()
        .unwrap_or(0);
    let guest_rss = samples.iter().map(|s| s.guest_rss_kib).max().unwrap_or(0);
    println!("  {mode}");
    println!(
        "    spawn -> first guest port write (host clock): {}",
        summary_us(&mut host)
    );
    println!(
        "    VMM main -> first guest port write (VMM log): {}",
        summary_us(&mut inner)
    );
    println!(
        "    CPU per start and stop (user + system, process tree): {}",
        summary_us(&mut cpu)
    );
    println!(
        "    VMM RSS without guest memory: median {:.2} MiB, max {:.2} MiB \
         (of which the supervisor's private pages: max {supervisor} KiB; guest memory touched: {guest_rss} KiB)",
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0,
    );
}

/// Like [`summary`], with sub-millisecond resolution.
fn summary_us(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match samples {
        [] => summary(samples),
        _ => format!(
            "min {:.2} ms, median {:.2} ms, max {:.2} ms (n={})",
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() - 1]),
            samples.len()
        ),
    }
}
