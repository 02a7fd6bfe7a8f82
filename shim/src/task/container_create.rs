//! Create: work out a plan (the guest's spec and what to share with it),
//! then carry it out: mount the rootfs, run the host-side create hooks,
//! boot the sandbox VM if this is its first container, share the rootfs and
//! bind-mount sources with the guest, create the container in the guest and
//! attach its stdio. The first container of a sandbox that asks for a
//! network namespace of its own leaves the boot and what follows to start
//! ([`boot_deferred`]), so that what its creator puts into that namespace
//! after create (Docker's veth) becomes the VM's network.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
};

use containerd_shim::{api, protos::protobuf::well_known_types::any::Any};
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
    hooks::{ContainerHooks, HostHooks, NetnsAnchor},
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
    // The first container of a sandbox that asks for a network namespace
    // of its own gets one on the host, parked in by an anchor process whose
    // pid create reports: its creator configures it between create and
    // start through that pid, as with runc (Docker moves its veth into
    // `/proc/<pid>/ns/net`), and the VM boots at start with the interfaces
    // found there as NICs. Reporting a guest pid instead would send Docker
    // into the namespace of whatever host process has that number.
    let boots_at_start = !shared.sandbox_api()
        && shared.sandbox.get().is_none()
        && crate::network::asks_for_new_network(&oci);
    let host_hooks = HostHooks::of(&oci);
    let anchor = if boots_at_start || !host_hooks.is_empty() {
        Some(Arc::new(
            NetnsAnchor::start(&oci).map_err(|e| ShimError::Internal(e.into()))?,
        ))
    } else {
        None
    };
    let hooks = match &anchor {
        Some(anchor) if !host_hooks.is_empty() => Some(Arc::new(ContainerHooks::new(
            host_hooks,
            anchor.clone(),
            &oci,
            id,
            &bundle,
        ))),
        _ => None,
    };
    if let (true, Some(anchor)) = (boots_at_start, &anchor) {
        // The anchor's namespace is the pod's: the VM's NICs come from it,
        // and in the guest the container joins the pod network namespace.
        crate::network::set_netns_path(&mut oci, &anchor.netns_path());
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
    // Host-side OCI hooks (the guest's spec has none), before the VM reads
    // the network namespace they may configure; a failing
    // prestart/createRuntime hook fails the create.
    if let Some(hooks) = &hooks {
        hooks
            .creating()
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
    }
    let init = Arc::new(Process::new(id, "", stdio.clone(), None));
    let no_annotations = HashMap::new();
    let (pid, deferred) = match (boots_at_start, &anchor) {
        (true, Some(anchor)) => {
            let deferred = DeferredBoot {
                plan,
                annotations: oci.annotations().clone().unwrap_or_default(),
                first: FirstContainer::of(&oci),
                options: req.options.as_ref().cloned(),
            };
            (anchor.pid(), Some(deferred))
        }
        _ => {
            let boot = BootRequest {
                config: &shared.config,
                state_dir: &shared.state_dir,
                annotations: oci.annotations().as_ref().unwrap_or(&no_annotations),
                first: FirstContainer::of(&oci),
                options: req.options.as_ref(),
            };
            let sandbox = if shared.sandbox_api() {
                // StartSandbox booted it; a stopped sandbox takes no containers.
                shared.sandbox.running()?
            } else {
                SandboxSlot::get_or_boot(shared, boot)?
            };
            let pid = create_in_guest(shared, &sandbox, id, &plan, &init, &mut pending)?;
            (pid, None)
        }
    };
    init.set_pid(pid);

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
            anchor,
            deferred,
        },
    );
    if boots_at_start {
        info!("created container {id} (host pid {pid} in its network namespace; the VM boots at start)");
    } else {
        info!("created container {id} (guest pid {pid})");
    }
    shared.events.create(
        id,
        &req.bundle,
        req.terminal,
        [&req.stdin, &req.stdout, &req.stderr],
        pid,
    );
    Ok(api::CreateTaskResponse {
        pid,
        ..Default::default()
    })
}

/// What start needs to boot the sandbox VM of a container whose create
/// left that to it (see [`create`]).
pub(crate) struct DeferredBoot {
    plan: CreatePlan,
    annotations: HashMap<String, String>,
    first: FirstContainer,
    options: Option<Any>,
}

