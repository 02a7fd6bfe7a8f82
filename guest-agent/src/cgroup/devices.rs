//! Device access control for a container's cgroup v2 group: the spec's
//! `linux.resources.devices` rules compiled into an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` and attached to the group, as runc, crun
//! and youki do (cgroup v2 has no `devices.allow` file; the kernel asks the
//! group's programs on every open, mknod and access of a device node).
//!
//! Why our own small compiler and the raw bpf(2) syscall rather than
//! libcontainer's `cgroupsv2_devices` feature: that feature pulls in
//! libbpf-sys (libbpf's C sources built by the build script, linked with
//! static libelf, libz and libzstd into the static agent) and rbpf, a second
//! native toolchain dependency of the guest build for what is about a dozen
//! instruction shapes and two syscalls here. Owning it also lets UpdateContainer
//! swap programs atomically (BPF_F_REPLACE) and gives errors that name the bad
//! rule. The compiler is checked below against a reference evaluator through
//! an interpreter of the emitted bytes, and the kernel verifier checks it
//! again on every load.
//!
//! Semantics (the OCI spec: "the runtime MUST apply entries in the listed
//! order"): access is denied unless allowed; each rule sets (allow) or clears
//! (deny) its access types for the devices it matches, so for every access
//! type the last matching rule wins. A request for several types at once
//! (`open(O_RDWR)` asks for read and write) is allowed only if each type is.
//! After the spec's rules come the runtime's default devices (as runc and
//! youki append them): mknod of any node, and full access to /dev/null,
//! zero, full, random, urandom, tty, console, ptmx, the pts and tun/tap.
//! Where this differs from cgroup v1 (which runc emulates): a deny rule
//! narrower than an earlier wildcard allow punches its hole here; v1 ignores
//! it. Rules of type `p` (FIFO) match nothing: FIFOs are not devices to the
//! kernel's device check.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::AgentError;

/// The kernel's `BPF_DEVCG_ACC_*` bits, in the upper half of
/// `bpf_cgroup_dev_ctx.access_type`.
pub const ACCESS_MKNOD: u32 = 1;
pub const ACCESS_READ: u32 = 2;
pub const ACCESS_WRITE: u32 = 4;
const ACCESS_ALL: u32 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

/// A device kind as the kernel's `BPF_DEVCG_DEV_*` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block = 1,
    Char = 2,
}

/// One parsed `linux.resources.devices` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `None` matches both kinds (type `a`).
    pub kind: Option<DeviceKind>,
    /// `None` matches any major.
    pub major: Option<u32>,
    /// `None` matches any minor.
    pub minor: Option<u32>,
    /// `ACCESS_*` bits.
    pub access: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceRuleError {
    #[error(
        "linux.resources.devices[{index}]: access {access:?} may only contain \
         the letters r (read), w (write) and m (mknod)"
    )]
    Access { index: usize, access: String },
    #[error(
        "linux.resources.devices[{index}]: {field} {value} is not a device number; \
         use 0 to 4294967295, or -1 or no {field} for any"
    )]
    Number {
        index: usize,
        field: &'static str,
        value: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error(transparent)]
    Rule(#[from] DeviceRuleError),
    /// `why` is the verifier's verdict, or a hint about the kernel.
    #[error("loading the device filter into the kernel: {source}; {why}")]
    Load { source: io::Error, why: String },
    #[error("opening cgroup {path:?} to attach its device filter: {source}")]
    OpenCgroup { path: PathBuf, source: io::Error },
    #[error(
        "attaching the device filter to cgroup {path:?}: {source}; an ancestor \
         group may hold a device program that does not allow multiple programs \
         (BPF_F_ALLOW_MULTI), or the kernel lacks CONFIG_CGROUP_BPF"
    )]
    Attach { path: PathBuf, source: io::Error },
}

impl From<DeviceRuleError> for AgentError {
    fn from(err: DeviceRuleError) -> Self {
        AgentError::InvalidArgument(err.to_string())
    }
}

