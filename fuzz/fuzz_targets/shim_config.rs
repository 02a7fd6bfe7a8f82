//! What users control: the shim's config file (TOML) and containerd's
//! runtime options (protobuf, a path or a TOML body).
#![no_main]

use firedoor_shim::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (kind, rest) = data.split_first().unwrap_or((&0, &[]));
    if kind & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = Config::from_toml(text, "fuzz input");
        }
    } else {
        // No absolute ConfigPath: it would read files of the fuzzing host
        // (/dev/zero never ends); relative ones name nothing there.
        if !rest.contains(&b'/') {
            let _ = Config::from_runtime_options("runtimeoptions.v1.Options", rest);
        }
    }
});
