//! The jail's file system: a tmpfs with only the exposed directories,
//! entered with pivot_root in a private mount namespace.

use std::fs::{DirBuilder, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};

use super::JailError;

/// Where the new root's tmpfs is mounted while it is built. Any existing
/// directory does: the mount is only ever visible in the VMM's private
/// mount namespace, and the exposed directories are opened before it
/// hides anything. The first that exists is used.
const STAGING_CANDIDATES: [&str; 4] = ["/tmp", "/run", "/mnt", "/dev"];

/// Small: the root holds only empty directories (the mount points).
const ROOT_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=256,mode=0755";

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |e| JailError::Sys(what, e)
}

/// Enters new mount, network, IPC and UTS namespaces whose file system is a
/// read-only tmpfs holding only `exposed` (bind mounts at the same paths).
pub(super) fn enter_new_root(exposed: &[PathBuf]) -> Result<(), JailError> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(sys("create the jail's namespaces (unshare)"))?;
    // Nothing we mount from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make the mount namespace private"))?;

    // Opened before the staging tmpfs may hide them (e.g. a socket
    // directory under /tmp).
    let sources = exposed
        .iter()
        .map(|dir| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(dir)
                .map(|fd| (dir, fd))
                .map_err(|e| JailError::Path(dir.clone(), e.to_string()))
        })
        .collect::<Result<Vec<(&PathBuf, File)>, _>>()?;

    let staging = STAGING_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            JailError::Path(
                PathBuf::from(STAGING_CANDIDATES[0]),
                format!("none of {STAGING_CANDIDATES:?} exists to build the jail's root on"),
            )
        })?;
    mount(
        Some("firedoor-vmm-jail"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )
    .map_err(sys(format!(
        "mount the jail's root tmpfs on {}",
        staging.display()
    )))?;

    for (dir, source) in &sources {
        let target = staging.join(dir.strip_prefix("/").unwrap_or(dir));
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target)
            .map_err(|e| JailError::Path((*dir).clone(), e.to_string()))?;
        // /proc/self/fd/N names the directory opened above, even where the
        // staging tmpfs now hides its path.
        let source_path = format!("/proc/self/fd/{}", source.as_raw_fd());
        mount(
            Some(source_path.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("bind-mount {} into the jail", dir.display())))?;
        // Sockets only: nothing there is to be executed or a device.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys(format!("restrict the bind mount of {}", dir.display())))?;
    }
    drop(sources);

    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // lazy unmount then detaches the whole host tree from this namespace
    // (see pivot_root(2)), with no directory needed to park it in.
    chdir(staging).map_err(sys("enter the jail's root"))?;
    pivot_root(".", ".").map_err(sys("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's file system"))?;
    chdir("/").map_err(sys("enter the jail's root"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("make the jail's root read-only"))?;
    Ok(())
}
