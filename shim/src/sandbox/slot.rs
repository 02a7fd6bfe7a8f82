//! The shim's one sandbox: booted with the first container through a
//! pipeline of single steps, and shut down with the last.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use firedoor_hypervisor::SHARED_FS_TAG;
use firedoor_protocol::agent::CreateSandboxRequest;
use log::{info, warn};

pub(crate) use super::sizing::FirstContainer;
use super::{sizing, space, watchers, Sandbox};
use crate::{
    backends,
    config::Config,
    error::{Result, ShimError},
    mount,
    network::PodNetwork,
};

/// What owns a sandbox slot (the Task service today; the Sandbox API
/// later): it is told when the VM dies under it or the guest OOM-kills.
pub(crate) trait SandboxOwner: Send + Sync + 'static {
    fn slot(&self) -> &SandboxSlot;
    /// The VM died unexpectedly: every process in it is gone.
    fn sandbox_failed(&self);
    /// The guest OOM-killed a process of container `id`.
    fn oom_killed(&self, id: &str);
}

/// Where a sandbox comes from: the shim's default configuration, its
/// state directory, and the first container's request (or the pod's, from
/// the Sandbox API's CreateSandbox).
pub(crate) struct BootRequest<'a> {
    pub config: &'a std::result::Result<Config, String>,
    /// `/run/firedoor/<namespace>/<sandbox id>`.
    pub state_dir: &'a Path,
    /// The annotations that size the VM (`io.firedoor.vm.*`).
    pub annotations: &'a HashMap<String, String>,
    pub first: FirstContainer,
    /// containerd's runtime options.
    pub options: Option<&'a Any>,
}

#[derive(Default)]
pub(crate) struct SandboxSlot {
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    /// Set while we stop the VM on purpose, so its exit is not a failure.
    stopping: AtomicBool,
    /// Set once the VM has died under us.
    dead: AtomicBool,
    /// The host side of the pod's network (taps, tc redirects), removed
    /// once the VM has stopped.
    network: Mutex<Option<PodNetwork>>,
}

impl SandboxSlot {
    pub fn get(&self) -> Option<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The running sandbox, or an UNAVAILABLE error that says why not.
    pub fn running(&self) -> Result<Arc<Sandbox>> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(ShimError::Unavailable("the sandbox VM has exited".into()));
        }
        self.get()
            .ok_or_else(|| ShimError::Unavailable("the sandbox VM is not running".into()))
    }

    /// The running sandbox, booting it first if this is the first container:
    /// config resolution -> VM spec -> backend -> boot -> guest setup.
    pub fn get_or_boot<O: SandboxOwner>(
        owner: &Arc<O>,
        request: BootRequest,
    ) -> Result<Arc<Sandbox>> {
        let slot = owner.slot();
        let mut guard = slot.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if slot.dead.load(Ordering::SeqCst) {
            return Err(ShimError::Unavailable("the sandbox VM has exited".into()));
        }
        if let Some(sandbox) = guard.as_ref() {
            return Ok(sandbox.clone());
        }
        let config = sizing::resolve_config(request.config, request.options, request.annotations)?;
        let first = request.first;
        let unavailable =
            |e: anyhow::Error| ShimError::Unavailable(format!("starting the sandbox VM: {e:#}"));
        space::ensure_room(request.state_dir).map_err(|e| ShimError::Unavailable(e.to_string()))?;
        let mut spec = sizing::vm_spec(&config, request.state_dir, &first).map_err(unavailable)?;
        let pod_network = attach_network(&first).map_err(unavailable)?;
        if let Some(pod_network) = &pod_network {
            spec.nics = pod_network.vm_nics();
        }
        let booted = backends::for_config(&config)
            .and_then(|backend| watchers::boot_watched(owner, backend, spec));
        let sandbox = match booted {
            Ok(sandbox) => sandbox,
            Err(e) => {
                if let Some(n) = pod_network {
                    n.detach();
                }
                return Err(unavailable(e));
            }
        };
        let guest = set_up_guest(&sandbox, request.state_dir, &first.hostname).and_then(|()| {
            match &pod_network {
                Some(n) => sandbox.agent().configure_network(&n.guest_config()),
                None => Ok(()),
            }
        });
        if let Err(e) = guest {
            slot.stopping.store(true, Ordering::SeqCst);
            let _ = sandbox.shutdown();
            if let Some(n) = pod_network {
                n.detach();
            }
            return Err(unavailable(e.into()));
        }
        *slot.network.lock().unwrap_or_else(|e| e.into_inner()) = pod_network;
        watchers::spawn_oom_watcher(owner, &sandbox);
        guard.replace(sandbox.clone());
        Ok(sandbox)
    }

    /// Puts an already running sandbox in the slot and watches it as a
    /// booted one is watched (the unit tests' way in).
    #[cfg(test)]
    pub fn install<O: SandboxOwner>(owner: &Arc<O>, sandbox: Arc<Sandbox>) {
        watchers::watch_in_thread(owner, &sandbox);
        watchers::spawn_oom_watcher(owner, &sandbox);
        *owner
            .slot()
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sandbox);
    }

    /// Whether we are stopping the VM on purpose.
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The VMM exited; true if we did not stop it (it is then marked dead).
    pub(super) fn exited_unexpectedly(&self) -> bool {
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        self.dead.store(true, Ordering::SeqCst);
        true
    }

    /// Stops the VM (if any) and removes everything the sandbox used.
    pub fn shut_down(&self, state_dir: &Path) {
        self.stopping.store(true, Ordering::SeqCst);
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sandbox) = sandbox {
            match sandbox.shutdown() {
                Ok((status, killed)) => info!(
                    "sandbox VM stopped ({status}{})",
                    if killed { ", killed" } else { "" }
                ),
                Err(e) => warn!("stopping the sandbox VM: {e:#}"),
            }
        }
        // After the VM: its taps must not be closed under a running guest.
        if let Some(pod_network) = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            pod_network.detach();
        }
        mount::unmount_all_under(state_dir);
        if let Err(e) = fs::remove_dir_all(state_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("removing {}: {e}", state_dir.display());
            }
        }
    }
}

/// The host side of the pod's network, when the first container names a
/// host network namespace with CNI interfaces in it; `None` (a VM without
/// NIC) otherwise.
fn attach_network(first: &FirstContainer) -> anyhow::Result<Option<PodNetwork>> {
    let Some(netns) = &first.netns else {
        if first.host_network {
            info!(
                "the pod has no network namespace of its own (host network): its VM gets no NIC, \
                 the VM is the pod's node"
            );
        }
        return Ok(None);
    };
    let pod_network = PodNetwork::attach(netns)?;
    if pod_network.is_empty() {
        info!(
            "{} has no interface with an IPv4 address: the VM gets no NIC",
            netns.display()
        );
        return Ok(None);
    }
    Ok(Some(pod_network))
}

/// The guest side of the sandbox: its id, hostname and the shared
/// filesystem.
fn set_up_guest(sandbox: &Sandbox, state_dir: &Path, hostname: &str) -> Result<()> {
    sandbox.agent().create_sandbox(&CreateSandboxRequest {
        sandbox_id: state_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        hostname: hostname.into(),
        shared_fs_tag: SHARED_FS_TAG.into(),
        ..Default::default()
    })
}
