//! The built-in backend: Firedoor's own VMM (`firedoor-vmm`, crate vmm/),
//! one process per VM, serving the hybrid-vsock socket itself, plus
//! virtiofsd for a shared directory (the VMM is its vhost-user frontend).
//! Needs hardware KVM: a stock guest kernel does not boot under PVM.

use std::{path::PathBuf, process::Command};

use crate::{
    backend::{pass_taps, Backend, BackendKind, Launch, RunDir, VmSpec, GUEST_CID},
    host,
    vhost_user::{fs_socket, launch_vmm, VIRTIOFSD},
    Result, VmError, SHARED_FS_TAG,
};

pub const FIREDOOR_VMM: &str = "firedoor-vmm";

#[derive(Debug, Clone)]
pub struct BuiltinBackend {
    pub vmm: PathBuf,
    /// Needed only for VMs with a shared directory.
    pub virtiofsd: Option<PathBuf>,
}

impl BuiltinBackend {
    /// Finds `firedoor-vmm` (beside the current executable, on `PATH`, or in
    /// cargo's install directory).
    pub fn detect() -> Result<Self> {
        let vmm = host::find_program(FIREDOOR_VMM).ok_or(VmError::HelperMissing {
            name: FIREDOOR_VMM,
            hint: "it is built with the workspace: cargo build --workspace; install it beside firedoor",
        })?;
        Ok(BuiltinBackend {
            vmm,
            virtiofsd: host::find_program(VIRTIOFSD),
        })
    }

    /// The `firedoor-vmm` arguments for `spec`, with sockets and logs in
    /// `run_dir`.
    pub fn vmm_args(&self, spec: &VmSpec, run_dir: &RunDir) -> Vec<String> {
        // reboot=k: the agent's reboot(2) resets through the i8042, which
        // ends the VMM with status 0.
        let cmdline = spec.cmdline("k");
        let mut args = vec![
            "--kernel".into(),
            spec.kernel.display().to_string(),
            "--initrd".into(),
            spec.initrd.display().to_string(),
            "--cmdline".into(),
            cmdline,
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--memory-mib".into(),
            spec.memory_mib.to_string(),
            "--vsock-uds".into(),
            run_dir.vsock_uds().display().to_string(),
            "--vsock-cid".into(),
            GUEST_CID.to_string(),
            "--serial".into(),
            run_dir.console_log().display().to_string(),
        ];
        if spec.huge_pages {
            args.push("--hugepages".into());
        }
        if spec.free_page_reporting {
            args.push("--balloon".into());
        }
        for nic in &spec.nics {
            args.extend([
                "--net".into(),
                format!("fd={},mac={},mtu={}", nic.tap_fd, nic.mac_string(), nic.mtu),
            ]);
        }
        if spec.shared_dir.is_some() {
            args.extend([
                "--fs".into(),
                format!("{},tag={SHARED_FS_TAG}", fs_socket(run_dir).display()),
            ]);
        }
        args
    }
}

impl Backend for BuiltinBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Builtin
    }

    fn accelerator(&self) -> &'static str {
        "kvm"
    }

    fn launch(&self, spec: &VmSpec, run_dir: &RunDir) -> Result<Launch> {
        let mut vmm = Command::new(&self.vmm);
        vmm.args(self.vmm_args(spec, run_dir));
        pass_taps(&mut vmm, &spec.nics);
        launch_vmm(
            Vec::new(),
            self.virtiofsd.as_deref(),
            spec,
            run_dir,
            FIREDOOR_VMM,
            &mut vmm,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> BuiltinBackend {
        BuiltinBackend {
            vmm: "/bin/false".into(),
            virtiofsd: None,
        }
    }

    #[test]
    fn command_line_has_the_guest_sockets_and_agent_port() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k/vmlinux", "/k/initramfs.img");
        spec.vcpus = 2;
        spec.memory_mib = 512;
        spec.kernel_params = vec!["firedoor.port=2000".into(), "firedoor.log=debug".into()];
        let args = backend().vmm_args(&spec, &run_dir);
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].as_str()
        };
        assert_eq!(value("--kernel"), "/k/vmlinux");
        assert_eq!(value("--initrd"), "/k/initramfs.img");
        assert_eq!(value("--vcpus"), "2");
        assert_eq!(value("--memory-mib"), "512");
        assert!(!args.contains(&"--hugepages".to_string()));
        spec.huge_pages = true;
        let huge = backend().vmm_args(&spec, &run_dir);
        assert!(huge.contains(&"--hugepages".to_string()));
        assert!(!args.contains(&"--balloon".to_string()));
        spec.free_page_reporting = true;
        assert!(backend()
            .vmm_args(&spec, &run_dir)
            .contains(&"--balloon".to_string()));
        assert_eq!(value("--vsock-cid"), "3");
        let dir = run_dir.path().display().to_string();
        assert_eq!(value("--vsock-uds"), format!("{dir}/vsock.sock"));
        assert_eq!(value("--serial"), format!("{dir}/console.log"));
        assert_eq!(
            value("--cmdline"),
            "console=ttyS0 reboot=k panic=-1 quiet firedoor.port=2000 firedoor.log=debug"
        );
    }

    #[test]
    fn each_nic_is_a_net_option_with_its_descriptor_mac_and_mtu() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        assert!(!backend()
            .vmm_args(&spec, &run_dir)
            .contains(&"--net".into()));
        spec.nics = vec![crate::VmNic {
            tap_fd: 9,
            mac: [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x03],
            mtu: 1500,
        }];
        let args = backend().vmm_args(&spec, &run_dir);
        let i = args.iter().position(|a| a == "--net").unwrap();
        assert_eq!(args[i + 1], "fd=9,mac=0a:58:0a:01:02:03,mtu=1500");
    }

    #[test]
    fn shared_dir_adds_the_fs_device_on_virtiofsd_socket() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        assert!(!backend().vmm_args(&spec, &run_dir).contains(&"--fs".into()));
        spec.shared_dir = Some("/srv/share".into());
        let args = backend().vmm_args(&spec, &run_dir);
        let i = args.iter().position(|a| a == "--fs").unwrap();
        assert_eq!(
            args[i + 1],
            format!("{}/virtiofsd.sock,tag=firedoor", run_dir.path().display())
        );
    }

    #[test]
    fn shared_dir_without_virtiofsd_fails_before_the_vmm_starts() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let mut spec = VmSpec::new("/k", "/i");
        spec.shared_dir = Some("/srv/share".into());
        let err = backend().launch(&spec, &run_dir).err().unwrap();
        assert!(matches!(err, VmError::HelperMissing { .. }), "{err}");
        assert!(err.to_string().contains("virtiofsd"), "{err}");
        assert!(!run_dir.log(FIREDOOR_VMM).exists());
    }
}
