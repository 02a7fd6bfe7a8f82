//! The VMM's jail: what confines `firedoor-vmm` once the VM is built.
//!
//! The guest is untrusted and the VMM parses everything it sends, so the VMM
//! is the first thing an attacker who escapes the guest owns. The jail makes
//! that process worth little, in the spirit of Firecracker's jailer but
//! inside the VMM itself (no separate setuid launcher, no host directories to
//! create and clean up):
//!
//! 1. [`pid::enter_namespace`], first thing in `main`: the process becomes a
//!    small supervisor and forks the VMM as PID 1 of a new PID namespace.
//!    The host keeps supervising the PID it spawned (see [`pid`] for why
//!    killing it still leaves nothing behind).
//! 2. The VMM opens everything it needs: /dev/kvm, kernel and initrd (read
//!    into guest memory), disks, the serial output, the vsock listener and
//!    any vhost-user sockets (connected at setup).
//! 3. [`enter`]: new mount, network, IPC and UTS namespaces; a read-only
//!    tmpfs as the whole file system, holding only bind mounts of the
//!    directories the VMM still uses by path at run time (the vsock socket's
//!    directory: guest-initiated connections connect to `<uds>_<port>`, and
//!    the listener is unlinked at exit); `pivot_root` into it and detach the
//!    host's tree; drop every capability (bounding, ambient, inheritable,
//!    permitted, effective) and set no_new_privs.
//! 4. Seccomp filters per thread kind ([`crate::seccomp`]), installed by
//!    [`crate::Vmm::run`]: they must come last because unshare, mount and
//!    pivot_root are not on the allow-lists.
//!
//! The process keeps uid 0 (the run directory and the sockets it connects
//! to belong to root) but without capabilities, with an empty bounding set
//! and no_new_privs, uid 0 grants nothing beyond file ownership, and the
//! only files it can reach are the bind-mounted directories.

pub mod pid;
mod root;

use std::path::{Component, Path, PathBuf};

use caps::{CapSet, Capability};

/// Why the VMM could not be jailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The process lacks a capability the jail needs.
    #[error(
        "jailing the VMM needs {0} (run firedoor-vmm as root, or pass --no-jail \
         to run it unconfined, for debugging only)"
    )]
    MissingCapability(&'static str),
    /// Capabilities could not be read or changed.
    #[error("cannot {0}: {1}")]
    Capabilities(&'static str, String),
    /// A system call of the jail setup failed.
    #[error(
        "cannot {0}: {1} (is firedoor-vmm running in a container that forbids it? \
             pass --no-jail to run it unconfined, for debugging only)"
    )]
    Sys(String, #[source] nix::Error),
    /// A path to expose in the jail is unusable.
    #[error("cannot expose {0} in the jail: {1}")]
    Path(PathBuf, String),
    /// The supervisor's seccomp filter.
    #[error("{0}")]
    Seccomp(String),
    /// Threads already run: they would stay outside the namespaces and keep
    /// their capabilities.
    #[error("the jail must be entered before any thread starts ({0} threads run)")]
    Threaded(usize),
}

/// Capabilities the jail needs: namespaces, mounts and pivot_root need
/// CAP_SYS_ADMIN; emptying the bounding set needs CAP_SETPCAP.
const NEEDED: [(Capability, &str); 2] = [
    (Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (Capability::CAP_SETPCAP, "CAP_SETPCAP"),
];

/// Ok if this process has the privileges to jail itself.
pub fn check_privileges() -> Result<(), JailError> {
    for (cap, name) in NEEDED {
        let has = caps::has_cap(None, CapSet::Effective, cap)
            .map_err(|e| JailError::Capabilities("read capabilities", e.to_string()))?;
        if !has {
            return Err(JailError::MissingCapability(name));
        }
    }
    Ok(())
}

/// What the jailed VMM still reaches by path.
#[derive(Clone, Debug, Default)]
pub struct JailConfig {
    /// Directories bind-mounted read-write at the same absolute path inside
    /// the jail (for Unix sockets used after setup).
    pub exposed_dirs: Vec<PathBuf>,
}

/// Jails the calling process (see the module documentation): namespaces, a
/// new root holding only `config.exposed_dirs`, no capabilities,
/// no_new_privs. Call it once everything is open and before any thread
/// starts; seccomp comes after.
pub fn enter(config: &JailConfig) -> Result<(), JailError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(JailError::Threaded(threads));
    }
    for dir in &config.exposed_dirs {
        check_exposed_path(dir)?;
    }
    root::enter_new_root(&config.exposed_dirs)?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| JailError::Sys("set no_new_privs".into(), e))?;
    Ok(())
}

/// The directory holding `socket`, made absolute against the current
/// directory (the jail changes the current directory to its new root).
pub fn socket_dir(socket: &Path) -> Result<PathBuf, JailError> {
    let absolute = std::path::absolute(socket)
        .map_err(|e| JailError::Path(socket.to_owned(), e.to_string()))?;
    absolute
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| JailError::Path(socket.to_owned(), "it has no directory".into()))
}

/// Exposed paths are recreated component by component in the new root, so
/// they must be absolute and plain.
fn check_exposed_path(dir: &Path) -> Result<(), JailError> {
    let plain = dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(JailError::Path(
            dir.to_owned(),
            "it must be an absolute path without .. components".into(),
        ));
    }
    if dir == Path::new("/") {
        return Err(JailError::Path(
            dir.to_owned(),
            "exposing / would defeat the jail; put the socket in its own directory".into(),
        ));
    }
    Ok(())
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

/// Empties every capability set of this (only) thread. The bounding set
/// goes first, while CAP_SETPCAP is still effective; with it empty, even an
/// execve as uid 0 could not regain a capability.
pub(crate) fn drop_capabilities() -> Result<(), JailError> {
    let fail =
        |what| move |e: caps::errors::CapsError| JailError::Capabilities(what, e.to_string());
    caps::clear(None, CapSet::Bounding).map_err(fail("empty the capability bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(fail("empty the ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(fail("empty the inheritable capabilities"))?;
    caps::clear(None, CapSet::Effective).map_err(fail("empty the effective capabilities"))?;
    caps::clear(None, CapSet::Permitted).map_err(fail("empty the permitted capabilities"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_paths_must_be_absolute_and_plain() {
        check_exposed_path(Path::new("/run/firedoor/vm1")).unwrap();
        for bad in ["run/vm1", "/run/../etc", "/"] {
            let err = check_exposed_path(Path::new(bad)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn socket_dir_is_absolute() {
        assert_eq!(
            socket_dir(Path::new("/run/vm/v.sock")).unwrap(),
            Path::new("/run/vm")
        );
        let relative = socket_dir(Path::new("v.sock")).unwrap();
        assert_eq!(relative, std::env::current_dir().unwrap());
    }
}
