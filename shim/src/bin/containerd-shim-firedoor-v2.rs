//! `containerd-shim-firedoor-v2`: the binary containerd runs for runtime
//! `io.containerd.firedoor.v2`.

fn main() {
    firedoor_shim::shimv2::run();
}
