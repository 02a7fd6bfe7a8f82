//! virtio-net on a tap device the VMM is handed as an open descriptor.
//!
//! The tap is opened (in the pod's network namespace) by whoever starts the
//! VMM, as `IFF_TAP | IFF_NO_PI` without `IFF_VNET_HDR`: one read or write
//! is one Ethernet frame. No offloads are offered (no checksum, GSO or
//! mergeable buffers), so every guest buffer carries a 12-byte
//! `virtio_net_hdr_v1` the device writes as zeroes and ignores on TX, and
//! every RX buffer must hold a whole frame.
//!
//! The guest controls the descriptor chains: a TX chain outside guest
//! memory, shorter than the header or carrying a frame longer than the
//! largest the MTU allows is dropped (returned with length 0) and never
//! reaches the tap; an RX buffer too small for the frame at hand gets
//! nothing (length 0) and the frame is dropped, as a NIC drops what it
//! cannot place. No length the guest gives sizes an allocation: frames go
//! through one bounce buffer of the largest frame.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::common::common_accessors;
use super::{VirtioCommon, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

/// `struct virtio_net_hdr_v1` (with `num_buffers`, as VERSION_1 requires).
pub const NET_HDR_LEN: usize = 12;
/// Destination, source, EtherType.
const ETH_HEADER_LEN: usize = 14;
/// Ethernet header plus one VLAN tag, on top of the MTU.
const ETH_OVERHEAD: usize = 18;
/// The largest MTU offered (a frame of at most 64 KiB).
pub const MAX_MTU: u16 = 65535 - 18;
const _: () = assert!(MAX_MTU as usize + ETH_OVERHEAD == 65535);
/// The default MTU (Ethernet).
pub const DEFAULT_MTU: u16 = 1500;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Epoll token of the tap (the queue eventfds use their index).
const TAP_TOKEN: u32 = 100;

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is outside what the device can carry.
    #[error("invalid MTU {0}: use 68 to {MAX_MTU}")]
    InvalidMtu(u16),
    /// An eventfd or the tap descriptor could not be set up.
    #[error("virtio-net: {0}: {1}")]
    Io(&'static str, #[source] io::Error),
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net {
    tap: std::fs::File,
    /// The largest frame (Ethernet header included) either way.
    max_frame: usize,
    common: VirtioCommon,
    /// A frame read from the tap that waits for an RX buffer.
    pending_rx: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Frames dropped (guest errors, full tap), for logs and tests.
    dropped: u64,
}

impl Net {
    /// A device on `tap` (any descriptor with one-frame-per-read/write
    /// semantics; made non-blocking here) with the guest MAC `mac`.
    pub fn new(
        tap: OwnedFd,
        mac: [u8; 6],
        mtu: u16,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, NetError> {
        if !(68..=MAX_MTU).contains(&mtu) {
            return Err(NetError::InvalidMtu(mtu));
        }
        set_nonblocking(tap.as_raw_fd()).map_err(|e| NetError::Io("tap O_NONBLOCK", e))?;
        // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        let link_up = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
        config[6..8].copy_from_slice(&link_up.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let features = VIRTIO_F_VERSION_1
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_STATUS);
        let max_frame = usize::from(mtu) + ETH_OVERHEAD;
        Ok(Self {
            tap: std::fs::File::from(tap),
            max_frame,
            common: VirtioCommon::new(
                VIRTIO_ID_NET,
                "virtio-net",
                &QUEUE_SIZES,
                features,
                interrupt,
            )
            .map_err(|e| NetError::Io("eventfd", e))?
            .with_config(config),
            pending_rx: None,
            // One byte more than the largest frame: a longer one shows.
            rx_buf: vec![0; max_frame + 1],
            tx_buf: vec![0; max_frame],
            dropped: 0,
        })
    }

    /// Frames dropped so far.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Sends every frame the guest queued on TX to the tap.
    pub fn process_tx(&mut self) {
        self.common.serve_queue(TX_QUEUE, |mem, chain| {
            match read_tx_frame(mem, chain, &mut self.tx_buf) {
                Ok(len) => {
                    // A full tap queue drops the frame, as a NIC's would.
                    if let Err(e) = self.tap.write(&self.tx_buf[..len]) {
                        debug!("virtio-net: tap write failed, frame dropped: {e}");
                        self.dropped += 1;
                    }
                }
                Err(why) => {
                    debug!("virtio-net: dropping a bad TX chain: {why}");
                    self.dropped += 1;
                }
            }
            0
        });
    }

    /// Moves frames from the tap into the guest's RX buffers until the tap
    /// has none or the guest has no buffer (the frame then waits).
    pub fn process_rx(&mut self) {
        self.common.with_queue(RX_QUEUE, |mem, queue| {
            let mut used = false;
            loop {
                let len = match self.pending_rx.take() {
                    Some(len) => len,
                    None => match self.tap.read(&mut self.rx_buf) {
                        Ok(0) => break,
                        Ok(len) if len > self.max_frame => {
                            debug!("virtio-net: frame longer than the MTU from the tap, dropped");
                            self.dropped += 1;
                            continue;
                        }
                        Ok(len) => len,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("virtio-net: tap read failed: {e}");
                            break;
                        }
                    },
                };
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    self.pending_rx = Some(len);
                    break;
                };
                let head = chain.head_index();
                let written = match write_rx_frame(mem, chain, &self.rx_buf[..len]) {
                    Ok(n) => n,
                    Err(why) => {
                        debug!("virtio-net: frame of {len} bytes dropped: {why}");
                        self.dropped += 1;
                        0
                    }
                };
                if let Err(e) = queue.add_used(mem, head, written) {
                    error!("virtio-net: cannot return an RX buffer: {e}");
                }
                used = true;
            }
            used
        });
    }
}

/// Copies the frame of a TX chain (after its header) into `buf`; returns
/// its length. Only device-readable descriptors count.
fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, &'static str> {
    // virtio-queue ends a chain early, silently, where it turns invalid
    // (over 4 GiB in total, a loop): such a chain is refused, not cut short.
    if !chain_is_whole(&chain) {
        return Err("descriptor chain longer than 4 GiB or looping");
    }
    let mut reader = Reader::new(mem, chain).map_err(|_| "descriptor outside guest memory")?;
    let len = reader
        .available_bytes()
        .checked_sub(NET_HDR_LEN)
        .ok_or("shorter than the virtio-net header")?;
    if len > buf.len() {
        return Err("frame longer than the MTU allows");
    }
    if len < ETH_HEADER_LEN {
        return Err("frame shorter than an Ethernet header");
    }
    let mut hdr = [0u8; NET_HDR_LEN];
    reader
        .read_exact(&mut hdr)
        .map_err(|_| "unreadable header")?;
    reader
        .read_exact(&mut buf[..len])
        .map_err(|_| "unreadable frame")?;
    Ok(len)
}

