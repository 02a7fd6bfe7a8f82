//! The pod's volumes in the guest. The host shares each host directory the
//! pod's containers bind-mount once, below `<shared>/.volumes/`; for the
//! containers that mount it with propagation (`rshared`, `rslave`) the agent
//! gives the volume one guest mount of its own, in a peer group of its own
//! (`/run/firedoor/volumes/<name>`), which they bind-mount. A mount that a
//! container with Bidirectional (`rshared`) propagation makes below its
//! volume thus reaches the guest's mount and from there every other
//! container of the pod mounting the volume with `rshared` or `rslave`.
//! A private mount (no propagation option) keeps the shared directory's
//! path, a private mount in the guest, and sees none of that: libcontainer
//! 0.7 applies a container's rootfs propagation to its mounts and ignores
//! their own propagation options, so the source decides. The guest mount is
//! removed with the last container that uses it.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use log::{debug, warn};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::error::{AgentError, Result};

/// Where the volumes arrive and where the agent mounts them.
#[derive(Debug, Clone)]
pub struct VolumeDirs {
    /// `<shared>/.volumes`, the host's shares (virtio-fs in a VM).
    pub shared: PathBuf,
    /// The guest's own mount points, one per directory volume.
    pub mounts: PathBuf,
}

/// The directory volumes mounted in the guest, with the containers using them.
#[derive(Debug)]
pub struct Volumes {
    dirs: VolumeDirs,
    users: Mutex<HashMap<String, HashSet<String>>>,
}

impl Volumes {
    pub fn new(dirs: VolumeDirs) -> Volumes {
        Volumes {
            dirs,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Points container `id`'s propagated bind mounts of directory volumes
    /// (sources below [`VolumeDirs::shared`], already resolved) at the
    /// volumes' guest mounts, mounting a volume on its first use. On error
    /// nothing of `id` stays attached.
    pub fn attach(&self, id: &str, spec: &mut Spec) -> Result<()> {
        let result = self.attach_all(id, spec);
        if result.is_err() {
            self.detach(id);
        }
        result
    }

    fn attach_all(&self, id: &str, spec: &mut Spec) -> Result<()> {
        let Some(mounts) = spec.mounts_mut() else {
            return Ok(());
        };
        for mount in mounts.iter_mut() {
            let propagated = mount
                .options()
                .iter()
                .flatten()
                .any(|o| matches!(o.as_str(), "rshared" | "shared" | "rslave" | "slave"));
            let Some(source) = mount.source().clone().filter(|_| propagated) else {
                continue;
            };
            let Ok(below) = source.strip_prefix(&self.dirs.shared) else {
                continue;
            };
            let mut parts = below.components();
            let Some(name) = parts.next().and_then(|c| c.as_os_str().to_str()) else {
                continue;
            };
            let shared = self.dirs.shared.join(name);
            if !shared.is_dir() {
                // A file: nothing can be mounted below it; used as shared.
                continue;
            }
            let target = self.dirs.mounts.join(name);
            self.mount_once(id, name, &shared, &target)?;
            mount.set_source(Some(target.join(parts.as_path())));
        }
        Ok(())
    }

    fn mount_once(&self, id: &str, name: &str, shared: &Path, target: &Path) -> Result<()> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(users) = users.get_mut(name) {
            users.insert(id.to_string());
            return Ok(());
        }
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::internal(format!("volume {name}: {what}"), e)
        };
        fs::create_dir_all(target).map_err(|e| failed("creating its mount point", &e))?;
        mount(
            Some(shared),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| failed("bind-mounting it", &e))?;
        // Out of the shared directory's peer group (if it has one), into a
        // group of its own that the containers' bind mounts join.
        for flags in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
            if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(failed("setting its propagation", &e));
            }
        }
        debug!("volume {name} mounted on {}", target.display());
        users.insert(name.to_string(), HashSet::from([id.to_string()]));
        Ok(())
    }

    /// Container `id` is gone: unmounts the volumes it was the last user of.
    pub fn detach(&self, id: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|name, users| {
            users.remove(id);
            if !users.is_empty() {
                return true;
            }
            let target = self.dirs.mounts.join(name);
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                warn!("volume {name}: unmounting {}: {e}", target.display());
            }
            let _ = fs::remove_dir(&target);
            debug!("volume {name} unmounted");
            false
        });
    }

    /// How many containers use volume `name`.
    pub fn users(&self, name: &str) -> usize {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(name).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::MountBuilder;

    use super::*;

    /// The test thread's mounts (it has a mount namespace of its own).
    fn mountinfo() -> String {
        fs::read_to_string("/proc/thread-self/mountinfo").unwrap()
    }

    fn mounted(path: &Path) -> bool {
        let info = mountinfo();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|p| Path::new(p) == path)
    }

    fn spec_mounting(sources: &[(&Path, &str)]) -> Spec {
        let mounts = sources
            .iter()
            .map(|(source, propagation)| {
                MountBuilder::default()
                    .destination("/data")
                    .typ("bind")
                    .source(*source)
                    .options(vec!["rbind".to_string(), propagation.to_string()])
                    .build()
                    .unwrap()
            })
            .collect();
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    fn sources(spec: &Spec) -> Vec<PathBuf> {
        spec.mounts()
            .iter()
            .flatten()
            .filter_map(|m| m.source().clone())
            .collect()
    }

    /// Host mode (root, a private mount namespace): one guest mount per
    /// directory volume, shared, kept while a container uses it.
    #[test]
    fn a_directory_volume_is_mounted_once_and_shared_until_its_last_user() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root for mounts");
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dirs = VolumeDirs {
            shared: dir.path().join("shared/.volumes"),
            mounts: dir.path().join("volumes"),
        };
        let volume = dirs.shared.join("v1");
        fs::create_dir_all(volume.join("sub")).unwrap();
        let file = dirs.shared.join("f1");
        fs::write(&file, "hosts").unwrap();
        let other = dir.path().join("elsewhere");
        fs::create_dir(&other).unwrap();
        let volumes = Volumes::new(dirs.clone());

        let mut a = spec_mounting(&[
            (&volume, "rshared"),
            (&volume.join("sub"), "rslave"),
            (&volume, "rprivate"),
            (&file, "rslave"),
            (&other, "rshared"),
        ]);
        volumes.attach("a", &mut a).unwrap();
        let target = dirs.mounts.join("v1");
        assert_eq!(
            sources(&a),
            [
                target.clone(),
                target.join("sub"),
                volume.clone(),
                file.clone(),
                other.clone()
            ],
            "propagated directory volumes point at the guest mount, the rest stays"
        );
        assert!(mounted(&target));
        let info = mountinfo();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
            .unwrap();
        assert!(line.contains(" shared:"), "{line}");

        let mut b = spec_mounting(&[(&volume, "rslave")]);
        volumes.attach("b", &mut b).unwrap();
        assert_eq!(volumes.users("v1"), 2);
        volumes.detach("a");
        assert!(mounted(&target), "b still uses it");
        volumes.detach("b");
        assert!(!mounted(&target));
        assert!(!target.exists());
        assert_eq!(volumes.users("v1"), 0);
    }
}
