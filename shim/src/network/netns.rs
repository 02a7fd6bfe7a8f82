//! Work done inside another network namespace: on a thread of its own,
//! since setns(CLONE_NEWNET) moves only the calling thread, which then
//! ends. Sockets and devices opened there stay in that namespace.

use std::{fs::File, path::Path};

use nix::sched::{setns, CloneFlags};

use super::{NetworkError, Result};

/// Runs `work` in the network namespace at `path` (a bind-mounted nsfs
/// file such as `/var/run/netns/cni-...`).
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let netns = open(path)?;
    run_in_open(&netns, path, work)
}

/// Opens the network namespace at `path`: the descriptor keeps naming it
/// when the path no longer does (`/proc/<pid>/ns/net` of a process that
/// ended, whose pid may be reused).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| NetworkError::Enter {
        path: path.to_owned(),
        source,
    })
}

/// Runs `work` in the network namespace `netns` (opened from `path`).
pub fn run_in_open<T: Send>(
    netns: &File,
    path: &Path,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Enter {
                    path: path.to_owned(),
                    source: e.into(),
                })?;
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
