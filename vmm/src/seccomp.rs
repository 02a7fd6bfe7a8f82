//! Seccomp allow-lists, one per thread kind, installed once setup is done
//! (after every file, socket and KVM object the VMM needs is open).
//!
//! Anything not listed kills the whole process (SIGSYS): a VMM thread that
//! makes an unexpected system call is treated as compromised.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of VMM threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: devices, vsock sockets, disk I/O, vCPU supervision.
    Vmm,
    /// A vCPU: KVM_RUN and port/MMIO emulation.
    Vcpu,
    /// The jail's supervisor (outside the VMM's PID namespace): waits for
    /// the VMM, forwards stop signals, exits like it.
    Supervisor,
}

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

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// System calls every thread makes: memory allocation, locks, signals for
/// the vCPU kick, logging, thread exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_read,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The event loop: epoll, vsock's Unix sockets, disk I/O, vhost-user
/// messages (sendmsg/recvmsg carry the memory and eventfd descriptors),
/// kicking and joining vCPU threads, removing the vsock socket file at exit.
const VMM_ONLY: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_statx,
    libc::SYS_tgkill,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The supervisor: wait, forward signals, and end like the VMM did
/// (setrlimit against a second core dump, re-raising the signal).
const SUPERVISOR_ONLY: &[libc::c_long] = &[
    libc::SYS_kill,
    libc::SYS_prlimit64,
    libc::SYS_rt_sigaction,
    libc::SYS_setrlimit,
    libc::SYS_tgkill,
    libc::SYS_wait4,
];

fn arg_eq(index: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)?;
    Ok(SeccompRule::new(vec![cond])?)
}

/// Builds the BPF program for `kind`.
pub fn build_filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|&s| (s, vec![])).collect();
    // Rust's fd drop checks the descriptor with fcntl(F_GETFD) in debug builds.
    rules.insert(
        libc::SYS_fcntl,
        vec![arg_eq(1, SeccompCmpArgLen::Dword, libc::F_GETFD as u64)?],
    );
    // Every thread logs, and the logger asks whether stderr is a terminal
    // (TCGETS) each time it writes a line.
    let tcgets = arg_eq(1, SeccompCmpArgLen::Dword, libc::TCGETS)?;
    match kind {
        ThreadKind::Vcpu => {
            rules.insert(
                libc::SYS_ioctl,
                vec![arg_eq(1, SeccompCmpArgLen::Dword, KVM_RUN)?, tcgets],
            );
        }
        ThreadKind::Supervisor => {
            rules.extend(SUPERVISOR_ONLY.iter().map(|&s| (s, vec![])));
            rules.insert(libc::SYS_ioctl, vec![tcgets]);
        }
        ThreadKind::Vmm => {
            rules.extend(VMM_ONLY.iter().map(|&s| (s, vec![])));
            // Only Unix sockets (guest connections to `<uds>_<port>`).
            rules.insert(
                libc::SYS_socket,
                vec![arg_eq(0, SeccompCmpArgLen::Dword, libc::AF_UNIX as u64)?],
            );
            // FIONBIO: set_nonblocking on accepted sockets.
            rules.insert(
                libc::SYS_ioctl,
                vec![arg_eq(1, SeccompCmpArgLen::Dword, libc::FIONBIO)?, tcgets],
            );
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `filter` on the calling thread (and sets no_new_privs).
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    Ok(seccompiler::apply_filter(filter)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        assert!(!build_filter(ThreadKind::Vmm).unwrap().is_empty());
        assert!(!build_filter(ThreadKind::Vcpu).unwrap().is_empty());
        assert!(!build_filter(ThreadKind::Supervisor).unwrap().is_empty());
    }
}
