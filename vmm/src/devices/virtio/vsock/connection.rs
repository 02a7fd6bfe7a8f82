//! One vsock stream between a guest port and a host Unix socket: state,
//! credit-based flow control (virtio 1.2, section 5.10.6.3) and shutdown.

use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::defs::*;
use super::VsockHeader;

/// Our receive buffer per connection, advertised to the guest as buf_alloc.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much of our buffer was freed unannounced.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

fn io_kind(e: &VolatileMemoryError) -> Option<io::ErrorKind> {
    match e {
        VolatileMemoryError::IOError(e) => Some(e.kind()),
        _ => None,
    }
}

/// The connection must be dropped and the guest told with a RST.
#[derive(Debug, PartialEq, Eq)]
pub struct Reset(pub &'static str);

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected; our REQUEST waits for the guest's RESPONSE.
    LocalInit,
    /// Both sides connected.
    Established,
}

/// A vsock stream connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    /// Host-side (our) port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    state: ConnState,
    /// Control packets waiting for a guest RX buffer.
    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    need_credit_request: bool,
    /// Shutdown flags told to the guest so far.
    shutdown_sent: u32,
    /// Shutdown flags the guest sent.
    peer_shutdown: u32,
    // Host -> guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The stream has (or may have) data we have not read.
    readable: bool,
    /// Read returned end of file.
    host_eof: bool,
    /// The host closed its socket completely.
    host_hup: bool,
    // Guest -> host.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes for the host not written yet; the first `tx_ctrl_len` are ours
    /// (the `OK <port>` line), the rest guest data.
    tx_buf: Vec<u8>,
    tx_ctrl_len: usize,
    /// Already in the muxer's RX queue.
    pub(super) queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_credit_request: false,
            shutdown_sent: 0,
            peer_shutdown: 0,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: false,
            host_eof: false,
            host_hup: false,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: Vec::new(),
            tx_ctrl_len: 0,
            queued: false,
        }
    }

    /// A host-initiated connection (after `CONNECT <port>`): sends a REQUEST.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, ConnState::LocalInit);
        c.need_request = true;
        c
    }

    /// A guest-initiated connection, already connected on the host side:
    /// answers with a RESPONSE.
    pub fn new_peer(stream: UnixStream, hdr: &VsockHeader) -> Self {
        let mut c = Self::new(stream, hdr.dst_port, hdr.src_port, ConnState::Established);
        c.need_response = true;
        c.update_peer_credit(hdr);
        c
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    fn update_peer_credit(&mut self, hdr: &VsockHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.need_credit_request = false;
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_to_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    fn desired_shutdown(&self) -> u32 {
        let mut flags = 0;
        if self.host_eof {
            flags |= SHUTDOWN_SEND;
        }
        if self.host_hup {
            flags |= SHUTDOWN_RCV;
        }
        flags
    }

    /// Whether `fill_rx` may produce a packet.
    pub fn has_pending_rx(&self) -> bool {
        self.need_request
            || self.need_response
            || self.need_credit_update
            || self.need_credit_request
            || self.desired_shutdown() != self.shutdown_sent
            || (self.readable && self.wants_to_read() && self.peer_credit() > 0)
    }

    /// The epoll events this connection wants (HUP and ERR always come).
    pub fn interest(&self) -> u32 {
        let mut ev = 0;
        if !self.host_hup {
            if !self.readable && self.wants_to_read() && self.peer_credit() > 0 {
                ev |= libc::EPOLLIN as u32;
            }
            if !self.tx_buf.is_empty() {
                ev |= libc::EPOLLOUT as u32;
            }
        }
        ev
    }

    /// The host side became readable.
    pub fn notify_readable(&mut self) {
        self.readable = true;
    }

    /// The host closed the socket. Data it sent may still be buffered: read
    /// it out, then tell the guest. The caller stops polling the socket.
    pub fn notify_hup(&mut self) -> Result<(), Reset> {
        if self.state != ConnState::Established {
            return Err(Reset("host closed before the guest accepted"));
        }
        self.host_hup = true;
        self.readable = true;
        self.tx_buf.clear();
        self.tx_ctrl_len = 0;
        if self.peer_shutdown & SHUTDOWN_RCV != 0 {
            // Nobody is left to read anything.
            return Err(Reset("both sides closed"));
        }
        Ok(())
    }

    /// Handles a packet from the guest (not RST or REQUEST: the muxer does those).
    pub fn recv_from_guest(
        &mut self,
        hdr: &VsockHeader,
        data: Option<&VolatileSlice<'_, ()>>,
    ) -> Result<(), Reset> {
        self.update_peer_credit(hdr);
        match hdr.op {
            OP_RESPONSE => {
                if self.state != ConnState::LocalInit {
                    return Err(Reset("unexpected RESPONSE"));
                }
                self.state = ConnState::Established;
                let line = format!("OK {}\n", self.local_port);
                self.tx_buf.splice(0..0, line.bytes());
                self.tx_ctrl_len += line.len();
                self.flush_tx()
            }
            OP_RW => self.recv_data(data),
            OP_CREDIT_UPDATE => Ok(()),
            OP_CREDIT_REQUEST => {
                self.need_credit_update = true;
                Ok(())
            }
            OP_SHUTDOWN => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.host_hup && self.peer_shutdown & SHUTDOWN_RCV != 0 {
                    return Err(Reset("both sides closed"));
                }
                self.flush_tx()
            }
            _ => Err(Reset("unexpected operation")),
        }
    }

    fn recv_data(&mut self, data: Option<&VolatileSlice<'_, ()>>) -> Result<(), Reset> {
        if self.state != ConnState::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Err(Reset("data on a connection that is not open for it"));
        }
        let Some(data) = data else { return Ok(()) };
        if self.host_hup {
            // Nobody reads this any more; the guest learns through SHUTDOWN.
            self.fwd_cnt += len32(data.len());
            return Ok(());
        }
        let pending = self.tx_buf.len() - self.tx_ctrl_len;
        if pending + data.len() > CONN_BUF_ALLOC as usize {
            return Err(Reset("guest exceeded its credit"));
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = match self.stream.write_volatile(data) {
                Ok(n) => n,
                Err(e) if io_kind(&e) == Some(io::ErrorKind::WouldBlock) => 0,
                Err(_) => return Err(Reset("host socket write failed")),
            };
            self.forwarded(written);
        }
        if written < data.len() {
            let rest = data.offset(written).map_err(|_| Reset("bad data slice"))?;
            let old = self.tx_buf.len();
            self.tx_buf.resize(old + rest.len(), 0);
            rest.copy_to(&mut self.tx_buf[old..]);
        }
        Ok(())
    }

    fn forwarded(&mut self, bytes: usize) {
        self.fwd_cnt += len32(bytes);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.need_credit_update = true;
        }
    }

    /// Writes buffered bytes to the host; applies the guest's SHUTDOWN once
    /// everything it sent has been delivered.
    pub fn flush_tx(&mut self) -> Result<(), Reset> {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(0) => return Err(Reset("host socket closed")),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let ctrl = n.min(self.tx_ctrl_len);
                    self.tx_ctrl_len -= ctrl;
                    self.forwarded(n - ctrl);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Reset("host socket write failed")),
            }
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            if self.peer_shutdown & SHUTDOWN_RCV != 0 {
                // The guest closed: everything was delivered, finish with a RST.
                return Err(Reset("guest closed"));
            }
            // ENOTCONN if the host is gone already: nothing left to do then.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: 0, // filled in by the muxer
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet for the guest: a control packet, or data read
    /// from the host into `data` (the guest's RX buffer). `Ok(None)`: nothing
    /// to send now.
    pub fn fill_rx(
        &mut self,
        data: Option<&VolatileSlice<'_, ()>>,
    ) -> Result<Option<VsockHeader>, Reset> {
        if self.need_request {
            self.need_request = false;
            return Ok(Some(self.header(OP_REQUEST, 0, 0)));
        }
        if self.need_response {
            self.need_response = false;
            return Ok(Some(self.header(OP_RESPONSE, 0, 0)));
        }
        if self.readable && self.wants_to_read() && self.peer_credit() > 0 {
            if let Some(hdr) = self.read_data(data)? {
                return Ok(Some(hdr));
            }
        }
        let shutdown = self.desired_shutdown();
        if shutdown != self.shutdown_sent {
            self.shutdown_sent = shutdown;
            return Ok(Some(self.header(OP_SHUTDOWN, 0, shutdown)));
        }
        if self.need_credit_request {
            self.need_credit_request = false;
            return Ok(Some(self.header(OP_CREDIT_REQUEST, 0, 0)));
        }
        if self.need_credit_update {
            self.need_credit_update = false;
            return Ok(Some(self.header(OP_CREDIT_UPDATE, 0, 0)));
        }
        Ok(None)
    }

    fn read_data(
        &mut self,
        data: Option<&VolatileSlice<'_, ()>>,
    ) -> Result<Option<VsockHeader>, Reset> {
        let Some(data) = data else { return Ok(None) };
        let max = (self.peer_credit() as usize)
            .min(data.len())
            .min(MAX_PKT_DATA as usize);
        let mut buf = data.subslice(0, max).map_err(|_| Reset("bad RX buffer"))?;
        match self.stream.read_volatile(&mut buf) {
            Ok(0) => {
                self.host_eof = true;
                self.readable = false;
                Ok(None)
            }
            Ok(n) => {
                self.rx_cnt += len32(n);
                if self.peer_credit() == 0 {
                    self.need_credit_request = true;
                }
                Ok(Some(self.header(OP_RW, len32(n), 0)))
            }
            Err(e) if io_kind(&e) == Some(io::ErrorKind::WouldBlock) => {
                // A closed host never blocks: HUP means read until EOF.
                self.readable = self.host_hup;
                Ok(None)
            }
            Err(e) if io_kind(&e) == Some(io::ErrorKind::Interrupted) => Ok(None),
            Err(_) => Err(Reset("host socket read failed")),
        }
    }
}

/// A packet length as the protocol's 32-bit counters count it. Every length
/// here is bounded by one packet ([`MAX_PKT_DATA`]) or the connection's
/// buffer, so it always fits; saturate rather than wrap all the same.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
