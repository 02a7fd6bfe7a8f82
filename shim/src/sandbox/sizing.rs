//! The first steps of booting a sandbox, each taken once: which
//! configuration applies, and the VM spec it and the first container ask
//! for.

use std::{collections::HashMap, path::Path};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use firedoor_hypervisor::VmSpec;
use oci_spec::runtime::Spec;

use crate::{
    assets,
    config::Config,
    error::{Result, ShimError},
    mount,
};

/// Guest memory beyond the container's own limit.
const MEMORY_OVERHEAD_MIB: u32 = 128;

/// The configuration for a new sandbox: containerd's runtime options when
/// they name one, else the shim's file (`default`), then sized by the
/// pod's (or the first container's) annotations.
pub(super) fn resolve_config(
    default: &std::result::Result<Config, String>,
    options: Option<&Any>,
    annotations: &HashMap<String, String>,
) -> Result<Config> {
    let invalid = |e: anyhow::Error| ShimError::InvalidArgument(format!("{e:#}"));
    let from_options = options
        .map(|any| Config::from_runtime_options(&any.type_url, &any.value))
        .transpose()
        .map_err(invalid)?
        .flatten();
    let config = match from_options {
        Some(config) => config,
        None => default.clone().map_err(ShimError::FailedPrecondition)?,
    };
    config.with_annotations(annotations).map_err(invalid)
}

/// What the first container (or, through the Sandbox API, the pod) asks of
/// the VM.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FirstContainer {
    /// Its memory limit, rounded up to MiB.
    pub memory_limit_mib: Option<u32>,
    pub hostname: String,
    /// The pod's network namespace on the host (CNI's), whose interfaces
    /// the VM's NICs join.
    pub netns: Option<std::path::PathBuf>,
    /// No network namespace of its own (hostNetwork): the VM gets no NIC.
    pub host_network: bool,
}

impl FirstContainer {
    pub fn of(first: &Spec) -> Self {
        let memory_limit_mib = first
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .and_then(|limit| u64::try_from(limit).ok())
            .filter(|limit| *limit > 0)
            .map(|limit| u32::try_from(limit.div_ceil(1 << 20)).unwrap_or(u32::MAX));
        FirstContainer {
            memory_limit_mib,
            hostname: first.hostname().clone().unwrap_or_default(),
            netns: crate::network::netns_path(first),
            host_network: crate::network::asks_for_host_network(first),
        }
    }
}

/// The VM for `config` and the first container, with its run directory
/// and shared directory under `state_dir`.
pub(super) fn vm_spec(
    config: &Config,
    state_dir: &Path,
    first: &FirstContainer,
) -> anyhow::Result<VmSpec> {
    let kernel = assets::find_kernel(config.kernel.as_deref()).path();
    let initrd = assets::find_initrd(config.initrd.as_deref()).path();
    let mut spec = VmSpec::new(kernel, initrd);
    spec.vcpus = config.vcpus;
    spec.memory_mib = memory_mib(config.memory_mib, first.memory_limit_mib);
    spec.huge_pages = config.hugepages;
    if spec.huge_pages {
        spec.memory_mib = spec.memory_mib.next_multiple_of(2);
    }
    spec.free_page_reporting = config.free_page_reporting;
    spec.boot_timeout = config.boot_timeout;
    spec.kernel_params = config.kernel_params.clone();
    spec.run_base = state_dir.to_owned();
    // Short: the state dir of a CRI sandbox is already ~90 bytes long.
    spec.run_dir_name = Some("vm".into());
    let shared_dir = state_dir.join("shared");
    mount::make_shared_mount_point(&shared_dir)?;
    spec.shared_dir = Some(shared_dir);
    Ok(spec)
}

/// The configured memory plus the container's limit and our overhead.
fn memory_mib(configured: u32, container_limit: Option<u32>) -> u32 {
    configured.saturating_add(
        container_limit.map_or(0, |limit| limit.saturating_add(MEMORY_OVERHEAD_MIB)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_first_container_sizes_the_vm() {
        let first = FirstContainer::of(&spec(
            r#"{"ociVersion": "1.0.2", "hostname": "web",
                "linux": {"resources": {"memory": {"limit": 104857601}}}}"#,
        ));
        assert_eq!(first.memory_limit_mib, Some(101));
        assert_eq!(first.hostname, "web");
        assert_eq!(memory_mib(256, first.memory_limit_mib), 256 + 101 + 128);
        assert_eq!((first.netns, first.host_network), (None, true));
        let unlimited = FirstContainer::of(&spec(r#"{"ociVersion": "1.0.2"}"#));
        assert_eq!(unlimited.memory_limit_mib, None);
        assert_eq!(memory_mib(256, None), 256);
        let on_cni = FirstContainer::of(&spec(
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces":
                [{"type": "network", "path": "/var/run/netns/cni-1"}]}}"#,
        ));
        assert_eq!(on_cni.netns, Some("/var/run/netns/cni-1".into()));
        assert!(!on_cni.host_network);
    }

    #[test]
    fn annotations_size_the_config_and_options_must_be_ours() {
        let first =
            spec(r#"{"ociVersion": "1.0.2", "annotations": {"io.firedoor.vm.vcpus": "2"}}"#);
        let annotations = first.annotations().clone().unwrap();
        let config = resolve_config(&Ok(Config::default()), None, &annotations).unwrap();
        assert_eq!(config.vcpus, 2);
        let err = resolve_config(&Err("bad file".into()), None, &annotations).unwrap_err();
        assert!(matches!(err, ShimError::FailedPrecondition(_)), "{err}");
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        let err = resolve_config(&Ok(Config::default()), Some(&other), &annotations).unwrap_err();
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
    }
}
