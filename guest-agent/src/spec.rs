//! Checks the OCI documents the host sends and adapts them to the guest.

use std::{
    fs,
    path::{Path, PathBuf},
};

use log::{debug, info};
use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Process, Root, Spec,
};
use serde::de::DeserializeOwned;

use crate::{
    error::{AgentError, Result},
    helper::ExecSeccomp,
    namespaces::{self, Joinable},
};

/// Where container paths may point in the guest.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    /// Directories a rootfs or bind-mount source must lie in.
    pub dirs: Vec<PathBuf>,
    /// Single files that may be bind-mounted (the sandbox's hosts, resolv.conf).
    pub files: Vec<PathBuf>,
}

impl Roots {
    /// Resolves `path` (symlinks, `..`) and checks that it stays inside the
    /// allowed roots; returns the resolved path.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf> {
        let invalid = |why: String| AgentError::InvalidArgument(format!("{what} {path:?}: {why}"));
        if !path.is_absolute() {
            return Err(invalid("not an absolute path".into()));
        }
        let real = fs::canonicalize(path).map_err(|e| invalid(e.to_string()))?;
        let inside = self
            .dirs
            .iter()
            .map(|dir| fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()))
            .any(|dir| real.starts_with(dir))
            || self.files.contains(&real);
        if !inside {
            let allowed: Vec<_> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(invalid(format!(
                "outside the allowed roots ({})",
                allowed.join(", ")
            )));
        }
        Ok(real)
    }
}

/// Parses JSON, naming the field that is wrong (`process.user.uid: invalid
/// type: string "0", expected u32 at line 1 column 40`).
pub fn parse<T: DeserializeOwned>(what: &str, json: &[u8]) -> Result<T> {
    firedoor_protocol::oci::from_json(json).map_err(|e| match e.path {
        None => AgentError::InvalidArgument(format!("{what}: {}", e.message)),
        Some(path) => AgentError::InvalidArgument(format!("{what}: {path}: {}", e.message)),
    })
}

pub fn parse_spec(json: &[u8]) -> Result<Spec> {
    let spec: Spec = parse("oci_spec_json", json)?;
    if spec.process().is_none() {
        return Err(AgentError::InvalidArgument(
            "oci_spec_json: process: missing (a container needs a process)".into(),
        ));
    }
    Ok(spec)
}

pub fn parse_process(json: &[u8]) -> Result<Process> {
    let mut process: Process = parse("process_json", json)?;
    if process.args().as_ref().map_or(0, Vec::len) == 0 {
        return Err(AgentError::InvalidArgument(
            "process_json: args: missing or empty".into(),
        ));
    }
    normalize_no_new_privileges(&mut process);
    drop_host_labels(&mut process, None);
    Ok(process)
}

/// AppArmor profiles and SELinux labels name the host's policy; the guest
/// kernel has no LSM, so they are dropped, each with one log line.
fn drop_host_labels(process: &mut Process, mount_label: Option<&mut Option<String>>) {
    if let Some(profile) = process.apparmor_profile().clone() {
        info!("ignoring AppArmor profile {profile:?}: the guest has no AppArmor");
        process.set_apparmor_profile(None);
    }
    if let Some(label) = process.selinux_label().clone() {
        info!("ignoring SELinux label {label:?}: the guest has no SELinux");
        process.set_selinux_label(None);
    }
    if let Some(label) = mount_label.and_then(Option::take) {
        info!("ignoring SELinux mount label {label:?}: the guest has no SELinux");
    }
}

/// `noNewPrivileges: false` becomes absent. libcontainer loads the seccomp
/// profile after dropping capabilities whenever the field is present, even
/// when false, and without no_new_privs or CAP_SYS_ADMIN that load fails;
/// absent, it loads the profile first, as runc does for false.
fn normalize_no_new_privileges(process: &mut Process) {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
}

/// How an exec'd process of a container with seccomp `profile` gets it (see
/// [`ExecSeccomp`]): with no_new_privs off and no CAP_SYS_ADMIN of its own,
/// `process` is given CAP_SYS_ADMIN for the load and its own capabilities
/// are restored right after.
pub fn exec_seccomp(process: &mut Process, profile: Option<&LinuxSeccomp>) -> Option<ExecSeccomp> {
    let profile = profile?.clone();
    let plain = |profile| {
        Some(ExecSeccomp {
            profile,
            capabilities: None,
        })
    };
    if process.no_new_privileges() == Some(true) {
        return plain(profile);
    }
    let Some(own) = process.capabilities().clone() else {
        // libcontainer leaves the capabilities as they are (all, for root).
        return plain(profile);
    };
    if own
        .effective()
        .as_ref()
        .is_some_and(|e| e.contains(&Capability::SysAdmin))
    {
        return plain(profile);
    }
    let with_admin = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.clone().map(|mut set| {
            set.insert(Capability::SysAdmin);
            set
        })
    };
    let mut for_load = own.clone();
    for_load
        .set_effective(with_admin(own.effective()))
        .set_permitted(with_admin(own.permitted()));
    process.set_capabilities(Some(for_load));
    Some(ExecSeccomp {
        profile,
        capabilities: Some(own),
    })
}

