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

use crate::{bin_dir, image, processes_mentioning, Readiness};

pub const RUNTIME: &str = "io.containerd.firedoor.v2";

/// containerd 2.x's CRI handler for Firedoor through the Sandbox API
/// (`sandboxer = "shim"`).
pub const SANDBOX_API_HANDLER: &str = "firedoor-sandbox";

/// Which containerd build a test runs against: Debian 12's 1.6 (the
/// system's, in `/usr/bin`), or 1.7 / 2.1 unpacked by
/// `scripts/containerd-builds` into `target/containerd/<version>/usr/bin`.
/// Chosen by `FIREDOOR_CONTAINERD` (`1.6`, the default, `1.7` or `2.1`), so
/// the same test binary runs against each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// `major.minor`.
    pub version: String,
    /// Directory holding `containerd`, `ctr` and `containerd-shim-runc-v2`.
    pub bin: PathBuf,
}

impl Build {
    pub const ENV: &'static str = "FIREDOOR_CONTAINERD";

    /// The build `FIREDOOR_CONTAINERD` names (1.6 when unset).
    pub fn from_env() -> Build {
        Build::named(&std::env::var(Self::ENV).unwrap_or_else(|_| "1.6".into()))
    }

    pub fn named(version: &str) -> Build {
        let bin = match version {
            "1.6" => PathBuf::from("/usr/bin"),
            "1.7" | "2.1" => crate::workspace_root()
                .join("target/containerd")
                .join(version)
                .join("usr/bin"),
            other => panic!("{}={other:?}: use 1.6, 1.7 or 2.1", Self::ENV),
        };
        assert!(
            bin.join("containerd").is_file(),
            "containerd {version} is missing from {}: run scripts/setup (1.6: apt-get install \
             containerd; 1.7, 2.1: scripts/containerd-builds)",
            bin.display()
        );
        Build {
            version: version.into(),
            bin,
        }
    }

    /// containerd 2.x: config version 3, the CRI plugin split in two.
    pub fn is_v2(&self) -> bool {
        self.version.starts_with("2.")
    }

    pub fn containerd(&self) -> PathBuf {
        self.bin.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.bin.join("ctr")
    }
}

