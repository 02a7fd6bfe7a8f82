//! What a pod's author controls and the shim parses on the host: the
//! bundle's OCI spec (config.json), its VM-sizing annotations, and the
//! rewrite of the spec for the guest (rootfs and bind-mount sources,
//! namespaces, devices, hooks).
#![no_main]

use firedoor_shim::{config::Config, spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = spec::parse(text) else {
        return;
    };
    if let Some(annotations) = parsed.annotations() {
        let _ = Config::default().with_annotations(annotations);
    }
    let mounts = spec::host_bind_mounts(&parsed);
    let sources: Vec<(usize, String)> = mounts
        .iter()
        .map(|m| {
            (
                m.index,
                format!("/run/firedoor/shared/c1/mounts/{}", m.index),
            )
        })
        .collect();
    if let Ok(guest) = spec::for_guest(parsed, "/run/firedoor/shared/c1/rootfs", &sources) {
        let _ = serde_json::to_vec(&guest);
    }
});
