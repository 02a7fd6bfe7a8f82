//! `containerd-shim-firedoor-v2`: the binary containerd runs for runtime
//! `io.containerd.firedoor.v2`.

fn main() -> std::process::ExitCode {
    // The same binary parks in a network namespace for OCI hooks.
    if std::env::args().nth(1).as_deref() == Some(firedoor_shim::hooks::ANCHOR_ARG) {
        firedoor_shim::hooks::anchor_main();
    }
    firedoor_shim::shimv2::run()
}
