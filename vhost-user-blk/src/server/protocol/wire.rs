//! The vhost-user message header as it is on the socket (the vhost crate keeps its own type
//! private): request code, flags, payload size, each a little-endian u32 (vhost-user
//! specification, "Message Specification").

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Flags: the protocol version this header speaks (bits 0-1).
pub const VERSION_1: u32 = 0x1;
/// Flags: this message is a reply.
pub const REPLY: u32 = 0x4;
/// Flags: the sender asks for a reply (REPLY_ACK).
pub const NEED_REPLY: u32 = 0x8;

/// A message header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MsgHeader {
    /// The request code (FrontendReq or BackendReq).
    pub request: U32,
    /// Version and REPLY / NEED_REPLY flags.
    pub flags: U32,
    /// Bytes of payload that follow.
    pub size: U32,
}

/// Bytes of a header on the socket.
pub const HEADER_LEN: usize = std::mem::size_of::<MsgHeader>();

impl MsgHeader {
    /// A version-1 request header.
    pub fn new(request: u32, flags: u32, size: u32) -> MsgHeader {
        MsgHeader { request: request.into(), flags: (VERSION_1 | flags).into(), size: size.into() }
    }

    /// Whether the sender asks for a reply.
    pub fn need_reply(&self) -> bool {
        self.flags.get() & NEED_REPLY != 0
    }

    /// Whether this is a version-1 reply to a request with code `request`.
    pub fn is_reply_to(&self, request: u32) -> bool {
        self.request.get() == request && self.flags.get() & 0x3 == VERSION_1 && self.flags.get() & REPLY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_twelve_bytes_code_flags_size() {
        assert_eq!(HEADER_LEN, 12);
        let h = MsgHeader::new(21, NEED_REPLY, 8);
        assert_eq!(h.as_bytes(), &[21, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
        assert!(h.need_reply());
        assert!(MsgHeader::new(21, REPLY, 8).is_reply_to(21));
        assert!(!h.is_reply_to(21));
    }
}