impl From<DeviceFilterError> for AgentError {
    fn from(err: DeviceFilterError) -> Self {
        match err {
            DeviceFilterError::Rule(err) => err.into(),
            _ => AgentError::Internal(err.to_string()),
        }
    }
}

impl DeviceRule {
    /// Validates entry `index` of the spec's list.
    pub fn parse(
        index: usize,
        rule: &LinuxDeviceCgroup,
    ) -> Result<Option<DeviceRule>, DeviceRuleError> {
        let kind = match rule.typ().unwrap_or_default() {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DeviceKind::Block),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DeviceKind::Char),
            LinuxDeviceType::P => return Ok(None),
        };
        let number = |field: &'static str, value: Option<i64>| match value {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| DeviceRuleError::Number {
                    index,
                    field,
                    value: n,
                }),
        };
        // No access string means all access types: the safe reading for a
        // deny rule, and what runc does for type `a`.
        let letters = rule.access().as_deref().unwrap_or("");
        let mut access = if letters.is_empty() { ACCESS_ALL } else { 0 };
        for letter in letters.chars() {
            access |= match letter {
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                'm' => ACCESS_MKNOD,
                _ => {
                    return Err(DeviceRuleError::Access {
                        index,
                        access: letters.to_string(),
                    })
                }
            };
        }
        Ok(Some(DeviceRule {
            allow: rule.allow(),
            kind,
            major: number("major", rule.major())?,
            minor: number("minor", rule.minor())?,
            access,
        }))
    }

    fn matches(&self, kind: DeviceKind, major: u32, minor: u32) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

/// The devices every container may use whatever its spec says (runc's and
/// youki's list): libcontainer creates their nodes in every container's /dev.
pub fn default_rules() -> Vec<DeviceRule> {
    let allow = |kind, major, minor, access| DeviceRule {
        allow: true,
        kind: Some(kind),
        major,
        minor,
        access,
    };
    use DeviceKind::{Block, Char};
    let mut rules = vec![
        allow(Char, None, None, ACCESS_MKNOD),
        allow(Block, None, None, ACCESS_MKNOD),
        // /dev/pts/*
        allow(Char, Some(136), None, ACCESS_ALL),
    ];
    // null, zero, full, random, urandom, tty, console, ptmx, net/tun.
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        rules.push(allow(Char, Some(major), Some(minor), ACCESS_ALL));
    }
    rules
}

/// The spec's rules followed by the default devices.
pub fn container_rules(
    spec_rules: Option<&Vec<LinuxDeviceCgroup>>,
) -> Result<Vec<DeviceRule>, DeviceRuleError> {
    let mut rules = Vec::new();
    for (index, rule) in spec_rules.into_iter().flatten().enumerate() {
        rules.extend(DeviceRule::parse(index, rule)?);
    }
    rules.extend(default_rules());
    Ok(rules)
}

