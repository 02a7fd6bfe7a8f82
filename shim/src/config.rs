//! Firedoor's configuration: `/etc/firedoor/config.toml`, or the file named
//! by `$FIREDOOR_CONFIG`, or `<prefix>/share/firedoor/config.toml` next to an
//! installed shim. Every key is optional; missing keys take the defaults
//! documented on [`Config`].

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use firedoor_hypervisor::BackendKind;
use serde::Deserialize;

/// The whole file. Example (all keys, with their defaults):
///
/// ```toml
/// backend = "auto"        # "auto" (builtin on hardware KVM, else qemu), "qemu", "builtin"
/// kernel = ""             # guest vmlinux; "" = searched (share/firedoor, target/guest)
/// initrd = ""             # guest initramfs; "" = searched
/// vcpus = 1               # vCPUs per sandbox VM
/// memory_mib = 256        # guest memory per sandbox VM, before container limits
/// boot_timeout_secs = 30  # launch to agent answer
/// log_level = "info"      # shim log level: error, warn, info, debug, trace
/// kernel_params = []      # extra guest kernel parameters, e.g. ["firedoor.log=debug"]
/// qemu = ""               # helper binaries; "" = searched beside the shim, on PATH, ~/.cargo/bin
/// vhost_device_vsock = ""
/// virtiofsd = ""
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub backend: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot_timeout_secs: f64,
    pub log_level: String,
    pub kernel_params: Vec<String>,
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
    pub virtiofsd: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: "auto".into(),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_secs: 30.0,
            log_level: "info".into(),
            kernel_params: Vec::new(),
            qemu: PathBuf::new(),
            vhost_device_vsock: PathBuf::new(),
            virtiofsd: PathBuf::new(),
        }
    }
}

pub const DEFAULT_PATH: &str = "/etc/firedoor/config.toml";

impl Config {
    /// Loads the first config file that exists; defaults when none does.
    /// A file that exists but does not parse is an error naming the file.
    pub fn load() -> anyhow::Result<Config> {
        match Self::path() {
            Some(path) => Self::from_file(&path),
            None => Ok(Config::default()),
        }
    }

    /// Which file [`Config::load`] reads, if any.
    pub fn path() -> Option<PathBuf> {
        if let Some(path) = env::var_os("FIREDOOR_CONFIG") {
            return Some(PathBuf::from(path));
        }
        let installed = env::current_exe().ok().and_then(|exe| {
            exe.parent()?
                .parent()
                .map(|p| p.join("share/firedoor/config.toml"))
        });
        [Some(PathBuf::from(DEFAULT_PATH)), installed]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.backend_kind()?;
        anyhow::ensure!(
            (1..=64).contains(&self.vcpus),
            "vcpus = {}: use 1 to 64",
            self.vcpus
        );
        anyhow::ensure!(
            self.memory_mib >= 64,
            "memory_mib = {}: the guest needs at least 64",
            self.memory_mib
        );
        anyhow::ensure!(
            self.boot_timeout_secs > 0.0 && self.boot_timeout_secs <= 3600.0,
            "boot_timeout_secs = {}: use a positive number of seconds up to 3600",
            self.boot_timeout_secs
        );
        anyhow::ensure!(
            self.log_level.parse::<log::LevelFilter>().is_ok(),
            "log_level = {:?}: use error, warn, info, debug or trace",
            self.log_level
        );
        Ok(())
    }

    /// The backend named in the file; `None` for "auto".
    pub fn backend_kind(&self) -> anyhow::Result<Option<BackendKind>> {
        match self.backend.as_str() {
            "auto" | "" => Ok(None),
            other => other
                .parse()
                .map(Some)
                .map_err(|e| anyhow::anyhow!("backend = {other:?}: {e} (or auto)")),
        }
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.boot_timeout_secs)
    }

    /// An explicit path from the file, `None` when left empty.
    pub fn explicit(path: &Path) -> Option<&Path> {
        (!path.as_os_str().is_empty()).then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, text).unwrap();
        Config::from_file(&path)
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.contains("```toml"))
            .skip(1)
            .take_while(|l| !l.contains("```"))
            .map(|l| l.trim_start().trim_start_matches("///").trim_start())
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&example).unwrap(), Config::default(), "{example}");
    }

    #[test]
    fn values_are_read() {
        let config = parse("backend = \"qemu\"\nvcpus = 2\nmemory_mib = 512\nkernel_params = [\"firedoor.log=debug\"]\n").unwrap();
        assert_eq!(config.backend_kind().unwrap(), Some(BackendKind::Qemu));
        assert_eq!((config.vcpus, config.memory_mib), (2, 512));
        assert_eq!(config.kernel_params, ["firedoor.log=debug"]);
    }

    #[test]
    fn mistakes_are_explained() {
        let err = format!("{:#}", parse("backend = \"firecracker\"").unwrap_err());
        assert!(err.contains("unknown backend"), "{err}");
        let err = format!("{:#}", parse("memroy_mib = 5").unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
        let err = format!("{:#}", parse("vcpus = 0").unwrap_err());
        assert!(err.contains("vcpus = 0"), "{err}");
    }
}