#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Option<ManagedChild>,
    build: Build,
    /// `net.ipv4.ip_forward` before the test (CRI: CNI may change it).
    ip_forward: Option<String>,
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

    /// containerd with its CRI plugin: runtime handlers `firedoor` and
    /// `runc`, a CNI network of the test's own for pods not on the host
    /// network (see [`ptp_conflist`]), the pause image [`image::PAUSE_IMAGE`].
    /// The busybox and pause images are in namespace `k8s.io`.
    pub fn start_cri() -> Containerd {
        Self::launch("", true)
    }

    /// As [`Containerd::start_cri`], with `firedoor_config` as the shims'
    /// Firedoor config file.
    pub fn start_cri_with_config(firedoor_config: &str) -> Containerd {
        Self::launch(firedoor_config, true)
    }

    /// As [`Containerd::start_cri`], on containerd `build` (2.x configs
    /// also have the [`SANDBOX_API_HANDLER`] runtime handler).
    pub fn start_cri_build(build: Build) -> Containerd {
        Self::launch_build(build, "", true)
    }

    /// containerd `build` (whatever `FIREDOOR_CONTAINERD` says), without
    /// its CRI plugin.
    pub fn start_build(build: Build) -> Containerd {
        Self::launch_build(build, "", false)
    }

    fn launch(firedoor_config: &str, cri: bool) -> Containerd {
        Self::launch_build(Build::from_env(), firedoor_config, cri)
    }

    fn launch_build(build: Build, firedoor_config: &str, cri: bool) -> Containerd {
        let shim = bin_dir().join("containerd-shim-firedoor-v2");
        assert!(
            shim.is_file(),
            "{} is missing: run cargo build --workspace (--release for the benches)",
            shim.display()
        );
        // Short path: socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fd-ctrd-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        fs::write(root.join("config.toml"), config_toml(&build, root, cri)).unwrap();
        fs::write(root.join("firedoor.toml"), firedoor_config).unwrap();
        if cri {
            install_cni(root);
        }
        let mut containerd = Containerd {
            dir,
            daemon: None,
            build,
            ip_forward: cri.then(|| fs::read_to_string(IP_FORWARD).unwrap_or_default()),
        };
        containerd.daemon = Some(containerd.spawn_daemon());
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

    /// containerd on this test's config, with our shim and then this
    /// build's own shims (runc's) first on its PATH.
    fn spawn_daemon(&self) -> ManagedChild {
        let root = self.dir.path();
        let path = format!(
            "{}:{}:{}",
            bin_dir().display(),
            self.build.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        ManagedChild::spawn(
            "containerd",
            Command::new(self.build.containerd())
                .arg("--config")
                .arg(root.join("config.toml"))
                .env("PATH", path)
                .env("FIREDOOR_CONFIG", root.join("firedoor.toml")),
            Some(&root.join("containerd.log")),
        )
        .unwrap()
    }

    /// Stops containerd (SIGTERM, as a service manager does) and starts it
    /// again on the same root and state; running shims stay and containerd
    /// must reconnect to them.
    pub fn restart(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.terminate(Duration::from_secs(10)).unwrap();
        }
        let log = self.dir.path().join("containerd.log");
        let _ = fs::rename(&log, self.dir.path().join("containerd.log.0"));
        self.daemon = Some(self.spawn_daemon());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let readiness = Readiness {
            name: "containerd",
            timeout: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        };
        readiness.wait(
            self,
            |c| c.ctr(&["version"]).status.success(),
            |c| c.daemon.as_mut().unwrap(),
            |c| c.log_tail(30),
        );
    }

    /// containerd's own PID.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, ManagedChild::pid)
    }

    /// The containerd build this daemon is.
    pub fn build(&self) -> &Build {
        &self.build
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// Where this containerd's CRI plugin reads CNI network configs.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/conf")
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
        let mut cmd = Command::new(self.build.ctr());
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

    /// The PID of sandbox `id`'s VM process whose command line mentions
    /// `name` (`qemu-system`, `virtiofsd`, ...), from the shim's `vm.pids`.
    pub fn sandbox_process(id: &str, name: &str) -> i32 {
        let pids = std::fs::read_to_string(Self::state_dir(id).join("vm.pids")).unwrap();
        pids.lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.contains(name))
            })
            .unwrap_or_else(|| panic!("no {name} among the VM's processes {pids:?}"))
    }

    /// `ctr run -d` on Firedoor of `command` as container `id`, with `flags`
    /// before the image; returns once the task runs.
    pub fn run_detached(&self, id: &str, flags: &[&str], command: &[&str]) {
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[image::BUSYBOX_IMAGE, id]);
        args.extend_from_slice(command);
        self.ctr_ok(&args);
        self.wait_status(id, "RUNNING");
    }

    /// `ctr run` (attached, no `--rm`, stdin and stdout closed) on Firedoor
    /// of `command` as container `id`; returns the running `ctr` once the
    /// task runs, for a test that ends the task under it.
    pub fn run_attached(&self, id: &str, command: &[&str]) -> std::process::Child {
        let mut args = vec!["run", "--runtime", RUNTIME, image::BUSYBOX_IMAGE, id];
        args.extend_from_slice(command);
        let run = self
            .ctr_command(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning ctr run");
        self.wait_status(id, "RUNNING");
        run
    }

    /// Sends `signal` to task `id`, waits until it stopped, then deletes the
    /// task and its container.
    pub fn kill_and_remove(&self, id: &str, signal: &str) {
        self.ctr_ok(&["task", "kill", "-s", signal, id]);
        self.wait_status(id, "STOPPED");
        self.ctr_ok(&["task", "delete", id]);
        self.ctr_ok(&["containers", "rm", id]);
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
        self.shims().into_iter().map(|shim| shim.pid).collect()
    }

    /// The shims serving this containerd, with the sandbox each serves.
    fn shims(&self) -> Vec<Shim> {
        processes_mentioning(&self.address())
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("containerd-shim-firedoor-v2"))
            .map(|(pid, cmdline)| {
                let args: Vec<&str> = cmdline.split_whitespace().collect();
                let flag = |name: &str| {
                    args.windows(2)
                        .find(|w| w[0] == name)
                        .map(|w| w[1].to_string())
                };
                Shim {
                    pid,
                    namespace: flag("-namespace"),
                    id: flag("-id"),
                }
            })
            .collect()
    }

    /// What containerd runs after a shim died: `shim delete` of sandbox
    /// `id` in `namespace`, from its bundle, which stops what the shim left
    /// and removes its state dir.
    fn shim_delete(&self, namespace: &str, id: &str) {
        let bundle = self
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id);
        let cwd = if bundle.is_dir() {
            bundle
        } else {
            self.dir.path().to_owned()
        };
        let address = self.address();
        let _ = Command::new(bin_dir().join("containerd-shim-firedoor-v2"))
            .args(["-namespace", namespace, "-id", id, "-address"])
            .arg(&address)
            .arg("-publish-binary")
            .arg(self.build.ctr())
            .arg("delete")
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", address.display()))
            .env("FIREDOOR_CONFIG", self.dir.path().join("firedoor.toml"))
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Debian's CNI plugins (`containernetworking-plugins`).
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The CNI network of a CRI test's pods that are not on the host network:
/// Debian's `ptp` plugin, a veth pair per pod between the host and the
/// pod's network namespace, an address from a private /24 of this test's
/// own (host-local IPAM with its state under the test's directory), no
/// masquerade: nothing leaves the host. CNI DEL removes the veth and its
/// route; the plugin turns on `net.ipv4.ip_forward`, which [`Containerd`]'s
/// drop puts back. Tests that need more write their own conflist into
/// [`Containerd::cni_conf_dir`] (containerd picks the first by name).
fn ptp_conflist(root: &Path) -> String {
    // A /24 of 10.200.0.0/13 chosen from the test directory's random name,
    // so that tests running side by side get different pod routes.
    let seed = root
        .to_string_lossy()
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let (second, third) = (200 + (seed >> 8) % 8, seed % 256);
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "firedoor-test",
  "plugins": [{{
    "type": "ptp",
    "ipMasq": false,
    "ipam": {{
      "type": "host-local",
      "subnet": "10.{second}.{third}.0/24",
      "dataDir": "{root}/cni/ipam"
    }}
  }}]
}}
"#,
        root = root.display()
    )
}

