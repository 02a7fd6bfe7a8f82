//! A container in the sandbox, and what the host made for it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
};

use log::{debug, warn};

use super::{volumes::VolumeLease, Process};
use crate::{mount, sandbox::Sandbox};

/// A container in the sandbox: its bundle, its init process and its execs.
pub(crate) struct Container {
    pub bundle: PathBuf,
    /// What create made on the host for it, undone by delete.
    pub footprint: Footprint,
    pub init: Arc<Process>,
    pub execs: HashMap<String, Arc<Process>>,
    pub paused: bool,
    /// Set once TaskOOM went out for this container.
    pub oom_reported: Arc<AtomicBool>,
    /// Its OCI hooks that run on the host, if it has any.
    pub hooks: Option<Arc<crate::hooks::ContainerHooks>>,
    /// The host process in its network namespace (the hooks' pid, and the
    /// pid create reported when the VM boots at start). Held until the
    /// container is deleted.
    pub anchor: Option<Arc<crate::hooks::NetnsAnchor>>,
    /// Set from create to start when the VM boots at start.
    pub deferred: Option<super::container_create::DeferredBoot>,
}

/// What the host made for one container, so that exactly that is undone
/// (by delete, or by a create that fails half way).
#[derive(Debug, Default)]
pub(crate) struct Footprint {
    /// Where we mounted containerd's rootfs mounts (`<bundle>/<root.path>`).
    pub rootfs_mount: Option<PathBuf>,
    /// The container's corner of the shared directory (its rootfs below).
    pub share: Option<PathBuf>,
    /// The container exists in the guest.
    pub in_guest: bool,
    /// The pod volumes it mounts.
    pub volumes: Vec<VolumeLease>,
}

impl Footprint {
    /// Removes container `id` from the guest (when `sandbox` still runs),
    /// then its share, its volumes (unshared when it was their last user)
    /// and rootfs mounts; leaves the footprint empty.
    pub fn release(&mut self, id: &str, sandbox: Option<&Sandbox>) {
        if std::mem::take(&mut self.in_guest) {
            if let Some(sandbox) = sandbox {
                if let Err(e) = sandbox.agent().remove_container(id, true) {
                    debug!("{e}");
                }
            }
        }
        if let Some(dir) = self.share.take() {
            mount::unmount_all_under(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("removing {}: {e}", dir.display());
                }
            }
        }
        self.volumes.clear();
        if let Some(rootfs) = self.rootfs_mount.take() {
            mount::unmount_all_under(&rootfs);
        }
    }
}

/// The container's corner of the shared directory on the host.
pub(crate) fn share_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("shared").join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_undoes_the_mounts_that_were_made_and_empties_the_footprint() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir(&source).unwrap();
        let rootfs = dir.path().join("bundle/custom-root");
        mount::bind(&source, &rootfs, false).unwrap();
        let share = share_dir(dir.path(), "c1");
        mount::bind(&source, &share.join("rootfs"), false).unwrap();
        let mut footprint = Footprint {
            rootfs_mount: Some(rootfs.clone()),
            share: Some(share.clone()),
            in_guest: true,
            volumes: vec![],
        };
        footprint.release("c1", None);
        assert!(
            footprint.rootfs_mount.is_none()
                && footprint.share.is_none()
                && !footprint.in_guest
                && footprint.volumes.is_empty(),
            "{footprint:?}"
        );
        assert!(mount::mounts_under(dir.path()).is_empty());
        assert!(!share.exists());
    }
}
