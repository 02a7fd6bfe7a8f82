//! The hybrid vsock backend (the Firecracker convention) on Unix sockets.
//!
//! * Host to guest: the host connects to `<uds>`, writes `CONNECT <port>\n`,
//!   and reads `OK <host_port>\n` once the guest accepted; if the guest
//!   refuses, the socket is closed.
//! * Guest to host: a guest connection to host port `P` is connected to the
//!   Unix socket `<uds>_P`; if nobody listens there the guest gets a RST.
//!
//! The muxer keeps its own epoll set (listener, handshakes, connections);
//! the device's event loop only polls the muxer's epoll fd.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Reset};
use super::defs::*;
use super::VsockHeader;

/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host connections still sending their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Most RSTs waiting for guest RX buffers.
const MAX_PENDING_RSTS: usize = 1024;
/// Host ports handed out to host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll token of the listener (other tokens are file descriptors).
const LISTENER_TOKEN: u64 = u64::MAX;
/// Events handled per `process_events` call.
const EVENT_BATCH: usize = 32;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Multiplexes vsock streams onto Unix sockets.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Connections that may have a packet for the guest.
    rxq: VecDeque<ConnKey>,
    /// RSTs for connections that are gone (or never existed).
    rsts: VecDeque<ConnKey>,
    next_local_port: u32,
}

/// Connects to a Unix socket without ever blocking: a listener whose backlog
/// is full is treated like one that refuses.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let addr_len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un and the length
    // passed is its size.
    let ret = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), addr_len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line
        .strip_prefix("CONNECT ")?
        .trim_end_matches(['\n', '\r']);
    port.parse().ok()
}

impl VsockMuxer {
    /// Listens on `uds_path` (which must not exist) for a guest with `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> io::Result<Self> {
        let listener = UnixListener::bind(&uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The fd the event loop polls for readiness.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a packet may be waiting for a guest RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        for (fd, _) in self.handshakes.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rxq.clear();
        self.rsts.clear();
    }

