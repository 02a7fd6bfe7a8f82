//! The allow-lists themselves, per thread kind.
//!
//! This file is compiled twice: by `build.rs`, which turns every list into
//! BPF once, at build time (so a VMM start does not compile filters), and
//! into the library, where a test checks that the embedded programs are
//! what these lists compile to. It may only use `std`, `libc` and
//! `seccompiler`.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
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

impl ThreadKind {
    /// Every kind, in the order of the README's table.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Supervisor];

    /// A short lowercase name (file names, tables).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Supervisor => "supervisor",
        }
    }
}

/// A system call by name and number.
pub type Syscall = (&'static str, libc::c_long);

/// System calls every thread makes: memory allocation, locks, signals for
/// the vCPU kick, logging, thread exit.
const COMMON: &[Syscall] = &[
    ("brk", libc::SYS_brk),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("close", libc::SYS_close),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("futex", libc::SYS_futex),
    ("getrandom", libc::SYS_getrandom),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("madvise", libc::SYS_madvise),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("mremap", libc::SYS_mremap),
    ("munmap", libc::SYS_munmap),
    ("read", libc::SYS_read),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sched_yield", libc::SYS_sched_yield),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
];

/// The event loop: epoll, vsock's Unix sockets, disk I/O, vhost-user
/// messages (sendmsg/recvmsg carry the memory and eventfd descriptors),
/// kicking and joining vCPU threads, removing the vsock socket file at exit.
const VMM_ONLY: &[Syscall] = &[
    ("accept4", libc::SYS_accept4),
    ("connect", libc::SYS_connect),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("fdatasync", libc::SYS_fdatasync),
    ("fstat", libc::SYS_fstat),
    ("fsync", libc::SYS_fsync),
    ("lseek", libc::SYS_lseek),
    ("newfstatat", libc::SYS_newfstatat),
    ("pread64", libc::SYS_pread64),
    ("preadv", libc::SYS_preadv),
    ("pwrite64", libc::SYS_pwrite64),
    ("pwritev", libc::SYS_pwritev),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendto", libc::SYS_sendto),
    ("shutdown", libc::SYS_shutdown),
    ("statx", libc::SYS_statx),
    ("tgkill", libc::SYS_tgkill),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
];

/// The supervisor: wait, forward signals, and end like the VMM did
/// (setrlimit against a second core dump, re-raising the signal).
const SUPERVISOR_ONLY: &[Syscall] = &[
    ("kill", libc::SYS_kill),
    ("prlimit64", libc::SYS_prlimit64),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("setrlimit", libc::SYS_setrlimit),
    ("tgkill", libc::SYS_tgkill),
    ("wait4", libc::SYS_wait4),
];

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

fn arg_eq(index: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule, BackendError> {
    let cond = SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)?;
    SeccompRule::new(vec![cond])
}

/// The allowed system calls of `kind`, by name, each with the argument
/// rules that restrict it (none: any arguments).
pub fn allowed(
    kind: ThreadKind,
) -> Result<BTreeMap<&'static str, (i64, Vec<SeccompRule>)>, BackendError> {
    let mut rules: BTreeMap<&'static str, (i64, Vec<SeccompRule>)> = COMMON
        .iter()
        .map(|&(name, nr)| (name, (nr, vec![])))
        .collect();
    let mut add = |list: &[Syscall]| {
        rules.extend(list.iter().map(|&(name, nr)| (name, (nr, vec![]))));
    };
    match kind {
        ThreadKind::Vmm => add(VMM_ONLY),
        ThreadKind::Supervisor => add(SUPERVISOR_ONLY),
        ThreadKind::Vcpu => {}
    }
    // Rust's fd drop checks the descriptor with fcntl(F_GETFD) in debug builds.
    rules.insert(
        "fcntl",
        (
            libc::SYS_fcntl,
            vec![arg_eq(1, SeccompCmpArgLen::Dword, libc::F_GETFD as u64)?],
        ),
    );
    // Every thread logs, and the logger asks whether stderr is a terminal
    // (TCGETS) each time it writes a line.
    let tcgets = arg_eq(1, SeccompCmpArgLen::Dword, libc::TCGETS)?;
    let ioctls = match kind {
        ThreadKind::Vcpu => vec![arg_eq(1, SeccompCmpArgLen::Dword, KVM_RUN)?, tcgets],
        ThreadKind::Supervisor => vec![tcgets],
        // FIONBIO: set_nonblocking on accepted sockets.
        ThreadKind::Vmm => vec![arg_eq(1, SeccompCmpArgLen::Dword, libc::FIONBIO)?, tcgets],
    };
    rules.insert("ioctl", (libc::SYS_ioctl, ioctls));
    if kind == ThreadKind::Vmm {
        // Only Unix sockets (guest connections to `<uds>_<port>`).
        rules.insert(
            "socket",
            (
                libc::SYS_socket,
                vec![arg_eq(0, SeccompCmpArgLen::Dword, libc::AF_UNIX as u64)?],
            ),
        );
    }
    Ok(rules)
}

/// Compiles the allow-list of `kind` to BPF: anything not listed kills the
/// process.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, BackendError> {
    let rules = allowed(kind)?.into_values().collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    filter.try_into()
}
