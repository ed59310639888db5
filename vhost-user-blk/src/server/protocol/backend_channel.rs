//! The backend channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ): a socket the frontend hands over
//! with SET_BACKEND_REQ_FD, on which the daemon sends requests of its own. We send one:
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, after the export's configuration space changed (a
//! resize), so the frontend re-reads it (GET_CONFIG) and raises the guest's config interrupt.
//!
//! The vhost crate wraps this socket in a `Backend` that cannot send that message, so the
//! channel is kept here as the socket itself.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::BackendReq;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

use super::wire::{MsgHeader, HEADER_LEN, NEED_REPLY};

/// How long a notification waits for the frontend's acknowledgement (REPLY_ACK), so a frontend
/// that never answers cannot hold the caller (a resize on the control socket).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The frontend's side of the backend channel.
pub struct BackendChannel {
    sock: UnixStream,
    /// REPLY_ACK was negotiated: every message asks for an answer.
    need_reply: bool,
}

impl BackendChannel {
    /// A channel over `sock` (from SET_BACKEND_REQ_FD).
    pub fn new(sock: UnixStream, need_reply: bool) -> BackendChannel {
        BackendChannel { sock, need_reply }
    }

    /// Send CONFIG_CHANGE_MSG; with REPLY_ACK, wait (at most [`REPLY_TIMEOUT`]) for a success
    /// reply. Ok once the frontend was told.
    pub fn config_changed(&mut self) -> io::Result<()> {
        let code = u32::from(BackendReq::CONFIG_CHANGE_MSG);
        let hdr = MsgHeader::new(code, if self.need_reply { NEED_REPLY } else { 0 }, 0);
        self.sock.set_write_timeout(Some(REPLY_TIMEOUT))?;
        self.sock.write_all(hdr.as_bytes())?;
        if !self.need_reply {
            return Ok(());
        }
        self.sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut reply = [0u8; HEADER_LEN + 8];
        self.sock.read_exact(&mut reply)?;
        let (head, body) = reply.split_at(HEADER_LEN);
        let rhdr = MsgHeader::read_from_bytes(head).map_err(|_| io::Error::other("short reply"))?;
        let value = U64::read_from_bytes(body).map_err(|_| io::Error::other("short reply"))?.get();
        if !rhdr.is_reply_to(code) || rhdr.size.get() != 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the frontend's reply is not an answer to CONFIG_CHANGE_MSG",
            ));
        }
        if value != 0 {
            return Err(io::Error::other(format!("the frontend answered CONFIG_CHANGE_MSG with failure {value}")));
        }
        Ok(())
    }
}
