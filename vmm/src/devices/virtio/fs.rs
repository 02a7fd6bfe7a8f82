//! virtio-fs as a vhost-user frontend: the guest's FUSE requests are served
//! by an external daemon (virtiofsd) that maps guest memory itself and works
//! on the virtqueues directly.
//!
//! The VMM keeps the parts that must stay under its control: the device's
//! identity and configuration space (tag, number of request queues), the
//! features offered to the guest, the validation of the queue addresses the
//! guest programs, and the interrupt. The backend signals used buffers on a
//! per-queue "call" eventfd that the VMM relays into the InterruptStatus
//! register and the irqfd: an irqfd handed straight to the backend would raise
//! the interrupt without setting the used-ring bit, and the guest's virtio-mmio
//! handler would then ignore it.
//!
//! All vhost-user traffic happens on the VMM thread: a vCPU that activates or
//! resets the device only queues the work and wakes the event loop, so a slow
//! or dead backend never stalls a vCPU. Every socket operation has a timeout;
//! a backend that disconnects, answers wrongly or times out is dropped, the
//! device shows DEVICE_NEEDS_RESET, and the VM runs on without the file system.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, info, warn};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::common::common_accessors;
use super::{ActivateError, VirtioCommon, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::memory::{host_range, GuestMemoryMmap};

/// Bytes of the tag in the configuration space (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// One high-priority queue (FORGET, INTERRUPT) and one request queue.
const NUM_QUEUES: usize = 2;
const NUM_REQUEST_QUEUES: u32 = 1;
const _: () = assert!(NUM_REQUEST_QUEUES as usize == NUM_QUEUES - 1);
/// The largest queue virtiofsd accepts.
const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
/// How long one vhost-user request may take before the backend is
/// considered hung (it answers in microseconds when healthy).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest-visible features passed through from the backend: the backend
/// alone walks the rings, so ring features are its to support. Anything
/// else (packed rings, IOMMU platform access, ...) would break the VMM's
/// view of the queues or is not implemented by this transport.
const PASS_THROUGH_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);
/// vhost-user bit 30: says the backend speaks protocol features. Never
/// offered to the guest.
const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Event tokens besides the call relays (which use the queue index).
const WORK_TOKEN: u32 = 0x100;
const BACKEND_TOKEN: u32 = 0x101;

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot be put in the configuration space.
    #[error("invalid virtio-fs tag {0:?}: use 1 to 36 bytes without NUL")]
    InvalidTag(String),
    /// The vhost-user socket is not there or refuses connections.
    #[error(
        "cannot connect to the vhost-user socket {path}: {source} \
         (start virtiofsd with --socket-path {path} first)"
    )]
    Connect {
        /// Socket path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request of the initial handshake failed.
    #[error("vhost-user backend {path}: {request} failed: {source}")]
    Handshake {
        /// Socket path.
        path: String,
        /// The request.
        request: &'static str,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a feature virtio-mmio version 2 requires.
    #[error(
        "vhost-user backend {0} does not offer VIRTIO_F_VERSION_1; it is not a virtio 1.x device"
    )]
    NotModern(String),
    /// An eventfd or socket option could not be set up.
    #[error("virtio-fs: {0}: {1}")]
    Io(&'static str, #[source] io::Error),
}

/// Where one ring of a queue lives, as the backend must be told: addresses
/// in this process, which the backend translates through the memory table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingAddresses {
    size: u16,
    next_avail: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// Work a vCPU queued for the VMM thread.
#[derive(Debug)]
enum Work {
    Start {
        mem: GuestMemoryMmap,
        rings: Vec<RingAddresses>,
    },
    Stop,
}

