//! Soak with leak accounting: N create -> start -> wait -> delete cycles
//! through containerd, half of them with an exec, in a pod whose shim and VM
//! live through all of them; then nothing may have grown: processes,
//! mounts, open descriptors of containerd and of the shim, entries under
//! the sandbox's state directory, tap devices.
//!
//! CI runs 20 cycles; the long soak is
//! `FIREDOOR_SOAK_CYCLES=200 cargo test -p firedoor-tests --test soak -- --nocapture`.

use std::{
    fs,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use firedoor_tests::{
    containerd::{Containerd, RUNTIME},
    image::BUSYBOX_IMAGE,
    processes_mentioning,
};

/// What a leak would grow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Footprint {
    /// Processes naming containerd's directory or the sandbox's (containerd,
    /// shims, the VM and its helpers): the rest of the host is not ours.
    processes: usize,
    /// The shim's threads but ttrpc's per-connection worker pool
    /// ("client_handler"), which grows and shrinks between 1 and 5 idle
    /// workers by itself; a leaked connection shows in `shim_fds`.
    shim_threads: usize,
    mounts: usize,
    containerd_fds: usize,
    shim_fds: usize,
    state_entries: usize,
    taps: usize,
}

/// The name ttrpc's server gives its connection threads, which their
/// workers inherit.
const TTRPC_WORKER: &str = "client_handler";

impl Footprint {
    /// What grew from `before` to `self`, by name. A count that went down
    /// is no leak: containerd closes a connection of the baseline's last
    /// cycle late now and then (seen in CI: its descriptors 18 -> 17).
    fn growth(&self, before: &Footprint) -> Vec<String> {
        [
            ("processes", before.processes, self.processes),
            ("shim_threads", before.shim_threads, self.shim_threads),
            ("mounts", before.mounts, self.mounts),
            ("containerd_fds", before.containerd_fds, self.containerd_fds),
            ("shim_fds", before.shim_fds, self.shim_fds),
            ("state_entries", before.state_entries, self.state_entries),
            ("taps", before.taps, self.taps),
        ]
        .into_iter()
        .filter(|(_, was, is)| is > was)
        .map(|(name, was, is)| format!("{name} {was} -> {is}"))
        .collect()
    }
}

fn count_dir(path: &Path) -> usize {
    fs::read_dir(path).map_or(0, |entries| entries.count())
}

/// Files and directories under `dir`, recursively.
fn count_tree(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                1 + if path.is_dir() && !path.is_symlink() {
                    count_tree(&path)
                } else {
                    0
                }
            })
            .sum()
    })
}

fn footprint(ctrd_dir: &Path, containerd_pid: u32, shim_pid: u32, state_dir: &Path) -> Footprint {
    let processes = processes_mentioning(ctrd_dir).len() + processes_mentioning(state_dir).len();
    let ours = |p: &str| {
        p.starts_with(&*ctrd_dir.to_string_lossy()) || p.starts_with(&*state_dir.to_string_lossy())
    };
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(ours))
        .count();
    let taps = fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("tun_flags").exists())
        .count();
    Footprint {
        processes,
        shim_threads: thread_names(shim_pid)
            .iter()
            .filter(|name| *name != TTRPC_WORKER)
            .count(),
        mounts,
        containerd_fds: count_dir(Path::new(&format!("/proc/{containerd_pid}/fd"))),
        shim_fds: count_dir(Path::new(&format!("/proc/{shim_pid}/fd"))),
        state_entries: count_tree(state_dir),
        taps,
    }
}

fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn cycle(ctrd: &Containerd, annotation: &str, pod: &str, i: usize) {
    let id = format!("fd-soak-{i}");
    let out = ctrd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            annotation,
            BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "echo cycle",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"cycle\n",
        "cycle {i}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail(20)
    );
    if i % 2 == 1 {
        let out = ctrd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            &format!("soak-{i}"),
            pod,
            "echo",
            "exec",
        ]);
        assert_eq!(out, "exec\n", "cycle {i}");
    }
}

#[test]
fn cycles_leave_nothing_behind() {
    let cycles: usize = std::env::var("FIREDOOR_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let ctrd = Containerd::start();
    let pod = "fd-soak-pod";
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        BUSYBOX_IMAGE,
        pod,
        "sleep",
        "100000",
    ]);
    ctrd.wait_status(pod, "RUNNING");
    let shims = ctrd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let containerd_pid = ctrd.daemon_pid();
    let state_dir = Containerd::state_dir(pod);
    let measure = || footprint(ctrd.dir(), containerd_pid, shims[0], &state_dir);

    // One cycle first, so that what is made once (threads, pools, caches)
    // is in the baseline.
    cycle(&ctrd, &annotation, pod, 0);
    cycle(&ctrd, &annotation, pod, 1);
    // The baseline once the warm-up's last exit and delete have settled.
    let mut before = measure();
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(250));
        let again = measure();
        if again == before {
            break;
        }
        before = again;
    }
    let started = Instant::now();
    for i in 2..cycles + 2 {
        cycle(&ctrd, &annotation, pod, i);
    }
    let took = started.elapsed();
    // Exits and deletes finish asynchronously: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = measure();
    while !after.growth(&before).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = measure();
    }
    println!(
        "{cycles} cycles in {took:?} ({:?} each); before {before:?}\n  after {after:?}\n  shim threads: {}",
        took / u32::try_from(cycles.max(1)).unwrap_or(1),
        thread_names(shims[0]).join(" ")
    );
    assert_eq!(
        after.growth(&before),
        Vec::<String>::new(),
        "something leaked over {cycles} cycles"
    );
    assert_eq!(ctrd.shim_pids(), shims, "the pod's shim served every cycle");

    ctrd.ctr_ok(&["task", "kill", "-s", "SIGKILL", pod]);
    ctrd.wait_status(pod, "STOPPED");
    ctrd.ctr_ok(&["task", "delete", pod]);
    ctrd.ctr_ok(&["containers", "rm", pod]);
    ctrd.assert_sandbox_gone(pod);
}
