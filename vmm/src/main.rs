//! `firedoor-vmm`: boots one microVM and exits when it stops.
//!
//! Exit status: 0 when the guest resets or powers off (or SIGTERM/SIGINT
//! stopped it), 1 on any error, with the reason on stderr.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use firedoor_vmm::devices::virtio::net::DEFAULT_MTU;
use firedoor_vmm::jail::{self, JailConfig};
use firedoor_vmm::{
    DiskConfig, FsConfig, NetConfig, SerialOutput, StopHandle, VmConfig, Vmm, VsockConfig,
};

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
    /// A network device on a tap the caller opened and passes as descriptor
    /// N (inherited, not close-on-exec; opened with IFF_TAP | IFF_NO_PI and
    /// without IFF_VNET_HDR, e.g. in the pod's network namespace); the guest
    /// NIC gets MAC and MTU (default 1500, frames are bounded by it). No
    /// offloads. Repeatable; the first is the guest's eth0. The descriptor
    /// stays open through the jail.
    #[arg(long, value_name = "fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M]")]
    net: Vec<String>,
    /// Add a virtio-balloon with free page reporting: the guest (with
    /// CONFIG_VIRTIO_BALLOON and CONFIG_PAGE_REPORTING) reports free memory
    /// and the VMM gives it back to the host. The host never inflates it.
    #[arg(long)]
    balloon: bool,
    /// Serial console output: a file path, or "stdout".
    #[arg(long, value_name = "PATH|stdout", default_value = "stdout")]
    serial: String,
    /// Do not install seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Back guest memory with 2 MiB huge pages from the host's pool
    /// (/proc/sys/vm/nr_hugepages); the size must be a multiple of 2 MiB.
    #[arg(long)]
    hugepages: bool,
    /// Require the jail (own PID, mount, network, IPC and UTS namespaces, a
    /// root holding only the vsock socket's directory, no capabilities) and
    /// fail if it cannot be set up. Without --jail or --no-jail, the VMM
    /// jails itself when it has the privileges (root), and warns otherwise.
    #[arg(long, conflicts_with = "no_jail")]
    jail: bool,
    /// Do not jail the VMM (debugging only).
    #[arg(long)]
    no_jail: bool,
}

/// Whether to jail, from the flags and this process's privileges.
fn want_jail(args: &Args) -> Result<bool> {
    if args.no_jail {
        return Ok(false);
    }
    match jail::check_privileges() {
        Ok(()) => Ok(true),
        Err(e) if args.jail => Err(e).context("--jail"),
        Err(e) => {
            log::warn!("running without the jail: {e}");
            Ok(false)
        }
    }
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

/// A `--net` specification, before its descriptor is taken over.
#[derive(Debug, PartialEq, Eq)]
struct NetSpec {
    fd: RawFd,
    mac: [u8; 6],
    mtu: u16,
}

const NET_USAGE: &str = "use fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M]";

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_net(spec: &str) -> Result<NetSpec> {
    let (mut fd, mut mac, mut mtu) = (None, None, DEFAULT_MTU);
    for option in spec.split(',') {
        match option.split_once('=') {
            Some(("fd", n)) => {
                fd = Some(
                    n.parse::<RawFd>()
                        .ok()
                        .filter(|&n| n > 2)
                        .with_context(|| {
                            format!("bad descriptor {n:?} in --net {spec:?} (a number above 2)")
                        })?,
                )
            }
            Some(("mac", m)) => {
                mac = Some(parse_mac(m).with_context(|| {
                    format!("bad MAC address {m:?} in --net {spec:?} ({NET_USAGE})")
                })?)
            }
            Some(("mtu", m)) => {
                mtu = m
                    .parse()
                    .with_context(|| format!("bad MTU {m:?} in --net {spec:?}"))?
            }
            _ => bail!("unknown option {option:?} in --net {spec:?} ({NET_USAGE})"),
        }
    }
    match (fd, mac) {
        (Some(fd), Some(mac)) => Ok(NetSpec { fd, mac, mtu }),
        _ => bail!("--net {spec:?} needs fd= and mac= ({NET_USAGE})"),
    }
}

/// Takes over the descriptors `--net` names: each open, each named once
/// (all checked before any is taken, so an error closes nothing).
fn take_taps(specs: Vec<NetSpec>) -> Result<Vec<NetConfig>> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.fd == spec.fd) {
            bail!("descriptor {} is named by two --net options", spec.fd);
        }
        // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
        if unsafe { libc::fcntl(spec.fd, libc::F_GETFD) } < 0 {
            bail!(
                "--net fd={}: the descriptor is not open (pass the tap to firedoor-vmm \
                 without close-on-exec)",
                spec.fd
            );
        }
    }
    Ok(specs
        .into_iter()
        .map(|spec| {
            // SAFETY: the descriptor is open (checked above), was handed to
            // this process for this device, and is taken over only once
            // (duplicates refused above), so nothing else closes it.
            let tap = unsafe { OwnedFd::from_raw_fd(spec.fd) };
            // SAFETY: F_SETFD on a descriptor this process now owns: it must
            // not leak into anything the VMM might start.
            unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            NetConfig {
                tap,
                mac: spec.mac,
                mtu: spec.mtu,
            }
        })
        .collect())
}

