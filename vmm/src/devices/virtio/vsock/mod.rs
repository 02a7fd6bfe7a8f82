//! virtio-vsock in user space, bridged to Unix sockets (hybrid vsock).
//!
//! Queues: RX (device to driver), TX (driver to device), event (unused: we
//! never migrate, so there is no transport reset to announce).
//!
//! - [`packet`]: the packet header and reading a guest's TX chain, bounded.
//! - [`device`]: the virtio device and its queues.
//! - `event_handler`: what the VMM thread's event loop calls.
//! - [`unix`] and [`connection`]: the host side, one Unix stream per
//!   connection.

pub mod connection;
pub mod device;
mod event_handler;
pub mod packet;
pub mod unix;

pub use device::Vsock;
pub use packet::VsockHeader;

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