    /// Handles one batch of socket readiness events.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                warn!("vsock: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let set = EventSet::from_bits_truncate(ev.events());
            if ev.data() == LISTENER_TOKEN {
                self.accept();
                continue;
            }
            let Ok(fd) = RawFd::try_from(ev.data()) else {
                continue;
            };
            if self.handshakes.contains_key(&fd) {
                self.read_handshake(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                self.conn_event(key, set);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
                warn!("vsock: too many connections, refusing a host connection");
                continue;
            }
            let fd = stream.as_raw_fd();
            let added = stream.set_nonblocking(true).and_then(|_| {
                self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd_token(fd)),
                )
            });
            match added {
                Ok(()) => {
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) => warn!("vsock: cannot poll a host connection: {e}"),
            }
        }
    }

    /// Reads the `CONNECT` line byte by byte so no payload after it is consumed.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_HANDSHAKE_LINE => hs.line.push(byte[0]),
                Ok(_) => break None, // EOF or line too long
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let hs = self.handshakes.remove(&fd).expect("handshake present");
        let Some(peer_port) = port else {
            debug!(
                "vsock: bad handshake {:?}",
                String::from_utf8_lossy(&hs.line)
            );
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        };
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            warn!("vsock: no free host port");
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        };
        debug!("vsock: host connects to guest port {peer_port} from {local_port}");
        let key = ConnKey {
            local_port,
            peer_port,
        };
        self.conns
            .insert(key, Connection::new_local(hs.stream, local_port, peer_port));
        self.by_fd.insert(fd, key);
        self.after_change(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut result = Ok(());
        if set.contains(EventSet::ERROR) {
            result = Err(Reset("host socket error"));
        } else {
            if set.contains(EventSet::IN) {
                conn.notify_readable();
            }
            if set.contains(EventSet::OUT) {
                result = conn.flush_tx();
            }
            if result.is_ok() && set.contains(EventSet::HANG_UP) {
                let fd = conn.stream().as_raw_fd();
                // HUP is reported whatever the interest: stop polling for good.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                result = conn.notify_hup();
            }
        }
        match result {
            Ok(()) => self.after_change(key),
            Err(Reset(why)) => self.reset_conn(key, why),
        }
    }

    /// Re-arms polling and queues the connection if it has something to send.
    fn after_change(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.has_pending_rx() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(key);
        }
        let fd = conn.stream().as_raw_fd();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(conn.interest()), fd_token(fd));
        // Fails with ENOENT once the socket hung up and was taken out: fine.
        if self.epoll.ctl(ControlOperation::Modify, fd, ev).is_err() {
            let _ = self.epoll.ctl(ControlOperation::Add, fd, ev);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
        }
    }

    fn reset_conn(&mut self, key: ConnKey, why: &str) {
        debug!("vsock: reset {}:{} ({why})", key.local_port, key.peer_port);
        self.remove(key);
        self.queue_rst(key);
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() < MAX_PENDING_RSTS {
            self.rsts.push_back(key);
        } else {
            debug!("vsock: RST queue full, dropping a RST");
        }
    }

    /// Handles one packet the guest sent (already parsed from the TX queue).
    pub fn send_to_host(&mut self, hdr: &VsockHeader, data: Option<&VolatileSlice<'_, ()>>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            debug!(
                "vsock: dropping packet from cid {} to cid {}",
                hdr.src_cid, hdr.dst_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            debug!("vsock: unsupported socket type {}", hdr.type_);
            if hdr.op != OP_RST {
                self.queue_rst(key);
            }
            return;
        }
        match (hdr.op, self.conns.contains_key(&key)) {
            (OP_RST, true) => {
                debug!("vsock: guest reset {}:{}", key.local_port, key.peer_port);
                self.remove(key);
            }
            (OP_RST, false) => {}
            (OP_REQUEST, false) => self.connect_to_host(key, hdr),
            (OP_REQUEST, true) => self.reset_conn(key, "duplicate REQUEST"),
            (_, false) => self.queue_rst(key),
            (_, true) => {
                let conn = self.conns.get_mut(&key).expect("connection present");
                match conn.recv_from_guest(hdr, data) {
                    Ok(()) => self.after_change(key),
                    Err(Reset(why)) => self.reset_conn(key, why),
                }
            }
        }
    }

    fn connect_to_host(&mut self, key: ConnKey, hdr: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!("vsock: too many connections, refusing guest connection");
            self.queue_rst(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connection to {path:?} refused: {e}");
                self.queue_rst(key);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::empty(), fd_token(fd)),
        ) {
            warn!("vsock: cannot poll {path:?}: {e}");
            self.queue_rst(key);
            return;
        }
        info!("vsock: guest port {} connected to {path:?}", key.peer_port);
        self.conns.insert(key, Connection::new_peer(stream, hdr));
        self.by_fd.insert(fd, key);
        self.after_change(key);
    }

    /// Produces the next packet for the guest into `data` (the payload part
    /// of a guest RX buffer). `None` when there is nothing to send.
    pub fn fill_rx(&mut self, data: Option<&VolatileSlice<'_, ()>>) -> Option<VsockHeader> {
        if let Some(key) = self.rsts.pop_front() {
            return Some(VsockHeader {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                op: OP_RST,
                ..Default::default()
            });
        }
        // Each queued connection gets one chance per call, so a connection
        // that cannot use this buffer does not spin here.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.fill_rx(data) {
                Ok(Some(mut hdr)) => {
                    hdr.dst_cid = self.guest_cid;
                    self.after_change(key);
                    return Some(hdr);
                }
                Ok(None) => self.after_change(key),
                Err(Reset(why)) => {
                    self.reset_conn(key, why);
                    return self.fill_rx(data);
                }
            }
        }
        None
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        // The socket file was ours; leave nothing behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// The epoll token of a socket: its descriptor, which is never negative
/// (the listener's token, `u64::MAX`, can never be one).
fn fd_token(fd: RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(LISTENER_TOKEN - 1)
}

