//! The namespaces of a pod's containers inside the guest (see the README,
//! "Pods"). The host sends `linux.namespaces` through unchanged except for
//! the network namespace of a pod, which it maps to the guest's pod network
//! namespace; here each entry is resolved:
//!
//! - a path `/proc/<pid>/ns/<type>`: allowed only when `<pid>` is the init
//!   process of one of this agent's containers (the pod's sandbox container,
//!   for CRI); the container joins that namespace;
//! - the pod network namespace's path: the container joins it (made on
//!   first use, with its loopback up);
//! - no path: a new namespace of the container's own;
//! - no entry for pid, ipc, uts or network: the guest's own (the node of a
//!   pod is its VM);
//! - mount: always a new one.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use log::info;
use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::{AgentError, Result};

/// What a container's namespace entries may refer to.
#[derive(Debug, Clone)]
pub struct Joinable<'a> {
    /// Init pids of this agent's live containers.
    pub init_pids: &'a [i32],
    /// Where the pod network namespace is pinned.
    pub pod_netns: &'a Path,
}

/// The name of a namespace type in `/proc/<pid>/ns/`.
fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Resolves the spec's namespace entries (see the module comment); returns
/// them and whether the pod network namespace is needed.
pub fn resolve(
    namespaces: Option<&[LinuxNamespace]>,
    joinable: &Joinable<'_>,
) -> Result<(Vec<LinuxNamespace>, bool)> {
    let mut resolved = Vec::new();
    let mut pod_netns = false;
    for (i, ns) in namespaces.unwrap_or_default().iter().enumerate() {
        let typ = ns.typ();
        if resolved.iter().any(|n: &LinuxNamespace| n.typ() == typ) {
            return Err(AgentError::InvalidArgument(format!(
                "oci_spec_json: linux.namespaces[{i}]: a second {typ:?} namespace"
            )));
        }
        let mut ns = ns.clone();
        match ns.path().clone() {
            None => {}
            Some(_) if typ == LinuxNamespaceType::Mount => {
                ns.set_path(None);
            }
            Some(path) if typ == LinuxNamespaceType::Network && path == joinable.pod_netns => {
                pod_netns = true;
            }
            Some(path) => {
                check_proc_path(&path, typ, joinable.init_pids).map_err(|why| {
                    AgentError::InvalidArgument(format!(
                        "oci_spec_json: linux.namespaces[{i}].path {path:?}: {why}"
                    ))
                })?;
            }
        }
        resolved.push(ns);
    }
    if !resolved
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Mount)
    {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(LinuxNamespaceType::Mount);
        resolved.push(ns);
    }
    Ok((resolved, pod_netns))
}

fn check_proc_path(
    path: &Path,
    typ: LinuxNamespaceType,
    init_pids: &[i32],
) -> std::result::Result<(), String> {
    let name = proc_name(typ);
    let pid = path
        .strip_prefix("/proc")
        .ok()
        .and_then(|rest| {
            let mut parts = rest.iter();
            let pid = parts.next()?.to_str()?.parse::<i32>().ok()?;
            (parts.next()? == "ns" && parts.next()? == name && parts.next().is_none())
                .then_some(pid)
        })
        .ok_or_else(|| format!("must be /proc/<pid>/ns/{name} (or the pod network namespace)"))?;
    if !init_pids.contains(&pid) {
        return Err(format!(
            "{pid} is not the first process of a container of this pod"
        ));
    }
    Ok(())
}

/// Makes sure the pod network namespace is pinned at `path`.
pub fn ensure_pod_netns(path: &Path) -> Result<()> {
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if is_namespace(path) {
        return Ok(());
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        AgentError::Internal(format!("pod network namespace {path:?}: {what}: {e}"))
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| failed("creating its directory", &e))?;
    }
    fs::File::create(path).map_err(|e| failed("creating the file", &e))?;
    let target: PathBuf = path.to_owned();
    // A thread of its own: unshare(CLONE_NEWNET) moves only the calling
    // thread, which ends once the namespace is pinned by the bind mount.
    let made = std::thread::spawn(move || -> std::result::Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("the thread making it panicked".into()));
    made.map_err(|e| failed("making it", &e))?;
    info!("pod network namespace pinned at {path:?}");
    Ok(())
}

/// Whether `path` is a namespace file (a bind mount of an nsfs inode).
fn is_namespace(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace (CNI's
/// loopback plugin does this for runc's pods).
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let up = libc::c_short::try_from(libc::IFF_UP)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid
    // ifreq that outlives the calls; the fd is an open socket.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= up;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ).set_path(path.map(PathBuf::from));
        ns
    }

    #[test]
    fn resolves_pod_namespaces() {
        let joinable = Joinable {
            init_pids: &[42],
            pod_netns: Path::new("/run/firedoor/netns/pod"),
        };
        let spec = [
            ns(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid")),
            ns(LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc")),
            ns(LinuxNamespaceType::Uts, None),
            ns(LinuxNamespaceType::Network, Some("/run/firedoor/netns/pod")),
            ns(LinuxNamespaceType::Mount, Some("/proc/42/ns/mnt")),
        ];
        let (resolved, pod_netns) = resolve(Some(&spec), &joinable).unwrap();
        assert!(pod_netns);
        assert_eq!(resolved[..4], spec[..4]);
        assert_eq!(resolved[4], ns(LinuxNamespaceType::Mount, None));

        // NODE mode: no pid/ipc/network entry, the guest's own; a mount
        // namespace is always added.
        let (resolved, pod_netns) =
            resolve(Some(&[ns(LinuxNamespaceType::Uts, None)]), &joinable).unwrap();
        assert!(!pod_netns);
        assert_eq!(
            resolved,
            [
                ns(LinuxNamespaceType::Uts, None),
                ns(LinuxNamespaceType::Mount, None)
            ]
        );
    }

    #[test]
    fn refuses_paths_of_processes_that_are_not_container_inits() {
        let joinable = Joinable {
            init_pids: &[42],
            pod_netns: Path::new("/run/firedoor/netns/pod"),
        };
        for (typ, path) in [
            (LinuxNamespaceType::Ipc, "/proc/1/ns/ipc"),
            (LinuxNamespaceType::Ipc, "/proc/42/ns/pid"),
            (LinuxNamespaceType::Pid, "/proc/42/ns/pid/.."),
            (LinuxNamespaceType::Network, "/var/run/netns/cni-1234"),
            (LinuxNamespaceType::Uts, "/proc/self/ns/uts"),
        ] {
            let err = resolve(Some(&[ns(typ, Some(path))]), &joinable).unwrap_err();
            assert!(
                matches!(err, AgentError::InvalidArgument(_)),
                "{path}: {err}"
            );
            assert!(err.to_string().contains("namespaces[0].path"), "{err}");
        }
        let twice = [
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Pid, None),
        ];
        resolve(Some(&twice), &joinable).unwrap_err();
    }
}
