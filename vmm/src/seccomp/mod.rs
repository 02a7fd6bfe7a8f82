//! Seccomp allow-lists, one per thread kind, installed once setup is done
//! (after every file, socket and KVM object the VMM needs is open).
//!
//! Anything not listed kills the whole process (SIGSYS): a VMM thread that
//! makes an unexpected system call is treated as compromised. The lists are
//! in [`rules`]; `build.rs` compiles them to BPF at build time, so starting
//! a VMM costs no filter compilation.

mod rules;

use seccompiler::{sock_filter, BpfProgram, BpfProgramRef};

pub use rules::{allowed, Syscall, ThreadKind};

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The filter could not be installed.
    #[error("cannot install the seccomp filter: {0}")]
    Apply(#[from] seccompiler::Error),
}

/// The BPF program of `kind`, as compiled at build time.
pub fn filter(kind: ThreadKind) -> BpfProgramRef<'static> {
    precompiled(kind)
}

/// Compiles the allow-list of `kind` now (tests; the VMM uses [`filter`]).
pub fn build_filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    Ok(rules::compile(kind)?)
}

/// The names of the system calls `kind` may make, sorted.
pub fn allowed_names(kind: ThreadKind) -> Result<Vec<&'static str>, SeccompError> {
    Ok(allowed(kind)?.into_keys().collect())
}

/// Installs `filter` on the calling thread (and sets no_new_privs).
pub fn apply(filter: BpfProgramRef) -> Result<(), SeccompError> {
    Ok(seccompiler::apply_filter(filter)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_program(a: BpfProgramRef, b: BpfProgramRef) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k))
    }

    #[test]
    fn embedded_filters_are_the_compiled_rules() {
        for kind in ThreadKind::ALL {
            let compiled = build_filter(kind).unwrap();
            assert!(!compiled.is_empty());
            assert!(
                same_program(filter(kind), &compiled),
                "the {} filter embedded at build time differs from rules.rs",
                kind.name()
            );
        }
    }

    /// Firecracker's allow-lists (v1.x, x86_64): 50 system calls on the VMM
    /// thread, 27 on vCPU threads. Ours must stay at or below them; the
    /// supervisor (Firecracker has none: its jailer execs the VMM) is held
    /// to what it has. The README's table shows these figures.
    #[test]
    fn allow_lists_are_counted_and_bounded() {
        let bounds = [
            (ThreadKind::Vmm, 50, "50"),
            (ThreadKind::Vcpu, 27, "27"),
            (ThreadKind::Supervisor, 29, "none"),
        ];
        println!("| thread kind | allowed system calls | bound | Firecracker |");
        for (kind, bound, firecracker) in bounds {
            let names = allowed_names(kind).unwrap();
            println!(
                "| {} | {} | {bound} | {firecracker} |",
                kind.name(),
                names.len()
            );
            println!("  {}", names.join(" "));
            assert!(
                names.len() <= bound,
                "{} thread allows {} system calls, more than {bound}: {names:?}",
                kind.name(),
                names.len()
            );
        }
        // Every list keeps what the thread cannot run without.
        let vcpu = allowed_names(ThreadKind::Vcpu).unwrap();
        assert!(vcpu.contains(&"ioctl") && vcpu.contains(&"futex"));
        assert!(!vcpu.contains(&"socket") && !vcpu.contains(&"connect"));
        let vmm = allowed_names(ThreadKind::Vmm).unwrap();
        assert!(vmm.contains(&"epoll_wait") && vmm.contains(&"accept4"));
        assert!(!vmm.contains(&"execve") && !vmm.contains(&"open") && !vmm.contains(&"openat"));
    }
}