/// The decision the compiled program must reach; the definition the
/// compiler is tested against.
pub fn decide(rules: &[DeviceRule], kind: DeviceKind, major: u32, minor: u32, access: u32) -> bool {
    [ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE]
        .into_iter()
        .filter(|bit| access & bit != 0)
        .all(|bit| {
            rules
                .iter()
                .rev()
                .find(|r| r.access & bit != 0 && r.matches(kind, major, minor))
                .is_some_and(|r| r.allow)
        })
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const CLASS_LDX: u8 = 0x01;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const ALU_OR: u8 = 0x40;
const ALU_AND: u8 = 0x50;
const ALU_RSH: u8 = 0x70;
const ALU_XOR: u8 = 0xa0;
const ALU_MOV: u8 = 0xb0;
const JMP_JEQ: u8 = 0x10;
const JMP_JNE: u8 = 0x50;
const JMP_EXIT: u8 = 0x90;

// Registers: R1 holds the context on entry, R0 the result on exit.
const R0: u8 = 0;
const R1: u8 = 1;
/// Requested device kind.
const R_KIND: u8 = 2;
/// Requested access bits.
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;
/// Access bits allowed so far for the requested device; R0 so that the
/// final decision needs no extra register.
const R_ALLOWED: u8 = R0;

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }

    fn alu64_imm(op: u8, dst: u8, imm: i32) -> Insn {
        Insn::new(CLASS_ALU64 | op | SRC_K, dst, 0, 0, imm)
    }

    fn alu64_reg(op: u8, dst: u8, src: u8) -> Insn {
        Insn::new(CLASS_ALU64 | op | SRC_X, dst, src, 0, 0)
    }

    /// dst = *(u32 *)(src + off)
    fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(CLASS_LDX | MODE_MEM | SIZE_W, dst, src, off, 0)
    }

    /// if (u32)dst != imm: skip `off` instructions. The 32-bit compare keeps
    /// device numbers above i32::MAX from being sign-extended.
    fn jne32_imm(dst: u8, imm: u32, off: i16) -> Insn {
        Insn::new(
            CLASS_JMP32 | JMP_JNE | SRC_K,
            dst,
            0,
            off,
            imm.cast_signed(),
        )
    }

    fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(CLASS_JMP | JMP_JEQ | SRC_K, dst, 0, off, imm)
    }

    fn exit() -> Insn {
        Insn::new(CLASS_JMP | JMP_EXIT, 0, 0, 0, 0)
    }
}

/// Offsets in `struct bpf_cgroup_dev_ctx`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

/// Compiles `rules` into a program that returns 1 (allow) or 0 (deny).
///
/// It folds the rules in order into the set of access types allowed for the
/// requested device, then allows the request if it asks for nothing outside
/// that set. No early exit: a later rule may always change the outcome.
pub fn compile(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut program = vec![
        Insn::load_u32(R_KIND, R1, CTX_ACCESS_TYPE),
        Insn::load_u32(R_MAJOR, R1, CTX_MAJOR),
        Insn::load_u32(R_MINOR, R1, CTX_MINOR),
        Insn::alu64_reg(ALU_MOV, R_ACCESS, R_KIND),
        Insn::alu64_imm(ALU_RSH, R_ACCESS, 16),
        Insn::alu64_imm(ALU_AND, R_KIND, 0xffff),
        Insn::alu64_imm(ALU_MOV, R_ALLOWED, 0),
    ];
    for rule in rules {
        let checks: Vec<(u8, u32)> = [
            rule.kind.map(|k| (R_KIND, k as u32)),
            rule.major.map(|m| (R_MAJOR, m)),
            rule.minor.map(|m| (R_MINOR, m)),
        ]
        .into_iter()
        .flatten()
        .collect();
        // A failed check skips the remaining checks and the update.
        for (i, &(reg, value)) in checks.iter().enumerate() {
            // At most three checks: the skip fits any offset.
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let skip = (checks.len() - i) as i16;
            program.push(Insn::jne32_imm(reg, value, skip));
        }
        program.push(if rule.allow {
            Insn::alu64_imm(ALU_OR, R_ALLOWED, rule.access.cast_signed())
        } else {
            // Sign extension of !access keeps every other bit set.
            Insn::alu64_imm(ALU_AND, R_ALLOWED, (!rule.access).cast_signed())
        });
    }
    program.extend([
        // R_ACCESS = requested & !allowed: what would be denied.
        Insn::alu64_imm(ALU_XOR, R_ALLOWED, -1),
        Insn::alu64_reg(ALU_AND, R_ACCESS, R_ALLOWED),
        Insn::alu64_imm(ALU_MOV, R0, 1),
        Insn::jeq_imm(R_ACCESS, 0, 1),
        Insn::alu64_imm(ALU_MOV, R0, 0),
        Insn::exit(),
    ]);
    program
}

