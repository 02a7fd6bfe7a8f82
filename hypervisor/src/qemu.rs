//! The qemu backend: QEMU's `microvm` machine with a vhost-user vsock device
//! served by `vhost-device-vsock`, which exposes the same hybrid-vsock Unix
//! socket as the built-in VMM. KVM where it can boot Linux, TCG elsewhere.

use std::{path::PathBuf, process::Command};

use crate::{
    backend::{pass_taps, Backend, BackendKind, Launch, RunDir, VmSpec, GUEST_CID},
    host::{self, KvmKind},
    vhost_user::{fs_socket, launch_vmm, start_vhost_user_daemon},
    Result, VmError, SHARED_FS_TAG,
};

pub use crate::vhost_user::VIRTIOFSD;

pub const QEMU: &str = "qemu-system-x86_64";
pub const VHOST_VSOCK: &str = "vhost-device-vsock";

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation: slow, but boots anywhere.
    Tcg,
}

impl Accel {
    /// KVM when it can boot a stock kernel here, TCG otherwise.
    pub fn best_for(kvm: &KvmKind) -> Accel {
        if kvm.boots_linux() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The size of TCG's translated-code cache, MiB. QEMU's default is 1 GiB,
/// filled as the guest runs code it has not run before, and every exec in
/// a container adds ~3.4 MiB (measured: 45 MiB after boot, 184 MiB after 40
/// `ctr task exec`s), so a long-lived pod would grow towards 1 GiB of host
/// memory. When the cache is full QEMU flushes it and translates again.
/// The boot fits in it without a flush.
const TCG_CODE_CACHE_MIB: u32 = 64;

/// The receive window vhost-device-vsock grants each guest connection. The
/// guest never sends a packet larger than its credit, and Linux (6.12.y)
/// sends payloads over about 32 KiB as page fragments over several
/// descriptors, which vhost-device-vsock 0.3 cannot parse: it drops them
/// and the stream stalls. 16 KiB keeps every guest packet in one buffer.
const VSOCK_TX_WINDOW: u32 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    /// Needed only for VMs with a shared directory.
    pub virtiofsd: Option<PathBuf>,
    pub accel: Accel,
}

impl QemuBackend {
    /// Finds QEMU and vhost-device-vsock and picks the accelerator for this
    /// host.
    pub fn detect() -> Result<Self> {
        let qemu = host::find_program(QEMU).ok_or(VmError::HelperMissing {
            name: QEMU,
            hint: "install it with: apt-get install qemu-system-x86",
        })?;
        let vhost_vsock = host::find_program(VHOST_VSOCK).ok_or(VmError::HelperMissing {
            name: VHOST_VSOCK,
            hint: "install it with: cargo install --locked vhost-device-vsock@0.3.0",
        })?;
        Ok(QemuBackend {
            qemu,
            vhost_vsock,
            virtiofsd: host::find_program(VIRTIOFSD),
            accel: Accel::best_for(&host::probe_kvm()),
        })
    }

    /// The QEMU command line for `spec`, with sockets and logs in `run_dir`.
    pub fn qemu_args(&self, spec: &VmSpec, run_dir: &RunDir) -> Vec<String> {
        let mib = spec.memory_mib;
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        // reboot=t: microvm has no keyboard controller, so reset by triple
        // fault; with -no-reboot QEMU then exits.
        let mut cmdline = spec.cmdline("t");
        if self.accel == Accel::Tcg {
            // Under TCG the local APIC timer fails the kernel's calibration
            // check and is disabled anyway, after ~0.3 s of guest boot spent
            // calibrating it (the PIT then drives the clock): go straight
            // there. First, so that the spec's own parameters come last.
            cmdline.insert_str(0, "noapictimer ");
        }
        let accel = match self.accel {
            Accel::Kvm => "kvm".to_owned(),
            Accel::Tcg => format!("tcg,tb-size={TCG_CODE_CACHE_MIB}"),
        };
        let mut args: Vec<String> = vec![
            // acpi=off: only then does QEMU put virtio_mmio.device= on the
            // kernel command line; our kernel has no ACPI.
            "-M".into(),
            "microvm,acpi=off,x-option-roms=off,memory-backend=mem".into(),
            "-accel".into(),
            accel,
            "-cpu".into(),
            cpu.into(),
        ];
        args.extend([
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{mib}M"),
            // vhost-user devices need guest memory the daemon can map.
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={mib}M,share=on{}",
                if spec.huge_pages {
                    ",hugetlb=on,hugetlbsize=2M"
                } else {
                    ""
                }
            ),
        ]);
        args.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ]
            .map(String::from),
        );
        args.extend([
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            cmdline,
            "-serial".into(),
            format!("file:{}", run_dir.console_log().display()),
            "-chardev".into(),
            format!("socket,id=vsock,path={}", vsock_socket(run_dir).display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock".into(),
        ]);
        for (i, nic) in spec.nics.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net{i},fd={}", nic.tap_fd),
                "-device".into(),
                format!(
                    "virtio-net-device,netdev=net{i},mac={},host_mtu={}",
                    nic.mac_string(),
                    nic.mtu
                ),
            ]);
        }
        if spec.free_page_reporting {
            args.extend([
                "-device".into(),
                "virtio-balloon-device,free-page-reporting=on".into(),
            ]);
        }
        if spec.shared_dir.is_some() {
            args.extend([
                "-chardev".into(),
                format!("socket,id=fs,path={}", fs_socket(run_dir).display()),
                "-device".into(),
                format!("vhost-user-fs-device,chardev=fs,tag={SHARED_FS_TAG}"),
            ]);
        }
        args
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn accelerator(&self) -> &'static str {
        self.accel.name()
    }

    fn launch(&self, spec: &VmSpec, run_dir: &RunDir) -> Result<Launch> {
        let vsock = start_vhost_user_daemon(
            VHOST_VSOCK,
            Command::new(&self.vhost_vsock)
                .arg("--guest-cid")
                .arg(GUEST_CID.to_string())
                .arg("--socket")
                .arg(vsock_socket(run_dir))
                .arg("--uds-path")
                .arg(run_dir.vsock_uds())
                .arg("--tx-buffer-size")
                .arg(VSOCK_TX_WINDOW.to_string()),
            &vsock_socket(run_dir),
            run_dir,
        )?;
        let mut qemu = Command::new(&self.qemu);
        qemu.args(self.qemu_args(spec, run_dir));
        pass_taps(&mut qemu, &spec.nics);
        launch_vmm(
            vec![vsock],
            self.virtiofsd.as_deref(),
            spec,
            run_dir,
            QEMU,
            &mut qemu,
        )
    }
}

