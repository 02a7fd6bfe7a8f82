//! The pod's IPC, UTS and PID namespaces without a pause container.
//!
//! containerd's CRI writes `/proc/<sandbox pid>/ns/<type>` into each
//! container's spec for the namespaces the pod shares, with the pid that
//! StartSandbox returned. With the Sandbox API there is no sandbox process
//! of the pod's own, so the shim returns [`POD_PID`] (the guest's PID 1,
//! our agent) and maps those paths here: the first container of the pod
//! gets new namespaces and holds them for the pod; every later container
//! joins the holder's (`/proc/<holder's guest pid>/ns/<type>`, which the
//! agent accepts: it is the init of one of its containers). When the holder
//! is gone, the next container becomes the holder of new namespaces.

use std::sync::Mutex;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The pid StartSandbox reports: the guest's init, our agent.
pub const POD_PID: u32 = 1;

#[derive(Debug, Default)]
pub(crate) struct PodNamespaces {
    /// The container whose init holds the pod's namespaces.
    holder: Mutex<Option<String>>,
}

impl PodNamespaces {
    /// Rewrites the pod's namespace paths of container `id`'s spec.
    /// `running_init` gives the guest pid of a container's init while it
    /// runs (or was created and not yet started), else None.
    pub fn map(&self, id: &str, spec: &mut Spec, running_init: impl Fn(&str) -> Option<u32>) {
        let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
        let holder_pid = holder.as_deref().and_then(&running_init);
        let Some(namespaces) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
        else {
            return;
        };
        let mut holds = false;
        for ns in namespaces.iter_mut() {
            let Some(kind) = shared_kind(ns.typ()) else {
                continue;
            };
            let pod_path = format!("/proc/{POD_PID}/ns/{kind}");
            if ns.path().as_deref() != Some(std::path::Path::new(&pod_path)) {
                continue;
            }
            match holder_pid {
                Some(pid) => {
                    ns.set_path(Some(format!("/proc/{pid}/ns/{kind}").into()));
                }
                None => {
                    ns.set_path(None);
                    holds = true;
                }
            }
        }
        if holds {
            *holder = Some(id.to_string());
        }
    }
}

/// The namespaces a pod shares through its sandbox process, by the name
/// `/proc/<pid>/ns/` gives them.
fn shared_kind(typ: LinuxNamespaceType) -> Option<&'static str> {
    match typ {
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        LinuxNamespaceType::Pid => Some("pid"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {namespaces}}}}}"#
        ))
        .unwrap()
    }

    fn paths(spec: &Spec) -> Vec<Option<String>> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|ns| ns.path().as_ref().map(|p| p.display().to_string()))
            .collect()
    }

    const POD: &str = r#"[{"type": "ipc", "path": "/proc/1/ns/ipc"},
        {"type": "uts", "path": "/proc/1/ns/uts"}, {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "mount"}]"#;

    #[test]
    fn the_first_container_holds_the_pod_namespaces_and_later_ones_join() {
        let pod = PodNamespaces::default();
        let mut first = spec(POD);
        pod.map("a", &mut first, |_| None);
        assert_eq!(
            paths(&first),
            [None, None, None, Some("/var/run/netns/cni-1".into()), None]
        );
        let mut second = spec(POD);
        pod.map("b", &mut second, |id| (id == "a").then_some(7));
        assert_eq!(
            paths(&second),
            [
                Some("/proc/7/ns/ipc".into()),
                Some("/proc/7/ns/uts".into()),
                None,
                Some("/var/run/netns/cni-1".into()),
                None
            ]
        );
        // The holder is gone: the next container holds new namespaces.
        let mut third = spec(POD);
        pod.map("c", &mut third, |_| None);
        assert_eq!(paths(&third)[..2], [None, None]);
        let mut fourth = spec(POD);
        pod.map("d", &mut fourth, |id| (id == "c").then_some(9));
        assert_eq!(paths(&fourth)[0], Some("/proc/9/ns/ipc".into()));
    }

    #[test]
    fn other_paths_are_left_alone() {
        let pod = PodNamespaces::default();
        let mut node = spec(r#"[{"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "uts"}]"#);
        pod.map("a", &mut node, |_| None);
        assert_eq!(paths(&node), [Some("/proc/42/ns/ipc".into()), None]);
        // Nothing was held: the next container with pod paths holds them.
        let mut next = spec(POD);
        pod.map("b", &mut next, |_| Some(5));
        assert_eq!(paths(&next)[0], None);
    }
}