/// The virtio-fs device.
pub struct Fs {
    /// Names the backend in logs (its socket path).
    backend_name: String,
    backend_features: u64,
    /// The configuration space (tag, number of request queues), offered
    /// features (what passes through from the backend), the guest's kick
    /// eventfds (registered as KVM ioeventfds, read by the
    /// backend) and the interrupt.
    common: VirtioCommon,
    /// `None` once the backend failed: the device stays broken.
    frontend: Option<Frontend>,
    /// Backend "used buffers" signals, relayed to the interrupt.
    call_evts: Vec<EventFd>,
    work_evt: EventFd,
    pending: VecDeque<Work>,
    /// The backend serves the rings.
    running: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("backend_name", &self.backend_name)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the vhost-user backend listening on `socket` and
    /// negotiates what can be negotiated before the guest driver shows up.
    pub fn connect(
        socket: &Path,
        tag: &str,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, FsError> {
        let path = socket.display().to_string();
        // Check the tag first: it is the caller's mistake, not the backend's.
        let config = config_space(tag)?;
        let stream = UnixStream::connect(socket).map_err(|source| FsError::Connect {
            path: path.clone(),
            source,
        })?;
        Self::from_stream(stream, path, config, interrupt)
    }

    fn from_stream(
        stream: UnixStream,
        backend_name: String,
        config: [u8; TAG_LEN + 4],
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, FsError> {
        stream
            .set_read_timeout(Some(BACKEND_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(BACKEND_TIMEOUT)))
            .map_err(|e| FsError::Io("socket timeouts", e))?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        let handshake = |request, source| FsError::Handshake {
            path: backend_name.clone(),
            request,
            source,
        };
        frontend
            .set_owner()
            .map_err(|e| handshake("SET_OWNER", e))?;
        let backend_features = frontend
            .get_features()
            .map_err(|e| handshake("GET_FEATURES", e))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NotModern(backend_name));
        }
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        if backend_features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(|e| handshake("GET_PROTOCOL_FEATURES", e))?;
            // REPLY_ACK only: every later request is confirmed, so a
            // backend that rejects the memory table or a ring says so.
            protocol_features = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(protocol_features)
                .map_err(|e| handshake("SET_PROTOCOL_FEATURES", e))?;
            if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let new_evt = || {
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| FsError::Io("eventfd", e))
        };
        let call_evts = (0..NUM_QUEUES)
            .map(|_| new_evt())
            .collect::<Result<_, _>>()?;
        info!(
            "virtio-fs: backend {backend_name} offers features {backend_features:#x}, \
             protocol features {protocol_features:?} accepted"
        );
        Ok(Self {
            backend_name,
            backend_features,
            common: VirtioCommon::new(
                VIRTIO_ID_FS,
                "virtio-fs",
                &QUEUE_SIZES,
                backend_features & PASS_THROUGH_FEATURES,
                interrupt,
            )
            .map_err(|e| FsError::Io("eventfd", e))?
            .with_config(config),
            frontend: Some(frontend),
            call_evts,
            work_evt: new_evt()?,
            pending: VecDeque::new(),
            running: false,
        })
    }

    /// Whether the backend is still connected and usable.
    pub fn backend_connected(&self) -> bool {
        self.frontend.is_some()
    }

    /// Does the queued activation and reset work (VMM thread). On a backend
    /// failure the backend is dropped and the driver is told to reset.
    fn run_pending_work(&mut self) {
        while let Some(work) = self.pending.pop_front() {
            let result = match work {
                Work::Start { mem, rings } => self.start_backend(&mem, &rings),
                Work::Stop => self.stop_backend(),
            };
            if let Err(e) = result {
                self.backend_failed(&e.to_string());
                self.pending.clear();
            }
        }
    }

    /// Hands the rings to the backend, in the order the vhost-user
    /// specification requires (memory table before ring addresses, kick last).
    fn start_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        rings: &[RingAddresses],
    ) -> Result<(), vhost::Error> {
        let Some(frontend) = self.frontend.as_mut() else {
            return Err(vhost::Error::InvalidOperation);
        };
        let protocol_bit = self.backend_features & PROTOCOL_FEATURES_BIT;
        frontend.set_features(self.common.acked_features() | protocol_bit)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        frontend.set_mem_table(&regions)?;
        for (index, ring) in rings.iter().enumerate() {
            frontend.set_vring_num(index, ring.size)?;
            frontend.set_vring_addr(
                index,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: ring.size,
                    flags: 0,
                    desc_table_addr: ring.desc,
                    used_ring_addr: ring.used,
                    avail_ring_addr: ring.avail,
                    log_addr: None,
                },
            )?;
            frontend.set_vring_base(index, ring.next_avail)?;
            frontend.set_vring_call(index, &self.call_evts[index])?;
            frontend.set_vring_kick(index, &self.common.queue_events()[index])?;
        }
        // With protocol features negotiated, rings start disabled.
        if protocol_bit != 0 {
            for index in 0..rings.len() {
                frontend.set_vring_enable(index, true)?;
            }
        }
        self.running = true;
        info!("virtio-fs: backend {} serves the queues", self.backend_name);
        Ok(())
    }

    /// Makes the backend stop touching guest memory (driver reset).
    fn stop_backend(&mut self) -> Result<(), vhost::Error> {
        if !std::mem::take(&mut self.running) {
            return Ok(());
        }
        let Some(frontend) = self.frontend.as_mut() else {
            return Ok(());
        };
        for index in 0..NUM_QUEUES {
            if self.backend_features & PROTOCOL_FEATURES_BIT != 0 {
                frontend.set_vring_enable(index, false)?;
            }
            // GET_VRING_BASE stops the ring in the backend.
            frontend.get_vring_base(index)?;
        }
        Ok(())
    }

    fn backend_failed(&mut self, why: &str) {
        if self.frontend.take().is_some() {
            error!(
                "virtio-fs: backend {} failed ({why}); the guest loses this file system \
                 (check the virtiofsd log)",
                self.backend_name
            );
            self.running = false;
            self.common.interrupt().signal_needs_reset();
        }
    }

    /// The backend signalled used buffers on `queue`.
    fn relay_call(&self, queue: usize) {
        if let Some(evt) = self.call_evts.get(queue) {
            // EAGAIN: a spurious wake-up; nothing to relay.
            if evt.read().is_ok() {
                self.common.interrupt().signal_used_queue();
            }
        }
    }

    fn queue_work(&mut self, work: Work) {
        self.pending.push_back(work);
        if let Err(e) = self.work_evt.write(1) {
            error!("virtio-fs: cannot wake the VMM thread: {e}");
        }
    }
}

