use std::{
    fmt, io,
    os::fd::RawFd,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use crate::{process::ManagedChild, Result, VmError};

/// The hypervisor backends Firedoor can boot a guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// QEMU `microvm` (KVM where it can boot Linux, TCG elsewhere).
    Qemu,
    /// Firedoor's own VMM (`firedoor-vmm`), hardware KVM only.
    Builtin,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Builtin => "builtin",
        })
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "qemu" => Ok(BackendKind::Qemu),
            "builtin" => Ok(BackendKind::Builtin),
            _ => Err(format!("unknown backend {s:?} (use qemu or builtin)")),
        }
    }
}

/// Guest CID on the VM's private vsock device (each VM has its own vsock
/// backend and socket, so the CID need not be unique on the host).
pub(crate) const GUEST_CID: u32 = 3;

/// How [`crate::MicroVm::start`] knows the guest is up: a vsock port that
/// accepts a connection, and optionally a console line printed first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessProbe {
    /// The guest vsock port that accepts a connection once the guest is
    /// ready; that first connection is handed to the caller.
    pub vsock_port: u32,
    /// A line the guest prints on its console once `vsock_port` listens;
    /// when set, the host connects only after seeing it (or after half the
    /// boot timeout, for a guest that never prints it).
    pub console_marker: Option<String>,
}

/// What to boot and with how much.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Uncompressed `vmlinux` with a PVH note.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel parameters appended after the backend's own.
    pub kernel_params: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Guest RAM from the host's 2 MiB huge pages (`memory_mib` must be even).
    pub huge_pages: bool,
    /// A virtio-balloon that only does free page reporting: the guest hands
    /// the memory it frees back to the host (the host never inflates it).
    pub free_page_reporting: bool,
    /// When the guest counts as booted.
    pub ready: ReadinessProbe,
    /// From launch to the readiness probe's connection.
    pub boot_timeout: Duration,
    /// Parent directory of the VM's run directory (sockets, logs).
    pub run_base: PathBuf,
    /// The run directory's name under `run_base`; `None`: a fresh random
    /// name. A short fixed name keeps socket paths under the Unix limit
    /// where the base is long (a sandbox's state directory).
    pub run_dir_name: Option<String>,
    /// A host directory shared with the guest over virtio-fs, tag
    /// [`SHARED_FS_TAG`](crate::SHARED_FS_TAG) (container rootfs, volumes).
    pub shared_dir: Option<PathBuf>,
    /// Network cards, each on a tap device the caller opened and keeps
    /// open until the VM has exited.
    pub nics: Vec<VmNic>,
}

/// A virtio-net card of the guest on a host tap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNic {
    /// The tap's descriptor in this process (close-on-exec: the backend
    /// passes it to the VMM alone).
    pub tap_fd: RawFd,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl VmNic {
    /// `aa:bb:cc:dd:ee:ff`
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Lets the tap descriptors of `nics` through the exec of `cmd` (and only
/// that child's: the parent's stay close-on-exec, so no other helper
/// inherits them).
pub(crate) fn pass_taps(cmd: &mut std::process::Command, nics: &[VmNic]) {
    if nics.is_empty() {
        return;
    }
    let fds: Vec<RawFd> = nics.iter().map(|n| n.tap_fd).collect();
    // SAFETY: the closure runs between fork and exec and only calls
    // fcntl(2), which is async-signal-safe, on descriptors the child
    // inherited; it allocates nothing (`fds` was built before the fork).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl VmSpec {
    /// A 1-vCPU, 256 MiB guest with a 30 s boot timeout (software emulation
    /// on a loaded machine is slow). The readiness probe is left for the
    /// caller, who knows what runs in the guest.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        VmSpec {
            kernel: kernel.into(),
            initrd: initrd.into(),
            kernel_params: Vec::new(),
            vcpus: 1,
            memory_mib: 256,
            huge_pages: false,
            free_page_reporting: false,
            ready: ReadinessProbe::default(),
            boot_timeout: Duration::from_secs(30),
            run_base: std::env::temp_dir(),
            run_dir_name: None,
            shared_dir: None,
            nics: Vec::new(),
        }
    }

    /// The guest kernel command line: the base every backend boots with
    /// (serial console, `reboot=<reboot>` so that a reboot ends the VMM,
    /// `panic=-1` so that a panic does too), then [`VmSpec::kernel_params`].
    pub(crate) fn cmdline(&self, reboot: &str) -> String {
        let base = [
            "console=ttyS0".to_string(),
            format!("reboot={reboot}"),
            "panic=-1".into(),
            "quiet".into(),
        ];
        base.into_iter()
            .chain(self.kernel_params.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Checks what can be checked before anything is started.
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.kernel.is_file() {
            return Err(VmError::KernelMissing(self.kernel.clone()));
        }
        if !self.initrd.is_file() {
            return Err(VmError::InitrdMissing(self.initrd.clone()));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(VmError::InvalidSpec(format!(
                "vcpus = {} (1-64)",
                self.vcpus
            )));
        }
        if !(64..=1024 * 1024).contains(&self.memory_mib) {
            return Err(VmError::InvalidSpec(format!(
                "memory_mib = {} (64 MiB to 1 TiB)",
                self.memory_mib
            )));
        }
        if self.huge_pages && !self.memory_mib.is_multiple_of(2) {
            return Err(VmError::InvalidSpec(format!(
                "memory_mib = {} is not a whole number of 2 MiB huge pages",
                self.memory_mib
            )));
        }
        if let Some(dir) = &self.shared_dir {
            if !dir.is_dir() {
                return Err(VmError::InvalidSpec(format!(
                    "shared directory {} does not exist",
                    dir.display()
                )));
            }
        }
        if let Some(nic) = self
            .nics
            .iter()
            .find(|n| n.tap_fd <= 2 || !(68..=65535).contains(&n.mtu))
        {
            return Err(VmError::InvalidSpec(format!(
                "network card {}: tap descriptor {} (must be above 2), MTU {} (68-65535)",
                nic.mac_string(),
                nic.tap_fd,
                nic.mtu
            )));
        }
        if self.ready.vsock_port == 0 {
            return Err(VmError::InvalidSpec(
                "the readiness probe has no vsock port".into(),
            ));
        }
        if let Some(bad) = self
            .kernel_params
            .iter()
            .find(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(VmError::InvalidSpec(format!(
                "kernel parameter {bad:?} is empty or has spaces"
            )));
        }
        Ok(())
    }
}

/// The private directory of one VM: its sockets and logs. Removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct RunDir {
    dir: tempfile::TempDir,
}

