//! Create: work out a plan (the guest's spec and what to share with it),
//! then carry it out: mount the rootfs, boot the sandbox VM if this is its
//! first container, share the rootfs and bind-mount sources with the guest,
//! create the container in the guest and attach its stdio.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
};

use containerd_shim::api;
use containerd_shim_protos::api::Mount as ContainerdMount;
use firedoor_protocol::{agent::CreateContainerRequest, stdio::valid_id, GUEST_SHARED_DIR};
use log::info;
use oci_spec::runtime::Spec;

use super::{
    container::{share_dir, Container, Footprint},
    Process, Shared,
};
use crate::{
    error::{Result, ShimError},
    hooks::ContainerHooks,
    mount,
    sandbox::{
        slot::{BootRequest, FirstContainer},
        Sandbox, SandboxSlot,
    },
    spec,
    stdio::{ProcessIo, StdioPaths},
};

pub(super) fn create(
    shared: &Arc<Shared>,
    req: api::CreateTaskRequest,
) -> Result<api::CreateTaskResponse> {
    let id = req.id.as_str();
    if !valid_id(id) {
        return Err(ShimError::InvalidArgument(format!(
            "container id {id:?}: use 1-128 of [A-Za-z0-9_.-]"
        )));
    }
    if shared.containers().contains_key(id) {
        return Err(ShimError::AlreadyExists(format!(
            "container {id} already exists"
        )));
    }
    if !req.checkpoint.is_empty() {
        return Err(ShimError::Unimplemented(
            "restoring from a checkpoint is not supported by Firedoor".into(),
        ));
    }
    let bundle = PathBuf::from(&req.bundle);
    let mut oci = spec::load(&bundle).map_err(|e| ShimError::InvalidArgument(format!("{e:#}")))?;
    if let Some(pod) = shared.pod_namespaces.get() {
        pod.map(id, &mut oci, |other| shared.running_init(other));
    }
    let plan = CreatePlan::new(&shared.state_dir, id, &bundle, &oci, &req.rootfs)?;
    let stdio = StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };

    // Everything made from here on is undone if a later step fails.
    let mut pending = Pending::new(id);
    if !plan.rootfs_mounts.is_empty() {
        mount::mount_rootfs(&plan.rootfs_mounts, &plan.rootfs)?;
        pending.footprint.rootfs_mount = Some(plan.rootfs.clone());
    }
    let no_annotations = HashMap::new();
    let sandbox = if shared.sandbox_api() {
        // StartSandbox booted it; a stopped sandbox takes no containers.
        shared.sandbox.running()?
    } else {
        SandboxSlot::get_or_boot(
            shared,
            BootRequest {
                config: &shared.config,
                state_dir: &shared.state_dir,
                annotations: oci.annotations().as_ref().unwrap_or(&no_annotations),
                first: FirstContainer::of(&oci),
                options: req.options.as_ref(),
            },
        )?
    };
    pending.sandbox = Some(sandbox.clone());
    pending.footprint.share = Some(plan.share.clone());
    for (source, name) in &plan.binds {
        mount::bind(source, &plan.share.join(name), false)?;
    }
    let reply = sandbox.agent().create_container(&CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: plan.guest_spec_json,
        rootfs: plan.guest_rootfs,
        stdio: Some(stdio.agent_stdio()).into(),
        ..Default::default()
    })?;
    pending.footprint.in_guest = true;

    let io = ProcessIo::attach(&stdio, id, "", &shared.namespace, &|| {
        sandbox.connect_stdio()
    })
    .map_err(|e| ShimError::Internal(e.context("attaching the container's stdio")))?;
    // Host-side OCI hooks (the guest's spec has none); a failing
    // prestart/createRuntime hook fails the create.
    let hooks = ContainerHooks::prepare(&oci, id, &bundle)
        .map_err(|e| ShimError::Internal(e.into()))?
        .map(Arc::new);
    if let Some(hooks) = &hooks {
        hooks
            .created()
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
    }
    let init = Arc::new(Process::new(id, "", stdio.clone(), None));
    init.set_pid(reply.pid);
    *init.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);

    shared.containers().insert(
        id.to_string(),
        Container {
            bundle: bundle.clone(),
            footprint: pending.keep(),
            init,
            execs: Default::default(),
            paused: false,
            oom_reported: Arc::new(AtomicBool::new(false)),
            hooks,
        },
    );
    info!("created container {id} (guest pid {})", reply.pid);
    shared.events.create(
        id,
        &req.bundle,
        req.terminal,
        [&req.stdin, &req.stdout, &req.stderr],
        reply.pid,
    );
    Ok(api::CreateTaskResponse {
        pid: reply.pid,
        ..Default::default()
    })
}