static STOP: OnceLock<StopHandle> = OnceLock::new();
/// A stop signal that came before the VM existed (it is honoured as soon as
/// the VM is built: as PID 1 of a PID namespace, the VMM would otherwise
/// ignore a SIGTERM that arrives before its handler does anything).
static STOP_PENDING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only atomics and an eventfd write: async-signal-safe.
    match STOP.get() {
        Some(stop) => stop.stop(),
        None => STOP_PENDING.store(true, Ordering::SeqCst),
    }
}

fn run(start: Instant) -> Result<()> {
    let args = Args::parse();
    let jailed = want_jail(&args)?;
    if jailed {
        // Before anything is allocated or opened: the supervisor left
        // behind stays small.
        jail::pid::enter_namespace().context("cannot jail the VMM")?;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(sig, on_terminate)
            .context("cannot install signal handlers")?;
    }
    // The jail changes the current directory: relative paths used after
    // setup must be made absolute now.
    let vsock_uds = match args.vsock_uds {
        Some(p) => Some(std::path::absolute(&p).with_context(|| {
            format!("cannot make the vsock socket path {} absolute", p.display())
        })?),
        None => None,
    };
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
    let net = args
        .net
        .iter()
        .map(|n| parse_net(n))
        .collect::<Result<Vec<_>>>()?;
    let net = take_taps(net)?;
    let mut config = VmConfig::new(args.kernel);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory_mib;
    config.vsock = vsock_uds.clone().map(|uds_path| VsockConfig {
        uds_path,
        cid: args.vsock_cid,
    });
    config.disks = disks;
    config.fs = fs;
    config.net = net;
    config.balloon = args.balloon;
    config.serial = match args.serial.as_str() {
        "stdout" => SerialOutput::Stdout,
        path => SerialOutput::File(path.into()),
    };
    config.seccomp = !args.no_seccomp;
    config.huge_pages = args.hugepages;
    config.start_time = start;

    let mut vmm = Vmm::new(config).context("cannot create the VM")?;
    let _ = STOP.set(vmm.stop_handle());
    if STOP_PENDING.load(Ordering::SeqCst) {
        vmm.stop_handle().stop();
    }
    if jailed {
        // Everything is open; what is still used by path at run time is the
        // vsock socket's directory (guest connections to `<uds>_<port>`,
        // removing the socket at exit). vhost-user sockets are connected
        // during setup and need no path afterwards.
        let exposed_dirs = vsock_uds
            .as_deref()
            .map(jail::socket_dir)
            .transpose()
            .context("cannot jail the VMM")?
            .into_iter()
            .collect();
        jail::enter(&JailConfig { exposed_dirs }).context("cannot jail the VMM")?;
        log::debug!("jailed: own namespaces, new root, no capabilities");
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
        parse_disk(",ro").unwrap_err();
    }

    #[test]
    fn net_specs() {
        let n = parse_net("fd=5,mac=02:00:00:ab:cd:ef").unwrap();
        assert_eq!(
            n,
            NetSpec {
                fd: 5,
                mac: [2, 0, 0, 0xab, 0xcd, 0xef],
                mtu: DEFAULT_MTU
            }
        );
        assert_eq!(
            parse_net("mac=02:00:00:00:00:01,fd=9,mtu=9000")
                .unwrap()
                .mtu,
            9000
        );
        for bad in [
            "fd=5",
            "mac=02:00:00:00:00:01",
            "fd=1,mac=02:00:00:00:00:01",
            "fd=x,mac=02:00:00:00:00:01",
            "fd=5,mac=02:00:00:00:00",
            "fd=5,mac=02:00:00:00:00:01:02",
            "fd=5,mac=2:0:0:0:0:1",
            "fd=5,mac=02:00:00:00:00:zz",
            "fd=5,mac=02:00:00:00:00:01,mtu=-1",
            "fd=5,mac=02:00:00:00:00:01,vnet=1",
        ] {
            parse_net(bad).unwrap_err();
        }
    }

    #[test]
    fn taps_must_be_open_and_named_once() {
        let err = take_taps(vec![NetSpec {
            fd: 987,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        }])
        .unwrap_err();
        assert!(err.to_string().contains("not open"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let spec = || NetSpec {
            fd,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        };
        let err = take_taps(vec![spec(), spec()]).unwrap_err();
        assert!(err.to_string().contains("two --net"), "{err}");
        // Taken over: the File must not close it a second time.
        std::mem::forget(file);
        let taken = take_taps(vec![spec()]).unwrap();
        assert_eq!(taken[0].tap.as_raw_fd(), fd);
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
