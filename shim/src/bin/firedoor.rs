//! `firedoor`: host checks and tools for the Firedoor runtime.
//!
//! `firedoor check` reports what this host can run; `firedoor check --boot`
//! proves it by booting a throwaway microVM and calling its agent.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use firedoor_hypervisor::{
    host::{self, KvmKind},
    qemu, BackendKind, VmSpec,
};
use firedoor_shim::{
    assets::{self, Lookup},
    backends,
    sandbox::Sandbox,
};

#[derive(Parser)]
#[command(
    name = "firedoor",
    version,
    about = "Firedoor: containers in KVM microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report which backends can run a guest on this host, and where the
    /// guest image and helpers are.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Also boot a throwaway microVM and call its agent.
    #[arg(long)]
    boot: bool,
    /// Backend for --boot (default: the best one this host can use).
    #[arg(long, value_parser = clap::value_parser!(BackendKind))]
    backend: Option<BackendKind>,
    /// Guest kernel (default: searched; see `firedoor check`).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: searched).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Seconds from launch until the agent must answer.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Extra guest kernel parameter (repeatable), e.g. firedoor.log=debug.
    #[arg(long = "kernel-param", value_name = "PARAM")]
    kernel_params: Vec<String>,
    /// With --boot: time N agent Check RPCs (host -> vsock -> agent ->
    /// host round trips) and print the median and 99th percentile.
    #[arg(long, value_name = "N", default_value_t = 0)]
    round_trips: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firedoor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let kvm = host::probe_kvm();
    let kernel = assets::find_kernel(args.kernel.as_deref());
    let initrd = assets::find_initrd(args.initrd.as_deref());

    println!("Firedoor {} host check", env!("CARGO_PKG_VERSION"));
    println!("  KVM: {kvm}");
    let mut usable = Vec::new();
    for kind in [BackendKind::Builtin, BackendKind::Qemu] {
        match backends::unusable_reason(kind, &kvm) {
            None => {
                println!("  backend {kind}: usable{}", accel_note(kind, &kvm));
                usable.push(kind);
            }
            Some(why) => println!("  backend {kind}: not usable: {why}"),
        }
    }
    print_lookup("guest kernel", &kernel);
    print_lookup("guest initramfs", &initrd);
    for program in [qemu::QEMU, qemu::VHOST_VSOCK] {
        match host::find_program(program) {
            Some(path) => println!("  {program}: {}", path.display()),
            None => println!("  {program}: missing"),
        }
    }

    if usable.is_empty() {
        bail!("no backend can run a guest on this host (see above)");
    }
    for (what, lookup) in [("guest kernel", &kernel), ("guest initramfs", &initrd)] {
        if matches!(lookup, Lookup::Missing { .. }) {
            bail!("{what} not found: build it with scripts/build-guest, or pass its path");
        }
    }
    if !args.boot {
        return Ok(());
    }

    let kind = args.backend.unwrap_or_else(|| backends::default_kind(&kvm));
    let backend = backends::create(kind, &kvm)?;
    let mut spec = VmSpec::new(kernel.path(), initrd.path());
    spec.boot_timeout = Duration::try_from_secs_f64(args.timeout).context("--timeout")?;
    spec.vcpus = args.vcpus;
    spec.memory_mib = args.memory_mib;
    spec.kernel_params = args.kernel_params.clone();

    println!(
        "booting a microVM with the {kind} backend ({})...",
        backend.accelerator()
    );
    let sandbox = Sandbox::boot(backend.as_ref(), &spec).context("boot failed")?;
    let reply = sandbox.check()?;
    println!(
        "  agent {} on guest kernel {}: agent ready after {} ms (launch to agent, host clock; {} ms of guest uptime)",
        reply.agent_version,
        reply.kernel_release,
        sandbox.vm().boot_time().as_millis(),
        reply.boot_to_ready_ms
    );
    if args.round_trips > 0 {
        let mut samples = Vec::with_capacity(args.round_trips);
        for _ in 0..args.round_trips {
            let started = Instant::now();
            sandbox.check()?;
            samples.push(started.elapsed());
        }
        println!(
            "  agent Check RPC round trip over vsock: {}",
            RoundTrips::new(samples)
        );
    }
    let (status, killed) = sandbox.shutdown()?;
    if killed {
        bail!("the guest did not power off after Shutdown; it was killed ({status})");
    }
    println!("  guest powered off cleanly; boot check passed");
    Ok(())
}

/// Round-trip times, summarised.
struct RoundTrips(Vec<Duration>);

impl RoundTrips {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        RoundTrips(samples)
    }

    /// The sample below which `percent` % of the samples fall (nearest rank).
    fn percentile(&self, percent: usize) -> Duration {
        let rank = (self.0.len() * percent).div_ceil(100).max(1);
        self.0[rank - 1]
    }
}

impl std::fmt::Display for RoundTrips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "median {:.0} us, p99 {:.0} us, min {:.0} us, max {:.0} us (n={})",
            us(self.percentile(50)),
            us(self.percentile(99)),
            us(self.0[0]),
            us(self.0[self.0.len() - 1]),
            self.0.len()
        )
    }
}

fn accel_note(kind: BackendKind, kvm: &KvmKind) -> &'static str {
    match (kind, kvm.boots_linux()) {
        (BackendKind::Qemu, false) => " (TCG software emulation: slow, but boots anywhere)",
        (BackendKind::Qemu, true) => " (KVM)",
        (BackendKind::Builtin, _) => "",
    }
}

fn print_lookup(what: &str, lookup: &Lookup) {
    match lookup {
        Lookup::Found(path) => println!("  {what}: {}", path.display()),
        Lookup::Missing { looked_in } => {
            let places: Vec<String> = looked_in.iter().map(|p| p.display().to_string()).collect();
            println!(
                "  {what}: missing (looked in {}); build it with scripts/build-guest",
                places.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_percentiles() {
        let samples = (1..=200).rev().map(Duration::from_micros).collect();
        let trips = RoundTrips::new(samples);
        assert_eq!(trips.percentile(50), Duration::from_micros(100));
        assert_eq!(trips.percentile(99), Duration::from_micros(198));
        assert_eq!(
            trips.to_string(),
            "median 100 us, p99 198 us, min 1 us, max 200 us (n=200)"
        );
        let one = RoundTrips::new(vec![Duration::from_micros(7)]);
        assert_eq!(one.percentile(99), Duration::from_micros(7));
    }
}
