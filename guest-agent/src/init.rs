//! PID 1 duties: a root that containers can pivot_root(2) away from, the
//! filesystems every process expects, and an orderly power off (sync,
//! unmount, reboot(2)).

use std::{fs, os::unix::fs::symlink, path::Path};

use log::{debug, warn};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sys::reboot::{reboot, set_cad_enabled, RebootMode},
    unistd::sync,
};

/// Failure to prepare the guest; the agent reports it and powers off.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    #[error("creating {path}: {source}")]
    CreateDir {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("moving the root to a tmpfs: {0}")]
    SwitchRoot(String),
}

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: a target's parent is mounted before it.
const MOUNTS: &[Mount] = &[
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
    Mount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
];

/// Whether `/` is the initramfs (the kernel's `rootfs`), which
/// pivot_root(2) cannot leave: containers then could not pivot either.
pub fn root_is_initramfs() -> Result<bool, InitError> {
    let err = |what: &str, e: &dyn std::fmt::Display| InitError::SwitchRoot(format!("{what}: {e}"));
    fs::create_dir_all("/proc").map_err(|e| err("creating /proc", &e))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mounting /proc", &e))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo");
    umount2("/proc", MntFlags::MNT_DETACH).map_err(|e| err("unmounting /proc", &e))?;
    let mountinfo = mountinfo.map_err(|e| err("reading mountinfo", &e))?;
    Ok(mountinfo.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else {
            return false;
        };
        mount.split(' ').nth(4) == Some("/") && fs.starts_with("rootfs ")
    }))
}

/// Moves a fresh tmpfs over `/` and chroots into it, as switch_root does,
/// without copying the agent or executing it again: the running agent and
/// every runtime helper (`/proc/self/exe`) keep using the initramfs's
/// `/init`, which stays in memory either way. Under TCG a second exec would
/// also translate the agent's start-up code a second time.
pub fn switch_to_tmpfs_root() -> Result<(), InitError> {
    let err = |what: &str, e: &dyn std::fmt::Display| InitError::SwitchRoot(format!("{what}: {e}"));
    const NEW_ROOT: &str = "/newroot";
    fs::create_dir_all(NEW_ROOT).map_err(|e| err("creating /newroot", &e))?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| err("mounting tmpfs", &e))?;
    for dir in ["dev", "proc", "sys", "tmp", "run", "mnt", "etc"] {
        let path = Path::new(NEW_ROOT).join(dir);
        fs::create_dir(&path).map_err(|e| err("creating directories", &e))?;
    }
    nix::unistd::chdir(NEW_ROOT).map_err(|e| err("chdir", &e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| err("moving the tmpfs over /", &e))?;
    nix::unistd::chroot(".").map_err(|e| err("chroot", &e))?;
    nix::unistd::chdir("/").map_err(|e| err("chdir", &e))?;
    Ok(())
}

/// Mounts the basic filesystems and lets the kernel turn Ctrl-Alt-Del into
/// SIGINT for us instead of an immediate reboot.
pub fn setup() -> Result<(), InitError> {
    for m in MOUNTS {
        fs::create_dir_all(m.target).map_err(|source| InitError::CreateDir {
            path: m.target,
            source,
        })?;
        mount(
            Some(m.fstype),
            m.target,
            Some(m.fstype),
            m.flags,
            Some(m.data),
        )
        .map_err(|source| InitError::Mount {
            fstype: m.fstype,
            target: m.target,
            source,
        })?;
        debug!("mounted {} on {}", m.fstype, m.target);
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            let _ = symlink(target, link);
        }
    }
    if let Err(e) = set_cad_enabled(false) {
        warn!("cannot disable Ctrl-Alt-Del reboot: {e}");
    }
    Ok(())
}

/// Flushes and unmounts everything, then resets the machine. The VMM treats a
/// guest reset as the end of the VM (QEMU `-no-reboot`, the built-in VMM's
/// i8042 reset), and unlike a power-off it needs no ACPI.
// Exiting is PID 1's last resort when reboot(2) fails (see below).
#[allow(clippy::exit)]
pub fn power_off() -> ! {
    sync();
    unmount_all();
    sync();
    let err = reboot(RebootMode::RB_AUTOBOOT).unwrap_err();
    // Only reachable without CAP_SYS_BOOT; nothing better to do than die,
    // which as PID 1 panics the kernel (panic=-1 resets it too).
    eprintln!("firedoor-agent: reboot(2) failed: {err}");
    std::process::exit(1);
}

/// Unmounts in reverse mount order; lazily, so a busy filesystem cannot stop
/// the power-off. Read by hand, not through `procfs` (in the graph through
/// libcontainer): its 0.18 `MountInfo::mount_point` keeps mountinfo's octal
/// escapes, so a path with a space would not unmount.
fn unmount_all() {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|target| *target != "/")
        .map(firedoor_protocol::oci::unescape_mountinfo)
        .collect();
    targets.reverse();
    for target in targets {
        if let Err(e) = umount2(target.as_str(), MntFlags::MNT_DETACH) {
            debug!("unmount {target}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parents_first() {
        // A mount listed later must not hide one listed earlier.
        for (i, earlier) in MOUNTS.iter().enumerate() {
            for later in &MOUNTS[i + 1..] {
                assert!(
                    !Path::new(earlier.target).starts_with(later.target),
                    "{} is mounted after {}, hiding it",
                    later.target,
                    earlier.target
                );
            }
        }
    }
}
