//! Shared helpers of the fuzz targets: guest memory and a split virtqueue
//! whose descriptor table, available ring and buffers all come from the
//! fuzzer's input, as a hostile guest would write them.

use firedoor_vmm::devices::virtio::mmio::MmioTransport;
use firedoor_vmm::devices::BusDevice;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

pub use firedoor_vmm::memory::GuestMemoryMmap;

/// Guest memory of every target: the VMM's smallest guest.
pub const MEM_SIZE: u64 = firedoor_vmm::memory::MIN_MEMORY_BYTES;
/// Queue size of the fuzzed queues (small: the fuzzer fills whole tables).
pub const QUEUE_SIZE: u16 = 16;
/// Where the buffers' bytes go (descriptors mostly point here).
pub const DATA_START: u64 = 0x10_0000;
const DATA_LEN: usize = 0x1_0000;

/// Reads the input front to back; runs dry into zeroes.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let (now, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        now
    }

    /// The next byte, 0 at the end.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Whether anything is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Fresh guest memory (lazily allocated: cheap to create per run).
pub fn guest_memory() -> GuestMemoryMmap {
    firedoor_vmm::memory::create_guest_memory(MEM_SIZE).expect("guest memory")
}

/// A guest address from the input: mostly inside guest memory, sometimes
/// anywhere (the top bit picks).
fn guest_addr(raw: u64) -> u64 {
    if raw >> 63 == 1 {
        raw
    } else {
        raw % MEM_SIZE
    }
}

/// A ready queue at `base` whose descriptors, available ring and buffer
/// bytes come from `input`: up to [`QUEUE_SIZE`] descriptors (address,
/// length, flags, next), then the number of available heads and the heads,
/// then up to 64 KiB written at [`DATA_START`] (plus `data_offset`, so two
/// queues do not share buffers).
pub fn fuzzed_queue(
    mem: &GuestMemoryMmap,
    base: u64,
    data_offset: u64,
    input: &mut Input<'_>,
) -> Queue {
    let vq = MockSplitQueue::create(mem, GuestAddress(base), QUEUE_SIZE);
    let descs = usize::from(input.u8()) % (usize::from(QUEUE_SIZE) + 1);
    for i in 0..descs {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&guest_addr(input.u64()).to_le_bytes());
        raw[8..12].copy_from_slice(&input.u32().to_le_bytes());
        raw[12..14].copy_from_slice(&input.u16().to_le_bytes());
        raw[14..16].copy_from_slice(&input.u16().to_le_bytes());
        let at = vq.desc_table_addr().0 + 16 * i as u64;
        mem.write_slice(&raw, GuestAddress(at))
            .expect("descriptor table");
    }
    let heads = input.u16();
    let ring = vq.avail_addr().0 + 4;
    for i in 0..usize::from(QUEUE_SIZE) {
        let head = input.u16();
        mem.write_obj(head, GuestAddress(ring + 2 * i as u64))
            .expect("avail ring");
    }
    mem.write_obj(heads, GuestAddress(vq.avail_addr().0 + 2))
        .expect("avail idx");
    let len = usize::from(input.u16()) % DATA_LEN;
    let data = input.take(len).to_vec();
    mem.write_slice(&data, GuestAddress(DATA_START + data_offset))
        .expect("buffers");
    vq.create_queue().expect("queue")
}

/// Drives `transport` with register accesses from `input` until it runs
/// dry: each access is an op byte (bit 0 write, bits 1-2 width 1/2/4/8,
/// bit 7 any offset instead of one inside the 4 KiB window), the offset,
/// and for a write the value. `after` sees each op byte (bit 6 is left for
/// the target, e.g. to serve a queue).
pub fn drive_mmio_registers(
    transport: &mut MmioTransport,
    input: &mut Input<'_>,
    mut after: impl FnMut(u8),
) {
    while !input.is_empty() {
        let op = input.u8();
        let offset = if op & 0x80 != 0 {
            input.u64()
        } else {
            u64::from(input.u16() % 0x200)
        };
        let width = [1usize, 2, 4, 8][usize::from(op >> 1 & 3)];
        if op & 1 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        } else {
            let value = input.u64().to_le_bytes();
            transport.write(offset, &value[..width]);
        }
        after(op);
    }
}