fn vsock_socket(run_dir: &RunDir) -> PathBuf {
    // The longest socket name: see backend::MAX_SOCKET_NAME.
    run_dir.path().join("vhost-vsock.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCG backend with stand-in binary names (only its arguments are
    /// looked at).
    fn tcg_backend() -> QemuBackend {
        QemuBackend {
            qemu: "qemu".into(),
            vhost_vsock: "vhost".into(),
            virtiofsd: None,
            accel: Accel::Tcg,
        }
    }

    #[test]
    fn command_line_has_memfd_vsock_and_agent_port() {
        let backend = tcg_backend();
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        spec.memory_mib = 512;
        spec.vcpus = 2;
        spec.kernel_params = vec!["firedoor.port=2000".into(), "firedoor.log=debug".into()];
        let args = backend.qemu_args(&spec, &run_dir);
        let joined = args.join(" ");
        assert!(
            joined.contains("-accel tcg,tb-size=64 -cpu max -smp 2 -m 512M"),
            "{joined}"
        );
        assert!(
            joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"),
            "{joined}"
        );
        assert!(!joined.contains("hugetlb"), "{joined}");
        spec.huge_pages = true;
        let huge = backend.qemu_args(&spec, &run_dir).join(" ");
        assert!(
            huge.contains("share=on,hugetlb=on,hugetlbsize=2M"),
            "{huge}"
        );
        let vsock = format!(
            "socket,id=vsock,path={}/vhost-vsock.sock",
            run_dir.path().display()
        );
        assert!(joined.contains(&vsock), "{joined}");
        assert!(!joined.contains("vhost-user-fs-device"), "{joined}");
        spec.shared_dir = Some("/srv".into());
        let joined = backend.qemu_args(&spec, &run_dir).join(" ");
        assert!(
            joined.contains("vhost-user-fs-device,chardev=fs,tag=firedoor"),
            "{joined}"
        );
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.contains("firedoor.port=2000"), "{append}");
        assert!(append.ends_with("firedoor.log=debug"), "{append}");
        assert!(
            append.contains("reboot=t") && append.contains("panic=-1"),
            "{append}"
        );
        assert!(append.starts_with("noapictimer "), "TCG: {append}");
        let kvm = QemuBackend {
            accel: Accel::Kvm,
            ..backend.clone()
        };
        let kvm_args = kvm.qemu_args(&spec, &run_dir);
        let kvm_append = &kvm_args[kvm_args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(!kvm_append.contains("noapictimer"), "KVM: {kvm_append}");
    }

    #[test]
    fn each_nic_is_a_tap_netdev_and_a_virtio_net_device_with_its_mac() {
        let backend = tcg_backend();
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        assert!(!backend
            .qemu_args(&spec, &run_dir)
            .join(" ")
            .contains("-netdev"));
        spec.nics = vec![crate::VmNic {
            tap_fd: 7,
            mac: [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x03],
            mtu: 1450,
        }];
        let joined = backend.qemu_args(&spec, &run_dir).join(" ");
        assert!(
            joined.contains(
                "-netdev tap,id=net0,fd=7 -device \
                 virtio-net-device,netdev=net0,mac=0a:58:0a:01:02:03,host_mtu=1450"
            ),
            "{joined}"
        );
    }

    #[test]
    fn free_page_reporting_adds_a_balloon_that_only_reports() {
        let backend = tcg_backend();
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        assert!(!backend
            .qemu_args(&spec, &run_dir)
            .join(" ")
            .contains("balloon"));
        spec.free_page_reporting = true;
        let args = backend.qemu_args(&spec, &run_dir).join(" ");
        assert!(
            args.contains("-device virtio-balloon-device,free-page-reporting=on"),
            "{args}"
        );
    }

    #[test]
    fn accel_follows_kvm_kind() {
        assert_eq!(Accel::best_for(&KvmKind::Pvm), Accel::Tcg);
        assert_eq!(Accel::best_for(&KvmKind::Absent), Accel::Tcg);
        assert_eq!(
            Accel::best_for(&KvmKind::Hardware { extension: "AMD-V" }),
            Accel::Kvm
        );
    }
}
