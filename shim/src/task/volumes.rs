//! The pod's volumes: every host source of a bind mount is shared with the
//! guest once per pod, at `<shared>/.volumes/<n>`, however many of the pod's
//! containers mount it. All of them then mount the same guest directory,
//! where the agent makes one shared mount per volume: a mount one container
//! makes below a Bidirectional volume reaches the pod's other containers
//! that mount it with propagation (issue 9, item 4).

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use firedoor_protocol::SHARED_VOLUMES_DIR;
use log::debug;

use crate::{error::Result, mount};

/// The volumes shared with the pod's guest, counted by their users.
#[derive(Debug, Default)]
pub(crate) struct Volumes {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Numbers the next volume: a name is never used twice, so the guest
    /// never finds a cached entry of an earlier volume under it.
    next: u64,
    by_source: HashMap<PathBuf, Volume>,
}

#[derive(Debug)]
struct Volume {
    name: String,
    users: usize,
}

/// One container's use of a volume: the volume's share is removed from the
/// host when the last lease on it is dropped.
pub(crate) struct VolumeLease {
    volumes: Arc<Volumes>,
    shared_dir: PathBuf,
    source: PathBuf,
    name: String,
}

impl fmt::Debug for VolumeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeLease({} as {})", self.source.display(), self.name)
    }
}

impl VolumeLease {
    /// The volume's path below the shared directory (`.volumes/<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Volumes {
    /// Shares host path `source` as a volume below `shared_dir`, bind
    /// mounting it there on its first use.
    pub fn acquire(self: &Arc<Self>, shared_dir: &Path, source: &Path) -> Result<VolumeLease> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let name = match state.by_source.get_mut(source) {
            Some(volume) => {
                volume.users += 1;
                volume.name.clone()
            }
            None => {
                let name = format!("{SHARED_VOLUMES_DIR}/{}", state.next);
                mount::bind(source, &shared_dir.join(&name), false)?;
                state.next += 1;
                debug!("shared volume {} as {name}", source.display());
                state.by_source.insert(
                    source.to_owned(),
                    Volume {
                        name: name.clone(),
                        users: 1,
                    },
                );
                name
            }
        };
        Ok(VolumeLease {
            volumes: self.clone(),
            shared_dir: shared_dir.to_owned(),
            source: source.to_owned(),
            name,
        })
    }

    /// How many containers use the volume of `source` (0: not shared).
    #[cfg(test)]
    pub fn users(&self, source: &Path) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.by_source.get(source).map_or(0, |v| v.users)
    }
}

impl Drop for VolumeLease {
    fn drop(&mut self) {
        let mut state = self.volumes.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(volume) = state.by_source.get_mut(&self.source) else {
            return;
        };
        volume.users -= 1;
        if volume.users > 0 {
            return;
        }
        state.by_source.remove(&self.source);
        let path = self.shared_dir.join(&self.name);
        mount::unmount_all_under(&path);
        let removed = if path.is_dir() {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            debug!("removing {}: {e}", path.display());
        }
        debug!("unshared volume {}", self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_volume_is_shared_once_and_removed_with_its_last_user() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("vol");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("f"), "x").unwrap();
        let file = dir.path().join("hosts");
        fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let shared_dir = dir.path().join("shared");
        let volumes = Arc::new(Volumes::default());

        let first = volumes.acquire(&shared_dir, &source).unwrap();
        let second = volumes.acquire(&shared_dir, &source).unwrap();
        let hosts = volumes.acquire(&shared_dir, &file).unwrap();
        assert_eq!(first.name(), ".volumes/0");
        assert_eq!(second.name(), first.name(), "one volume per source");
        assert_eq!(hosts.name(), ".volumes/1");
        let share = shared_dir.join(first.name());
        assert_eq!(fs::read_to_string(share.join("f")).unwrap(), "x");
        let hosts_share = shared_dir.join(hosts.name());
        assert_eq!(
            mount::mounts_under(&shared_dir),
            [share.clone(), hosts_share.clone()],
            "one bind each"
        );
        assert_eq!(volumes.users(&source), 2);

        drop(first);
        drop(hosts);
        assert_eq!(
            mount::mounts_under(&shared_dir),
            std::slice::from_ref(&share),
            "still used"
        );
        assert!(!hosts_share.exists());
        drop(second);
        assert!(mount::mounts_under(&shared_dir).is_empty());
        assert!(!share.exists());
        assert_eq!(volumes.users(&source), 0);
        // Shared again later: under a new name.
        let again = volumes.acquire(&shared_dir, &source).unwrap();
        assert_eq!(again.name(), ".volumes/2");
    }
}
