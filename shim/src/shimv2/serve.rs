//! The shim daemon: one ttrpc server on containerd's socket with the Task
//! API (v2, and the same handlers under v3's name, whose messages are
//! v2's) and the Sandbox API.

use std::{
    os::{fd::IntoRawFd, unix::net::UnixListener},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use containerd_shim::{
    self as shim,
    protos::{create_task, ttrpc},
    publisher::RemotePublisher,
    util::write_address,
    Config as ShimConfig, Flags, Shim as _,
};
use containerd_shim_protos::sandbox_sync::create_sandbox;
use log::{debug, info, warn};
use signal_hook::{
    consts::{SIGINT, SIGPIPE, SIGTERM},
    iterator::Signals,
};

use super::{FiredoorShim, RUNTIME_ID};
use crate::sandbox_api::SandboxService;

/// The Task API's method prefixes: v2 (containerd 1.6, 1.7; 2.x bridges it)
/// and v3 (containerd 2.x for a shim that answered protocol version 3).
const TASK_V2: &str = "/containerd.task.v2.Task/";
const TASK_V3: &str = "/containerd.task.v3.Task/";

type Methods = std::collections::HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>>;

/// Runs the daemon until the shim is told to exit.
pub(super) fn serve(flags: Flags, mut config: ShimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(!flags.namespace.is_empty(), "-namespace is required");
    // SIGTERM and SIGINT are containerd's business (it kills a shim it
    // wants gone); SIGPIPE must not end us when a client goes away. Handled
    // (not ignored), so our children start with the default dispositions.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGPIPE]).context("installing signal handlers")?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let mut firedoor = FiredoorShim::new(RUNTIME_ID, &flags, &mut config);
    shim::logger::init(
        flags.debug,
        &config.default_log_level,
        &flags.namespace,
        &flags.id,
    )
    .context("setting up the shim log")?;

    let Some(listener) = listen(&flags.socket)? else {
        // Another daemon of this sandbox already serves the socket.
        release_start();
        return Ok(());
    };
    let publisher = RemotePublisher::new(&ttrpc_address).context("connecting to containerd")?;
    let tasks = firedoor.create_task_service(publisher);
    let sandbox = SandboxService::new(tasks.shared());
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .context("serving the shim socket")?
        .register_service(task_methods(Arc::new(tasks.clone()), TASK_V2))
        .register_service(task_methods(Arc::new(tasks), TASK_V3))
        .register_service(create_sandbox(Arc::new(sandbox)));
    server.start().context("starting the ttrpc server")?;
    release_start();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            debug!("received signal {signal}");
        }
    });
    info!("shim serving {}", flags.socket);
    firedoor.wait();
    info!("shim exiting");
    server.shutdown();
    remove_socket(&flags.socket);
    Ok(())
}

/// The Task service's handlers under `prefix`.
fn task_methods(tasks: Arc<dyn containerd_shim::Task + Send + Sync>, prefix: &str) -> Methods {
    create_task(tasks)
        .into_iter()
        .map(|(name, handler)| {
            let verb = name.strip_prefix(TASK_V2).unwrap_or(&name).to_string();
            (format!("{prefix}{verb}"), handler)
        })
        .collect()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the shim socket; None when a live daemon already serves it (the
/// address file then names it, as for a shim that joined).
fn listen(address: &str) -> anyhow::Result<Option<UnixListener>> {
    let path = Path::new(socket_path(address));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if serves(path) {
                write_address(address)?;
                return Ok(None);
            }
            warn!("{} was left by a dead shim; replacing it", path.display());
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok(Some(
                UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?,
            ))
        }
        Err(e) => Err(e).with_context(|| format!("binding {}", path.display())),
    }
}

/// Whether something accepts connections on `path` (tried for up to 1 s).
fn serves(path: &Path) -> bool {
    (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::os::unix::net::UnixStream::connect(path).is_ok()
    })
}

fn remove_socket(address: &str) {
    let path = socket_path(address);
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("removing {path}: {e}");
        }
    }
}

/// `shim::spawn` in the `start` process reads our stdout until it closes:
/// point it at stderr (containerd's log pipe) so `start` can print the
/// address and return.
fn release_start() {
    if let Err(e) = nix::unistd::dup2(2, 1) {
        warn!("releasing the start process: {e}");
    }
}
