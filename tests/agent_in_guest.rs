//! Containers inside the real guest with the qemu backend (TCG here): the
//! scenario of `firedoor_tests::guest_containers`, which
//! tests/nested_kvm.rs also runs with the built-in backend.

use firedoor_hypervisor::QemuBackend;
use firedoor_tests::guest_containers::containers_run_from_the_virtiofs_share;

#[test]
fn containers_run_in_the_guest_from_the_virtiofs_share() {
    containers_run_from_the_virtiofs_share(&QemuBackend::detect().unwrap());
}
