//! Per-vCPU CPUID, derived from what KVM supports on this host.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const FEATURES_ECX_TSC_DEADLINE: u32 = 1 << 24;
const FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
const FEATURES_EDX_HTT: u32 = 1 << 28;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// The shape of the guest: `count` single-threaded cores in one package.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTopology {
    /// This vCPU's index, also its APIC id.
    pub id: u8,
    /// Number of vCPUs.
    pub count: u8,
    /// Whether KVM can emulate the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid.as_slice().iter().any(|e| {
        e.function == LEAF_VENDOR
            && e.ebx == u32::from_le_bytes(*b"Auth")
            && e.edx == u32::from_le_bytes(*b"enti")
            && e.ecx == u32::from_le_bytes(*b"cAMD")
    })
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

fn set_topology_leaf(e: &mut kvm_cpuid_entry2, t: VcpuTopology) {
    e.edx = u32::from(t.id); // x2APIC id
    match e.index {
        0 => {
            e.eax = 0; // one thread per core: no SMT bits
            e.ebx = 1;
            e.ecx = (TOPOLOGY_LEVEL_SMT << 8) | e.index;
        }
        1 => {
            e.eax = id_bits(t.count);
            e.ebx = u32::from(t.count);
            e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | e.index;
        }
        _ => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = e.index; // level type 0: invalid, ends the enumeration
        }
    }
}

/// Adjusts KVM's supported CPUID for vCPU `t.id`: APIC ids, topology,
/// the hypervisor bit and TSC-deadline.
pub fn filter_cpuid(cpuid: &mut CpuId, t: VcpuTopology) {
    let amd = is_amd(cpuid);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(t.id) << 24) | (u32::from(t.count) << 16);
                e.ecx |= FEATURES_ECX_HYPERVISOR;
                if t.tsc_deadline {
                    e.ecx |= FEATURES_ECX_TSC_DEADLINE;
                }
                if t.count > 1 {
                    e.edx |= FEATURES_EDX_HTT;
                } else {
                    e.edx &= !FEATURES_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    u32::from(t.count) - 1
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff) | ((u32::from(t.count) - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => set_topology_leaf(e, t),
            LEAF_AMD_SIZE_IDS if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(t.count) << 12) | (u32::from(t.count) - 1);
            }
            LEAF_AMD_EXT_APIC_ID if amd => {
                e.eax = u32::from(t.id);
                e.ebx = u32::from(t.id); // compute unit id; one thread per unit
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn sets_apic_ids_and_topology() {
        let mut leaf1 = entry(1, 0);
        leaf1.ebx = 0xff00_0800;
        leaf1.edx = FEATURES_EDX_HTT;
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5 | 0x3;
        let mut cpuid =
            CpuId::from_entries(&[leaf1, l3, entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        filter_cpuid(
            &mut cpuid,
            VcpuTopology {
                id: 2,
                count: 3,
                tsc_deadline: true,
            },
        );
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0203_0800);
        assert_ne!(e[0].ecx & FEATURES_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & FEATURES_ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & FEATURES_EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 2);
        assert_eq!((e[1].eax >> 14) & 0xfff, 2);
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (0, 1, 0x100, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (2, 3, 0x201, 2));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx, e[4].edx), (0, 0, 2, 2));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut leaf1 = entry(1, 0);
        leaf1.edx = FEATURES_EDX_HTT;
        let mut cpuid = CpuId::from_entries(&[leaf1]).unwrap();
        filter_cpuid(
            &mut cpuid,
            VcpuTopology {
                id: 0,
                count: 1,
                tsc_deadline: false,
            },
        );
        assert_eq!(cpuid.as_slice()[0].edx & FEATURES_EDX_HTT, 0);
        assert_eq!(cpuid.as_slice()[0].ecx & FEATURES_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
