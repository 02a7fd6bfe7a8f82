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
use log::LevelFilter;
use serde::{de, Deserialize, Deserializer};

/// The whole file. Example (all keys, with their defaults):
///
/// ```toml
/// backend = "auto"        # "auto" (builtin on hardware KVM, else qemu), "qemu", "builtin"
/// kernel = ""             # guest vmlinux; "" = searched (share/firedoor, target/guest)
/// initrd = ""             # guest initramfs; "" = searched
/// vcpus = 1               # vCPUs per sandbox VM
/// memory_mib = 256        # guest memory per sandbox VM, before container limits
/// hugepages = false       # guest memory from the host's 2 MiB huge pages (/proc/sys/vm/nr_hugepages)
/// free_page_reporting = true  # the guest gives the memory it frees back (virtio-balloon)
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
    #[serde(deserialize_with = "backend")]
    pub backend: BackendChoice,
    /// `None` (the file's `""`): searched.
    #[serde(deserialize_with = "optional_path")]
    pub kernel: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub initrd: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub hugepages: bool,
    pub free_page_reporting: bool,
    /// Written in seconds (`boot_timeout_secs = 30`, fractions allowed).
    #[serde(rename = "boot_timeout_secs", deserialize_with = "seconds")]
    pub boot_timeout: Duration,
    #[serde(deserialize_with = "level")]
    pub log_level: LevelFilter,
    pub kernel_params: Vec<String>,
    /// Helper binaries; `None`: searched.
    #[serde(deserialize_with = "optional_path")]
    pub qemu: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub vhost_device_vsock: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub virtiofsd: Option<PathBuf>,
}

/// The `backend` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The built-in VMM on hardware KVM (when installed), else QEMU.
    #[default]
    Auto,
    Named(BackendKind),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            kernel: None,
            initrd: None,
            vcpus: 1,
            memory_mib: 256,
            hugepages: false,
            free_page_reporting: true,
            boot_timeout: Duration::from_secs(30),
            log_level: LevelFilter::Info,
            kernel_params: Vec::new(),
            qemu: None,
            vhost_device_vsock: None,
            virtiofsd: None,
        }
    }
}

/// `"auto"` (or `""`), `"qemu"`, `"builtin"`.
fn backend<'de, D: Deserializer<'de>>(d: D) -> Result<BackendChoice, D::Error> {
    match String::deserialize(d)?.as_str() {
        "auto" | "" => Ok(BackendChoice::Auto),
        other => other
            .parse()
            .map(BackendChoice::Named)
            .map_err(|e| de::Error::custom(format!("{e} (or auto)"))),
    }
}

/// A path; `""` means unset.
fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(d)?;
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// A positive number of seconds up to an hour.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(de::Error::custom(format!(
            "boot_timeout_secs = {secs}: use a positive number of seconds up to 3600"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// error, warn, info, debug or trace (any case).
fn level<'de, D: Deserializer<'de>>(d: D) -> Result<LevelFilter, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "log_level = {text:?}: use error, warn, info, debug or trace"
        ))
    })
}

pub const DEFAULT_PATH: &str = "/etc/firedoor/config.toml";

/// containerd's runtime options for runtimes other than runc: CRI's
/// `[...runtimes.firedoor.options]` `ConfigPath` / `ConfigBody`, and
/// `ctr run --runtime-config-path`.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Pod (or first container) annotations that size the sandbox VM.
pub const VCPUS_ANNOTATION: &str = "io.firedoor.vm.vcpus";
pub const MEMORY_ANNOTATION: &str = "io.firedoor.vm.memory_mib";

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
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).with_context(|| format!("parsing {origin}"))?;
        config.validate().with_context(|| format!("in {origin}"))?;
        Ok(config)
    }

    /// The configuration containerd's runtime options name (a file, or a
    /// TOML body), `None` when they name neither. Options of another type
    /// are an error: Firedoor would silently ignore them otherwise.
    pub fn from_runtime_options(type_url: &str, value: &[u8]) -> anyhow::Result<Option<Config>> {
        anyhow::ensure!(
            type_url
                .trim_start_matches('/')
                .ends_with(RUNTIME_OPTIONS_TYPE),
            "runtime options of type {type_url:?}: Firedoor takes {RUNTIME_OPTIONS_TYPE} \
             (ConfigPath or ConfigBody in containerd's runtime options)"
        );
        let options = RuntimeOptions::decode(value)
            .with_context(|| format!("decoding {RUNTIME_OPTIONS_TYPE}"))?;
        if !options.config_path.is_empty() {
            return Self::from_file(Path::new(&options.config_path)).map(Some);
        }
        if !options.config_body.is_empty() {
            return Self::from_toml(&options.config_body, "the runtime options' ConfigBody")
                .map(Some);
        }
        Ok(None)
    }

    /// This configuration with the VM size taken from `annotations`.
    pub fn with_annotations(
        mut self,
        annotations: &std::collections::HashMap<String, String>,
    ) -> anyhow::Result<Config> {
        let number = |key: &str| -> anyhow::Result<Option<u32>> {
            annotations
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse()
                        .with_context(|| format!("annotation {key}={v:?}: not a number"))
                })
                .transpose()
        };
        if let Some(vcpus) = number(VCPUS_ANNOTATION)? {
            self.vcpus = vcpus;
        }
        if let Some(memory_mib) = number(MEMORY_ANNOTATION)? {
            self.memory_mib = memory_mib;
        }
        self.validate().context("in the pod's annotations")?;
        Ok(self)
    }

    fn validate(&self) -> anyhow::Result<()> {
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
        Ok(())
    }

    /// The backend named in the file; `None` for "auto".
    pub fn backend_kind(&self) -> Option<BackendKind> {
        match self.backend {
            BackendChoice::Auto => None,
            BackendChoice::Named(kind) => Some(kind),
        }
    }
}

