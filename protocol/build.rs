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

    // The generated files open with inner attributes and docs (`#![..]`,
    // `//!`), which `include!` rejects; src/lib.rs sets the allows instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = Path::new(&out_dir).join(name);
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
