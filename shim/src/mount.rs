//! Host mounts the shim makes: the container rootfs from containerd's
//! snapshotter mounts, and bind mounts into the directory shared with the
//! guest over virtio-fs.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use containerd_shim_protos::api::Mount as ContainerdMount;
use firedoor_protocol::oci::{split_mount_options, unescape_mountinfo};
use log::debug;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts containerd's rootfs mounts (usually one overlay) on `target`.
pub fn mount_rootfs(mounts: &[ContainerdMount], target: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    for m in mounts {
        let (flags, data) = split_mount_options(&m.options);
        mount(
            Some(m.source.as_str()),
            target,
            Some(m.type_.as_str()),
            flags,
            Some(data.as_str()),
        )
        .with_context(|| {
            format!(
                "mounting the {} rootfs from {} on {}",
                m.type_,
                m.source,
                target.display()
            )
        })?;
        debug!("mounted {} rootfs on {}", m.type_, target.display());
    }
    Ok(())
}

/// Bind-mounts `source` (file or directory) on `target`, creating `target`.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> anyhow::Result<()> {
    let meta = fs::metadata(source).with_context(|| format!("bind source {}", source.display()))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if meta.is_dir() {
        fs::create_dir_all(target)
    } else {
        fs::File::create(target).map(drop)
    }
    .with_context(|| format!("creating {}", target.display()))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("bind-mounting {} on {}", source.display(), target.display()))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

/// Makes `dir` a mount point of its own with shared propagation, so that
/// mounts made below it later also appear in virtiofsd's mount namespace.
pub fn make_shared_mount_point(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mounting {} on itself", dir.display()))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .with_context(|| format!("making {} a shared mount", dir.display()))
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `dir` (lazily, deepest first), without
/// touching the mounts these are copies of: a bind of a shared host volume
/// is in the volume's peer group, and unmounting a mount below it would
/// unmount the host's own mount there too.
pub fn unmount_all_under(dir: &Path) {
    // A path can be mounted over several times: repeat until none is left.
    for _ in 0..8 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        // Receiving still, sending no more (unmounts included).
        for m in mounts.iter().rev() {
            if let Err(e) = mount(
                None::<&str>,
                m,
                None::<&str>,
                MsFlags::MS_SLAVE,
                None::<&str>,
            ) {
                debug!("making {} a slave: {e}", m.display());
            }
        }
        for m in mounts {
            if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                debug!("unmount {}: {e}", m.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts_show_up_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("f"), "x").unwrap();
        let shared = dir.path().join("shared");
        make_shared_mount_point(&shared).unwrap();
        let target = shared.join("c1/mounts/0");
        bind(&source, &target, true).unwrap();
        assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "x");
        assert!(
            fs::write(target.join("g"), "y").is_err(),
            "read-only bind is writable"
        );
        assert_eq!(mounts_under(&shared), vec![target.clone(), shared.clone()]);
        unmount_all_under(&shared);
        assert!(mounts_under(&shared).is_empty());
        assert!(!target.join("f").exists());
    }

    /// A volume on a shared mount, with a mount of the host's below it:
    /// removing our bind of the volume leaves the host's mount alone.
    #[test]
    fn unmounting_a_share_leaves_the_hosts_mounts_below_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        fs::create_dir(&volume).unwrap();
        let tmpfs = |target: &Path| {
            mount(
                Some("firedoor-unit"),
                target,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&volume);
        mount(
            None::<&str>,
            &volume,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        let shared = dir.path().join("shared");
        make_shared_mount_point(&shared).unwrap();
        let share = shared.join(".volumes/0");
        bind(&volume, &share, false).unwrap();
        let host_sub = volume.join("sub");
        fs::create_dir(&host_sub).unwrap();
        tmpfs(&host_sub);
        fs::write(host_sub.join("f"), "host").unwrap();
        assert_eq!(fs::read_to_string(share.join("sub/f")).unwrap(), "host");

        unmount_all_under(&shared);
        assert!(mounts_under(&shared).is_empty());
        let left = mounts_under(&volume);
        unmount_all_under(&volume);
        assert_eq!(left, [host_sub, volume], "the host's mounts stay");
    }
}
