//! virtio-vsock in user space, bridged to Unix sockets (hybrid vsock).
//!
//! Queues: RX (device to driver), TX (driver to device), event (unused: we
//! never migrate, so there is no transport reset to announce).

pub mod connection;
pub mod unix;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Address, Bytes, GuestAddress, VolatileSlice};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    check_queues, read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use unix::VsockMuxer;

/// Protocol constants (virtio 1.2, section 5.10).
pub mod defs {
    /// The host's CID.
    pub const HOST_CID: u64 = 2;
    /// Stream sockets: the only type we offer.
    pub const TYPE_STREAM: u16 = 1;
    /// Connection request.
    pub const OP_REQUEST: u16 = 1;
    /// Connection accepted.
    pub const OP_RESPONSE: u16 = 2;
    /// Connection refused or aborted.
    pub const OP_RST: u16 = 3;
    /// Half or full close.
    pub const OP_SHUTDOWN: u16 = 4;
    /// Data.
    pub const OP_RW: u16 = 5;
    /// Credit announcement.
    pub const OP_CREDIT_UPDATE: u16 = 6;
    /// Credit query.
    pub const OP_CREDIT_REQUEST: u16 = 7;
    /// The sender will receive no more data.
    pub const SHUTDOWN_RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SHUTDOWN_SEND: u32 = 2;
    /// Largest payload we accept or produce in one packet.
    pub const MAX_PKT_DATA: u32 = 64 * 1024;
}

/// A vsock packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Parses the little-endian wire layout (virtio 1.2, 5.10.6).
    fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn from_packet(p: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }

    fn write_to(&self, p: &mut VsockPacket<'_, ()>) {
        p.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }
}

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// Epoll token for the muxer's fd (queue eventfds use their index).
const MUXER_TOKEN: u32 = 100;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The virtio-vsock device.
pub struct Vsock {
    cid: u64,
    muxer: VsockMuxer,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    active: Option<Active>,
}

impl Vsock {
    /// A device for a guest with `cid`, listening on `uds_path`.
    pub fn new(
        cid: u64,
        uds_path: PathBuf,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let queue_evts = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            cid,
            muxer: VsockMuxer::new(cid, uds_path)?,
            queue_evts,
            interrupt,
            active: None,
        })
    }

    /// Handles every packet the guest queued on TX.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX_QUEUE];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // The common layouts (header and payload in one or two
            // descriptors) are read in place; any other is copied.
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain.clone(), defs::MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = VsockHeader::from_packet(&pkt);
                    self.muxer.send_to_host(&hdr, pkt.data_slice());
                }
                Err(_) => match gather_tx_packet(mem, chain) {
                    Ok((hdr, mut data)) => {
                        let data = (!data.is_empty()).then(|| VolatileSlice::from(&mut data[..]));
                        self.muxer.send_to_host(&hdr, data.as_ref());
                    }
                    Err(e) => debug!("vsock: dropping bad TX packet: {e}"),
                },
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                error!("vsock: cannot return TX buffer: {e}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Moves pending packets into the guest's RX buffers.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, defs::MAX_PKT_DATA) {
                Ok(mut pkt) => match self.muxer.fill_rx(pkt.data_slice()) {
                    Some(hdr) => {
                        hdr.write_to(&mut pkt);
                        PKT_HEADER_SIZE as u32 + hdr.len
                    }
                    None => {
                        // Nothing to send after all: give the buffer back.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    debug!("vsock: dropping bad RX buffer: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                error!("vsock: cannot return RX buffer: {e}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Handles host socket events.
    pub fn process_backend(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }

    /// Number of open connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }
}

/// Reads a TX packet laid out over any number of descriptors. Linux sends a
/// payload larger than about 32 KiB as page fragments, one descriptor each.
/// Copies one header and at most [`defs::MAX_PKT_DATA`] bytes, whatever the
/// descriptors claim.
fn gather_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(VsockHeader, Vec<u8>), &'static str> {
    let mut reader = ChainReader {
        mem,
        chain,
        current: None,
    };
    let mut raw = [0u8; PKT_HEADER_SIZE];
    reader.read_exact(&mut raw)?;
    let hdr = VsockHeader::from_bytes(&raw);
    if hdr.len > defs::MAX_PKT_DATA {
        return Err("payload larger than the maximum packet");
    }
    let mut data = vec![0u8; hdr.len as usize];
    reader.read_exact(&mut data)?;
    Ok((hdr, data))
}

/// Reads the device-readable bytes of a descriptor chain in order.
struct ChainReader<'m> {
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    /// What is left of the descriptor being read: (address, length).
    current: Option<(GuestAddress, usize)>,
}

