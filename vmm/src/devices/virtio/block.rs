//! virtio-blk backed by a host file (raw image), read-write or read-only.
//!
//! Requests are served synchronously on the VMM thread through a fixed-size
//! bounce buffer, so no allocation depends on a guest-given length.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::ByteValued;

use super::common::common_accessors;
use super::{ActivateError, VirtioCommon, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];
/// Bounce buffer size: requests are copied in chunks of at most this.
const IO_CHUNK: usize = 64 * 1024;

/// `struct virtio_blk_outhdr`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    type_: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding, every bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    common: VirtioCommon,
    active: Option<Active>,
    buf: Vec<u8>,
}

impl Block {
    /// Opens `path` (read-only if `read_only`).
    pub fn new(
        path: &Path,
        read_only: bool,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.len().is_multiple_of(SECTOR_SIZE) {
            warn!(
                "disk {}: size is not a multiple of {SECTOR_SIZE}; the tail is not visible",
                path.display()
            );
        }
        // The serial number: device and inode, stable for the file's life.
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let serial = format!("{:x}-{:x}", meta.dev(), meta.ino());
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let mut features = VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH);
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            file,
            read_only,
            capacity: meta.len() / SECTOR_SIZE,
            id,
            // struct virtio_blk_config: only `capacity` (le64) is offered.
            common: VirtioCommon::new(
                VIRTIO_ID_BLOCK,
                "virtio-blk",
                &QUEUE_SIZES,
                features,
                interrupt,
            )?
            .with_config((meta.len() / SECTOR_SIZE).to_le_bytes()),
            active: None,
            buf: vec![0; IO_CHUNK],
        })
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Serves every request on the queue.
    pub fn process_queue(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let len = self.handle_request(&active.mem, chain);
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                error!("virtio-blk: cannot return a buffer: {e}");
            }
            used = true;
        }
        self.active = Some(active);
        if used {
            self.common.interrupt().signal_used_queue();
        }
    }

    /// Handles one request; returns the number of bytes written to the guest.
    fn handle_request(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        // Device-readable descriptors must all come before writable ones.
        let mut seen_writable = false;
        for desc in chain.clone() {
            if seen_writable && !desc.is_write_only() {
                debug!("virtio-blk: readable descriptor after a writable one");
                return 0;
            }
            seen_writable |= desc.is_write_only();
        }
        let (mut reader, mut writer) =
            match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
                (Ok(r), Ok(w)) => (r, w),
                (Err(e), _) | (_, Err(e)) => {
                    debug!("virtio-blk: bad descriptor chain: {e}");
                    return 0;
                }
            };
        // The last writable byte is the status.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            debug!("virtio-blk: request without a status byte");
            return 0;
        };
        let mut status_writer = match writer.split_at(data_len) {
            Ok(w) => w,
            Err(e) => {
                debug!("virtio-blk: bad descriptor chain: {e}");
                return 0;
            }
        };
        let status = match reader.read_obj::<RequestHeader>() {
            Ok(hdr) => self.execute(hdr, &mut reader, &mut writer),
            Err(_) => {
                debug!("virtio-blk: request header too short");
                VIRTIO_BLK_S_IOERR
            }
        };
        // The status values (0, 1, 2) fit the one status byte.
        if status_writer.write_all(&status.to_le_bytes()[..1]).is_err() {
            return 0;
        }
        // Bounded by the chain's length, itself a sum of 32-bit lengths
        // over guest memory; saturate rather than wrap all the same.
        u32::try_from(writer.bytes_written() + 1).unwrap_or(u32::MAX)
    }

    /// Byte offset of `sector` if `len` bytes from there lie on the disk.
    fn check_range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.capacity).then(|| sector * SECTOR_SIZE)
    }

    fn execute(&mut self, hdr: RequestHeader, reader: &mut Reader, writer: &mut Writer) -> u32 {
        match hdr.type_ {
            VIRTIO_BLK_T_IN => {
                let Some(offset) = self.check_range(hdr.sector, writer.available_bytes()) else {
                    return VIRTIO_BLK_S_IOERR;
                };
                self.read_to_guest(offset, writer)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return VIRTIO_BLK_S_IOERR;
                }
                let Some(offset) = self.check_range(hdr.sector, reader.available_bytes()) else {
                    return VIRTIO_BLK_S_IOERR;
                };
                self.write_from_guest(offset, reader)
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only || self.file.sync_data().is_ok() {
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(self.id.len());
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        }
    }

    fn read_to_guest(&mut self, mut offset: u64, writer: &mut Writer) -> u32 {
        while writer.available_bytes() > 0 {
            let n = writer.available_bytes().min(self.buf.len());
            let chunk = &mut self.buf[..n];
            if self.file.read_exact_at(chunk, offset).is_err() || writer.write_all(chunk).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += n as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn write_from_guest(&mut self, mut offset: u64, reader: &mut Reader) -> u32 {
        while reader.available_bytes() > 0 {
            let n = reader.available_bytes().min(self.buf.len());
            let chunk = &mut self.buf[..n];
            if reader.read_exact(chunk).is_err() || self.file.write_all_at(chunk, offset).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += n as u64;
        }
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for Block {
    common_accessors!();

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.common.check_queues(&mem, &queues)?;
        let Some(queue) = queues.into_iter().next() else {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: 0,
            });
        };
        self.active = Some(Active { mem, queue });
        self.common.kick_all_queues();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.common.consume_queue_event(events.data()).is_some() {
            self.process_queue();
        }
    }
}

// Test constants (descriptor flags, small lengths and addresses) fit their
// narrower wire types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_queues::interrupt;
    use crate::memory::create_guest_memory;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    struct Setup {
        _dir: tempfile::TempDir,
        mem: GuestMemoryMmap,
        dev: Block,
    }

    fn setup(read_only: bool) -> Setup {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("disk.img");
        let mut content = vec![0u8; 8 * 512];
        content[512..1024].fill(0xab);
        std::fs::write(&path, &content).unwrap();
        let irq = interrupt();
        let dev = Block::new(&path, read_only, irq).unwrap();
        let mem = create_guest_memory(16 << 20).unwrap();
        Setup {
            _dir: dir,
            mem,
            dev,
        }
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs one request made of `descs` and returns (used len, status byte).
    fn run(s: &mut Setup, hdr: RequestHeader, descs: &[RawDescriptor]) -> (u32, u8) {
        s.mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
        s.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(&s.mem, 16);
        let q: Queue = vq.create_queue().unwrap();
        vq.build_desc_chain(descs).unwrap();
        s.dev.activate(s.mem.clone(), vec![q]).unwrap();
        s.dev.process_queue();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(vq.used().idx().load(), 1, "request must be completed");
        (used.len(), s.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn hdr(type_: u32, sector: u64) -> RequestHeader {
        RequestHeader {
            type_,
            ioprio: 0,
            sector,
        }
    }

    #[test]
    fn reads_writes_and_flushes() {
        let mut s = setup(false);
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 1),
            &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (513, VIRTIO_BLK_S_OK as u8));
        let mut buf = [0u8; 512];
        s.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|b| *b == 0xab));

        s.mem
            .write_slice(&[0x5a; 1024], GuestAddress(DATA))
            .unwrap();
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_OUT, 6),
            &[d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let mut disk = [0u8; 1024];
        s.dev.file.read_exact_at(&mut disk, 6 * 512).unwrap();
        assert!(disk.iter().all(|b| *b == 0x5a));

        let (_, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_FLUSH, 0),
            &[d(HDR, 16, 0), d(STATUS, 1, W)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    }

    #[test]
    fn get_id_and_unsupported() {
        let mut s = setup(true);
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_GET_ID, 0),
            &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
        let mut id = [0u8; 20];
        s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(id, s.dev.id);
        let (_, status) = run(&mut s, hdr(99, 0), &[d(HDR, 16, 0), d(STATUS, 1, W)]);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8);
    }

    #[test]
    fn read_only_refuses_writes() {
        let mut s = setup(true);
        assert_ne!(s.dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        let (_, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_OUT, 0),
            &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn out_of_range_and_odd_lengths_fail() {
        let mut s = setup(false);
        for (sector, len) in [(8u64, 512u32), (7, 1024), (u64::MAX, 512), (0, 100)] {
            let (_, status) = run(
                &mut s,
                hdr(VIRTIO_BLK_T_IN, sector),
                &[d(HDR, 16, 0), d(DATA, len, W), d(STATUS, 1, W)],
            );
            assert_eq!(
                status, VIRTIO_BLK_S_IOERR as u8,
                "sector {sector} len {len}"
            );
        }
    }

    #[test]
    fn malformed_chains_are_dropped() {
        let mut s = setup(false);
        // Data buffer outside guest memory.
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 0),
            &[d(HDR, 16, 0), d(0xffff_ffff_0000, 512, W), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (0, 0xff));
        // Oversized length running off the end of memory.
        let (len, _) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 0),
            &[d(HDR, 16, 0), d(DATA, u32::MAX, W), d(STATUS, 1, W)],
        );
        assert_eq!(len, 0);
        // Wrong direction: the header is write-only, so a readable data
        // descriptor follows a writable one.
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 0),
            &[d(HDR, 16, W), d(DATA, 512, 0), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (0, 0xff));
        // No writable status byte at all.
        let (len, _) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 0),
            &[d(HDR, 16, 0), d(DATA, 512, 0)],
        );
        assert_eq!(len, 0);
        // Header too short: status reports the error.
        let (len, status) = run(
            &mut s,
            hdr(VIRTIO_BLK_T_IN, 0),
            &[d(HDR, 8, 0), d(STATUS, 1, W)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
    }

    #[test]
    fn descriptor_loop_terminates() {
        let mut s = setup(false);
        s.mem
            .write_obj(hdr(VIRTIO_BLK_T_IN, 0), GuestAddress(HDR))
            .unwrap();
        let vq = MockSplitQueue::new(&s.mem, 16);
        let q: Queue = vq.create_queue().unwrap();
        // 0 -> 1 -> 0 -> ... (NEXT flags set on both).
        let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, next | W, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        s.dev.activate(s.mem.clone(), vec![q]).unwrap();
        s.dev.process_queue();
        assert_eq!(vq.used().idx().load(), 1);
    }
}
