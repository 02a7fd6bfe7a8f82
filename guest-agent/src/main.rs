//! firedoor-agent entry point.
//!
//! As PID 1 (in the guest) it sets up the machine, reads its settings from
//! the kernel command line and serves on vsock; when it cannot, it says why
//! on the console and powers off, so the host sees the VM exit instead of a
//! hang. Run as an ordinary process (`--listen unix:///path`) it serves the
//! same API for tests, without touching the host's mounts or power: with
//! `--stdio-listen` it runs containers too, from its own mount and UTS
//! namespaces with a private cgroup2 mount.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use firedoor_agent::{
    config::{self, AgentConfig},
    fault::Fault,
    helper, init, logger,
    oom::OomEvents,
    runtime::{Options, Runtime},
    sandbox::{Sandbox, SandboxPaths},
    service::AgentService,
    signals,
    spec::Roots,
    streams, uptime,
    volumes::VolumeDirs,
    ShutdownReason,
};
use firedoor_protocol::{agent_ttrpc::create_agent, stdio::StreamHeader};
use log::{debug, error, info, warn, LevelFilter};
use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};

const USAGE: &str = "usage: firedoor-agent --listen unix:///PATH|vsock://-1:PORT [--log LEVEL]
       [--stdio-listen unix:///PATH --state-dir DIR [--cgroup-root /firedoor] [--allowed-root DIR]...]
As PID 1 the settings come from the kernel command line: firedoor.port=N firedoor.log=LEVEL";

/// Guest paths (see agent.proto).
const SHARED_DIR: &str = firedoor_protocol::GUEST_SHARED_DIR;
const DISKS_DIR: &str = "/run/firedoor/disks";
const GUEST_STATE_DIR: &str = "/run/firedoor/agent";
/// The guest's own mounts of the pod's volumes (see `volumes`).
const GUEST_VOLUMES_DIR: &str = "/run/firedoor/volumes";
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
const DEFAULT_CGROUP_PARENT: &str = "/firedoor";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(helper::HELPER) {
        return helper::main(&args[1..]);
    }
    logger::init(LevelFilter::Info);
    if std::process::id() == 1 {
        std::panic::set_hook(Box::new(|info| {
            error!("panic: {info}; powering off");
            init::power_off();
        }));
        if let Err(e) = run_as_init() {
            error!("cannot start: {e}; powering off");
        }
        init::power_off();
    }
    match run_as_process(args.into_iter().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// What to serve and where.
struct Serve {
    listen: String,
    containers: Option<(String, Options, SandboxPaths)>,
    /// `firedoor.fault=` (PID 1 only).
    fault: Option<Fault>,
}

fn run_as_init() -> Result<(), BoxError> {
    if init::root_is_initramfs()? {
        init::switch_to_tmpfs_root()?;
    }
    init::setup()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let config = AgentConfig::from_cmdline(&cmdline)?;
    log::set_max_level(config.log_level);
    let options = Options {
        state_dir: GUEST_STATE_DIR.into(),
        cgroup_mount: CGROUP_MOUNT.into(),
        cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
        roots: Roots {
            dirs: vec![SHARED_DIR.into(), DISKS_DIR.into()],
            files: vec!["/etc/hosts".into(), "/etc/resolv.conf".into()],
        },
        no_pivot: false,
        exe: "/proc/self/exe".into(),
        pod_netns: firedoor_protocol::POD_NETNS_PATH.into(),
        volumes: Some(VolumeDirs {
            shared: Path::new(SHARED_DIR).join(firedoor_protocol::SHARED_VOLUMES_DIR),
            mounts: GUEST_VOLUMES_DIR.into(),
        }),
    };
    let paths = SandboxPaths {
        shared_dir: SHARED_DIR.into(),
        etc_dir: "/etc".into(),
    };
    let stdio = format!("vsock://-1:{}", firedoor_protocol::stdio::port(config.port));
    let reason = serve(Serve {
        listen: format!("vsock://-1:{}", config.port),
        containers: Some((stdio, options, paths)),
        fault: config.fault,
    })?;
    info!("shutting down: {reason}");
    Ok(())
}

fn run_as_process(mut args: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let mut listen = None;
    let mut stdio = None;
    let mut state_dir = None;
    let mut cgroup_parent = DEFAULT_CGROUP_PARENT.to_string();
    let mut allowed = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => listen = Some(value()?),
            "--stdio-listen" => stdio = Some(value()?),
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--cgroup-root" => cgroup_parent = value()?,
            "--allowed-root" => allowed.push(PathBuf::from(value()?)),
            "--log" => log::set_max_level(config::parse_level("--log", &value()?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {arg}\n{USAGE}").into()),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required when not PID 1\n{USAGE}"))?;
    let containers = match stdio {
        None => None,
        Some(stdio) => {
            let state_dir =
                state_dir.ok_or_else(|| format!("--stdio-listen needs --state-dir\n{USAGE}"))?;
            isolate_from_host()?;
            let etc_dir = state_dir.join("etc");
            let options = Options {
                state_dir: state_dir.clone(),
                cgroup_mount: CGROUP_MOUNT.into(),
                cgroup_parent,
                roots: Roots {
                    dirs: allowed,
                    files: vec![etc_dir.join("hosts"), etc_dir.join("resolv.conf")],
                },
                no_pivot: false,
                exe: "/proc/self/exe".into(),
                pod_netns: state_dir.join("netns/pod"),
                volumes: None,
            };
            let paths = SandboxPaths {
                shared_dir: state_dir.join("shared"),
                etc_dir,
            };
            Some((stdio, options, paths))
        }
    };
    let reason = serve(Serve {
        listen,
        containers,
        fault: None,
    })?;
    info!("exiting: {reason}");
    Ok(())
}

/// Host test mode: own mount and UTS namespaces (so sandbox mounts and the
/// hostname stay private), cgroup2 mounted at /sys/fs/cgroup in them (the
/// unified hierarchy, also on hybrid hosts), and adoption of the container
/// processes whose parents exit (PID 1 does that in the guest).
fn isolate_from_host() -> Result<(), BoxError> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    mount(
        Some("cgroup2"),
        CGROUP_MOUNT,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting cgroup2 on {CGROUP_MOUNT}: {e}"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// Serves the agent API until a shutdown is requested, then removes every
/// container.
fn serve(what: Serve) -> Result<ShutdownReason, BoxError> {
    signals::block()?;
    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    signals::spawn_handler(shutdown_tx.clone())?;

    let ready_ms = u64::try_from(uptime().as_millis()).unwrap_or(u64::MAX);
    if let Some(fault) = what.fault {
        warn!("fault injection armed: firedoor.fault={fault} (Firedoor's tests only)");
    }
    let mut service = AgentService::new(ready_ms, shutdown_tx).with_fault(what.fault);
    let mut runtime = None;
    let mut oom_events = None;
    if let Some((stdio_addr, options, paths)) = what.containers {
        let oom = OomEvents::start();
        let rt = Arc::new(Runtime::new(options, oom.clone())?);
        oom_events = Some(oom);
        let listener = streams::Listener::bind(&stdio_addr)
            .map_err(|e| format!("listening on {stdio_addr}: {e}"))?;
        let attach_rt = rt.clone();
        thread::Builder::new()
            .name("stdio".into())
            .spawn(move || accept_streams(listener, attach_rt))?;
        info!("stdio streams on {stdio_addr}");
        service = service.with_containers(rt.clone(), Arc::new(Sandbox::new(paths)));
        runtime = Some(rt);
    }
    let addr = what.listen;
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(|e| format!("listening on {addr}: {e}"))?
        .register_service(create_agent(Arc::new(service)));
    server
        .start()
        .map_err(|e| format!("starting ttrpc server: {e}"))?;
    info!("ready on {addr} ({ready_ms} ms after boot)");
    if let Some(port) = addr
        .strip_prefix("vsock://")
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
    {
        eprintln!("{}", firedoor_protocol::ready_marker(port));
    }

    let reason = shutdown_rx.recv()?;
    if let Some(runtime) = runtime {
        runtime.remove_all();
    }
    // The host's GetOOMEvent long poll would otherwise keep its request,
    // and with it the server's shutdown, waiting for ever.
    if let Some(oom) = oom_events {
        oom.close();
    }
    stop_server(server, SERVER_STOP_TIMEOUT);
    Ok(reason)
}

/// How long the ttrpc server may take to finish the requests in progress
/// once it stops; the power-off does not wait longer for it.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Stops the ttrpc server, which waits for every request in progress, but
/// waits at most `timeout` for it: a request that never ends must not stop
/// the guest from powering off.
fn stop_server(server: ttrpc::Server, timeout: Duration) {
    let (done_tx, done_rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("ttrpc-stop".into())
        .spawn(move || {
            server.shutdown();
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        warn!("cannot stop the ttrpc server: {e}; going on without it");
        return;
    }
    if done_rx.recv_timeout(timeout).is_err() {
        warn!(
            "the ttrpc server did not stop within {timeout:?} (a request is still running); \
             going on without it"
        );
    }
}

/// Reads each stream connection's header (bounded in time and size) and
/// hands it to its process.
fn accept_streams(listener: streams::Listener, runtime: Arc<Runtime>) {
    loop {
        let mut conn = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                warn!("stdio accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let runtime = runtime.clone();
        let spawned = thread::Builder::new()
            .name("stdio-attach".into())
            .spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let header = match StreamHeader::read_from(&mut conn) {
                    Ok(header) => header,
                    Err(e) => {
                        debug!("stdio connection: {e}");
                        let _ = firedoor_protocol::stdio::reject(&mut conn, &e.to_string());
                        return;
                    }
                };
                let _ = conn.set_read_timeout(None);
                runtime.attach(&header, conn);
            });
        if let Err(e) = spawned {
            warn!("stdio thread: {e}");
        }
    }
}
