//! Probe OCI hooks for the hook tests (ctr and Docker): each writes the
//! state it read on stdin to `DIR/PHASE.json` and a listing of `DIR` to
//! `DIR/PHASE.before` (what the hooks before it wrote), so a test reads
//! both the states and the order the hooks ran in.

use std::path::{Path, PathBuf};

/// The create, poststart and poststop probes, with the state status each
/// one must read.
pub const PHASES: [(&str, &str); 3] = [
    ("create", "creating"),
    ("poststart", "running"),
    ("poststop", "stopped"),
];

/// The directory the probe hooks write to.
#[derive(Debug)]
pub struct HookProbes {
    dir: PathBuf,
}

impl HookProbes {
    /// Probes writing to `dir` (created).
    pub fn new(dir: &Path) -> HookProbes {
        std::fs::create_dir_all(dir).unwrap();
        HookProbes { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `sh -c` script of the probe of `phase`: saves the state, runs
    /// `then` (with the state in `$state`), lists the directory.
    pub fn script(&self, phase: &str, then: &str) -> String {
        format!(
            "state=$(cat); echo \"$state\" > {dir}/{phase}.json; {then}ls {dir} > {dir}/{phase}.before",
            dir = self.dir.display()
        )
    }

    /// The file `name` a probe wrote; empty while it is not there.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Asserts that the three probes of [`PHASES`] ran in that order, each
    /// with the OCI state of container `id` in its status and bundle, and
    /// all with the same pid; returns that pid. `diagnostics` (a log tail)
    /// goes into the message when a state is missing.
    pub fn assert_ran_in_order(&self, id: &str, diagnostics: impl Fn() -> String) -> u64 {
        let mut pids = Vec::new();
        for (phase, status) in PHASES {
            let state: serde_json::Value =
                serde_json::from_str(&self.read(&format!("{phase}.json")))
                    .unwrap_or_else(|e| panic!("{phase} hook state: {e}\n{}", diagnostics()));
            assert_eq!(state["id"], id, "{state}");
            assert_eq!(state["status"], status, "{state}");
            assert!(state["bundle"].as_str().unwrap().ends_with(id), "{state}");
            pids.push(state["pid"].as_u64().unwrap_or_default());
        }
        // One host process, the one create reported, in every state.
        assert!(
            pids[0] > 0 && pids.iter().all(|p| *p == pids[0]),
            "{pids:?}"
        );
        // In order: each hook saw the files of the ones before it.
        assert!(!self.read("create.before").contains("poststart"));
        assert!(self.read("poststart.before").contains("create.json"));
        assert!(self.read("poststop.before").contains("poststart.json"));
        pids[0]
    }
}
