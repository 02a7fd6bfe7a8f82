//! Platform: what the pod's containers run on (the guest: Linux on the
//! host's architecture), for containerd to pick images and build specs.

use containerd_shim_protos::types::platform::Platform;

use super::{api, SandboxService};
use crate::error::Result;

pub(super) fn platform(
    service: &SandboxService,
    req: api::PlatformRequest,
) -> Result<api::PlatformResponse> {
    service.check_id(&req.sandbox_id)?;
    Ok(api::PlatformResponse {
        platform: Some(Platform {
            os: "linux".into(),
            architecture: oci_architecture(std::env::consts::ARCH).into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

/// Rust's architecture names as OCI image platforms spell them.
pub(super) fn oci_architecture(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
