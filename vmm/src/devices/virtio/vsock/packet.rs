//! The vsock packet header and reading a packet out of a guest's TX chain.
//!
//! Whatever the descriptors claim, at most one header and
//! [`MAX_PKT_DATA`](super::defs::MAX_PKT_DATA) bytes are copied.

use std::io::Read;

use virtio_queue::{DescriptorChain, Reader};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use super::defs;
use crate::memory::GuestMemoryMmap;

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
    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
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

    pub(super) fn from_packet(p: &VsockPacket<'_, ()>) -> Self {
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

    pub(super) fn write_to(&self, p: &mut VsockPacket<'_, ()>) {
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

/// Reads a TX packet laid out over any number of descriptors. Linux sends a
/// payload larger than about 32 KiB as page fragments, one descriptor each.
/// Copies one header and at most [`defs::MAX_PKT_DATA`] bytes, whatever the
/// descriptors claim.
pub fn gather_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(VsockHeader, Vec<u8>), &'static str> {
    // Only the device-readable descriptors before the first writable one:
    // a TX payload in a write-only descriptor is missing, not read.
    let mut reader =
        Reader::new(mem, chain).map_err(|_| "descriptor outside guest memory or too long")?;
    let mut raw = [0u8; PKT_HEADER_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|_| "packet shorter than its header")?;
    let hdr = VsockHeader::from_bytes(&raw);
    if hdr.len > defs::MAX_PKT_DATA {
        return Err("payload larger than the maximum packet");
    }
    let len = usize::try_from(hdr.len).map_err(|_| "payload larger than the maximum packet")?;
    let mut data = vec![0u8; len];
    reader
        .read_exact(&mut data)
        .map_err(|_| "packet shorter than its header says")?;
    Ok((hdr, data))
}