/// The test's own CNI directories: the plugins linked from Debian's, and
/// the test network.
fn install_cni(root: &Path) {
    let bin = root.join("cni/bin");
    let conf = root.join("cni/conf");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&conf).unwrap();
    let plugins = fs::read_dir(CNI_PLUGIN_DIR).unwrap_or_else(|e| {
        panic!("{CNI_PLUGIN_DIR}: {e}: apt-get install containernetworking-plugins (scripts/setup does)")
    });
    for plugin in plugins.flatten() {
        std::os::unix::fs::symlink(plugin.path(), bin.join(plugin.file_name())).unwrap();
    }
    fs::write(conf.join("90-firedoor-test.conflist"), ptp_conflist(root)).unwrap();
}

/// The host's `net.ipv4.ip_forward`, which CNI plugins turn on.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether this process may lower an `oom_score_adj` (CAP_SYS_RESOURCE in
/// its effective set). containerd's CRI gives every pause container
/// `oomScoreAdj: -998`, which runc writes from its `nsexec` stage; where
/// the host's root lacks CAP_SYS_RESOURCE (as this machine's does: its
/// bounding set has every capability but that one) the write fails with
/// EPERM, runc's init dies and containerd reports only "can't get final
/// child's PID from pipe: EOF". The test containerd then clamps each
/// score to its own (`restrict_oom_score_adj`, as rootless setups do), so
/// runc pods run beside Firedoor's; a host with the capability keeps
/// containerd's default.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// containerd's config: private root, state and sockets under `root`;
/// with `cri`, the CRI plugin with runtime handlers `runc` and `firedoor`,
/// the local pause image and a CNI directory of the test's own. containerd
/// 2.x reads config version 3, where the CRI plugin is split into
/// `io.containerd.cri.v1.runtime` and `io.containerd.cri.v1.images` (the
/// README's CRI snippet shows both).
fn config_toml(build: &Build, root: &Path, cri: bool) -> String {
    let root = root.display();
    let pause = image::PAUSE_IMAGE;
    let restrict_oom = format!("restrict_oom_score_adj = {}", !has_cap_sys_resource());
    let firedoor_runtime = format!(
        r#"runtime_type = "{RUNTIME}"
    pod_annotations = ["io.firedoor.vm.*"]"#
    );
    let (version, plugins) = match (build.is_v2(), cri) {
        (false, false) => (2, r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#.to_string()),
        (true, false) => (
            3,
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]"#
                .to_string(),
        ),
        (false, true) => (
            2,
            format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  {restrict_oom}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.firedoor]
    {firedoor_runtime}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni/bin"
    conf_dir = "{root}/cni/conf""#
            ),
        ),
        (true, true) => (
            3,
            format!(
                r#"[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  {restrict_oom}
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.firedoor]
  {firedoor_runtime}
# The same runtime through containerd's Sandbox API (no pause container).
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{SANDBOX_API_HANDLER}]
  {firedoor_runtime}
  sandboxer = "shim"
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{root}/cni/bin"]
  conf_dir = "{root}/cni/conf"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
# NRI listens on one socket for the whole host (/var/run/nri/nri.sock):
# two test containerds would fight over it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true"#
            ),
        ),
    };
    format!(
        r#"version = {version}
root = "{root}/root"
state = "{root}/state"
{plugins}
[grpc]
  address = "{root}/c.sock"
[ttrpc]
  address = "{root}/c.sock.ttrpc"
[debug]
  level = "debug"
"#
    )
}

/// A shim process and the sandbox it serves (from its command line).
#[derive(Debug)]
struct Shim {
    pid: u32,
    namespace: Option<String>,
    id: Option<String>,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd on purpose; ours must not outlive the
        // test, nor their state dirs in the host-wide /run/firedoor (a
        // failed test leaves both).
        let leftovers = self.shims();
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.terminate(Duration::from_secs(10));
        }
        for shim in &leftovers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(shim.pid.cast_signed()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Then clean up after them as containerd would; only the sandboxes
        // this containerd's shims served.
        let deadline = Instant::now() + Duration::from_secs(10);
        while leftovers
            .iter()
            .any(|shim| Path::new(&format!("/proc/{}", shim.pid)).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for shim in &leftovers {
            if let (Some(namespace), Some(id)) = (&shim.namespace, &shim.id) {
                self.shim_delete(namespace, id);
            }
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
        if let Some(before) = &self.ip_forward {
            if fs::read_to_string(IP_FORWARD).ok().as_ref() != Some(before) {
                let _ = fs::write(IP_FORWARD, before);
            }
        }
    }
}
