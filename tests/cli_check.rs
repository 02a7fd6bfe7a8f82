//! `firedoor check` as a user runs it.

use std::process::Command;

use firedoor_tests::{bin, guest_image};

#[test]
fn check_reports_host_and_finds_the_built_guest() {
    let (kernel, _) = guest_image();
    let out = Command::new(bin("firedoor")).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("KVM: "), "{stdout}");
    assert!(stdout.contains("backend qemu: usable"), "{stdout}");
    // The binary finds target/guest relative to itself (target/debug).
    assert!(
        stdout.contains(&format!("guest kernel: {}", kernel.display())),
        "{stdout}"
    );
}

#[test]
fn check_boot_boots_and_reports_the_agent() {
    let out = Command::new(bin("firedoor"))
        .args(["check", "--boot", "--backend", "qemu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agent 0.1.0 on guest kernel 6.12"),
        "{stdout}"
    );
    assert!(stdout.contains("boot check passed"), "{stdout}");
}

#[test]
fn check_boot_with_missing_kernel_fails_naming_it() {
    let out = Command::new(bin("firedoor"))
        .args(["check", "--boot", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("guest kernel not found"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/nonexistent/vmlinux"), "{stdout}");
}

#[test]
fn check_boot_timeout_fails_with_the_reason() {
    let out = Command::new(bin("firedoor"))
        .args([
            "check",
            "--boot",
            "--timeout",
            "5",
            "--kernel-param",
            "firedoor.port=3000",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer on vsock port 1024 within 5s"),
        "{stderr}"
    );
}
