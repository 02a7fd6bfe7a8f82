//! Containers inside the real guest with the qemu backend (TCG here): the
//! scenario of `firedoor_tests::guest` (which tests/nested_kvm.rs runs with
//! the built-in VMM), and device rules.

use std::io::Read;

use firedoor_hypervisor::QemuBackend;
use firedoor_shim::sandbox::Sandbox;
use firedoor_tests::{
    assert_nothing_left,
    guest::{
        containers_run_from_the_virtiofs_share, make_rootfs, spec_with_devices, Guest,
        CONTAINERD_DEVICE_RULES, TIMEOUT,
    },
    guest_spec,
};

#[test]
fn containers_run_in_the_guest_from_the_virtiofs_share() {
    containers_run_from_the_virtiofs_share(&QemuBackend::detect().unwrap());
}

#[test]
fn device_rules_hold_in_the_guest() {
    let run_base = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    make_rootfs(&share.path().join("rootfs"));
    let mut vm = guest_spec(run_base.path());
    vm.shared_dir = Some(share.path().to_owned());
    let sandbox = Sandbox::boot(&QemuBackend::detect().unwrap(), &vm).unwrap();
    let guest = Guest::new(sandbox, TIMEOUT);

    // With containerd's rules and CAP_MKNOD the container may make device
    // nodes but open only the allowed devices. Without the filter the
    // block device would fail differently (no SCSI disk: "No such device or
    // address") and /dev/fuse (built into the guest kernel) would open.
    let script = "exec 2>&1
        echo x > /dev/null && echo null: ok
        mknod /dev/sda b 8 0 && true < /dev/sda && echo sda: opened
        mknod /dev/fuse c 10 229 && true > /dev/fuse && echo fuse: opened
        true";
    guest.create(
        "devs",
        spec_with_devices(&["sh", "-c", script], CONTAINERD_DEVICE_RULES),
        true,
    );
    let mut stdout = guest.stdout("devs");
    guest.start("devs");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(guest.wait("devs"), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "null: ok");
    for (line, node) in lines[1..].iter().zip(["/dev/sda", "/dev/fuse"]) {
        assert!(
            line.contains(node)
                && !line.contains("mknod")
                && line.ends_with("Operation not permitted"),
            "{node}: {line}"
        );
    }
    guest.remove("devs");

    guest.shut_down();
    assert_nothing_left(run_base.path());
}
