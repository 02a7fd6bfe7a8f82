//! A private Docker engine for one test: Debian sid's `dockerd` (unpacked by
//! `scripts/containerd-builds` into `target/docker`) against the test's own
//! containerd, with its own data root, exec root, socket and config file
//! (the host's `/etc/docker/daemon.json` is not read), and no host
//! networking changes (`--iptables=false`; `--bridge=none`, or a bridge
//! inside a network namespace of the test's own). Stopped by PID.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use firedoor_hypervisor::process::ManagedChild;

use crate::{
    containerd::{Containerd, RUNTIME},
    image, workspace_root, Readiness,
};

/// The test image as Docker names it (`docker load` of the busybox image).
pub const BUSYBOX: &str = "busybox:firedoor-test";

/// `docker run --pull never --runtime firedoor FLAGS busybox COMMAND`'s
/// arguments (after `docker`): the image is loaded, never pulled.
pub fn run_args<'a>(flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run", "--pull", "never", "--runtime", RUNTIME];
    all.extend_from_slice(flags);
    all.push(BUSYBOX);
    all.extend_from_slice(command);
    all
}

/// How the test's dockerd is set up beyond the defaults.
#[derive(Debug, Default)]
pub struct DockerSetup {
    /// Run dockerd in a network namespace of the test's own, with its
    /// default bridge (`docker0`, this `--bip`, e.g. `10.216.3.1/24`) and
    /// the userland `docker-proxy` for published ports: both exist only in
    /// that namespace.
    pub bridge_ip: Option<String>,
    /// Turn CDI on with this as the only spec directory.
    pub cdi_spec_dir: Option<PathBuf>,
}

/// A named network namespace of the test's own (`ip netns add`), with its
/// loopback up; deleted on drop.
#[derive(Debug)]
pub struct PrivateNetns {
    name: String,
}

impl PrivateNetns {
    pub fn new(name: &str) -> PrivateNetns {
        let netns = PrivateNetns { name: name.into() };
        for args in [
            vec!["netns", "add", name],
            vec!["-n", name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        netns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Makes `cmd` start in this namespace (setns before exec; the mount
    /// namespace stays the host's, unlike `ip netns exec`, which remounts
    /// /sys and so hides the cgroup tree dockerd needs).
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let netns = fs::File::open(self.path()).unwrap();
        // SAFETY: between fork and exec the closure only calls setns(2) on
        // a descriptor it owns, which is async-signal-safe and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }

    /// An HTTP GET of `path` from `127.0.0.1:port` inside this namespace:
    /// the whole response, headers and body.
    pub fn http_get(&self, port: u16, path: &str) -> std::io::Result<String> {
        let netns = fs::File::open(self.path())?;
        let path = path.to_owned();
        // setns moves only the calling thread: a thread of its own.
        std::thread::spawn(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(
                stream,
                "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .join()
        .unwrap()
    }
}

impl Drop for PrivateNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[derive(Debug)]
pub struct Docker {
    dir: tempfile::TempDir,
    daemon: Option<ManagedChild>,
    docker: PathBuf,
    /// Where dockerd runs when it has a bridge (dropped after dockerd).
    netns: Option<PrivateNetns>,
}

impl Docker {
    /// Starts dockerd on `containerd` and loads the busybox image.
    pub fn start(containerd: &Containerd) -> Docker {
        Self::start_with(containerd, DockerSetup::default())
    }

    /// As [`Docker::start`], set up as `setup` says.
    pub fn start_with(containerd: &Containerd, setup: DockerSetup) -> Docker {
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
        // Test paths are plain (no quotes or backslashes to escape).
        let config = match &setup.cdi_spec_dir {
            Some(cdi) => format!(
                r#"{{"features": {{"cdi": true}}, "cdi-spec-dirs": ["{}"]}}"#,
                cdi.display()
            ),
            None => "{}".into(),
        };
        fs::write(root.join("daemon.json"), config).unwrap();
        let mut cmd = Command::new(&dockerd);
        cmd.arg("--config-file")
            .arg(root.join("daemon.json"))
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
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
            ])
            .env("PATH", path);
        let netns = match &setup.bridge_ip {
            Some(bip) => {
                let name = format!(
                    "fd-dock-{}",
                    root.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .trim_start_matches("fd-dock-")
                );
                let netns = PrivateNetns::new(&name);
                netns.enter_on_exec(&mut cmd);
                cmd.arg("--bip").arg(bip);
                Some(netns)
            }
            None => {
                cmd.arg("--bridge=none");
                None
            }
        };
        let daemon =
            ManagedChild::spawn("dockerd", &mut cmd, Some(&root.join("dockerd.log"))).unwrap();
        let mut docker = Docker {
            dir,
            daemon: Some(daemon),
            docker: prefix.join("bin/docker"),
            netns,
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

    /// `docker run -d --name NAME --pull never --runtime firedoor FLAGS
    /// busybox COMMAND`, which must succeed: the container's id (with
    /// docker's newline).
    pub fn run_detached(&self, name: &str, flags: &[&str], command: &[&str]) -> String {
        self.docker_ok(&run_args(
            &[&["-d", "--name", name], flags].concat(),
            command,
        ))
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

    /// The network namespace dockerd runs in, when it has a bridge.
    pub fn netns(&self) -> Option<&PrivateNetns> {
        self.netns.as_ref()
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
        // docker0 and anything else dockerd made go with its namespace.
        drop(self.netns.take());
    }
}
