//! Create: mount the rootfs, boot the sandbox VM if this is its first
//! container, share the rootfs and bind-mount sources with the guest, create
//! the container in the guest and attach its stdio.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
};

use containerd_shim::api;
use firedoor_protocol::{agent::CreateContainerRequest, stdio::valid_id};
use log::{info, warn};

use super::{
    sandbox_vm::{SandboxSlot, GUEST_SHARED_DIR},
    Container, Process, Shared,
};
use crate::{
    error::{Result, ShimError},
    mount,
    sandbox::Sandbox,
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
    let oci = spec::load(&bundle).map_err(|e| ShimError::InvalidArgument(format!("{e:#}")))?;
    let stdio = StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };

    // Everything made from here on is undone if a later step fails.
    let mut undo = Undo::default();
    // root.path is relative to the bundle unless absolute (`ctr run --rootfs`).
    let root_path = oci
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    let rootfs = bundle.join(root_path);
    if !req.rootfs.is_empty() {
        mount::mount_rootfs(&req.rootfs, &rootfs)?;
        undo.rootfs = Some(rootfs.clone());
    }
    let sandbox = SandboxSlot::get_or_boot(shared, &oci, req.options.as_ref())?;

    // The container's corner of the shared directory.
    let host_dir = shared.state_dir.join("shared").join(id);
    let guest_dir = format!("{GUEST_SHARED_DIR}/{id}");
    undo.shared = Some(host_dir.clone());
    mount::bind(&rootfs, &host_dir.join("rootfs"), false)?;
    let mut guest_sources = Vec::new();
    for m in spec::host_bind_mounts(&oci) {
        let name = format!("mounts/{}", m.index);
        let source = if m.host_source.is_absolute() {
            m.host_source.clone()
        } else {
            bundle.join(&m.host_source)
        };
        mount::bind(&source, &host_dir.join(&name), false)?;
        guest_sources.push((m.index, format!("{guest_dir}/{name}")));
    }
    let guest_rootfs = format!("{guest_dir}/rootfs");
    let guest_spec = spec::for_guest(oci, &guest_rootfs, &guest_sources)?;
    let spec_json = serde_json::to_vec(&guest_spec).map_err(|e| ShimError::Internal(e.into()))?;

    let reply = sandbox.agent().create_container(&CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: spec_json,
        rootfs: guest_rootfs,
        stdio: Some(stdio.agent_stdio()).into(),
        ..Default::default()
    })?;
    undo.guest_container = Some((sandbox.clone(), id.to_string()));

    let io = ProcessIo::attach(&stdio, id, "", &shared.namespace, &|| {
        sandbox.connect_stdio()
    })
    .map_err(|e| ShimError::Internal(e.context("attaching the container's stdio")))?;
    let init = Arc::new(Process::new(id, "", stdio.clone(), None));
    init.set_pid(reply.pid);
    *init.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);

    shared.containers().insert(
        id.to_string(),
        Container {
            bundle: bundle.clone(),
            rootfs_mounted: undo.rootfs.is_some(),
            init,
            execs: Default::default(),
            paused: false,
            oom_reported: Arc::new(AtomicBool::new(false)),
        },
    );
    undo.disarm();
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

/// What a failed create must take back.
#[derive(Default)]
struct Undo {
    rootfs: Option<PathBuf>,
    shared: Option<PathBuf>,
    guest_container: Option<(Arc<Sandbox>, String)>,
}

impl Undo {
    /// Keeps everything: clears the fields (replacing the whole value would
    /// drop it, running the undo).
    fn disarm(&mut self) {
        self.rootfs = None;
        self.shared = None;
        self.guest_container = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some((sandbox, id)) = self.guest_container.take() {
            super::container_delete::remove_in_guest(&sandbox, &id);
        }
        if let Some(dir) = self.shared.take() {
            remove_shared(&dir);
        }
        if let Some(rootfs) = self.rootfs.take() {
            mount::unmount_all_under(&rootfs);
        }
    }
}

/// Unmounts and removes a container's corner of the shared directory.
pub(super) fn remove_shared(dir: &Path) {
    mount::unmount_all_under(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("removing {}: {e}", dir.display());
        }
    }
}
