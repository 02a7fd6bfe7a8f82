//! The busybox OCI image the tests import, built by scripts/busybox-image
//! from Debian's busybox-static (no registry is reachable here).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::workspace_root;

/// The name the image is imported under.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:firedoor-test";

/// A pod sandbox ("pause") image: busybox whose command sleeps for ever.
pub const PAUSE_IMAGE: &str = "docker.io/library/firedoor-pause:test";

/// Builds the busybox image as an OCI layout tarball in `dir`; returns its
/// path.
pub fn busybox_image_tar(dir: &Path) -> PathBuf {
    build(&dir.join("busybox-oci.tar"), BUSYBOX_IMAGE, r#"["sh"]"#)
}

/// Builds [`PAUSE_IMAGE`] as an OCI layout tarball in `dir`.
pub fn pause_image_tar(dir: &Path) -> PathBuf {
    build(
        &dir.join("pause-oci.tar"),
        PAUSE_IMAGE,
        r#"["sleep","2147483647"]"#,
    )
}

fn build(image: &Path, name: &str, cmd: &str) -> PathBuf {
    let out = Command::new(workspace_root().join("scripts/busybox-image"))
        .args([image.as_os_str(), name.as_ref(), cmd.as_ref()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/busybox-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image.to_owned()
}