// bpf(2) commands, program and attach types, flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel
/// treats the fields we leave out as zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_ATTACH, up to `replace_bpf_fd`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// # Safety
/// `attr` must be the attribute struct that `cmd` expects, and every
/// pointer in it valid for the kernel to read (or write, for a log buffer)
/// for the call's duration.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the caller guarantees `attr` matches `cmd`; the size passed is
    // that of `attr`, so the kernel reads no further.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Size of the verifier log asked for after a failed load.
const VERIFIER_LOG_SIZE: usize = 64 * 1024;
/// How many of its last lines go into the error.
const VERIFIER_LOG_LINES: usize = 4;

fn load(program: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    let license = CString::new("Apache-2.0").expect("no NUL");
    let mut name = [0u8; 16];
    name[..b"firedoor_dev".len()].copy_from_slice(b"firedoor_dev");
    let too_long = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let try_load = |log: Option<&mut Vec<u8>>| {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (
                1,
                u32::try_from(buf.len()).map_err(too_long)?,
                buf.as_mut_ptr() as u64,
            ),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(program.len()).map_err(too_long)?,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
        };
        // SAFETY: `attr` is BPF_PROG_LOAD's layout; `program`, `license` and
        // the log buffer outlive the call and the sizes given are theirs.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
        // A descriptor is a c_int; the syscall returns it as a c_long.
        let fd =
            libc::c_int::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: on success BPF_PROG_LOAD returns a new fd that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    try_load(None).or_else(|source: io::Error| {
        // Load again with the verifier's log so the error says why.
        let mut log = vec![0u8; VERIFIER_LOG_SIZE];
        match try_load(Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                // The verifier's verdict is at the end of its trace.
                let lines: Vec<&str> = text.trim().lines().collect();
                let text = lines[lines.len().saturating_sub(VERIFIER_LOG_LINES)..].join("; ");
                let why = if text.is_empty() {
                    "the guest kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF".to_string()
                } else {
                    format!("the kernel's verifier rejected it, a bug in the agent: {text}")
                };
                Err(DeviceFilterError::Load { source, why })
            }
        }
    })
}

/// The device program attached to one cgroup; the cgroup keeps it after
/// this is dropped, until the group is removed or the program replaced.
#[derive(Debug)]
pub struct DeviceFilter {
    cgroup: PathBuf,
    program: OwnedFd,
}