/// Start of a container whose create deferred the boot: boots the sandbox
/// VM (the network namespace now holds what its creator put there), creates
/// the container in the guest and attaches its stdio. The container's
/// footprint grows by what is made; on error it is left as it was.
pub(super) fn boot_deferred(shared: &Arc<Shared>, id: &str, deferred: DeferredBoot) -> Result<()> {
    let init = shared.process(id, "")?;
    let mut pending = Pending::new(id);
    let sandbox = SandboxSlot::get_or_boot(
        shared,
        BootRequest {
            config: &shared.config,
            state_dir: &shared.state_dir,
            annotations: &deferred.annotations,
            first: deferred.first.clone(),
            options: deferred.options.as_ref(),
        },
    )?;
    let guest_pid = create_in_guest(shared, &sandbox, id, &deferred.plan, &init, &mut pending)?;
    let made = pending.keep();
    let mut containers = shared.containers();
    let Some(container) = containers.get_mut(id) else {
        // Deleted meanwhile: undo what was made for it.
        drop(containers);
        let mut made = made;
        made.release(id, Some(&sandbox));
        return Err(ShimError::NotFound(format!("container {id} not found")));
    };
    container.footprint.share = made.share;
    container.footprint.in_guest = made.in_guest;
    container.footprint.volumes = made.volumes;
    info!("container {id} created in the guest (guest pid {guest_pid})");
    Ok(())
}

/// Shares the container's rootfs and bind sources with the guest, creates
/// it there and attaches its stdio to `init`; returns its guest pid. What
/// is made is recorded in `pending`.
fn create_in_guest(
    shared: &Arc<Shared>,
    sandbox: &Arc<Sandbox>,
    id: &str,
    plan: &CreatePlan,
    init: &Process,
    pending: &mut Pending,
) -> Result<u32> {
    pending.sandbox = Some(sandbox.clone());
    pending.footprint.share = Some(plan.share.clone());
    for (source, name) in &plan.binds {
        mount::bind(source, &plan.share.join(name), false)?;
    }
    let shared_dir = shared.state_dir.join("shared");
    for (_, source) in &plan.volumes {
        let lease = shared.volumes.acquire(&shared_dir, source)?;
        pending.footprint.volumes.push(lease);
    }
    let names: Vec<&str> = pending.footprint.volumes.iter().map(|v| v.name()).collect();
    let reply = sandbox.agent().create_container(&CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: plan.guest_spec_json(&names)?,
        rootfs: plan.guest_rootfs.clone(),
        stdio: Some(init.stdio.agent_stdio()).into(),
        ..Default::default()
    })?;
    pending.footprint.in_guest = true;
    let io = ProcessIo::attach(&init.stdio, id, "", &shared.namespace, &|| {
        sandbox.connect_stdio()
    })
    .map_err(|e| ShimError::Internal(e.context("attaching the container's stdio")))?;
    *init.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
    Ok(reply.pid)
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
    /// The spec's bind mounts (index, host source), each shared as a pod
    /// volume (see [`volumes`](super::volumes)).
    volumes: Vec<(usize, PathBuf)>,
    guest_rootfs: String,
    /// The container's spec as the host has it.
    oci: Spec,
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
        let binds = vec![(rootfs.clone(), "rootfs".to_string())];
        let mut volumes = Vec::new();
        for m in spec::host_bind_mounts(oci) {
            let source = if m.host_source.is_absolute() {
                m.host_source.clone()
            } else {
                bundle.join(&m.host_source)
            };
            // One volume per directory or file, however it is spelled (a
            // missing source fails at the bind, naming it).
            let source = std::fs::canonicalize(&source).unwrap_or(source);
            volumes.push((m.index, source));
        }
        Ok(CreatePlan {
            rootfs,
            rootfs_mounts: rootfs_mounts.to_vec(),
            share: share_dir(state_dir, id),
            binds,
            volumes,
            guest_rootfs: format!("{guest_dir}/rootfs"),
            oci: oci.clone(),
        })
    }

    /// The spec the guest runs, with guest paths: `volume_names` are the
    /// names the plan's volumes were shared under, in order.
    fn guest_spec_json(&self, volume_names: &[&str]) -> Result<Vec<u8>> {
        let guest_sources: Vec<(usize, String)> = self
            .volumes
            .iter()
            .zip(volume_names)
            .map(|((index, _), name)| (*index, format!("{GUEST_SHARED_DIR}/{name}")))
            .collect();
        let guest_spec = spec::for_guest(self.oci.clone(), &self.guest_rootfs, &guest_sources)?;
        serde_json::to_vec(&guest_spec).map_err(|e| ShimError::Internal(e.into()))
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
    fn the_plan_shares_the_rootfs_where_root_path_says_and_every_bind_source_as_a_volume() {
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
            [(PathBuf::from("/b/custom"), "rootfs".to_string())]
        );
        assert_eq!(plan.volumes, [(1, PathBuf::from("/b/data"))]);
        assert_eq!(plan.guest_rootfs, "/run/firedoor/shared/c1/rootfs");
        let json = plan.guest_spec_json(&[".volumes/7"]).unwrap();
        let guest: Spec = serde_json::from_slice(&json).unwrap();
        let source = guest.mounts().as_ref().unwrap()[1].source().clone();
        assert_eq!(
            source.unwrap(),
            Path::new("/run/firedoor/shared/.volumes/7")
        );
    }
}
