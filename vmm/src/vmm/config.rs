//! What a microVM is built from: [`VmConfig`] and its device configurations.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Instant;

/// Most vCPUs (APIC ids are 8 bits, 0xff is broadcast).
pub const MAX_VCPUS: u8 = 254;

/// Where the serial console's output goes.
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer (tests).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Sink,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialOutput::Stdout => f.write_str("Stdout"),
            SerialOutput::File(path) => f.debug_tuple("File").field(path).finish(),
            SerialOutput::Writer(_) => f.write_str("Writer(..)"),
            SerialOutput::Sink => f.write_str("Sink"),
        }
    }
}

/// The hybrid vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// Unix socket the host connects to (must not exist yet).
    pub uds_path: PathBuf,
    /// The guest's CID (3 or more).
    pub cid: u64,
}

/// A file-backed virtio-blk disk.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd).
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The backend's vhost-user socket (it must be listening).
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
}

/// A virtio-net device on an open tap.
#[derive(Debug)]
pub struct NetConfig {
    /// The tap (`IFF_TAP | IFF_NO_PI`, no `IFF_VNET_HDR`), opened by the
    /// caller (in the pod's network namespace) and handed over.
    pub tap: OwnedFd,
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
    /// The MTU the guest is told (frames are bounded by it).
    pub mtu: u16,
}

/// Everything needed to build a microVM.
#[derive(Debug)]
pub struct VmConfig {
    /// Uncompressed vmlinux (ELF).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= entries are appended).
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Disks, in order (the first is /dev/vda).
    pub disks: Vec<DiskConfig>,
    /// Shared file systems; any makes guest memory a shared memfd.
    pub fs: Vec<FsConfig>,
    /// Network devices, in order (the first is eth0).
    pub net: Vec<NetConfig>,
    /// A virtio-balloon with free page reporting: the guest gives free
    /// memory back.
    pub balloon: bool,
    /// Serial console output.
    pub serial: SerialOutput,
    /// The KVM device (normally /dev/kvm).
    pub kvm_path: PathBuf,
    /// Install the seccomp filters when running.
    pub seccomp: bool,
    /// Back guest RAM with the host's 2 MiB huge pages.
    pub huge_pages: bool,
    /// When the VMM started (the boot timer measures from here).
    pub start_time: Instant,
}

impl VmConfig {
    /// A configuration with defaults: 1 vCPU, 128 MiB, no devices, serial
    /// to stdout, seccomp on.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            vsock: None,
            disks: Vec::new(),
            fs: Vec::new(),
            net: Vec::new(),
            balloon: false,
            serial: SerialOutput::Stdout,
            kvm_path: PathBuf::from("/dev/kvm"),
            seccomp: true,
            huge_pages: false,
            start_time: Instant::now(),
        }
    }
}