/// Unix socket paths are at most 107 bytes (108 with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The longest socket name a backend binds in a run directory
/// ("vhost-vsock.sock"; the others are shorter).
pub(crate) const MAX_SOCKET_NAME: usize = 16;

impl RunDir {
    pub(crate) fn create(base: &Path, name: Option<&str>) -> Result<Self> {
        let err = |source| VmError::RunDir {
            dir: base.to_owned(),
            source,
        };
        let mut builder = tempfile::Builder::new();
        match name {
            Some(name) => builder.prefix(name).rand_bytes(0),
            None => builder.prefix("firedoor-vm-"),
        };
        let dir = builder.tempdir_in(base).map_err(err)?;
        let longest = dir.path().as_os_str().len() + 1 + MAX_SOCKET_NAME;
        if longest > MAX_SOCKET_PATH {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket paths in {} would be {longest} bytes, over the {MAX_SOCKET_PATH} \
                     Unix sockets allow: use a shorter directory",
                    dir.path().display()
                ),
            )));
        }
        Ok(RunDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The hybrid-vsock socket: the host connects here and sends `CONNECT`.
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    /// The guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// A file for a helper's own output (stderr).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

/// The processes a backend started for one VM.
#[derive(Debug)]
pub struct Launch {
    /// The process that runs the guest; its exit is the VM's exit.
    pub vmm: ManagedChild,
    /// Device backends (vhost-user daemons), stopped after the VMM.
    pub helpers: Vec<ManagedChild>,
}

/// A way to run a microVM. Every backend exposes the same hybrid-vsock Unix
/// socket (`RunDir::vsock_uds`) and console log, so [`crate::MicroVm`] drives
/// them all alike.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// How guest code runs, e.g. `kvm` or `tcg`.
    fn accelerator(&self) -> &'static str;
    /// Starts the VM's processes. On error, whatever was started is stopped
    /// (dropping a `ManagedChild` kills it).
    fn launch(&self, spec: &VmSpec, run_dir: &RunDir) -> Result<Launch>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for kind in [BackendKind::Qemu, BackendKind::Builtin] {
            assert_eq!(kind.to_string().parse::<BackendKind>().unwrap(), kind);
        }
        "firecracker".parse::<BackendKind>().unwrap_err();
    }

    #[test]
    fn run_dir_is_named_or_random_and_socket_paths_fit() {
        let base = tempfile::tempdir().unwrap();
        let named = RunDir::create(base.path(), Some("vm")).unwrap();
        assert_eq!(named.path(), base.path().join("vm"));
        assert!(
            RunDir::create(base.path(), Some("vm")).is_err(),
            "vm exists"
        );
        let random = RunDir::create(base.path(), None).unwrap();
        assert!(random.path().starts_with(base.path()));
        let path = random.path().to_owned();
        drop((named, random));
        assert!(!path.exists() && !base.path().join("vm").exists());

        // A base deep enough that the sockets could not be bound.
        let deep = base.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let err = RunDir::create(&deep, Some("vm")).err().unwrap().to_string();
        assert!(err.contains("Unix sockets allow"), "{err}");
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn validate_names_the_missing_kernel() {
        let spec = VmSpec::new("/nonexistent/vmlinux", "/nonexistent/initramfs.img");
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
        assert!(err.contains("scripts/build-guest"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_sizes_and_params() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut ok = VmSpec::new(file.path(), file.path());
        ok.ready.vsock_port = 1024;
        ok.validate().unwrap();
        let bad = [
            VmSpec {
                vcpus: 0,
                ..ok.clone()
            },
            VmSpec {
                memory_mib: 16,
                ..ok.clone()
            },
            VmSpec {
                ready: ReadinessProbe::default(),
                ..ok.clone()
            },
            VmSpec {
                shared_dir: Some("/nonexistent/share".into()),
                ..ok.clone()
            },
            VmSpec {
                kernel_params: vec!["a b".into()],
                ..ok.clone()
            },
            VmSpec {
                nics: vec![VmNic {
                    tap_fd: 1,
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 1500,
                }],
                ..ok.clone()
            },
            VmSpec {
                nics: vec![VmNic {
                    tap_fd: 5,
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 70000,
                }],
                ..ok.clone()
            },
        ];
        for spec in bad {
            assert!(
                matches!(spec.validate(), Err(VmError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
    }
}
