//! Work done inside another network namespace: on a thread of its own,
//! since setns(CLONE_NEWNET) moves only the calling thread, which then
//! ends. Sockets and devices opened there stay in that namespace.

use std::{fs::File, path::Path};

use nix::sched::{setns, CloneFlags};

use super::{NetworkError, Result};

/// Runs `work` in the network namespace at `path` (a bind-mounted nsfs
/// file such as `/var/run/netns/cni-...`).
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let enter_err = |source| NetworkError::Enter {
        path: path.to_owned(),
        source,
    };
    let netns = File::open(path).map_err(enter_err)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(e.into()))?;
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
