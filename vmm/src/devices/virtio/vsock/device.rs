//! The virtio-vsock device: its queues, configuration space and activation.

use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, error};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::VolatileSlice;

use super::defs;
use super::packet::{gather_tx_packet, VsockHeader};
use super::unix::VsockMuxer;
use crate::devices::virtio::common::common_accessors;
use crate::devices::virtio::{VirtioCommon, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub(super) const RX_QUEUE: usize = 0;
pub(super) const TX_QUEUE: usize = 1;
pub(super) const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// The header's 44 bytes, as a used-buffer length.
const HEADER_LEN: u32 = 44;
const _: () = assert!(HEADER_LEN as usize == PKT_HEADER_SIZE);
/// Epoll token for the muxer's fd (queue eventfds use their index).
pub(super) const MUXER_TOKEN: u32 = 100;

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    pub(super) muxer: VsockMuxer,
    pub(super) common: VirtioCommon,
}

impl Vsock {
    /// A device for a guest with `cid`, listening on `uds_path`.
    pub fn new(
        cid: u64,
        uds_path: PathBuf,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            muxer: VsockMuxer::new(cid, uds_path)?,
            // struct virtio_vsock_config { le64 guest_cid; }
            common: VirtioCommon::new(
                VIRTIO_ID_VSOCK,
                "vsock",
                &QUEUE_SIZES,
                VIRTIO_F_VERSION_1,
                interrupt,
            )?
            .with_config(cid.to_le_bytes()),
        })
    }

    /// Handles every packet the guest queued on TX.
    pub fn process_tx(&mut self) {
        self.common.serve_queue(TX_QUEUE, |mem, chain| {
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
            0
        });
    }

    /// Moves pending packets into the guest's RX buffers.
    pub fn process_rx(&mut self) {
        self.common.with_queue(RX_QUEUE, |mem, queue| {
            let mut used = false;
            while self.muxer.has_pending_rx() {
                let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let len =
                    match VsockPacket::from_rx_virtq_chain(mem, &mut chain, defs::MAX_PKT_DATA) {
                        Ok(mut pkt) => match self.muxer.fill_rx(pkt.data_slice()) {
                            Some(hdr) => {
                                hdr.write_to(&mut pkt);
                                HEADER_LEN + hdr.len
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
            used
        });
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

impl VirtioDevice for Vsock {
    common_accessors!();

    fn reset(&mut self) {
        self.common.deactivate();
        self.muxer.reset();
    }
}

// Test constants (descriptor flags, small lengths and addresses) fit their
// narrower wire types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use super::super::defs::*;
    use super::*;
    use crate::devices::virtio::test_queues::{
        activate_with_mock_queues, add_chain, add_chains, interrupt, used_len,
    };
    use crate::memory::{create_guest_memory, GuestMemoryMmap};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const CID: u64 = 3;

    fn device(dir: &tempfile::TempDir) -> Vsock {
        let irq = interrupt();
        Vsock::new(CID, dir.path().join("v.sock"), irq).unwrap()
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
        let [rx, tx, _event] = activate_with_mock_queues(dev, mem);
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
        add_chains(&q.tx, chains);
        dev.process_tx();
        assert_eq!(q.tx.used().idx().load(), chains.len() as u16);
        for i in 0..chains.len() as u16 {
            assert_eq!(used_len(&q.tx, i), 0);
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
