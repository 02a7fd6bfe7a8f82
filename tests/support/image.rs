//! The busybox OCI image the tests import, built by scripts/busybox-image
//! from Debian's busybox-static (no registry is reachable here).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::workspace_root;

/// The name the image is imported under.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:firedoor-test";

/// Builds the image as an OCI layout tarball in `dir`; returns its path.
pub fn busybox_image_tar(dir: &Path) -> PathBuf {
    let image = dir.join("busybox-oci.tar");
    let out = Command::new(workspace_root().join("scripts/busybox-image"))
        .arg(&image)
        .arg(BUSYBOX_IMAGE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/busybox-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}
