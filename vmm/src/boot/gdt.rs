//! The boot GDT: a flat 64-bit code segment, a flat data segment and a TSS.

use kvm_bindings::kvm_segment;

/// Encodes a segment descriptor. `access` is the byte with P, DPL, S and type;
/// `flags` is the nibble with G, D/B, L and AVL.
pub const fn gdt_entry(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags & 0xf) as u64) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// Selector index of the code segment.
pub const CODE_INDEX: u16 = 1;
/// Selector index of the data segment.
pub const DATA_INDEX: u16 = 2;
/// Selector index of the TSS.
pub const TSS_INDEX: u16 = 3;

/// The boot GDT: null, code (long mode, 4 GiB granular), data, 64-bit TSS (busy).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0x9b, 0xa, 0, 0xfffff),
    gdt_entry(0x93, 0xc, 0, 0xfffff),
    gdt_entry(0x8b, 0x8, 0, 0xfffff),
];

/// Decodes the descriptor at `index` into the form KVM_SET_SREGS wants.
pub fn kvm_segment(entry: u64, index: u16) -> kvm_segment {
    let bytes = entry.to_le_bytes();
    let access = bytes[5];
    let flags = bytes[6] >> 4;
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = u32::from_le_bytes([bytes[0], bytes[1], bytes[6] & 0xf, 0]);
    let granular = flags & 0x8 != 0;
    kvm_segment {
        base,
        // KVM wants the limit in bytes.
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        s: (access >> 4) & 1,
        dpl: (access >> 5) & 3,
        present: access >> 7,
        avl: flags & 1,
        l: (flags >> 1) & 1,
        db: (flags >> 2) & 1,
        g: flags >> 3,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_usual_flat_segments() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn decodes_a_long_mode_code_segment() {
        let cs = kvm_segment(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(cs.selector, 8);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let tss = kvm_segment(BOOT_GDT[3], TSS_INDEX);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 24));
    }

    #[test]
    fn round_trips_base_and_limit() {
        let e = gdt_entry(0x93, 0x4, 0x1234_5678, 0xabcde);
        let s = kvm_segment(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.selector, 40);
    }
}