impl DeviceFilter {
    /// Loads `rules` and attaches them to the group at `cgroup` (its
    /// directory), replacing `previous` atomically when given.
    ///
    /// BPF_F_ALLOW_MULTI: a nested runtime in the container may attach its
    /// own programs below ours; the kernel runs every program on the path
    /// from the group to the root and allows only what all of them allow,
    /// so ours stays in force.
    pub fn attach(
        cgroup: &Path,
        rules: &[DeviceRule],
        previous: Option<&DeviceFilter>,
    ) -> Result<DeviceFilter, DeviceFilterError> {
        let program = load(&compile(rules))?;
        let dir = File::open(cgroup).map_err(|source| DeviceFilterError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let mut attr = ProgAttachAttr {
            // The kernel's u32 fields hold the (non-negative) fds as is.
            target_fd: dir.as_raw_fd().cast_unsigned(),
            attach_bpf_fd: program.as_raw_fd().cast_unsigned(),
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            replace_bpf_fd: 0,
        };
        if let Some(previous) = previous {
            attr.attach_flags |= BPF_F_REPLACE;
            attr.replace_bpf_fd = previous.program.as_raw_fd().cast_unsigned();
        }
        // SAFETY: `attr` is BPF_PROG_ATTACH's layout and holds only fds that
        // stay open for the call.
        unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map_err(|source| DeviceFilterError::Attach {
            path: cgroup.to_owned(),
            source,
        })?;
        Ok(DeviceFilter {
            cgroup: cgroup.to_owned(),
            program,
        })
    }

    /// Replaces this group's program with one for `rules`.
    pub fn replace(&mut self, rules: &[DeviceRule]) -> Result<(), DeviceFilterError> {
        *self = DeviceFilter::attach(&self.cgroup.clone(), rules, Some(self))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;
    use DeviceKind::{Block, Char};

    /// Runs `program` as the kernel would on a device request, decoding the
    /// raw instruction bytes by the eBPF ISA (independently of the builders
    /// above); panics on anything the compiler should never emit.
    fn run(program: &[Insn], kind: DeviceKind, major: u32, minor: u32, access: u32) -> bool {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let insn = program[pc];
            let (dst, src) = ((insn.regs & 0xf) as usize, (insn.regs >> 4) as usize);
            let class = insn.code & 0x07;
            let operand = if insn.code & 0x08 != 0 {
                reg[src]
            } else {
                i64::from(insn.imm).cast_unsigned()
            };
            pc += 1;
            match class {
                0x01 => {
                    assert_eq!(
                        (insn.code, src),
                        (0x61, 1),
                        "only u32 loads from the context"
                    );
                    let off = usize::try_from(insn.off).expect("a context offset");
                    assert!(off.is_multiple_of(4) && off < 12, "context offset {off}");
                    reg[dst] = u64::from(ctx[off / 4]);
                }
                0x07 => {
                    reg[dst] = match insn.code & 0xf0 {
                        0x40 => reg[dst] | operand,
                        0x50 => reg[dst] & operand,
                        0x70 => reg[dst] >> operand,
                        0xa0 => reg[dst] ^ operand,
                        0xb0 => operand,
                        op => panic!("ALU64 op {op:#x}"),
                    }
                }
                0x05 | 0x06 => {
                    if insn.code == 0x95 {
                        return match reg[0] {
                            0 => false,
                            1 => true,
                            other => panic!("returned {other}"),
                        };
                    }
                    let (left, right) = if class == 0x06 {
                        (reg[dst] & 0xffff_ffff, operand & 0xffff_ffff)
                    } else {
                        (reg[dst], operand)
                    };
                    let taken = match insn.code & 0xf0 {
                        0x10 => left == right,
                        0x50 => left != right,
                        op => panic!("jump op {op:#x}"),
                    };
                    if taken {
                        pc = pc
                            .checked_add_signed(isize::from(insn.off))
                            .expect("a jump inside the program");
                    }
                }
                _ => panic!("instruction class {class:#x}"),
            }
        }
        panic!("program did not exit");
    }

    fn spec_rule(
        allow: bool,
        typ: &str,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access(access)
            .build()
            .unwrap();
        rule.set_typ(Some(match typ {
            "a" => LinuxDeviceType::A,
            "b" => LinuxDeviceType::B,
            "c" => LinuxDeviceType::C,
            "p" => LinuxDeviceType::P,
            other => panic!("{other}"),
        }));
        rule.set_major(major).set_minor(minor);
        rule
    }

    fn parse_all(spec: &[LinuxDeviceCgroup]) -> Vec<DeviceRule> {
        spec.iter()
            .enumerate()
            .filter_map(|(i, r)| DeviceRule::parse(i, r).unwrap())
            .collect()
    }

    /// containerd's default: deny everything, then allow the usual nodes.
    fn containerd_default() -> Vec<LinuxDeviceCgroup> {
        let mut rules = vec![spec_rule(false, "a", None, None, "rwm")];
        for (major, minor) in [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1)] {
            rules.push(spec_rule(true, "c", Some(major), Some(minor), "rwm"));
        }
        rules.push(spec_rule(true, "c", Some(136), None, "rwm"));
        rules.push(spec_rule(true, "c", Some(5), Some(2), "rwm"));
        rules.push(spec_rule(true, "c", Some(10), Some(200), "rwm"));
        rules
    }

    const RW: u32 = ACCESS_READ | ACCESS_WRITE;

