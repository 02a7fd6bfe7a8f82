//! `firedoor-vmm`: boots one microVM and exits when it stops.
//!
//! Exit status: 0 when the guest resets or powers off (or SIGTERM/SIGINT
//! stopped it), 1 on any error, with the reason on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use firedoor_vmm::{DiskConfig, FsConfig, SerialOutput, StopHandle, VmConfig, Vmm, VsockConfig};

#[derive(Parser, Debug)]
#[command(name = "firedoor-vmm", version, about = "Firedoor's KVM microVM")]
struct Args {
    /// Uncompressed kernel (vmlinux ELF).
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line; virtio_mmio.device= entries are appended.
    #[arg(
        long,
        value_name = "STR",
        default_value = "console=ttyS0 reboot=k panic=1"
    )]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "N", default_value_t = 128)]
    memory_mib: u64,
    /// Unix socket for hybrid vsock (must not exist).
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID for vsock.
    #[arg(long, value_name = "N", default_value_t = 3)]
    vsock_cid: u64,
    /// A disk image: PATH, PATH,ro or PATH,rw (repeatable; the first is vda).
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<String>,
    /// A shared file system: the vhost-user socket of a running virtiofsd and
    /// the tag the guest mounts (repeatable). Makes guest memory a shared memfd.
    #[arg(long, value_name = "SOCKET,tag=TAG")]
    fs: Vec<String>,
    /// Serial console output: a file path, or "stdout".
    #[arg(long, value_name = "PATH|stdout", default_value = "stdout")]
    serial: String,
    /// Do not install seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

fn parse_disk(spec: &str) -> Result<DiskConfig> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => bail!("unknown disk option {opt:?} in {spec:?} (use ro or rw)"),
        None => (spec, false),
    };
    if path.is_empty() {
        bail!("empty disk path in {spec:?}");
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_fs(spec: &str) -> Result<FsConfig> {
    let Some((socket, option)) = spec.rsplit_once(',') else {
        bail!("missing tag in {spec:?} (use SOCKET,tag=TAG)");
    };
    let Some(tag) = option.strip_prefix("tag=") else {
        bail!("unknown fs option {option:?} in {spec:?} (use SOCKET,tag=TAG)");
    };
    if socket.is_empty() || tag.is_empty() {
        bail!("empty socket path or tag in {spec:?} (use SOCKET,tag=TAG)");
    }
    Ok(FsConfig {
        socket: socket.into(),
        tag: tag.into(),
    })
}

static STOP: OnceLock<StopHandle> = OnceLock::new();

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic and an eventfd write: async-signal-safe.
    if let Some(stop) = STOP.get() {
        stop.stop();
    }
}

fn run(start: Instant) -> Result<()> {
    let args = Args::parse();
    let disks = args
        .disk
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>>>()?;
    let fs = args
        .fs
        .iter()
        .map(|f| parse_fs(f))
        .collect::<Result<Vec<_>>>()?;
    let mut config = VmConfig::new(args.kernel);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory_mib;
    config.vsock = args.vsock_uds.map(|uds_path| VsockConfig {
        uds_path,
        cid: args.vsock_cid,
    });
    config.disks = disks;
    config.fs = fs;
    config.serial = match args.serial.as_str() {
        "stdout" => SerialOutput::Stdout,
        path => SerialOutput::File(path.into()),
    };
    config.seccomp = !args.no_seccomp;
    config.start_time = start;

    let mut vmm = Vmm::new(config).context("cannot create the VM")?;
    let _ = STOP.set(vmm.stop_handle());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(sig, on_terminate)
            .context("cannot install signal handlers")?;
    }
    let reason = vmm.run().context("the VM failed")?;
    log::info!("exiting: {reason:?}");
    Ok(())
}

/// The error and its causes, skipping causes the message above already quotes.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firedoor-vmm: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("/a/b.img,ro").unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/a/b.img"), true));
        let d = parse_disk("/a/b,c.img").unwrap_err();
        assert!(d.to_string().contains("unknown disk option"));
        assert!(!parse_disk("x.img").unwrap().read_only);
        assert!(!parse_disk("x.img,rw").unwrap().read_only);
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn fs_specs() {
        let f = parse_fs("/run/vm/fs.sock,tag=firedoor").unwrap();
        assert_eq!(f.socket, PathBuf::from("/run/vm/fs.sock"));
        assert_eq!(f.tag, "firedoor");
        // Only the last comma separates the option.
        let f = parse_fs("/a,b/fs.sock,tag=t").unwrap();
        assert_eq!(f.socket, PathBuf::from("/a,b/fs.sock"));
        for bad in ["/fs.sock", "/fs.sock,ro", ",tag=t", "/fs.sock,tag="] {
            let err = parse_fs(bad).unwrap_err().to_string();
            assert!(err.contains("SOCKET,tag=TAG"), "{bad}: {err}");
        }
    }
}