impl ChainReader<'_> {
    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), &'static str> {
        while !buf.is_empty() {
            let (addr, left) = match self.current.take() {
                Some(rest) if rest.1 > 0 => rest,
                _ => {
                    let desc = self
                        .chain
                        .next()
                        .ok_or("packet shorter than its header says")?;
                    if desc.is_write_only() {
                        return Err("write-only descriptor in a TX chain");
                    }
                    (desc.addr(), desc.len() as usize)
                }
            };
            let n = left.min(buf.len());
            let (now, later) = std::mem::take(&mut buf).split_at_mut(n);
            self.mem
                .read_slice(now, addr)
                .map_err(|_| "descriptor outside guest memory")?;
            let next = addr
                .checked_add(n as u64)
                .ok_or("descriptor wraps the address space")?;
            self.current = Some((next, left - n));
            buf = later;
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        debug!("vsock: guest wrote read-only config at {offset:#x}");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        check_queues(&mem, &queues, QUEUE_SIZES.len())?;
        self.active = Some(Active { mem, queues });
        // Let the event loop look at anything queued before activation.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!("vsock: cannot poll queue {i}: {e}");
            }
        }
        let fd = self.muxer.epoll_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, MUXER_TOKEN, EventSet::IN)) {
            error!("vsock: cannot poll the muxer: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token == MUXER_TOKEN {
            self.process_backend();
            return;
        }
        let Some(evt) = self.queue_evts.get(token as usize) else {
            return;
        };
        // EAGAIN just means another path already consumed the notification.
        let _ = evt.read();
        match token as usize {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => {
                self.process_tx();
                self.process_rx();
            }
            EVENT_QUEUE => debug!("vsock: event queue notified"),
            _ => {}
        }
    }
}