    /// Checks the compiled program and the reference against `expected`.
    fn check(rules: &[DeviceRule], expected: &[(DeviceKind, u32, u32, u32, bool)]) {
        let program = compile(rules);
        for &(kind, major, minor, access, allowed) in expected {
            let what = format!("{kind:?} {major}:{minor} access {access:#b}");
            assert_eq!(
                decide(rules, kind, major, minor, access),
                allowed,
                "reference: {what}"
            );
            assert_eq!(
                run(&program, kind, major, minor, access),
                allowed,
                "program: {what}"
            );
        }
    }

    #[test]
    fn containerd_default_allows_the_usual_devices_only() {
        let rules = container_rules(Some(&containerd_default())).unwrap();
        check(
            &rules,
            &[
                (Char, 1, 3, RW, true),            // /dev/null
                (Char, 1, 9, ACCESS_READ, true),   // /dev/urandom
                (Char, 136, 7, RW, true),          // /dev/pts/7
                (Char, 5, 2, RW, true),            // /dev/ptmx
                (Block, 8, 0, ACCESS_MKNOD, true), // mknod is allowed...
                (Block, 8, 0, ACCESS_READ, false), // ...opening is not
                (Block, 8, 0, RW, false),
                (Char, 1, 11, ACCESS_WRITE, false), // /dev/kmsg
                (Char, 1, 1, ACCESS_READ, false),   // /dev/mem
                (Char, 10, 229, RW, false),         // /dev/fuse
                (Char, 3, 1, ACCESS_READ, false),   // minor 1, other major
            ],
        );
    }

    #[test]
    fn no_rules_denies_all_but_the_defaults() {
        let rules = container_rules(None).unwrap();
        check(
            &rules,
            &[
                (Char, 1, 5, RW, true),
                (Char, 10, 200, RW, true),
                (Char, 1, 1, ACCESS_READ, false),
                (Block, 7, 0, ACCESS_MKNOD, true),
                (Block, 7, 0, ACCESS_WRITE, false),
            ],
        );
        // Nothing at all: nothing allowed.
        check(
            &[],
            &[
                (Char, 1, 3, ACCESS_READ, false),
                (Block, 8, 0, ACCESS_MKNOD, false),
            ],
        );
    }

    #[test]
    fn last_matching_rule_wins_for_each_access_type() {
        let rules = parse_all(&[
            spec_rule(true, "a", None, None, "rwm"), // privileged
            spec_rule(false, "c", Some(1), None, "w"),
            spec_rule(true, "c", Some(1), Some(3), "w"),
        ]);
        check(
            &rules,
            &[
                (Block, 8, 0, RW | ACCESS_MKNOD, true),
                (Char, 1, 5, ACCESS_READ, true),
                (Char, 1, 5, ACCESS_WRITE, false),
                // O_RDWR needs both: read allowed, write denied.
                (Char, 1, 5, RW, false),
                (Char, 1, 3, RW, true),
                (Char, 2, 5, RW, true),
            ],
        );
        // Reversed order: the wildcard allow comes last and wins.
        let reversed: Vec<_> = rules.iter().rev().cloned().collect();
        check(&reversed, &[(Char, 1, 5, RW, true), (Char, 1, 3, RW, true)]);
    }

    #[test]
    fn a_deny_after_an_allow_removes_only_its_access_types() {
        let rules = parse_all(&[
            spec_rule(false, "a", None, None, "rwm"),
            spec_rule(true, "c", Some(1), Some(3), "rwm"),
            spec_rule(false, "c", Some(1), Some(3), "w"),
        ]);
        check(
            &rules,
            &[
                (Char, 1, 3, ACCESS_READ, true),
                (Char, 1, 3, ACCESS_MKNOD, true),
                (Char, 1, 3, ACCESS_WRITE, false),
                (Char, 1, 3, RW, false),
                (Block, 1, 3, ACCESS_READ, false), // type matters
            ],
        );
    }

