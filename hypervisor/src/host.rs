//! What this host offers: which kind of KVM, and where helper programs are.

use std::{
    env, fmt, fs,
    fs::OpenOptions,
    path::{Path, PathBuf},
};

/// The kind of `/dev/kvm` this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization (VT-x or AMD-V): stock Linux guests boot.
    Hardware { extension: &'static str },
    /// KVM on PVM (`kvm_pvm` module): only PVM-built guest kernels run at
    /// speed; a stock kernel does not boot.
    Pvm,
    /// `/dev/kvm` opens but the CPU shows neither `vmx` nor `svm`.
    Unrecognized,
    /// `/dev/kvm` exists but cannot be opened.
    NoAccess(String),
    /// No `/dev/kvm`.
    Absent,
}

impl KvmKind {
    /// Whether a stock Linux guest (ours) boots under this KVM.
    pub fn boots_linux(&self) -> bool {
        matches!(self, KvmKind::Hardware { .. })
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmKind::Hardware { extension } => write!(f, "hardware KVM ({extension})"),
            KvmKind::Pvm => f.write_str(
                "PVM (kvm_pvm loaded, no VT-x/AMD-V): a stock guest kernel does not boot",
            ),
            KvmKind::Unrecognized => f.write_str(
                "/dev/kvm without vmx or svm CPU flags: not usable for a stock guest kernel",
            ),
            KvmKind::NoAccess(e) => write!(
                f,
                "/dev/kvm cannot be opened ({e}): run as root or join the kvm group"
            ),
            KvmKind::Absent => f.write_str(
                "no /dev/kvm (load kvm_intel or kvm_amd, or enable nested virtualization)",
            ),
        }
    }
}

/// Probes `/dev/kvm` and the CPU flags.
pub fn probe_kvm() -> KvmKind {
    probe_kvm_at(
        Path::new("/dev/kvm"),
        Path::new("/sys/module/kvm_pvm"),
        Path::new("/proc/cpuinfo"),
    )
}

fn probe_kvm_at(dev: &Path, pvm_module: &Path, cpuinfo: &Path) -> KvmKind {
    if !dev.exists() {
        return KvmKind::Absent;
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
        return KvmKind::NoAccess(e.to_string());
    }
    if pvm_module.exists() {
        return KvmKind::Pvm;
    }
    let flags = fs::read_to_string(cpuinfo).unwrap_or_default();
    let flags: Vec<&str> = flags
        .lines()
        .find_map(|line| {
            line.strip_prefix("flags")
                .and_then(|rest| rest.split_once(':'))
        })
        .map(|(_, flags)| flags.split_whitespace().collect())
        .unwrap_or_default();
    if flags.contains(&"vmx") {
        KvmKind::Hardware {
            extension: "Intel VT-x",
        }
    } else if flags.contains(&"svm") {
        KvmKind::Hardware { extension: "AMD-V" }
    } else {
        KvmKind::Unrecognized
    }
}

/// Finds a helper program: beside the current executable first (a prefix
/// install puts everything in one `bin/`), then on `PATH`, then in cargo's
/// install directory (`cargo install` puts helpers there).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let beside_exe = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned));
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    beside_exe
        .into_iter()
        .chain(path_dirs)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(dev: bool, pvm: bool, flags: &str) -> KvmKind {
        let dir = tempfile::tempdir().unwrap();
        let dev_path = dir.path().join("kvm");
        if dev {
            fs::write(&dev_path, "").unwrap();
        }
        let pvm_path = dir.path().join("kvm_pvm");
        if pvm {
            fs::create_dir(&pvm_path).unwrap();
        }
        let cpuinfo = dir.path().join("cpuinfo");
        fs::write(&cpuinfo, format!("processor\t: 0\nflags\t\t: {flags}\n")).unwrap();
        probe_kvm_at(&dev_path, &pvm_path, &cpuinfo)
    }

    #[test]
    fn classifies_kvm() {
        assert_eq!(probe(false, false, "fpu vmx"), KvmKind::Absent);
        assert_eq!(probe(true, true, "fpu"), KvmKind::Pvm);
        assert_eq!(
            probe(true, false, "fpu vmx sse"),
            KvmKind::Hardware {
                extension: "Intel VT-x"
            }
        );
        assert_eq!(
            probe(true, false, "fpu svm"),
            KvmKind::Hardware { extension: "AMD-V" }
        );
        assert_eq!(probe(true, false, "fpu vmxe"), KvmKind::Unrecognized);
        assert!(KvmKind::Hardware { extension: "AMD-V" }.boots_linux());
        assert!(!KvmKind::Pvm.boots_linux());
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("firedoor-no-such-program").is_none());
    }
}
