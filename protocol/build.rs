//! Compiles `proto/agent.proto` into ttrpc + protobuf code in OUT_DIR.

use std::{fs, path::Path};

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=proto/agent.proto");

    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .run()
        .expect("ttrpc codegen of proto/agent.proto");

    // The host's client again, async (feature `async-client`): ttrpc's sync
    // client wakes every 10 ms while connected, the async one only for I/O.
    let async_dir = Path::new(&out_dir).join("async");
    fs::create_dir_all(&async_dir).expect("create OUT_DIR/async");
    ttrpc_codegen::Codegen::new()
        .out_dir(&async_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .customize(ttrpc_codegen::Customize {
            async_client: true,
            ..Default::default()
        })
        .run()
        .expect("async ttrpc codegen of proto/agent.proto");

    // The generated files open with inner attributes and docs (`#![..]`,
    // `//!`), which `include!` rejects; src/lib.rs sets the allows instead.
    for path in [
        Path::new(&out_dir).join("agent.rs"),
        Path::new(&out_dir).join("agent_ttrpc.rs"),
        async_dir.join("agent_ttrpc.rs"),
    ] {
        let code = fs::read_to_string(&path).expect("read generated code");
        let kept: String = code
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("#!") && !line.starts_with("//!")
            })
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(&path, kept).expect("write generated code");
    }
}