impl AsRawFd for Vsock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.muxer.epoll_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::defs::*;
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const CID: u64 = 3;

    fn device(dir: &tempfile::TempDir) -> Vsock {
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        Vsock::new(CID, dir.path().join("v.sock"), irq).unwrap()
    }

    /// Adds one chain at descriptor index `first`, linking the descriptors.
    fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[(u64, u32, u16)]) {
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        vq.add_desc_chains(&raw, first).unwrap();
    }

    fn write_hdr(mem: &GuestMemoryMmap, addr: u64, h: &VsockHeader) {
        let mut b = Vec::with_capacity(PKT_HEADER_SIZE);
        b.extend_from_slice(&h.src_cid.to_le_bytes());
        b.extend_from_slice(&h.dst_cid.to_le_bytes());
        b.extend_from_slice(&h.src_port.to_le_bytes());
        b.extend_from_slice(&h.dst_port.to_le_bytes());
        b.extend_from_slice(&h.len.to_le_bytes());
        b.extend_from_slice(&h.type_.to_le_bytes());
        b.extend_from_slice(&h.op.to_le_bytes());
        b.extend_from_slice(&h.flags.to_le_bytes());
        b.extend_from_slice(&h.buf_alloc.to_le_bytes());
        b.extend_from_slice(&h.fwd_cnt.to_le_bytes());
        mem.write_slice(&b, GuestAddress(addr)).unwrap();
    }

    fn read_op(mem: &GuestMemoryMmap, addr: u64) -> u16 {
        mem.read_obj(GuestAddress(addr + 30)).unwrap()
    }

    fn request(dst_port: u32, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op: if len == 0 { OP_REQUEST } else { OP_RW },
            buf_alloc: 4096,
            ..Default::default()
        }
    }

    struct Queues<'a> {
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
    }

    fn activate<'a>(dev: &mut Vsock, mem: &'a GuestMemoryMmap) -> Queues<'a> {
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let ev = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        dev.activate(mem.clone(), queues).unwrap();
        Queues { rx, tx }
    }

    #[test]
    fn config_space_holds_the_cid() {
        let dir = tempfile::TempDir::new().unwrap();
        let dev = device(&dir);
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), CID);
        let mut b = [0xffu8; 4];
        dev.read_config(6, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn malformed_tx_chains_are_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        let hdr = 0x10_0000;
        let data = 0x20_0000;
        let oob = 0xffff_ffff_f000;
        write_hdr(&mem, hdr, &request(5000, 100));
        let big = 0x30_0000;
        write_hdr(&mem, big, &request(5000, MAX_PKT_DATA + 1));
        let chains: &[&[(u64, u32, u16)]] = &[
            &[(hdr, 10, 0)],                              // header too short
            &[(oob, 44, 0)],                              // header outside memory
            &[(hdr, 44, W)],                              // header write-only
            &[(big, 44, 0), (data, MAX_PKT_DATA + 1, 0)], // payload too long
            &[(hdr, 44, 0), (data, 100, W)],              // payload write-only
            &[(hdr, 44, 0), (data, 50, 0)],               // payload shorter than len
            &[(hdr, 44, 0), (oob, 100, 0)],               // payload outside memory
            &[(hdr, 44, 0)],                              // payload missing
        ];
        let mut first = 0;
        for c in chains {
            add_chain(&q.tx, first, c);
            first += c.len() as u16;
        }
        dev.process_tx();
        assert_eq!(q.tx.used().idx().load(), chains.len() as u16);
        for i in 0..chains.len() {
            assert_eq!(q.tx.used().ring().ref_at(i).unwrap().load().len(), 0);
        }
        assert!(!dev.muxer.has_pending_rx());
        assert_eq!(dev.connection_count(), 0);
    }

    #[test]
    fn payload_over_several_descriptors_reaches_the_host_in_order() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("v.sock_5000"));
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        write_hdr(&mem, 0x10_0000, &request(5000, 0));
        add_chain(&q.tx, 0, &[(0x10_0000, 44, 0)]);
        dev.process_tx();
        let (mut host, _) = listener.unwrap().accept().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();

        // As Linux sends a large write: header split in two, payload in
        // three fragments; and the next packet in the usual two descriptors.
        let payload: Vec<u8> = (0..100).collect();
        write_hdr(&mem, 0x20_0000, &request(5000, 100));
        mem.write_slice(&payload[..30], GuestAddress(0x30_0000))
            .unwrap();
        mem.write_slice(&payload[30..60], GuestAddress(0x31_0000))
            .unwrap();
        mem.write_slice(&payload[60..], GuestAddress(0x32_0000))
            .unwrap();
        let fragmented = [
            (0x20_0000, 20, 0),
            (0x20_0000 + 20, 24, 0),
            (0x30_0000, 30, 0),
            (0x31_0000, 30, 0),
            (0x32_0000, 40, 0),
        ];
        add_chain(&q.tx, 1, &fragmented);
        write_hdr(&mem, 0x40_0000, &request(5000, 3));
        mem.write_slice(b"end", GuestAddress(0x41_0000)).unwrap();
        add_chain(&q.tx, 6, &[(0x40_0000, 44, 0), (0x41_0000, 3, 0)]);
        dev.process_tx();

        let mut got = [0u8; 103];
        std::io::Read::read_exact(&mut host, &mut got).unwrap();
        assert_eq!(&got[..100], &payload[..]);
        assert_eq!(&got[100..], b"end");
        assert_eq!(dev.connection_count(), 1);
    }

    #[test]
    fn tx_descriptor_loop_terminates() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        write_hdr(&mem, 0x10_0000, &request(5000, 0));
        let next = VRING_DESC_F_NEXT as u16;
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 44, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 44, next, 0)),
        ];
        q.tx.add_desc_chains(&raw, 0).unwrap();
        dev.process_tx();
        assert_eq!(q.tx.used().idx().load(), 1);
    }

    #[test]
    fn rst_reaches_the_guest_past_a_bad_rx_buffer() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        // RX: a read-only (wrong direction) buffer, then a good one.
        add_chain(&q.rx, 0, &[(0x40_0000, 44, 0), (0x41_0000, 4096, 0)]);
        add_chain(&q.rx, 2, &[(0x50_0000, 44, W), (0x51_0000, 4096, W)]);
        // TX: a connection request to a host port nobody listens on.
        write_hdr(&mem, 0x10_0000, &request(4444, 0));
        add_chain(&q.tx, 0, &[(0x10_0000, 44, 0)]);
        dev.process_tx();
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 2);
        assert_eq!(q.rx.used().ring().ref_at(0).unwrap().load().len(), 0);
        let used = q.rx.used().ring().ref_at(1).unwrap().load();
        assert_eq!((used.id(), used.len()), (2, 44));
        assert_eq!(read_op(&mem, 0x50_0000), OP_RST);
    }

    #[test]
    fn host_connect_becomes_a_guest_request() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        // A single-descriptor RX buffer (header and payload together).
        add_chain(&q.rx, 0, &[(0x50_0000, 44 + 4096, W)]);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        for _ in 0..3 {
            dev.process_backend();
        }
        assert_eq!(q.rx.used().idx().load(), 1);
        assert_eq!(read_op(&mem, 0x50_0000), OP_REQUEST);
        let dst_port: u32 = mem.read_obj(GuestAddress(0x50_0000 + 20)).unwrap();
        assert_eq!(dst_port, 1024);
        // Nothing more to send: the RX buffer count stays put.
        add_chain(&q.rx, 1, &[(0x60_0000, 44 + 4096, W)]);
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 1);
    }

    #[test]
    fn inactive_device_ignores_queues() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut dev = device(&dir);
        dev.process_tx();
        dev.process_rx();
        dev.reset();
        assert_eq!(dev.connection_count(), 0);
    }
}
