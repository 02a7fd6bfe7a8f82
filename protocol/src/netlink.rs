//! A blocking rtnetlink socket for the few requests both sides make: the
//! shim in a pod's CNI network namespace (links, addresses, routes, tc
//! qdiscs and filters) and the agent in the guest (the NIC's move into the
//! pod network namespace, its addresses and routes). Messages are built and
//! parsed by `netlink-packet-route`; this only sends one request and
//! collects its answers. The socket belongs to the network namespace of the
//! thread that opens it.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
pub use netlink_packet_route as route;

/// Answers of one dump are bounded: a pod's namespace has a handful of
/// links, addresses and routes, so more than this is a runaway.
const MAX_ANSWERS: usize = 4096;

#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
}

impl RouteSocket {
    /// A route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket { socket, seq: 0 })
    }

    /// Sends `message` with `NLM_F_ACK` and the given extra flags (such as
    /// [`NLM_F_CREATE`] | [`NLM_F_EXCL`]); fails with the kernel's errno.
    pub fn execute(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.collect().map(drop)
    }

    /// A dump request (`RTM_GET*` with `NLM_F_DUMP`): every answer.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.collect()
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Reads answers to the last request until its ACK, error or end of dump.
    fn collect(&mut self) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut answers = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < buf.len() {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
                    })?;
                let len = usize::try_from(packet.header.length).unwrap_or(0);
                if len == 0 {
                    break;
                }
                offset += len.next_multiple_of(4);
                if packet.header.sequence_number != self.seq {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        if answers.len() >= MAX_ANSWERS {
                            return Err(io::Error::other("netlink: too many answers"));
                        }
                        answers.push(m);
                    }
                    _ => {}
                }
            }
        }
    }
}