/// The configuration space: the tag (NUL-padded) and the number of request
/// queues (little endian).
fn config_space(tag: &str) -> Result<[u8; TAG_LEN + 4], FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
        return Err(FsError::InvalidTag(tag.into()));
    }
    let mut config = [0u8; TAG_LEN + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
    Ok(config)
}

/// Checks the rings of a queue the guest programmed and translates them.
fn ring_addresses(mem: &GuestMemoryMmap, queue: &Queue) -> Option<RingAddresses> {
    let size = queue.size();
    let n = u64::from(size);
    // Split ring layout, with the event-index fields (virtio 1.2, 2.7).
    // The backend maps regions separately too: a ring may not straddle two.
    let ring = |addr: u64, len: u64| host_range(mem, GuestAddress(addr), len).map(|p| p as u64);
    let desc = ring(queue.desc_table(), 16 * n)?;
    let avail = ring(queue.avail_ring(), 6 + 2 * n)?;
    let used = ring(queue.used_ring(), 6 + 8 * n)?;
    Some(RingAddresses {
        size,
        next_avail: queue.next_avail(),
        desc,
        avail,
        used,
    })
}

impl VirtioDevice for Fs {
    common_accessors!();

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.common.check_queues(&mem, &queues)?;
        let rings = queues
            .iter()
            .enumerate()
            .map(|(i, q)| ring_addresses(&mem, q).ok_or(ActivateError::InvalidQueue(i)))
            .collect::<Result<Vec<_>, _>>()?;
        if self.frontend.is_none() {
            return Err(ActivateError::BackendUnavailable(format!(
                "{} failed earlier",
                self.backend_name
            )));
        }
        self.queue_work(Work::Start { mem, rings });
        Ok(())
    }

    fn reset(&mut self) {
        self.common.reset_features();
        self.queue_work(Work::Stop);
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // The queue (kick) eventfds are the backend's to read: not polled here.
        for (i, evt) in (0u32..).zip(&self.call_evts) {
            if let Err(e) = ops.add(Events::with_data(evt, i, EventSet::IN)) {
                error!("virtio-fs: cannot poll the call eventfd of queue {i}: {e}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(&self.work_evt, WORK_TOKEN, EventSet::IN)) {
            error!("virtio-fs: cannot poll the work eventfd: {e}");
        }
        // Between requests the backend never writes on this socket: any
        // readiness means it hung up (or broke the protocol).
        if let Some(frontend) = &self.frontend {
            let events = Events::with_data_raw(frontend.as_raw_fd(), BACKEND_TOKEN, EventSet::IN);
            if let Err(e) = ops.add(events) {
                error!("virtio-fs: cannot poll the backend socket: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let socket = self.frontend.as_ref().map(|f| f.as_raw_fd());
        match events.data() {
            WORK_TOKEN => {
                let _ = self.work_evt.read();
                self.run_pending_work();
            }
            BACKEND_TOKEN => {
                let why = if events.event_set().contains(EventSet::HANG_UP) {
                    "it closed the connection"
                } else {
                    "it sent an unsolicited message or closed the connection"
                };
                self.backend_failed(why);
            }
            queue => self.relay_call(queue as usize),
        }
        // The socket is closed with the frontend: stop polling it first.
        if let (Some(fd), None) = (socket, &self.frontend) {
            let events = Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN);
            if let Err(e) = ops.remove(events) {
                warn!("virtio-fs: cannot stop polling the backend socket: {e}");
            }
        }
    }
}

// Test constants (descriptor flags, small lengths and addresses) fit their
// narrower wire types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::thread;

    use vhost::vhost_user::message::FrontendReq;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    use virtio_bindings::virtio_mmio::*;

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_queues::interrupt;
    use crate::devices::{lock, BusDevice};
    use crate::memory::{create_guest_memory_backed, MemoryBacking};

    const ACCESS_PLATFORM: u64 = 1 << 33;
    const RING_PACKED: u64 = 1 << 34;
    const BACKEND_FEATURES: u64 = VIRTIO_F_VERSION_1
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | PROTOCOL_FEATURES_BIT
        | ACCESS_PLATFORM
        | RING_PACKED;

    /// One request the fake backend received: (request code, body).
    type Message = (u32, Vec<u8>);

    /// A scripted vhost-user backend on the other end of a socket pair: it
    /// answers the GET requests and acknowledges the rest, and reports
    /// every message. It hangs up after `limit` messages.
    fn fake_backend(
        mut sock: UnixStream,
        features: u64,
        limit: usize,
    ) -> (mpsc::Receiver<Message>, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            for _ in 0..limit {
                let mut hdr = [0u8; 12];
                if sock.read_exact(&mut hdr).is_err() {
                    return;
                }
                let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
                let (request, flags, size) = (word(0), word(4), word(8));
                let mut body = vec![0u8; size as usize];
                // Descriptors passed along are dropped (closed) by read().
                sock.read_exact(&mut body).unwrap();
                let reply: Option<Vec<u8>> = match request {
                    1 => Some(features.to_le_bytes().to_vec()), // GET_FEATURES
                    // GET_PROTOCOL_FEATURES: MQ and REPLY_ACK.
                    15 => Some(0b1001u64.to_le_bytes().to_vec()),
                    11 => Some(body[..4].iter().chain(&[0u8; 4]).copied().collect()),
                    _ if flags & 0x8 != 0 => Some(0u64.to_le_bytes().to_vec()),
                    _ => None,
                };
                // Recorded before the reply, so the frontend cannot run
                // ahead of the record.
                if tx.send((request, body)).is_err() {
                    return;
                }
                if let Some(payload) = reply {
                    let mut msg = request.to_le_bytes().to_vec();
                    msg.extend(0x5u32.to_le_bytes()); // version 1 | REPLY
                    msg.extend((payload.len() as u32).to_le_bytes());
                    msg.extend(payload);
                    if sock.write_all(&msg).is_err() {
                        return;
                    }
                }
            }
        });
        (rx, handle)
    }

    /// The handshake's last request has no reply: wait until it arrived.
    fn handshake(rx: &mpsc::Receiver<Message>) -> Vec<Message> {
        (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect()
    }

    /// A device on a fake backend, past the handshake.
    fn device(features: u64, limit: usize) -> (Fs, mpsc::Receiver<Message>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (rx, _handle) = fake_backend(theirs, features, limit);
        let fs = Fs::from_stream(
            ours,
            "fake".into(),
            config_space("shared").unwrap(),
            interrupt(),
        )
        .unwrap();
        handshake(&rx);
        (fs, rx)
    }

    fn codes(rx: &mpsc::Receiver<Message>) -> Vec<u32> {
        rx.try_iter().map(|(code, _)| code).collect()
    }

    fn code(req: FrontendReq) -> u32 {
        req.into()
    }

    #[test]
    fn config_space_has_the_tag_and_one_request_queue() {
        let (mut fs, _rx) = device(BACKEND_FEATURES, 100);
        assert_eq!(fs.device_type(), 26);
        let mut tag = [0xffu8; TAG_LEN];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"shared");
        assert!(tag[6..].iter().all(|&b| b == 0));
        let mut queues = [0u8; 4];
        fs.read_config(TAG_LEN as u64, &mut queues);
        assert_eq!(u32::from_le_bytes(queues), 1);
        // Past the end, and guest writes, change nothing.
        let mut past = [0xffu8; 8];
        fs.read_config(38, &mut past);
        assert_eq!(past, [0; 8]);
        fs.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
        fs.write_config(0, b"evil");
        fs.write_config(u64::MAX, b"x");
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"shared");
    }

    #[test]
    fn tags_that_do_not_fit_are_refused() {
        for bad in ["", "a\0b", &"x".repeat(TAG_LEN + 1)] {
            assert!(matches!(config_space(bad), Err(FsError::InvalidTag(_))));
        }
        let longest = config_space(&"t".repeat(TAG_LEN)).unwrap();
        assert_eq!(&longest[..TAG_LEN], "t".repeat(TAG_LEN).as_bytes());
        let err = Fs::connect(Path::new("/nonexistent/fs.sock"), "ok", interrupt())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/fs.sock") && msg.contains("virtiofsd"));
    }

    #[test]
    fn only_known_ring_features_reach_the_guest() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (rx, _h) = fake_backend(theirs, BACKEND_FEATURES, 100);
        let fs =
            Fs::from_stream(ours, "fake".into(), config_space("t").unwrap(), interrupt()).unwrap();
        assert_eq!(fs.avail_features(), PASS_THROUGH_FEATURES);
        let messages = handshake(&rx);
        let got: Vec<u32> = messages.iter().map(|m| m.0).collect();
        let want = [
            FrontendReq::SET_OWNER,
            FrontendReq::GET_FEATURES,
            FrontendReq::GET_PROTOCOL_FEATURES,
            FrontendReq::SET_PROTOCOL_FEATURES,
        ];
        assert_eq!(got, want.map(code));
        // Of MQ and REPLY_ACK offered, only REPLY_ACK is taken.
        let acked = u64::from_le_bytes(messages[3].1[..8].try_into().unwrap());
        assert_eq!(acked, VhostUserProtocolFeatures::REPLY_ACK.bits());

        // A legacy-only backend cannot sit behind virtio-mmio version 2.
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _fake = fake_backend(theirs, 1 << VIRTIO_RING_F_EVENT_IDX, 100);
        let err = Fs::from_stream(ours, "old".into(), config_space("t").unwrap(), interrupt());
        assert!(matches!(err, Err(FsError::NotModern(_))));
    }

    /// Drives the transport like the Linux driver: features, queues, DRIVER_OK.
    fn bring_up(t: &mut MmioTransport, rings: [(u64, u64, u64); 2], features: u64) {
        let w = |t: &mut MmioTransport, off: u32, v: u32| t.write(u64::from(off), &v.to_le_bytes());
        w(t, VIRTIO_MMIO_STATUS, 1);
        w(t, VIRTIO_MMIO_STATUS, 3);
        for sel in 0..2u32 {
            w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            w(
                t,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        w(t, VIRTIO_MMIO_STATUS, 0xb);
        for (i, (desc, avail, used)) in rings.into_iter().enumerate() {
            w(t, VIRTIO_MMIO_QUEUE_SEL, i as u32);
            w(t, VIRTIO_MMIO_QUEUE_NUM, 256);
            w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
            w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
            w(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
            w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
            w(t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        w(t, VIRTIO_MMIO_STATUS, 0xf);
    }

    fn status(t: &mut MmioTransport) -> u32 {
        let mut word = [0u8; 4];
        t.read(u64::from(VIRTIO_MMIO_STATUS), &mut word);
        u32::from_le_bytes(word)
    }

    const GOOD_RINGS: [(u64, u64, u64); 2] = [
        (0x10_0000, 0x10_1000, 0x10_2000),
        (0x20_0000, 0x20_1000, 0x20_2000),
    ];

    #[test]
    fn driver_ok_hands_the_translated_rings_to_the_backend() {
        let mem = create_guest_memory_backed(16 << 20, MemoryBacking::SharedMemfd).unwrap();
        let (fs, rx) = device(BACKEND_FEATURES, 100);
        let fs = Arc::new(Mutex::new(fs));
        let mut t = MmioTransport::new(mem.clone(), fs.clone()).unwrap();
        let guest_features = VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX);
        bring_up(&mut t, GOOD_RINGS, guest_features);
        // Nothing reaches the backend on the vCPU thread...
        rx.try_recv().unwrap_err();
        assert_eq!(lock(&fs).work_evt.read().unwrap(), 1);
        // ...only when the VMM thread runs the queued work.
        lock(&fs).run_pending_work();
        assert!(lock(&fs).running);
        let messages: Vec<Message> = rx.try_iter().collect();
        let got: Vec<u32> = messages.iter().map(|m| m.0).collect();
        let per_ring = [
            FrontendReq::SET_VRING_NUM,
            FrontendReq::SET_VRING_ADDR,
            FrontendReq::SET_VRING_BASE,
            FrontendReq::SET_VRING_CALL,
            FrontendReq::SET_VRING_KICK,
        ];
        let mut want = vec![
            code(FrontendReq::SET_FEATURES),
            code(FrontendReq::SET_MEM_TABLE),
        ];
        for _ in 0..2 {
            want.extend(per_ring.iter().map(|r| code(*r)));
        }
        want.extend([code(FrontendReq::SET_VRING_ENABLE); 2]);
        assert_eq!(got, want);
        // The guest's features plus the vhost-user protocol bit.
        let features = u64::from_le_bytes(messages[0].1[..8].try_into().unwrap());
        assert_eq!(features, guest_features | PROTOCOL_FEATURES_BIT);
        // Memory table: one region at 0 of 16 MiB, at our mapping.
        let table = &messages[1].1;
        let word = |i: usize| u64::from_le_bytes(table[i..i + 8].try_into().unwrap());
        assert_eq!(u32::from_le_bytes(table[..4].try_into().unwrap()), 1);
        let host_base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!((word(8), word(16), word(24)), (0, 16 << 20, host_base));
        // Ring 1 addresses are our addresses of the guest's rings.
        let addr = &messages[2 + 5 + 1].1;
        let word = |i: usize| u64::from_le_bytes(addr[i..i + 8].try_into().unwrap());
        assert_eq!(u32::from_le_bytes(addr[..4].try_into().unwrap()), 1);
        assert_eq!(
            (word(8), word(16), word(24)),
            (
                host_base + 0x20_0000,
                host_base + 0x20_2000,
                host_base + 0x20_1000
            )
        );

        // The backend's call becomes a used-ring interrupt the guest can see.
        lock(&fs).call_evts[1].write(1).unwrap();
        lock(&fs).relay_call(1);
        let mut isr = [0u8; 4];
        t.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), &mut isr);
        assert_eq!(u32::from_le_bytes(isr), VIRTIO_MMIO_INT_VRING);
        assert_eq!(lock(&fs).common.interrupt().irqfd().read().unwrap(), 1);

        // Driver reset: the backend is told to stop both rings.
        t.write(u64::from(VIRTIO_MMIO_STATUS), &0u32.to_le_bytes());
        lock(&fs).run_pending_work();
        let stop = [FrontendReq::SET_VRING_ENABLE, FrontendReq::GET_VRING_BASE].map(code);
        assert_eq!(codes(&rx), [stop, stop].concat());
        assert!(!lock(&fs).running && lock(&fs).backend_connected());
    }

    #[test]
    fn rings_outside_guest_memory_never_reach_the_backend() {
        let mem = create_guest_memory_backed(16 << 20, MemoryBacking::SharedMemfd).unwrap();
        let end = 16u64 << 20;
        let bad_rings = [
            // Descriptor table far outside memory.
            [(0x10_0000_0000, 0x10_1000, 0x10_2000), GOOD_RINGS[1]],
            // Used ring starting in memory but running past its end.
            [(0x10_0000, 0x10_1000, end - 0x100), GOOD_RINGS[1]],
            // Address wrapping around the 64-bit space.
            [GOOD_RINGS[0], (u64::MAX - 0xf, 0x20_1000, 0x20_2000)],
        ];
        for rings in bad_rings {
            let (fs, rx) = device(BACKEND_FEATURES, 100);
            let fs = Arc::new(Mutex::new(fs));
            let mut t = MmioTransport::new(mem.clone(), fs.clone()).unwrap();
            bring_up(&mut t, rings, VIRTIO_F_VERSION_1);
            assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{rings:?}");
            lock(&fs).run_pending_work();
            assert!(codes(&rx).is_empty(), "{rings:?}");
            assert!(!lock(&fs).running);
        }
        // Unit check of the straddling rule on a guest with two regions.
        let mem = create_guest_memory_backed(
            crate::memory::MMIO_GAP_START + (1 << 20),
            MemoryBacking::Private,
        )
        .unwrap();
        let gap = crate::memory::MMIO_GAP_START;
        assert!(host_range(&mem, GuestAddress(gap - 16), 16).is_some());
        assert!(host_range(&mem, GuestAddress(gap - 16), 17).is_none());
        assert!(host_range(&mem, GuestAddress(gap), 1).is_none());
        assert!(host_range(&mem, GuestAddress(1 << 32), 1 << 20).is_some());
        assert!(host_range(&mem, GuestAddress(1 << 32), (1 << 20) + 1).is_none());
    }

    #[test]
    fn a_dead_backend_puts_the_device_in_needs_reset_and_nothing_panics() {
        let mem = create_guest_memory_backed(16 << 20, MemoryBacking::SharedMemfd).unwrap();
        // The backend answers the 4 handshake requests and the first two of
        // activation (features, memory table), then hangs up.
        let (fs, rx) = device(BACKEND_FEATURES, 6);
        let fs = Arc::new(Mutex::new(fs));
        let mut t = MmioTransport::new(mem.clone(), fs.clone()).unwrap();
        bring_up(&mut t, GOOD_RINGS, VIRTIO_F_VERSION_1);
        assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        lock(&fs).run_pending_work();
        assert_eq!(codes(&rx).len(), 2);
        assert!(!lock(&fs).backend_connected());
        assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        let mut isr = [0u8; 4];
        t.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), &mut isr);
        assert_eq!(u32::from_le_bytes(isr), VIRTIO_MMIO_INT_CONFIG);
        // The driver resets and tries again: refused at once, no hang.
        t.write(u64::from(VIRTIO_MMIO_STATUS), &0u32.to_le_bytes());
        assert_eq!(status(&mut t), 0);
        lock(&fs).run_pending_work();
        bring_up(&mut t, GOOD_RINGS, VIRTIO_F_VERSION_1);
        assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(lock(&fs).pending.is_empty());
    }

    /// The real virtiofsd (installed by scripts/setup) accepts the
    /// handshake, the memfd memory table and the rings, and a dead
    /// virtiofsd is noticed on the next request.
    #[test]
    fn real_virtiofsd_accepts_the_rings() {
        let dir = tempfile::tempdir().unwrap();
        let (mut daemon, socket) = crate::test_utils::spawn_virtiofsd(dir.path());
        let mem = create_guest_memory_backed(16 << 20, MemoryBacking::SharedMemfd).unwrap();
        let fs = Fs::connect(&socket, "real", interrupt()).unwrap();
        assert_eq!(fs.avail_features() & VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1);
        let fs = Arc::new(Mutex::new(fs));
        let mut t = MmioTransport::new(mem, fs.clone()).unwrap();
        bring_up(&mut t, GOOD_RINGS, VIRTIO_F_VERSION_1);
        lock(&fs).run_pending_work();
        let started = lock(&fs).running && lock(&fs).backend_connected();
        t.write(u64::from(VIRTIO_MMIO_STATUS), &0u32.to_le_bytes());
        lock(&fs).run_pending_work();
        let stopped = !lock(&fs).running && lock(&fs).backend_connected();
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        assert!(
            started,
            "virtiofsd refused the rings (see its output above)"
        );
        assert!(stopped, "virtiofsd refused to stop the rings");
        bring_up(&mut t, GOOD_RINGS, VIRTIO_F_VERSION_1);
        lock(&fs).run_pending_work();
        assert!(!lock(&fs).backend_connected());
        assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }
}
