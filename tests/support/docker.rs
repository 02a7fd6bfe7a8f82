//! A private Docker engine for one test: Debian sid's `dockerd` (unpacked by
//! `scripts/containerd-builds` into `target/docker`) against the test's own
//! containerd, with its own data root, exec root and socket, and no host
//! networking changes (`--iptables=false --bridge=none`). Stopped by PID.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use firedoor_hypervisor::process::ManagedChild;

use crate::{containerd::Containerd, image, workspace_root, Readiness};

/// The test image as Docker names it (`docker load` of the busybox image).
pub const BUSYBOX: &str = "busybox:firedoor-test";

#[derive(Debug)]
pub struct Docker {
    dir: tempfile::TempDir,
    daemon: Option<ManagedChild>,
    docker: PathBuf,
}

impl Docker {
    /// Starts dockerd on `containerd` and loads the busybox image.
    pub fn start(containerd: &Containerd) -> Docker {
        let prefix = workspace_root().join("target/docker/usr");
        let dockerd = prefix.join("sbin/dockerd");
        assert!(
            dockerd.is_file(),
            "{} is missing: run scripts/containerd-builds (scripts/setup does)",
            dockerd.display()
        );
        // Short: dockerd binds sockets under its exec root.
        let dir = tempfile::Builder::new()
            .prefix("fd-dock-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        let path = format!(
            "{}:{}:{}",
            prefix.join("bin").display(),
            prefix.join("sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = ManagedChild::spawn(
            "dockerd",
            Command::new(&dockerd)
                .arg("--containerd")
                .arg(containerd.address())
                .arg("--data-root")
                .arg(root.join("data"))
                .arg("--exec-root")
                .arg(root.join("exec"))
                .arg("--pidfile")
                .arg(root.join("dockerd.pid"))
                .arg("--host")
                .arg(format!("unix://{}", root.join("d.sock").display()))
                .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
                .env("PATH", path),
            Some(&root.join("dockerd.log")),
        )
        .unwrap();
        let mut docker = Docker {
            dir,
            daemon: Some(daemon),
            docker: prefix.join("bin/docker"),
        };
        docker.wait_ready();
        let image = image::busybox_image_tar(docker.dir.path());
        docker.docker_ok(&["load", "-i", image.to_str().unwrap()]);
        docker
    }

    fn wait_ready(&mut self) {
        let readiness = Readiness {
            name: "dockerd",
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(200),
        };
        readiness.wait(
            self,
            |d| d.docker(&["version"]).status.success(),
            |d| d.daemon.as_mut().unwrap(),
            |d| d.log_tail(30),
        );
    }

    /// `docker -H <ours> ARGS`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("--host")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("d.sock").display()
            ))
            .args(args);
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Like `docker`, but the command must succeed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndockerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn docker_path(&self) -> &Path {
        &self.docker
    }

    pub fn host_arg(&self) -> String {
        format!("unix://{}", self.dir.path().join("d.sock").display())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.terminate(Duration::from_secs(15));
        }
        // overlay2 and netns mounts under our root.
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