/// Writes a zeroed header (one buffer, no offload) and `frame` into an RX
/// chain; returns the bytes written.
fn write_rx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Result<u32, &'static str> {
    let mut writer = Writer::new(mem, chain).map_err(|_| "descriptor outside guest memory")?;
    let total = NET_HDR_LEN + frame.len();
    if writer.available_bytes() < total {
        return Err("RX buffer smaller than the frame");
    }
    let mut hdr = [0u8; NET_HDR_LEN];
    // num_buffers = 1.
    hdr[10] = 1;
    writer
        .write_all(&hdr)
        .and_then(|()| writer.write_all(frame))
        .map_err(|_| "RX buffer not writable")?;
    u32::try_from(total).map_err(|_| "frame too long")
}

/// Whether iterating `chain` reaches a descriptor without NEXT.
fn chain_is_whole(chain: &DescriptorChain<&GuestMemoryMmap>) -> bool {
    chain.clone().last().is_some_and(|d| !d.has_next())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl VirtioDevice for Net {
    common_accessors!();

    fn reset(&mut self) {
        self.common.deactivate();
        self.pending_rx = None;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.poll_queue_events(ops);
        // Edge-triggered: a frame that waits for an RX buffer must not wake
        // the loop again and again; RX kicks retry it.
        let events = Events::with_data_raw(
            self.tap.as_raw_fd(),
            TAP_TOKEN,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(events) {
            error!("virtio-net: cannot poll the tap: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TAP_TOKEN => self.process_rx(),
            token => match self.common.consume_queue_event(token) {
                Some(RX_QUEUE) => self.process_rx(),
                Some(TX_QUEUE) => self.process_tx(),
                _ => {}
            },
        }
    }
}

// Test constants (descriptor flags, small lengths) fit their narrower types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_queues::{
        activate_with_mock_queues, add_chain, add_chains, interrupt, used_len,
    };
    use crate::memory::create_guest_memory;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    /// The device on one end of a datagram socket pair (a tap's framing);
    /// the test holds the other end as "the network".
    fn device(mtu: u16) -> (Net, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let irq = interrupt();
        theirs.set_nonblocking(true).unwrap();
        (
            Net::new(OwnedFd::from(ours), MAC, mtu, irq).unwrap(),
            theirs,
        )
    }

    struct Queues<'a> {
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
    }

    fn activate<'a>(dev: &mut Net, mem: &'a GuestMemoryMmap) -> Queues<'a> {
        let [rx, tx] = activate_with_mock_queues(dev, mem);
        Queues { rx, tx }
    }

    #[test]
    fn config_space_has_mac_link_and_mtu() {
        let (dev, _net) = device(1400);
        let mut b = [0u8; 12];
        dev.read_config(0, &mut b);
        assert_eq!(&b[..6], &MAC);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1400);
        let f = dev.avail_features();
        assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_MTU), 0);
        // No offload is offered.
        assert_eq!(f & (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM), 0);
        assert_eq!(
            f & (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF),
            0
        );
    }

    #[test]
    fn mtus_out_of_range_are_refused() {
        for mtu in [0, 67, MAX_MTU + 1] {
            let (ours, _) = UnixDatagram::pair().unwrap();
            let irq = interrupt();
            let err = Net::new(OwnedFd::from(ours), MAC, mtu, irq).err().unwrap();
            assert!(err.to_string().contains("invalid MTU"), "{err}");
        }
    }

    #[test]
    fn tx_frames_reach_the_tap_without_their_header() {
        let (mut dev, net) = device(DEFAULT_MTU);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        // Header and frame in one descriptor; then split over three.
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"frame-one-0123456", GuestAddress(0x10_0000 + 12))
            .unwrap();
        add_chain(&q.tx, 0, &[(0x10_0000, 12 + 17, 0)]);
        mem.write_slice(b"frame-two-0123456", GuestAddress(0x20_0000))
            .unwrap();
        add_chain(
            &q.tx,
            1,
            &[
                (0x11_0000, 12, 0),
                (0x20_0000, 5, 0),
                (0x20_0000 + 5, 12, 0),
            ],
        );
        dev.process_tx();
        let mut buf = [0u8; 64];
        let n = net.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame-one-0123456");
        let n = net.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame-two-0123456");
        assert_eq!(q.tx.used().idx().load(), 2);
        assert_eq!(dev.dropped_frames(), 0);
    }

    #[test]
    fn lying_tx_chains_are_dropped_and_reach_nothing() {
        let (mut dev, net) = device(DEFAULT_MTU);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        let max = (usize::from(DEFAULT_MTU) + ETH_OVERHEAD) as u32;
        let chains: &[&[(u64, u32, u16)]] = &[
            &[(0x10_0000, 8, 0)],                            // shorter than the header
            &[(0xffff_ffff_0000, 100, 0)],                   // outside guest memory
            &[(0x10_0000, 12, 0), (0x20_0000, max + 1, 0)],  // longer than the MTU
            &[(0x10_0000, 12, 0), (0x20_0000, u32::MAX, 0)], // a lying length
            &[(0x10_0000, 12, W)],                           // write-only: no header
            &[(0x10_0000, 12 + 13, 0)],                      // not even an Ethernet header
            &[(0x10_0000, 12, 0), (0x20_0000, 20, W)],       // frame in a write-only descriptor
        ];
        add_chains(&q.tx, chains);
        dev.process_tx();
        assert_eq!(q.tx.used().idx().load(), chains.len() as u16);
        for i in 0..chains.len() as u16 {
            assert_eq!(used_len(&q.tx, i), 0);
        }
        assert_eq!(dev.dropped_frames(), chains.len() as u64);
        let mut buf = [0u8; 64];
        net.recv(&mut buf).unwrap_err();
    }

    #[test]
    fn rx_frames_land_with_a_header_and_wait_for_buffers() {
        let (mut dev, net) = device(DEFAULT_MTU);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        // No RX buffer yet: the frame waits.
        net.send(b"hello-guest").unwrap();
        net.send(b"second").unwrap();
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 0);
        // One buffer: the waiting frame lands, the next waits again.
        add_chain(&q.rx, 0, &[(0x30_0000, 1526, W)]);
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 1);
        assert_eq!(used_len(&q.rx, 0), 12 + 11);
        let mut got = [0u8; 23];
        mem.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(got[10], 1, "num_buffers");
        assert_eq!(&got[12..], b"hello-guest");
        // A buffer split in two takes the second.
        add_chain(&q.rx, 1, &[(0x40_0000, 12, W), (0x41_0000, 1514, W)]);
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 2);
        assert_eq!(used_len(&q.rx, 1), 12 + 6);
        let mut got = [0u8; 6];
        mem.read_slice(&mut got, GuestAddress(0x41_0000)).unwrap();
        assert_eq!(&got, b"second");
        assert_eq!(dev.dropped_frames(), 0);
    }

    #[test]
    fn rx_buffers_too_small_or_outside_memory_get_nothing() {
        let (mut dev, net) = device(DEFAULT_MTU);
        let mem = create_guest_memory(16 << 20).unwrap();
        let q = activate(&mut dev, &mem);
        add_chain(&q.rx, 0, &[(0x30_0000, 16, W)]); // smaller than the frame
        add_chain(&q.rx, 1, &[(0xffff_ffff_0000, 2048, W)]); // outside memory
        add_chain(&q.rx, 2, &[(0x50_0000, 2048, 0)]); // read-only
        add_chain(&q.rx, 3, &[(0x60_0000, 2048, W)]); // good
        for frame in [&b"first-frame"[..], b"second-frame", b"third-frame", b"ok"] {
            net.send(frame).unwrap();
        }
        dev.process_rx();
        assert_eq!(q.rx.used().idx().load(), 4);
        for i in 0..3 {
            assert_eq!(used_len(&q.rx, i), 0);
        }
        assert_eq!(used_len(&q.rx, 3), 12 + 2);
        assert_eq!(dev.dropped_frames(), 3);
    }
}