// Test constants (descriptor flags, small lengths and addresses) fit their
// narrower wire types.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::connection::CONN_BUF_ALLOC;
    use std::io::Write;
    use std::time::Duration;

    const GUEST_CID: u64 = 3;

    struct Env {
        dir: tempfile::TempDir,
        muxer: VsockMuxer,
    }

    impl Env {
        fn new() -> Self {
            let dir = tempfile::TempDir::new().unwrap();
            let muxer = VsockMuxer::new(GUEST_CID, dir.path().join("v.sock")).unwrap();
            Self { dir, muxer }
        }

        fn uds(&self) -> PathBuf {
            self.dir.path().join("v.sock")
        }

        /// A host client that sent `CONNECT port` and whose REQUEST reached the guest.
        fn host_connect(&mut self, port: u32) -> (UnixStream, VsockHeader) {
            let mut s = UnixStream::connect(self.uds()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            writeln!(s, "CONNECT {port}").unwrap();
            self.poll();
            let (req, _) = self.recv().expect("REQUEST for the guest");
            assert_eq!(req.op, OP_REQUEST);
            assert_eq!(
                (req.dst_cid, req.dst_port, req.src_cid),
                (GUEST_CID, port, HOST_CID)
            );
            assert!(req.src_port >= FIRST_LOCAL_PORT);
            (s, req)
        }

        fn poll(&mut self) {
            // Accept, then read the handshake: two rounds of ready events.
            for _ in 0..3 {
                self.muxer.process_events();
            }
        }

        fn recv(&mut self) -> Option<(VsockHeader, Vec<u8>)> {
            self.recv_into(4096)
        }

        fn recv_into(&mut self, size: usize) -> Option<(VsockHeader, Vec<u8>)> {
            let mut buf = vec![0u8; size];
            let slice = VolatileSlice::from(&mut buf[..]);
            let hdr = self.muxer.fill_rx(Some(&slice))?;
            buf.truncate(hdr.len as usize);
            Some((hdr, buf))
        }

        fn send(&mut self, mut hdr: VsockHeader, data: &[u8]) {
            let mut data = data.to_vec();
            hdr.len = data.len() as u32;
            let slice = VolatileSlice::from(&mut data[..]);
            let data = (!slice.is_empty()).then_some(&slice);
            self.muxer.send_to_host(&hdr, data);
        }
    }

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        }
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn host_initiated_connection_round_trip() {
        let mut env = Env::new();
        let (mut host, req) = env.host_connect(1234);
        let local = req.src_port;
        env.send(guest_hdr(OP_RESPONSE, 1234, local), b"");
        assert_eq!(read_line(&mut host), format!("OK {local}"));

        host.write_all(b"ping").unwrap();
        env.poll();
        let (hdr, data) = env.recv().unwrap();
        assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (OP_RW, local, 1234));
        assert_eq!(data, b"ping");
        assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC);

        env.send(guest_hdr(OP_RW, 1234, local), b"pong");
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");

        // The host hangs up: the guest is told both directions are closed.
        drop(host);
        env.poll();
        let (hdr, _) = env.recv().unwrap();
        assert_eq!(
            (hdr.op, hdr.flags),
            (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        );
        env.send(guest_hdr(OP_RST, 1234, local), b"");
        assert_eq!(env.muxer.connection_count(), 0);
        assert!(env.recv().is_none());
    }

    #[test]
    fn guest_refusal_closes_the_host_socket() {
        let mut env = Env::new();
        let (mut host, req) = env.host_connect(99);
        env.send(guest_hdr(OP_RST, 99, req.src_port), b"");
        assert_eq!(env.muxer.connection_count(), 0);
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn bad_handshakes_are_closed() {
        let mut env = Env::new();
        for line in [
            &b"HELLO 5\n"[..],
            b"CONNECT x\n",
            b"CONNECT 99999999999\n",
            &[b'A'; 40],
        ] {
            let mut s = UnixStream::connect(env.uds()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(line).unwrap();
            env.poll();
            // Closed: EOF, or a reset if our unread bytes were discarded.
            let mut buf = [0u8; 8];
            match s.read(&mut buf) {
                Ok(n) => assert_eq!(n, 0, "{line:?}"),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            }
        }
        assert!(!env.muxer.has_pending_rx());
        assert_eq!(env.muxer.connection_count(), 0);
    }

    #[test]
    fn guest_initiated_connection() {
        let mut env = Env::new();
        let mut path = env.uds().into_os_string();
        path.push("_5000");
        let listener = UnixListener::bind(&path).unwrap();
        env.send(guest_hdr(OP_REQUEST, 1000, 5000), b"");
        let (hdr, _) = env.recv().unwrap();
        assert_eq!(
            (hdr.op, hdr.src_port, hdr.dst_port),
            (OP_RESPONSE, 5000, 1000)
        );
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        env.send(guest_hdr(OP_RW, 1000, 5000), b"hello");
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        host.write_all(b"world").unwrap();
        env.poll();
        let (hdr, data) = env.recv().unwrap();
        assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"world"[..]));

        // The guest closes: the host sees EOF, the guest gets its RST.
        env.send(guest_hdr(OP_SHUTDOWN, 1000, 5000).with_flags(3), b"");
        let (hdr, _) = env.recv().unwrap();
        assert_eq!(hdr.op, OP_RST);
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        assert_eq!(env.muxer.connection_count(), 0);
    }

    #[test]
    fn guest_connection_to_nobody_is_reset() {
        let mut env = Env::new();
        env.send(guest_hdr(OP_REQUEST, 1000, 4444), b"");
        let (hdr, _) = env.recv().unwrap();
        assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (OP_RST, 4444, 1000));
        assert_eq!(env.muxer.connection_count(), 0);
    }

    #[test]
    fn bad_headers_are_dropped_or_reset() {
        let mut env = Env::new();
        // Wrong source or destination CID: dropped silently.
        let mut h = guest_hdr(OP_REQUEST, 1, 2);
        h.src_cid = 7;
        env.send(h, b"");
        let mut h = guest_hdr(OP_REQUEST, 1, 2);
        h.dst_cid = 5;
        env.send(h, b"");
        assert!(!env.muxer.has_pending_rx());
        // Unsupported socket type, unknown operation, data for no connection: RST.
        let mut h = guest_hdr(OP_REQUEST, 1, 2);
        h.type_ = 2;
        env.send(h, b"");
        env.send(guest_hdr(99, 1, 2), b"");
        env.send(guest_hdr(OP_RW, 1, 2), b"data");
        for _ in 0..3 {
            assert_eq!(env.recv().unwrap().0.op, OP_RST);
        }
        // A RST for nothing gets no answer.
        env.send(guest_hdr(OP_RST, 1, 2), b"");
        assert!(env.recv().is_none());
    }

    #[test]
    fn unexpected_operations_reset_the_connection() {
        let mut env = Env::new();
        let (mut host, req) = env.host_connect(7);
        // Data before the guest accepted.
        env.send(guest_hdr(OP_RW, 7, req.src_port), b"early");
        assert_eq!(env.recv().unwrap().0.op, OP_RST);
        assert_eq!(env.muxer.connection_count(), 0);
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn host_to_guest_respects_guest_credit() {
        let mut env = Env::new();
        let (mut host, req) = env.host_connect(80);
        let local = req.src_port;
        let mut resp = guest_hdr(OP_RESPONSE, 80, local);
        resp.buf_alloc = 8;
        env.send(resp, b"");
        read_line(&mut host);
        host.write_all(&[1u8; 20]).unwrap();
        env.poll();
        let (hdr, data) = env.recv().unwrap();
        assert_eq!((hdr.op, data.len()), (OP_RW, 8));
        // Out of credit: ask for more, send nothing else.
        assert_eq!(env.recv().unwrap().0.op, OP_CREDIT_REQUEST);
        env.poll();
        assert!(env.recv().is_none());
        // The guest consumed 8 bytes.
        let mut upd = guest_hdr(OP_CREDIT_UPDATE, 80, local);
        upd.buf_alloc = 8;
        upd.fwd_cnt = 8;
        env.send(upd, b"");
        let (hdr, data) = env.recv().unwrap();
        assert_eq!((hdr.op, data.len()), (OP_RW, 8));
    }

    #[test]
    fn guest_exceeding_its_credit_is_reset() {
        let mut env = Env::new();
        let (host, req) = env.host_connect(81);
        let local = req.src_port;
        env.send(guest_hdr(OP_RESPONSE, 81, local), b"");
        // The host never reads: its socket buffer fills, then ours.
        let chunk = vec![0u8; MAX_PKT_DATA as usize];
        let mut reset = false;
        for _ in 0..64 {
            env.send(guest_hdr(OP_RW, 81, local), &chunk);
            if env.muxer.connection_count() == 0 {
                reset = true;
                break;
            }
        }
        assert!(reset, "credit violation must reset the connection");
        let mut saw_rst = false;
        while let Some((hdr, _)) = env.recv() {
            saw_rst |= hdr.op == OP_RST;
        }
        assert!(saw_rst);
        drop(host);
    }

    #[test]
    fn credit_update_after_guest_data_is_consumed() {
        let mut env = Env::new();
        let (mut host, req) = env.host_connect(82);
        let local = req.src_port;
        env.send(guest_hdr(OP_RESPONSE, 82, local), b"");
        read_line(&mut host);
        let chunk = vec![7u8; MAX_PKT_DATA as usize];
        env.send(guest_hdr(OP_RW, 82, local), &chunk);
        let mut got = vec![0u8; chunk.len()];
        host.read_exact(&mut got).unwrap();
        // 64 KiB consumed: at least a quarter of our buffer, so tell the guest.
        let (hdr, _) = env.recv().unwrap();
        assert_eq!(hdr.op, OP_CREDIT_UPDATE);
        assert_eq!(hdr.fwd_cnt, MAX_PKT_DATA);
    }

    #[test]
    fn reset_drops_everything() {
        let mut env = Env::new();
        let (mut host, _) = env.host_connect(5);
        env.muxer.reset();
        assert_eq!(env.muxer.connection_count(), 0);
        assert!(!env.muxer.has_pending_rx());
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn socket_file_is_removed_on_drop() {
        let env = Env::new();
        let path = env.uds();
        assert!(path.exists());
        drop(env.muxer);
        assert!(!path.exists());
    }

    impl VsockHeader {
        fn with_flags(mut self, flags: u32) -> Self {
            self.flags = flags;
            self
        }
    }
}
