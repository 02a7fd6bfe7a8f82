//! The shim's one sandbox VM: booted with the first container, watched for
//! an unexpected exit, and shut down with the last container.

use std::{
    fs,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    thread,
};

use anyhow::Context;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use firedoor_hypervisor::{host, VmSpec, SHARED_FS_TAG};
use firedoor_protocol::agent::{CreateSandboxRequest, StatsContainerResponse};
use log::{error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{process::VM_GONE_STATUS, ExitInfo, Shared};
use crate::{
    assets, backends,
    config::Config,
    error::{Result, ShimError},
    mount,
    sandbox::Sandbox,
};

/// Where the guest sees the shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/firedoor/shared";

/// Guest memory beyond the container's own limit.
const MEMORY_OVERHEAD_MIB: u32 = 128;

#[derive(Default)]
pub(crate) struct SandboxSlot {
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    /// Set while we stop the VM on purpose, so its exit is not a failure.
    stopping: AtomicBool,
    /// Set once the VM has died under us.
    dead: AtomicBool,
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

    /// The running sandbox, booting it first if this is the first container
    /// (`first`: its OCI spec; `options`: containerd's runtime options).
    pub fn get_or_boot(
        shared: &Arc<Shared>,
        first: &oci_spec::runtime::Spec,
        options: Option<&Any>,
    ) -> Result<Arc<Sandbox>> {
        let slot = &shared.sandbox;
        let mut guard = slot.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if slot.dead.load(Ordering::SeqCst) {
            return Err(ShimError::Unavailable("the sandbox VM has exited".into()));
        }
        if let Some(sandbox) = guard.as_ref() {
            return Ok(sandbox.clone());
        }
        let invalid = |e: anyhow::Error| ShimError::InvalidArgument(format!("{e:#}"));
        let from_options = options
            .map(|any| Config::from_runtime_options(&any.type_url, &any.value))
            .transpose()
            .map_err(invalid)?
            .flatten();
        let config = match from_options {
            Some(config) => config,
            None => shared
                .config
                .clone()
                .map_err(ShimError::FailedPrecondition)?,
        };
        let no_annotations = Default::default();
        let config = config
            .with_annotations(first.annotations().as_ref().unwrap_or(&no_annotations))
            .map_err(invalid)?;
        let unavailable =
            |e: anyhow::Error| ShimError::Unavailable(format!("starting the sandbox VM: {e:#}"));
        let memory_limit_mib = first
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| (l as u64).div_ceil(1 << 20) as u32);
        let hostname = first.hostname().clone().unwrap_or_default();
        guard.replace(
            Self::boot(shared, &config, memory_limit_mib, &hostname).map_err(unavailable)?,
        );
        Ok(guard.as_ref().expect("just set").clone())
    }

    fn boot(
        shared: &Arc<Shared>,
        config: &Config,
        memory_limit_mib: Option<u32>,
        hostname: &str,
    ) -> anyhow::Result<Arc<Sandbox>> {
        let slot = &shared.sandbox;
        let spec = vm_spec(config, &shared.state_dir, memory_limit_mib)?;
        let sandbox = boot_watched(shared, config, spec)?;
        let setup = CreateSandboxRequest {
            sandbox_id: shared
                .state_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            hostname: hostname.into(),
            shared_fs_tag: SHARED_FS_TAG.into(),
            ..Default::default()
        };
        if let Err(e) = sandbox.agent().create_sandbox(&setup) {
            slot.stopping.store(true, Ordering::SeqCst);
            let _ = sandbox.shutdown();
            return Err(e.into());
        }
        spawn_oom_watcher(shared.clone(), sandbox.clone());
        Ok(sandbox)
    }

    /// Puts an already running sandbox in the slot and watches it as a
    /// booted one is watched (the unit tests' way in).
    #[cfg(test)]
    pub fn install(shared: &Arc<Shared>, sandbox: Arc<Sandbox>) {
        let exit_fd = sandbox.vm().exit_notifier().expect("exit notifier");
        let watcher_shared = Arc::downgrade(shared);
        thread::spawn(move || watch_exit(&watcher_shared, &exit_fd));
        spawn_oom_watcher(shared.clone(), sandbox.clone());
        *shared
            .sandbox
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sandbox);
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
        mount::unmount_all_under(state_dir);
        if let Err(e) = fs::remove_dir_all(state_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("removing {}: {e}", state_dir.display());
            }
        }
    }
}

fn vm_spec(
    config: &Config,
    state_dir: &Path,
    memory_limit_mib: Option<u32>,
) -> anyhow::Result<VmSpec> {
    let kernel = assets::find_kernel(Config::explicit(&config.kernel)).path();
    let initrd = assets::find_initrd(Config::explicit(&config.initrd)).path();
    let mut spec = VmSpec::new(kernel, initrd);
    spec.vcpus = config.vcpus;
    spec.memory_mib = config.memory_mib + memory_limit_mib.map_or(0, |m| m + MEMORY_OVERHEAD_MIB);
    spec.huge_pages = config.hugepages;
    if spec.huge_pages {
        spec.memory_mib = spec.memory_mib.next_multiple_of(2);
    }
    spec.boot_timeout = config.boot_timeout();
    spec.kernel_params = config.kernel_params.clone();
    spec.run_base = state_dir.to_owned();
    // Short: the state dir of a CRI sandbox is already ~90 bytes long.
    spec.run_dir_name = Some("vm".into());
    let shared_dir = state_dir.join("shared");
    mount::make_shared_mount_point(&shared_dir)?;
    spec.shared_dir = Some(shared_dir);
    Ok(spec)
}

