//! The container's OCI spec: read from the bundle with errors that name the
//! offending field, and rewritten for the guest.

use std::{fs, path::Path};

use anyhow::{bail, Context};
use firedoor_protocol::oci;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> anyhow::Result<Spec> {
    let path = bundle.join("config.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid {}", path.display()))
}

/// Parses a config.json, naming the field that is wrong.
pub fn parse(text: &str) -> anyhow::Result<Spec> {
    let spec: Spec = oci::from_json(text.as_bytes()).map_err(|e| anyhow::anyhow!("at {e}"))?;
    let Some(process) = spec.process() else {
        bail!("process is missing: nothing to run");
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("process.args is empty: nothing to run");
    }
    Ok(spec)
}

/// A host path that a spec mount needs inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMount {
    /// Index of the mount in the spec.
    pub index: usize,
    pub host_source: std::path::PathBuf,
}

/// Mounts whose source is a host path (bind mounts): these must be shared
/// with the guest and their sources rewritten.
pub fn host_bind_mounts(spec: &Spec) -> Vec<SharedMount> {
    spec.mounts()
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| {
            oci::is_bind(
                m.typ().as_deref(),
                m.options().iter().flatten().map(String::as_str),
            )
        })
        .filter_map(|(index, m)| {
            m.source().as_ref().map(|source| SharedMount {
                index,
                host_source: source.clone(),
            })
        })
        .collect()
}

/// Device nodes that are the same device in the guest as on the host (the
/// guest kernel has them, with the same numbers).
const GUEST_EQUIVALENT_DEVICES: &[&str] = &["/dev/net/tun", "/dev/fuse"];

/// Rewrites a host spec for the guest: the rootfs and bind-mount sources
/// become guest paths; namespaces go through unchanged (the pids in
/// `/proc/<pid>/ns/...` paths are guest pids: the shim reports guest pids)
/// except that a network namespace given by a host path (CRI's CNI
/// namespace, Docker's) becomes the guest's pod network namespace; hooks,
/// which would run host binaries, and host device nodes are dropped (but
/// for [`GUEST_EQUIVALENT_DEVICES`]).
pub fn for_guest(
    mut spec: Spec,
    guest_rootfs: &str,
    guest_mount_sources: &[(usize, String)],
) -> anyhow::Result<Spec> {
    if let Some(root) = spec.root_mut() {
        root.set_path(guest_rootfs.into());
    } else {
        bail!("root is missing");
    }
    if let Some(mounts) = spec.mounts_mut() {
        for (index, source) in guest_mount_sources {
            let mount = mounts.get_mut(*index).context("mount index out of range")?;
            mount.set_source(Some(source.into()));
        }
    }
    if let Some(linux) = spec.linux_mut() {
        // Device nodes named by the host (all of the host's, for a
        // privileged container) mean nothing in the guest, whose devices are
        // its own: a privileged container is privileged in the guest only.
        // Kept: the virtual devices every kernel numbers alike.
        if let Some(devices) = linux.devices_mut() {
            devices.retain(|d| {
                GUEST_EQUIVALENT_DEVICES
                    .iter()
                    .any(|p| d.path() == Path::new(p))
            });
        }
        for ns in linux.namespaces_mut().iter_mut().flatten() {
            if ns.typ() == LinuxNamespaceType::Network && ns.path().is_some() {
                ns.set_path(Some(firedoor_protocol::POD_NETNS_PATH.into()));
            }
        }
    }
    spec.set_hooks(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hi"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "source": "/var/lib/hosts", "options": ["bind"]}
        ],
        "linux": {"devices": [{"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232},
                              {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200}],
        "namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc", "path": "/proc/9/ns/ipc"}
        ]},
        "hooks": {"prestart": [{"path": "/usr/bin/true"}]}
    }"#;

    #[test]
    fn parses_and_finds_bind_mounts() {
        let spec = parse(MINIMAL).unwrap();
        let binds = host_bind_mounts(&spec);
        assert_eq!(
            binds,
            vec![
                SharedMount {
                    index: 1,
                    host_source: "/srv/data".into()
                },
                SharedMount {
                    index: 2,
                    host_source: "/var/lib/hosts".into()
                },
            ]
        );
    }

    #[test]
    fn rewrites_for_the_guest() {
        let spec = parse(MINIMAL).unwrap();
        let guest = for_guest(
            spec,
            "/run/firedoor/shared/c1/rootfs",
            &[(1, "/run/firedoor/shared/c1/mounts/1".into())],
        )
        .unwrap();
        assert_eq!(
            guest.root().as_ref().unwrap().path().to_str(),
            Some("/run/firedoor/shared/c1/rootfs")
        );
        let mounts = guest.mounts().as_ref().unwrap();
        assert_eq!(
            mounts[1].source().as_ref().unwrap().to_str(),
            Some("/run/firedoor/shared/c1/mounts/1")
        );
        let namespaces = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        let paths: Vec<_> = namespaces
            .iter()
            .map(|ns| ns.path().as_ref().and_then(|p| p.to_str()))
            .collect();
        assert_eq!(
            paths,
            [
                None,
                Some(firedoor_protocol::POD_NETNS_PATH),
                Some("/proc/9/ns/ipc")
            ]
        );
        assert!(guest.hooks().is_none());
        let devices = guest.linux().as_ref().unwrap().devices().clone().unwrap();
        let paths: Vec<_> = devices.iter().map(|d| d.path().clone()).collect();
        assert_eq!(paths, [Path::new("/dev/net/tun")]);
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": "root", "gid": 0}, "args": ["x"], "cwd": "/"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.user.uid"), "{err}");
        let err = parse("{not json").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = parse(r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.args is empty"), "{err}");
    }
}