/// Everything create will do, worked out before anything is done.
struct CreatePlan {
    /// `<bundle>/<root.path>` (root.path may be absolute: `ctr run --rootfs`).
    rootfs: PathBuf,
    /// containerd's mounts for `rootfs`; empty when the rootfs is ready.
    rootfs_mounts: Vec<ContainerdMount>,
    /// The container's corner of the shared directory on the host.
    share: PathBuf,
    /// Host paths bind-mounted into `share`, with their names below it.
    binds: Vec<(PathBuf, String)>,
    /// The spec the guest runs, with guest paths.
    guest_spec_json: Vec<u8>,
    guest_rootfs: String,
}

impl CreatePlan {
    fn new(
        state_dir: &Path,
        id: &str,
        bundle: &Path,
        oci: &Spec,
        rootfs_mounts: &[ContainerdMount],
    ) -> Result<CreatePlan> {
        let root_path = oci
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into());
        let rootfs = bundle.join(root_path);
        let guest_dir = format!("{GUEST_SHARED_DIR}/{id}");
        let mut binds = vec![(rootfs.clone(), "rootfs".to_string())];
        let mut guest_sources = Vec::new();
        for m in spec::host_bind_mounts(oci) {
            let name = format!("mounts/{}", m.index);
            let source = if m.host_source.is_absolute() {
                m.host_source.clone()
            } else {
                bundle.join(&m.host_source)
            };
            guest_sources.push((m.index, format!("{guest_dir}/{name}")));
            binds.push((source, name));
        }
        let guest_rootfs = format!("{guest_dir}/rootfs");
        let guest_spec = spec::for_guest(oci.clone(), &guest_rootfs, &guest_sources)?;
        let guest_spec_json =
            serde_json::to_vec(&guest_spec).map_err(|e| ShimError::Internal(e.into()))?;
        Ok(CreatePlan {
            rootfs,
            rootfs_mounts: rootfs_mounts.to_vec(),
            share: share_dir(state_dir, id),
            binds,
            guest_spec_json,
            guest_rootfs,
        })
    }
}

/// A footprint being made: released on drop unless kept.
struct Pending<'a> {
    id: &'a str,
    footprint: Footprint,
    sandbox: Option<Arc<Sandbox>>,
}

impl<'a> Pending<'a> {
    fn new(id: &'a str) -> Self {
        Pending {
            id,
            footprint: Footprint::default(),
            sandbox: None,
        }
    }

    /// The create succeeded: the container owns the footprint now.
    fn keep(mut self) -> Footprint {
        std::mem::take(&mut self.footprint)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.footprint.release(self.id, self.sandbox.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_shares_the_rootfs_where_root_path_says_and_every_bind_source() {
        let oci = spec::parse(
            r#"{"ociVersion": "1.0.2", "root": {"path": "custom"},
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                           {"destination": "/data", "type": "bind", "source": "data"}]}"#,
        )
        .unwrap();
        let plan = CreatePlan::new(Path::new("/state"), "c1", Path::new("/b"), &oci, &[]).unwrap();
        assert_eq!(plan.rootfs, Path::new("/b/custom"));
        assert_eq!(plan.share, Path::new("/state/shared/c1"));
        assert_eq!(
            plan.binds,
            [
                (PathBuf::from("/b/custom"), "rootfs".to_string()),
                (PathBuf::from("/b/data"), "mounts/1".to_string()),
            ]
        );
        assert_eq!(plan.guest_rootfs, "/run/firedoor/shared/c1/rootfs");
        let guest: Spec = serde_json::from_slice(&plan.guest_spec_json).unwrap();
        let source = guest.mounts().as_ref().unwrap()[1].source().clone();
        assert_eq!(
            source.unwrap(),
            Path::new("/run/firedoor/shared/c1/mounts/1")
        );
    }
}