/// Boots in a thread that lives as long as the VMM: the VM's processes die
/// with the thread that started them (PR_SET_PDEATHSIG), and ttrpc's worker
/// threads come and go. The thread then watches for the VMM's exit.
fn boot_watched(
    shared: &Arc<Shared>,
    config: &Config,
    spec: VmSpec,
) -> anyhow::Result<Arc<Sandbox>> {
    let kvm = host::probe_kvm();
    // "auto": the built-in VMM (with virtio-fs for the containers' share)
    // on hardware KVM, QEMU elsewhere.
    let kind = match config.backend_kind()? {
        Some(kind) => kind,
        None => backends::default_kind(&kvm),
    };
    let backend = backends::create_with(kind, &kvm, config)?;
    info!(
        "booting the sandbox VM with the {} backend ({})",
        backend.kind(),
        backend.accelerator()
    );
    let (tx, rx) = mpsc::channel();
    let watcher_shared = Arc::downgrade(shared);
    thread::Builder::new()
        .name("sandbox-vm".into())
        .spawn(move || {
            let sandbox = match Sandbox::boot(backend.as_ref(), &spec) {
                Ok(sandbox) => Arc::new(sandbox),
                Err(e) => return drop(tx.send(Err(e))),
            };
            let exit_fd = sandbox.vm().exit_notifier();
            record_pids(&spec.run_base, &sandbox);
            let _ = tx.send(Ok(sandbox));
            if let Ok(exit_fd) = exit_fd {
                watch_exit(&watcher_shared, &exit_fd);
            }
        })
        .context("starting the sandbox thread")?;
    rx.recv().context("the sandbox thread died")?
}

/// Blocks until `exit_fd` (the VM's exit notifier) is readable, then
/// reports the VM's exit unless we stopped it.
fn watch_exit(shared: &Weak<Shared>, exit_fd: &OwnedFd) {
    let mut fds = [PollFd::new(exit_fd.as_fd(), PollFlags::POLLIN)];
    while let Err(nix::Error::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
    if let Some(shared) = shared.upgrade() {
        vm_exited(&shared);
    }
}

/// PIDs of the VM's processes, for `shim delete` after a shim crash.
pub const PIDS_FILE: &str = "vm.pids";

fn record_pids(state_dir: &Path, sandbox: &Sandbox) {
    let vm = sandbox.vm();
    let pids: Vec<String> = std::iter::once(vm.vmm_pid())
        .chain(vm.helper_pids())
        .map(|p| p.to_string())
        .collect();
    if let Err(e) = fs::write(state_dir.join(PIDS_FILE), pids.join("\n")) {
        warn!("recording the VM's PIDs: {e}");
    }
}

/// The VMM exited while we did not stop it: every process of the sandbox
/// is gone with it.
fn vm_exited(shared: &Shared) {
    let slot = &shared.sandbox;
    if slot.stopping.load(Ordering::SeqCst) {
        return;
    }
    slot.dead.store(true, Ordering::SeqCst);
    let console = slot
        .get()
        .map(|s| s.vm().console_tail(20))
        .unwrap_or_default();
    error!("the sandbox VM exited unexpectedly; last console lines:\n{console}");
    let processes: Vec<_> = shared
        .containers()
        .values()
        .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
        .collect();
    for process in processes {
        if process.phase() == super::process::Phase::Created && process.pid() == 0 {
            continue;
        }
        shared.report_exit(&process, ExitInfo::now(VM_GONE_STATUS));
    }
}

/// Long-polls the agent for OOM kills and publishes TaskOOM (once per
/// container; the exit path publishes it first when init was the victim).
fn spawn_oom_watcher(shared: Arc<Shared>, sandbox: Arc<Sandbox>) {
    let agent = sandbox.agent().clone();
    drop(sandbox);
    let shared = Arc::downgrade(&shared);
    let spawned = thread::Builder::new()
        .name("oom-events".into())
        .spawn(move || loop {
            let event = match agent.get_oom_event() {
                Ok(event) => event,
                Err(e) => {
                    log::debug!("OOM event stream ended: {e}");
                    return;
                }
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            report_oom(&shared, &event.container_id);
        });
    if let Err(e) = spawned {
        warn!("cannot watch OOM events: {e}");
    }
}

/// Publishes TaskOOM for `id` unless it already went out.
pub(crate) fn report_oom(shared: &Shared, id: &str) {
    let flag = shared.containers().get(id).map(|c| c.oom_reported.clone());
    if let Some(flag) = flag {
        if !flag.swap(true, Ordering::SeqCst) {
            shared.events.oom(id);
        }
    }
}

/// Whether the container's cgroup saw an OOM kill.
pub(crate) fn oom_killed(stats: &StatsContainerResponse) -> bool {
    stats.memory.as_ref().is_some_and(|m| m.oom_kill > 0)
}