pub fn parse_resources(json: &[u8]) -> Result<LinuxResources> {
    parse("resources_json", json)
}

/// Adapts a host-made spec to the guest: the checked rootfs, bind-mount
/// sources checked against `roots`, our cgroup, the namespaces resolved by
/// [`namespaces::resolve`], no hooks (host binaries), and the terminal as the
/// host asked. Returns whether the container joins the pod network namespace.
pub fn prepare(
    spec: &mut Spec,
    rootfs: &Path,
    roots: &Roots,
    cgroup_path: &str,
    terminal: bool,
    joinable: &Joinable<'_>,
) -> Result<bool> {
    let rootfs = roots.check("rootfs", rootfs)?;
    if !rootfs.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {rootfs:?}: not a directory"
        )));
    }
    let readonly = spec.root().as_ref().and_then(|r| r.readonly());
    let mut root = Root::default();
    root.set_path(rootfs).set_readonly(readonly);
    spec.set_root(Some(root));

    let mut mount_label = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.mount_label().clone());
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(terminal));
        normalize_no_new_privileges(process);
        drop_host_labels(process, Some(&mut mount_label));
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_mount_label(mount_label);
    }

    if let Some(mounts) = spec.mounts_mut() {
        for (i, mount) in mounts.iter_mut().enumerate() {
            if !mount.destination().is_absolute() {
                return Err(AgentError::InvalidArgument(format!(
                    "oci_spec_json: mounts[{i}].destination {:?}: not an absolute path",
                    mount.destination()
                )));
            }
            let is_bind = firedoor_protocol::oci::is_bind(
                mount.typ().as_deref(),
                mount.options().iter().flatten().map(String::as_str),
            );
            if is_bind {
                let source = mount.source().clone().ok_or_else(|| {
                    AgentError::InvalidArgument(format!(
                        "oci_spec_json: mounts[{i}]: bind mount without a source"
                    ))
                })?;
                let real = roots.check(&format!("oci_spec_json: mounts[{i}].source"), &source)?;
                mount.set_source(Some(real));
            }
        }
    }

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(cgroup_path.into()));
    // containerd writes runc's recursive names ("rslave" for a
    // HostToContainer volume, "rshared" for Bidirectional); libcontainer
    // knows only the plain ones (and always applies them recursively).
    if let Some(propagation) = linux.rootfs_propagation().clone() {
        let plain = propagation.strip_prefix('r').unwrap_or(&propagation);
        if matches!(plain, "shared" | "slave" | "private" | "unbindable") {
            linux.set_rootfs_propagation(Some(plain.to_string()));
        }
    }
    let (namespaces, pod_netns) = namespaces::resolve(linux.namespaces().as_deref(), joinable)?;
    let own_uts = namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Uts);
    linux.set_namespaces(Some(namespaces));
    // Without a UTS namespace entry the container is in the guest's, whose
    // hostname the sandbox set (containerd's CRI leaves the entry out for
    // host-network pods but still names the hostname, which runc would
    // refuse to set then).
    if !own_uts && spec.hostname().is_some() {
        debug!("no UTS namespace of its own: the guest's hostname stays");
        spec.set_hostname(None);
    }
    spec.set_hooks(None);
    Ok(pod_netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> Roots {
        Roots {
            dirs: vec![dir.to_owned()],
            files: vec![],
        }
    }

    #[test]
    fn names_the_wrong_field() {
        let err = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"user":{"uid":"root","gid":0},"cwd":"/"}}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AgentError::InvalidArgument(_)));
        assert!(text.contains("process.user.uid"), "{text}");

        let err = parse_spec(b"{not json").unwrap_err();
        assert!(err.to_string().starts_with("oci_spec_json: "), "{err}");

        let err = parse_spec(br#"{"ociVersion":"1.0.2"}"#).unwrap_err();
        assert!(err.to_string().contains("process: missing"), "{err}");
    }

    #[test]
    fn paths_must_stay_inside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("rootfs");
        fs::create_dir(&inside).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("escape")).unwrap();
        let roots = roots(dir.path());

        roots.check("rootfs", &inside).unwrap();
        for bad in [
            PathBuf::from("/etc"),
            dir.path().join("escape"),
            dir.path().join("rootfs/../../"),
            PathBuf::from("relative"),
            dir.path().join("missing"),
        ] {
            let err = roots.check("rootfs", &bad).unwrap_err();
            assert!(matches!(err, AgentError::InvalidArgument(_)), "{bad:?}");
        }
    }

    #[test]
    fn prepare_sets_namespaces_cgroup_and_checks_binds() {
        use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let joinable = Joinable {
            init_pids: &[7],
            pod_netns: Path::new("/run/firedoor/netns/pod"),
        };
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        let mut net = LinuxNamespace::default();
        net.set_typ(LinuxNamespaceType::Network)
            .set_path(Some(joinable.pod_netns.into()));
        let mut ipc = LinuxNamespace::default();
        ipc.set_typ(LinuxNamespaceType::Ipc)
            .set_path(Some("/proc/7/ns/ipc".into()));
        linux.set_namespaces(Some(vec![net.clone(), ipc.clone()]));
        spec.set_linux(Some(linux));

        let pod_netns = prepare(
            &mut spec,
            &rootfs,
            &roots(dir.path()),
            "/firedoor/c1",
            true,
            &joinable,
        )
        .unwrap();
        assert!(pod_netns);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/firedoor/c1"))
        );
        let namespaces = linux.namespaces().clone().unwrap();
        assert_eq!(namespaces[..2], [net, ipc]);
        assert_eq!(namespaces[2].typ(), LinuxNamespaceType::Mount);
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));

        for (containerd, libcontainer) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("private", "private"),
        ] {
            spec.linux_mut()
                .as_mut()
                .unwrap()
                .set_rootfs_propagation(Some(containerd.into()));
            prepare(
                &mut spec,
                &rootfs,
                &roots(dir.path()),
                "/x",
                false,
                &joinable,
            )
            .unwrap();
            let linux = spec.linux().as_ref().unwrap();
            assert_eq!(linux.rootfs_propagation().as_deref(), Some(libcontainer));
        }

        let mut bind = oci_spec::runtime::Mount::default();
        bind.set_destination("/data".into())
            .set_typ(Some("bind".into()))
            .set_source(Some("/etc".into()));
        spec.set_mounts(Some(vec![bind]));
        let err = prepare(
            &mut spec,
            &rootfs,
            &roots(dir.path()),
            "/x",
            false,
            &joinable,
        )
        .unwrap_err();
        assert!(err.to_string().contains("mounts[0].source"), "{err}");
    }

    #[test]
    fn exec_seccomp_adds_sys_admin_only_for_the_load() {
        let profile: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        let base = parse_process(
            br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        )
        .unwrap();
        // false became absent: libcontainer then loads seccomp before dropping caps.
        assert_eq!(base.no_new_privileges(), None);

        assert_eq!(exec_seccomp(&mut base.clone(), None), None);

        let mut process = base.clone();
        let plan = exec_seccomp(&mut process, Some(&profile)).unwrap();
        assert_eq!(plan.capabilities.as_ref(), base.capabilities().as_ref());
        let caps = process.capabilities().clone().unwrap();
        for set in [caps.effective(), caps.permitted()] {
            assert!(set.as_ref().unwrap().contains(&Capability::SysAdmin));
        }
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));

        // With no_new_privs, the filter loads without privilege.
        let mut process = base.clone();
        process.set_no_new_privileges(Some(true));
        let plan = exec_seccomp(&mut process, Some(&profile)).unwrap();
        assert_eq!(plan.capabilities, None);
        assert_eq!(process.capabilities(), base.capabilities());
    }

    #[test]
    fn host_lsm_labels_are_dropped() {
        let mut process = parse_process(
            br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},
                "apparmorProfile":"cri-containerd.apparmor.d","selinuxLabel":"system_u:system_r:container_t:s0"}"#,
        )
        .unwrap();
        assert_eq!(process.apparmor_profile(), &None);
        assert_eq!(process.selinux_label(), &None);
        let mut label = Some("system_u:object_r:container_file_t:s0".to_string());
        process.set_apparmor_profile(Some("x".into()));
        drop_host_labels(&mut process, Some(&mut label));
        assert_eq!((process.apparmor_profile(), label), (&None, None));
    }
}
