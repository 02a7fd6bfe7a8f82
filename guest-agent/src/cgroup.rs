//! A container's cgroup v2 group: statistics, freezer, kill, removal and
//! resource updates (the latter through libcgroups, which also applied the
//! spec's resources at creation), and its device filter (`devices`).

pub mod devices;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use firedoor_protocol::agent::{CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse};
use libcgroups::common::{CgroupManager, ControllerOpt};
use log::debug;
use nix::{sys::signal::Signal, unistd::Pid};
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};

/// How long freezing or emptying a group may take before we give up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Cgroup {
    /// The cgroup2 mount (`/sys/fs/cgroup`).
    mount: PathBuf,
    /// Path inside the hierarchy (`/firedoor/c1`), as in the spec.
    path: String,
}

impl Cgroup {
    pub fn new(mount: &Path, path: &str) -> Cgroup {
        Cgroup {
            mount: mount.to_owned(),
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn dir(&self) -> PathBuf {
        self.mount.join(self.path.trim_start_matches('/'))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn read(&self, name: &str) -> io::Result<String> {
        fs::read_to_string(self.file(name))
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        fs::write(self.file(name), value)
            .map_err(|e| AgentError::internal(format!("writing {:?}", self.file(name)), e))
    }

    /// PIDs (agent's namespace) of every process in the group.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let text = self
            .read("cgroup.procs")
            .map_err(|e| AgentError::internal(format!("reading {}/cgroup.procs", self.path), e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn events_key(&self, key: &str) -> Option<u64> {
        keyed(&self.read("cgroup.events").ok()?).get(key).copied()
    }

    pub fn freeze(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = u64::from(frozen);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.events_key("frozen") != Some(want) {
            if Instant::now() > deadline {
                return Err(AgentError::Internal(format!(
                    "{} did not {} within {SETTLE_TIMEOUT:?}",
                    self.path,
                    if frozen { "freeze" } else { "thaw" }
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Sends `signal` to every process of the group; frozen meanwhile so
    /// that no new process escapes it (as runc does).
    pub fn signal_all(&self, signal: Signal) -> Result<()> {
        if signal == Signal::SIGKILL && self.file("cgroup.kill").exists() {
            return self.write("cgroup.kill", "1");
        }
        let was_frozen = self.events_key("frozen") == Some(1);
        self.freeze(true)?;
        for pid in self.pids()? {
            // A PID above i32::MAX is no PID (pid_max is at most 2^22);
            // wrapped, it would name a process group.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            }
        }
        if !was_frozen {
            self.freeze(false)?;
        }
        Ok(())
    }

    /// Kills what is left and removes the group. Missing groups are fine.
    pub fn destroy(&self) -> Result<()> {
        if !self.dir().exists() {
            return Ok(());
        }
        self.signal_all(Signal::SIGKILL)?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            match fs::remove_dir(self.dir()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // EBUSY while dying processes are still in it.
                Err(e) if Instant::now() < deadline => {
                    debug!("rmdir {}: {e}; retrying", self.path);
                    let _ = self.signal_all(Signal::SIGKILL);
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(AgentError::internal(
                        format!("removing cgroup {}", self.path),
                        e,
                    ))
                }
            }
        }
    }

    fn controllers(&self) -> Vec<String> {
        self.read("cgroup.controllers")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let available = self.controllers();
        let wanted = [
            ("memory", resources.memory().is_some()),
            ("cpu", resources.cpu().is_some()),
            ("pids", resources.pids().is_some()),
            ("io", resources.block_io().is_some()),
            ("hugetlb", resources.hugepage_limits().is_some()),
        ];
        for (controller, asked) in wanted {
            if asked && !available.iter().any(|c| c == controller) {
                return Err(AgentError::FailedPrecondition(format!(
                    "cgroup controller {controller} is not available in {} (available: {})",
                    self.path,
                    available.join(" ")
                )));
            }
        }
        let manager =
            libcgroups::v2::manager::Manager::new(self.mount.clone(), self.path.clone().into())
                .map_err(|e| AgentError::internal("opening the cgroup", crate::error::chain(&e)))?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| AgentError::internal("updating resources", crate::error::chain(&e)))
    }

    /// `memory.events` `oom_kill`; 0 without the memory controller.
    pub fn oom_kills(&self) -> u64 {
        self.read("memory.events")
            .map(|t| keyed(&t).get("oom_kill").copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Statistics from the cgroup files; a section whose files are absent
    /// (controller not enabled) is left out.
    pub fn stats(&self) -> Result<StatsContainerResponse> {
        if !self.dir().is_dir() {
            return Err(AgentError::Internal(format!(
                "cgroup {} does not exist",
                self.path
            )));
        }
        let mut stats = StatsContainerResponse::new();
        if let Ok(text) = self.read("cpu.stat") {
            let cpu = keyed(&text);
            let get = |k: &str| cpu.get(k).copied().unwrap_or(0);
            stats.cpu = Some(CpuStats {
                usage_usec: get("usage_usec"),
                user_usec: get("user_usec"),
                system_usec: get("system_usec"),
                nr_periods: get("nr_periods"),
                nr_throttled: get("nr_throttled"),
                throttled_usec: get("throttled_usec"),
                ..Default::default()
            })
            .into();
        }
        if let Ok(usage) = self.read("memory.current") {
            let events = keyed(&self.read("memory.events").unwrap_or_default());
            stats.memory = Some(MemoryStats {
                usage: number(&usage),
                limit: self
                    .read("memory.max")
                    .map(|t| number(&t))
                    .unwrap_or(u64::MAX),
                swap_usage: self
                    .read("memory.swap.current")
                    .map(|t| number(&t))
                    .unwrap_or(0),
                stat: keyed(&self.read("memory.stat").unwrap_or_default()),
                oom: events.get("oom").copied().unwrap_or(0),
                oom_kill: events.get("oom_kill").copied().unwrap_or(0),
                ..Default::default()
            })
            .into();
        }
        if let Ok(current) = self.read("pids.current") {
            stats.pids = Some(PidsStats {
                current: number(&current),
                limit: self
                    .read("pids.max")
                    .map(|t| if t.trim() == "max" { 0 } else { number(&t) })
                    .unwrap_or(0),
                ..Default::default()
            })
            .into();
        }
        if let Ok(text) = self.read("io.stat") {
            stats.io = text.lines().filter_map(io_line).collect();
        }
        Ok(stats)
    }
}

/// A number file; `max` reads as u64::MAX.
fn number(text: &str) -> u64 {
    let text = text.trim();
    if text == "max" {
        u64::MAX
    } else {
        text.parse().unwrap_or(0)
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events, cgroup.events).
fn keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`
fn io_line(line: &str) -> Option<IoStats> {
    let mut words = line.split_whitespace();
    let (major, minor) = words.next()?.split_once(':')?;
    let mut io = IoStats {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        ..Default::default()
    };
    for word in words {
        let (key, value) = word.split_once('=')?;
        let value = value.parse().unwrap_or(0);
        match key {
            "rbytes" => io.rbytes = value,
            "wbytes" => io.wbytes = value,
            "rios" => io.rios = value,
            "wios" => io.wios = value,
            _ => {}
        }
    }
    Some(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let map = keyed("usage_usec 12\nuser_usec 5\nbogus\n");
        assert_eq!(map["usage_usec"], 12);
        assert_eq!(map.len(), 2);
        assert_eq!(number("max\n"), u64::MAX);
        assert_eq!(number("4096\n"), 4096);
        let io = io_line("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0").unwrap();
        assert_eq!((io.major, io.minor, io.rbytes, io.wios), (254, 0, 10, 2));
    }

    #[test]
    fn missing_group_is_a_clear_error() {
        let cgroup = Cgroup::new(Path::new("/nonexistent"), "/firedoor/c1");
        let err = cgroup.stats().unwrap_err();
        assert!(err.to_string().contains("/firedoor/c1"), "{err}");
        cgroup.destroy().unwrap();
        assert_eq!(cgroup.oom_kills(), 0);
    }
}
