//! firedoor-agent entry point.
//!
//! As PID 1 (in the guest) it sets up the machine, reads its settings from
//! the kernel command line and serves on vsock; when it cannot, it says why
//! on the console and powers off, so the host sees the VM exit instead of a
//! hang. Run as an ordinary process (`--listen unix:///path`) it serves the
//! same API for tests, without touching the host's mounts or power.

use std::{
    process::ExitCode,
    sync::{mpsc, Arc},
};

use firedoor_agent::{
    config::{self, AgentConfig},
    init, logger,
    service::AgentService,
    signals, uptime, ShutdownReason,
};
use firedoor_protocol::agent_ttrpc::create_agent;
use log::{error, info, LevelFilter};

const USAGE: &str = "usage: firedoor-agent [--listen unix:///PATH|vsock://-1:PORT] [--log LEVEL]
As PID 1 the settings come from the kernel command line: firedoor.port=N firedoor.log=LEVEL";

fn main() -> ExitCode {
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
    match run_as_process(std::env::args().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run_as_init() -> Result<(), BoxError> {
    init::setup()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let config = AgentConfig::from_cmdline(&cmdline)?;
    log::set_max_level(config.log_level);
    let reason = serve(&format!("vsock://-1:{}", config.port))?;
    info!("shutting down: {reason}");
    Ok(())
}

fn run_as_process(mut args: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let mut listen = None;
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => listen = Some(value()?),
            "--log" => log::set_max_level(config::parse_level("--log", &value()?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {arg}\n{USAGE}").into()),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required when not PID 1\n{USAGE}"))?;
    let reason = serve(&listen)?;
    info!("exiting: {reason}");
    Ok(())
}

/// Serves the agent API on `addr` until a shutdown is requested.
fn serve(addr: &str) -> Result<ShutdownReason, BoxError> {
    signals::block()?;
    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    signals::spawn_handler(shutdown_tx.clone())?;

    let ready_ms = uptime().as_millis() as u64;
    let service = Arc::new(AgentService::new(ready_ms, shutdown_tx));
    let mut server = ttrpc::Server::new()
        .bind(addr)
        .map_err(|e| format!("listening on {addr}: {e}"))?
        .register_service(create_agent(service));
    server
        .start()
        .map_err(|e| format!("starting ttrpc server: {e}"))?;
    info!("ready on {addr} ({ready_ms} ms after boot)");

    let reason = shutdown_rx.recv()?;
    server.shutdown();
    Ok(reason)
}