    #[test]
    fn wildcards_and_large_numbers() {
        let rules = parse_all(&[
            spec_rule(true, "b", Some(-1), Some(4), "r"),
            spec_rule(true, "c", Some(4_000_000_000), None, "rw"),
            spec_rule(true, "p", Some(1), Some(3), "rwm"), // FIFOs are not devices
        ]);
        assert_eq!(rules.len(), 2);
        check(
            &rules,
            &[
                (Block, 9, 4, ACCESS_READ, true),
                (Block, 9, 4, ACCESS_WRITE, false),
                (Block, 9, 5, ACCESS_READ, false),
                (Char, 9, 4, ACCESS_READ, false),
                (Char, 4_000_000_000, 12, RW, true),
                // The same low 31 bits, sign-extended differently.
                (Char, 4_000_000_000 - (1 << 31), 12, RW, false),
                (Char, 1, 3, ACCESS_READ, false),
            ],
        );
    }

    #[test]
    fn compiled_program_agrees_with_the_reference_everywhere() {
        let spec = containerd_default()
            .into_iter()
            .chain([
                spec_rule(false, "c", Some(136), Some(2), "r"),
                spec_rule(true, "b", Some(8), None, "r"),
                spec_rule(false, "a", Some(1), Some(9), "m"),
                spec_rule(true, "a", None, Some(0), "w"),
            ])
            .collect::<Vec<_>>();
        let rules = container_rules(Some(&spec)).unwrap();
        let program = compile(&rules);
        let mut allowed = 0;
        for kind in [Block, Char] {
            for major in [0, 1, 5, 8, 10, 136, 200] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 200] {
                    for access in 1..=ACCESS_ALL {
                        let want = decide(&rules, kind, major, minor, access);
                        allowed += u32::from(want);
                        assert_eq!(
                            run(&program, kind, major, minor, access),
                            want,
                            "{kind:?} {major}:{minor} {access:#b}"
                        );
                    }
                }
            }
        }
        // Both outcomes occur, so the comparison means something.
        assert!(allowed > 0 && allowed < 2 * 7 * 9 * 7);
    }

    #[test]
    fn bad_rules_name_the_entry_and_the_fix() {
        let err = DeviceRule::parse(3, &spec_rule(true, "c", Some(1), Some(3), "rwx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.devices[3]: access \"rwx\" may only contain the letters r (read), w (write) and m (mknod)"
        );
        let err = DeviceRule::parse(0, &spec_rule(true, "c", Some(-2), None, "r")).unwrap_err();
        assert!(
            err.to_string().contains("major -2 is not a device number"),
            "{err}"
        );
        let err =
            DeviceRule::parse(0, &spec_rule(true, "c", None, Some(1 << 32), "r")).unwrap_err();
        assert!(err.to_string().contains("minor 4294967296"), "{err}");
        let agent: AgentError = DeviceFilterError::from(err).into();
        assert!(matches!(agent, AgentError::InvalidArgument(_)));
    }

    /// The kernel's verifier accepts what we emit (loading needs root, as
    /// the agent has; attaching is covered by tests/containers.rs).
    #[test]
    fn kernel_verifier_accepts_the_program() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: loading a BPF program needs root");
            return;
        }
        let mut spec = containerd_default();
        for major in 0..300 {
            spec.push(spec_rule(major % 2 == 0, "a", Some(major), Some(-1), "rw"));
        }
        let rules = container_rules(Some(&spec)).unwrap();
        load(&compile(&rules)).unwrap();
        load(&compile(&[])).unwrap();
        // A rejected program's error carries the verifier's verdict.
        let err = load(&[Insn::exit()]).unwrap_err().to_string();
        assert!(
            err.contains("verifier rejected it") && err.contains("R0"),
            "{err}"
        );
    }

    #[test]
    fn missing_access_or_type_means_all() {
        let mut rule = spec_rule(false, "a", None, None, "");
        rule.set_access(None).set_typ(None);
        let parsed = DeviceRule::parse(0, &rule).unwrap().unwrap();
        assert_eq!((parsed.kind, parsed.access), (None, ACCESS_ALL));
    }
}
