//! Room on the host for a sandbox's state directory (the VM's run
//! directory with its console log and sockets, the shared directory's mount
//! points), checked before the VM boots: a full filesystem otherwise shows
//! as a VM that never gets ready (QEMU drops console output it cannot
//! write) or a socket that cannot be created, far from the cause.

use std::{io, path::Path};

use nix::sys::statvfs::statvfs;

/// Free space a sandbox needs in its state directory: the console log and
/// the VM's PID file grow to a few hundred KiB; the rest is margin.
pub const MIN_FREE_BYTES: u64 = 4 << 20;
/// Free inodes: sockets, the PID file, the console log, one mount point
/// per container and volume.
pub const MIN_FREE_INODES: u64 = 64;

/// Why a sandbox cannot be put in its state directory.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(
        "no space left in {dir} (the sandbox's state directory): {free_bytes} bytes and \
         {free_inodes} inodes free, a sandbox needs {MIN_FREE_BYTES} bytes and \
         {MIN_FREE_INODES} inodes; free space on that filesystem and retry"
    )]
    Full {
        dir: String,
        free_bytes: u64,
        free_inodes: u64,
    },
    #[error("checking free space in {dir}: {source}")]
    Statvfs { dir: String, source: io::Error },
}

/// Checks that the filesystem that will hold `state_dir` (the directory
/// itself, or its nearest existing ancestor) has room for a sandbox.
pub fn ensure_room(state_dir: &Path) -> Result<(), SpaceError> {
    let existing = state_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    let dir = state_dir.display().to_string();
    let stat = statvfs(existing).map_err(|e| SpaceError::Statvfs {
        dir: dir.clone(),
        source: e.into(),
    })?;
    let free_bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
    let free_inodes = stat.files_available();
    // Filesystems without an inode count (btrfs, some FUSE) report 0 of 0.
    let counts_inodes = stat.files() > 0;
    if free_bytes < MIN_FREE_BYTES || (counts_inodes && free_inodes < MIN_FREE_INODES) {
        return Err(SpaceError::Full {
            dir,
            free_bytes,
            free_inodes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roomy_directory_passes_and_a_missing_one_is_judged_by_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        ensure_room(dir.path()).unwrap();
        ensure_room(&dir.path().join("not/yet/there")).unwrap();
    }

    #[test]
    fn the_error_names_the_directory_and_what_to_do() {
        let err = SpaceError::Full {
            dir: "/run/firedoor/default/c1".into(),
            free_bytes: 0,
            free_inodes: 3,
        };
        let text = err.to_string();
        assert!(
            text.starts_with("no space left in /run/firedoor/default/c1 "),
            "{text}"
        );
        assert!(text.contains("free space on that filesystem"), "{text}");
    }
}