/// containerd's `runtimeoptions.v1.Options` (pkg/runtimeoptions/v1), read
/// by hand: three string fields are not worth generated code.
#[derive(Debug, Default, PartialEq)]
struct RuntimeOptions {
    config_path: String,
    config_body: String,
}

impl RuntimeOptions {
    fn decode(bytes: &[u8]) -> protobuf::Result<RuntimeOptions> {
        let mut input = protobuf::CodedInputStream::from_bytes(bytes);
        let mut options = RuntimeOptions::default();
        while let Some(tag) = input.read_raw_tag_or_eof()? {
            match (tag >> 3, tag & 7) {
                // 1: type_url, informational.
                (2, 2) => options.config_path = input.read_string()?,
                (3, 2) => options.config_body = input.read_string()?,
                (_, wire_type) => {
                    let wire_type = protobuf::rt::WireType::new(wire_type).ok_or_else(|| {
                        protobuf::Error::from(std::io::Error::other(format!(
                            "bad wire type {wire_type}"
                        )))
                    })?;
                    input.skip_field(wire_type)?
                }
            }
        }
        Ok(options)
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
        assert_eq!(config.backend_kind(), Some(BackendKind::Qemu));
        assert_eq!((config.vcpus, config.memory_mib), (2, 512));
        assert_eq!(config.kernel_params, ["firedoor.log=debug"]);
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Configuration").unwrap()..];
        let example: String = section
            .lines()
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&example).unwrap();
        assert_eq!(config.backend_kind(), Some(BackendKind::Qemu));
        assert_eq!((config.vcpus, config.memory_mib), (2, 512));
        assert_eq!(config.boot_timeout, Duration::from_secs(60));
        assert_eq!(config.log_level, LevelFilter::Debug);
        assert_eq!(config.kernel_params, ["firedoor.log=debug"]);
        assert_eq!(
            config.virtiofsd.as_deref(),
            Some(Path::new("/usr/local/bin/virtiofsd"))
        );
        assert_eq!((config.kernel, config.qemu), (None, None));
    }

    #[test]
    fn typed_values_are_checked_when_read() {
        let config =
            parse("backend = \"\"\nkernel = \"\"\nboot_timeout_secs = 0.5\nlog_level = \"WARN\"")
                .unwrap();
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(config.kernel, None);
        assert_eq!(config.boot_timeout, Duration::from_millis(500));
        assert_eq!(config.log_level, LevelFilter::Warn);
        let err = format!("{:#}", parse("log_level = \"loud\"").unwrap_err());
        assert!(
            err.contains("use error, warn, info, debug or trace"),
            "{err}"
        );
        let err = format!("{:#}", parse("boot_timeout_secs = 0").unwrap_err());
        assert!(err.contains("up to 3600"), "{err}");
    }

    /// Field `n` holding `text`, as protobuf encodes a string.
    fn string_field(n: u8, text: &str) -> Vec<u8> {
        let mut b = vec![
            n << 3 | 2,
            u8::try_from(text.len()).expect("a short string"),
        ];
        b.extend_from_slice(text.as_bytes());
        b
    }

    #[test]
    fn runtime_options_name_a_file_or_carry_a_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fast.toml");
        fs::write(&path, "vcpus = 2\n").unwrap();
        let mut value = string_field(1, "ignored");
        value.extend(string_field(2, path.to_str().unwrap()));
        let config = Config::from_runtime_options("runtimeoptions.v1.Options", &value)
            .unwrap()
            .unwrap();
        assert_eq!(config.vcpus, 2);

        let value = string_field(3, "memory_mib = 300");
        let config = Config::from_runtime_options("/runtimeoptions.v1.Options", &value)
            .unwrap()
            .unwrap();
        assert_eq!(config.memory_mib, 300);

        let none = Config::from_runtime_options(RUNTIME_OPTIONS_TYPE, &[]).unwrap();
        assert_eq!(none, None);
        let err = Config::from_runtime_options(RUNTIME_OPTIONS_TYPE, &string_field(3, "vcpus = 0"));
        assert!(format!("{:#}", err.unwrap_err()).contains("ConfigBody"));
        let err = Config::from_runtime_options("containerd.runc.v1.Options", &[]).unwrap_err();
        assert!(err.to_string().contains("Firedoor takes"), "{err}");
        let err = Config::from_runtime_options(RUNTIME_OPTIONS_TYPE, &[0x12, 0x40]).unwrap_err();
        assert!(format!("{err:#}").contains("decoding"), "{err:#}");
    }

    #[test]
    fn annotations_size_the_vm() {
        let annotations = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let config = Config::default()
            .with_annotations(&annotations(&[
                (VCPUS_ANNOTATION, "2"),
                (MEMORY_ANNOTATION, "1024"),
            ]))
            .unwrap();
        assert_eq!((config.vcpus, config.memory_mib), (2, 1024));
        let err = Config::default()
            .with_annotations(&annotations(&[(VCPUS_ANNOTATION, "many")]))
            .unwrap_err();
        assert!(err.to_string().contains("io.firedoor.vm.vcpus"), "{err}");
        let err = Config::default()
            .with_annotations(&annotations(&[(MEMORY_ANNOTATION, "8")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("at least 64"), "{err:#}");
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
