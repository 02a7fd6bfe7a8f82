//! Where the guest kernel and initramfs are.

use std::{
    env,
    path::{Path, PathBuf},
};

pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initramfs.img";

/// Directories searched for the guest image, most specific first:
/// `<exe>/../share/firedoor` (a `scripts/install --prefix` layout),
/// `<exe>/../guest` (a cargo build: `target/debug` beside `target/guest`),
/// then the system prefixes.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(bin_dir) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        if let Some(prefix) = bin_dir.parent() {
            dirs.push(prefix.join("share/firedoor"));
            dirs.push(prefix.join("guest"));
        }
    }
    dirs.push("/usr/local/share/firedoor".into());
    dirs.push("/usr/share/firedoor".into());
    dirs
}

/// Where a guest file was found, or every place it was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(PathBuf),
    Missing { looked_in: Vec<PathBuf> },
}

impl Lookup {
    /// The path to use: the one found, or the first candidate, so that the
    /// error about it names a real place.
    pub fn path(&self) -> PathBuf {
        match self {
            Lookup::Found(path) => path.clone(),
            Lookup::Missing { looked_in } => looked_in.first().cloned().unwrap_or_default(),
        }
    }
}

/// Finds `file`: an explicit path wins (even if missing, so the error names
/// it), then the environment variable `env_var`, then [`search_dirs`].
pub fn find(file: &str, explicit: Option<&Path>, env_var: &str) -> Lookup {
    let explicit = explicit
        .map(Path::to_owned)
        .or_else(|| env::var_os(env_var).map(PathBuf::from));
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path],
        None => search_dirs()
            .into_iter()
            .map(|dir| dir.join(file))
            .collect(),
    };
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => Lookup::Found(found.clone()),
        None => Lookup::Missing {
            looked_in: candidates,
        },
    }
}

pub fn find_kernel(explicit: Option<&Path>) -> Lookup {
    find(KERNEL_FILE, explicit, "FIREDOOR_KERNEL")
}

pub fn find_initrd(explicit: Option<&Path>) -> Lookup {
    find(INITRD_FILE, explicit, "FIREDOOR_INITRD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_is_reported_when_missing() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            find("vmlinux", Some(file.path()), "FIREDOOR_TEST_UNSET"),
            Lookup::Found(file.path().to_owned())
        );
        let missing = Path::new("/nonexistent/vmlinux");
        let lookup = find("vmlinux", Some(missing), "FIREDOOR_TEST_UNSET");
        assert_eq!(
            lookup,
            Lookup::Missing {
                looked_in: vec![missing.to_owned()]
            }
        );
        assert_eq!(lookup.path(), missing);
    }

    #[test]
    fn search_dirs_are_relative_to_the_executable_first() {
        let dirs = search_dirs();
        assert!(dirs[0].ends_with("share/firedoor"), "{dirs:?}");
        assert_eq!(dirs.last().unwrap(), Path::new("/usr/share/firedoor"));
    }
}
