//! A private containerd for one test: its own socket, root and state under
//! a temp dir, Firedoor's shim on its PATH, stopped by PID with everything
//! it left.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use firedoor_hypervisor::process::ManagedChild;

use crate::{bin_dir, image, processes_mentioning};

pub const RUNTIME: &str = "io.containerd.firedoor.v2";

#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Option<ManagedChild>,
}

impl Containerd {
    /// Starts containerd and imports the busybox test image.
    pub fn start() -> Containerd {
        Self::start_with_config("")
    }

    /// As [`Containerd::start`], with `firedoor_config` as the shims'
    /// Firedoor config file (`FIREDOOR_CONFIG`).
    pub fn start_with_config(firedoor_config: &str) -> Containerd {
        Self::launch(firedoor_config, false)
    }

    /// containerd with its CRI plugin: runtime handler `firedoor`, host
    /// network pods only (no CNI), the pause image [`image::PAUSE_IMAGE`].
    /// The busybox and pause images are in namespace `k8s.io`.
    pub fn start_cri() -> Containerd {
        Self::launch("", true)
    }

    fn launch(firedoor_config: &str, cri: bool) -> Containerd {
        assert!(
            Path::new("/usr/bin/containerd").is_file(),
            "containerd is missing: apt-get install containerd (scripts/setup does)"
        );
        let shim = bin_dir().join("containerd-shim-firedoor-v2");
        assert!(
            shim.is_file(),
            "{} is missing: run cargo build --workspace",
            shim.display()
        );
        // Short path: socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fd-ctrd-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        let plugins = if cri {
            format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.firedoor]
    runtime_type = "{RUNTIME}"
    pod_annotations = ["io.firedoor.vm.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni/bin"
    conf_dir = "{root}/cni/conf"
"#,
                pause = image::PAUSE_IMAGE,
                root = root.display()
            )
        } else {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]
"#
            .to_string()
        };
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
{plugins}[grpc]
  address = "{root}/c.sock"
[ttrpc]
  address = "{root}/c.sock.ttrpc"
[debug]
  level = "debug"
"#,
            root = root.display()
        );
        fs::write(root.join("config.toml"), config).unwrap();
        fs::write(root.join("firedoor.toml"), firedoor_config).unwrap();
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = ManagedChild::spawn(
            "containerd",
            Command::new("/usr/bin/containerd")
                .arg("--config")
                .arg(root.join("config.toml"))
                .env("PATH", path)
                .env("FIREDOOR_CONFIG", root.join("firedoor.toml")),
            Some(&root.join("containerd.log")),
        )
        .unwrap();
        let mut containerd = Containerd {
            dir,
            daemon: Some(daemon),
        };
        containerd.wait_ready();
        let image = image::busybox_image_tar(containerd.dir.path());
        if cri {
            let pause = image::pause_image_tar(containerd.dir.path());
            for tar in [&image, &pause] {
                containerd.ctr_ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
            }
        } else {
            containerd.ctr_ok(&["images", "import", image.to_str().unwrap()]);
        }
        containerd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            let daemon = self.daemon.as_mut().unwrap();
            if let Some(status) = daemon.wait_timeout(Duration::from_millis(100)).unwrap() {
                panic!("containerd exited ({status}):\n{}", self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                self.log_tail(30)
            );
        }
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// This containerd's private directory (config, sockets, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr --address <ours> ARGS`, with whatever it printed.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().unwrap()
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("--address").arg(self.address()).args(args);
        cmd
    }

    /// Like `ctr`, but the command must succeed.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The shim's state dir (shared dir, VM run dir) of sandbox `id` in
    /// namespace "default".
    pub fn state_dir(id: &str) -> PathBuf {
        Path::new("/run/firedoor/default").join(id)
    }

    /// Waits (up to 120 s) until `ctr task ls` shows task `id` as `want`.
    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let tasks = self.ctr_ok(&["task", "ls"]);
            if tasks.lines().any(|l| l.starts_with(id) && l.contains(want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {want}:\n{tasks}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing of sandbox `id` is left: no process naming its state dir, no
    /// state dir, no shim, no container.
    pub fn assert_sandbox_gone(&self, id: &str) {
        let dir = Self::state_dir(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        while (!processes_mentioning(&dir).is_empty()
            || dir.exists()
            || !self.shim_pids().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            processes_mentioning(&dir),
            vec![],
            "VM processes left behind"
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert_eq!(self.shim_pids(), Vec::<u32>::new(), "shim left behind");
        let containers = self.ctr_ok(&["containers", "ls", "-q"]);
        assert!(
            !containers.contains(id),
            "container {id} left: {containers}"
        );
    }

    /// Shim processes serving this containerd (their command line names
    /// its socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        processes_mentioning(&self.address())
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("containerd-shim-firedoor-v2"))
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd on purpose; ours must not outlive the test.
        let leftovers = self.shim_pids();
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.terminate(Duration::from_secs(10));
        }
        for pid in leftovers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.cast_signed()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Snapshot mounts under our root.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&*self.dir.path().to_string_lossy()))
            .collect();
        ours.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
