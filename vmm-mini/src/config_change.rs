//! The vhost-user backend channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ): the backend tells
//! vmm-mini its configuration space changed (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, sent after a
//! live resize); vmm-mini re-reads it (GET_CONFIG), the virtio-mmio device shows it with a new
//! config generation and raises its config interrupt (VIRTIO_MMIO_INT_CONFIG), and the guest's
//! driver reads the new capacity by itself.
//!
//! The channel is served here, not by the vhost crate's `FrontendReqHandler`: that one keeps the
//! backend's end of the socket pair open in this process, so a backend that dies is never seen
//! to go, and its thread would wait forever. Here the backend's end is closed once sent
//! (SET_BACKEND_REQ_FD), so its death ends the channel's thread.
//!
//! Each disk's channel is served by its own thread. A message is acknowledged first (when the
//! backend asked for a reply), then the config space is read again on the disk's main
//! connection, so a backend that waits for the acknowledgement is never waited on in turn.
//! Other requests (shared objects, shared memory maps) are refused with ENOSYS; a header that
//! does not parse or a payload over 4 KiB ends the channel.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::devices::Devices;

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: the version bits (1), a reply, and "the sender waits for a reply".
const VERSION_MASK: u32 = 0x3;
const VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload read (and dropped) from a request this channel does not handle.
const MAX_PAYLOAD: u32 = 4096;

/// vmm-mini's end of one backend channel.
pub struct BackendChannel {
    sock: UnixStream,
    /// Answer requests that ask for a reply (REPLY_ACK was agreed).
    reply_ack: bool,
}

/// What one message was.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// The config space changed.
    ConfigChanged,
    /// A request this frontend does not handle (refused with ENOSYS when a reply was asked for).
    Refused(u32),
}

/// A new channel: send the returned stream's fd with SET_BACKEND_REQ_FD, then drop it.
pub fn open_channel(reply_ack: bool) -> io::Result<(BackendChannel, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    Ok((BackendChannel { sock: ours, reply_ack }, theirs))
}

impl BackendChannel {
    /// Read and answer one message. An error means the channel is done (the backend closed it,
    /// or sent something that is not vhost-user).
    pub fn receive(&mut self) -> io::Result<Message> {
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr)?;
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if flags & VERSION_MASK != VERSION_1 || flags & FLAG_REPLY != 0 {
            return Err(bad(format!("header flags {flags:#x}: not a vhost-user request")));
        }
        if size > MAX_PAYLOAD {
            return Err(bad(format!("request {request} with a {size}-byte payload (at most {MAX_PAYLOAD})")));
        }
        // The payload is not needed (a config change has none); any file descriptors sent
        // along are dropped by the kernel, since no control buffer takes them.
        io::copy(&mut (&self.sock).take(u64::from(size)), &mut io::sink())?;
        let message = match (request, size) {
            (CONFIG_CHANGE_MSG, 0) => Message::ConfigChanged,
            _ => Message::Refused(request),
        };
        if self.reply_ack && flags & FLAG_NEED_REPLY != 0 {
            let status: u64 = if message == Message::ConfigChanged { 0 } else { (-libc::ENOSYS) as u64 };
            let mut reply = Vec::with_capacity(20);
            for w in [request, VERSION_1 | FLAG_REPLY, 8] {
                reply.extend_from_slice(&w.to_le_bytes());
            }
            reply.extend_from_slice(&status.to_le_bytes());
            self.sock.write_all(&reply)?;
        }
        Ok(message)
    }
}

/// Serve the backend channel of disk `index` until the backend closes it: after each config
/// change, [`crate::blk_device::BlkDevice::config_changed`] under the devices' lock.
pub fn spawn(index: usize, mut channel: BackendChannel, devices: Arc<Mutex<Devices>>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("backend-req-{index}")).spawn(move || loop {
        match channel.receive() {
            Ok(Message::ConfigChanged) => {
                let mut d = devices.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(disk) = d.disks.get_mut(index) {
                    match disk.config_changed() {
                        Ok(sectors) => eprintln!("vmm-mini: disk {index}: config changed, capacity {sectors} sectors"),
                        Err(e) => eprintln!("vmm-mini: disk {index}: re-reading the config space: {e}"),
                    }
                }
            }
            Ok(Message::Refused(request)) => {
                eprintln!("vmm-mini: disk {index}: backend request {request} refused (not supported)")
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                eprintln!("vmm-mini: disk {index}: backend channel closed: {e}");
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
        [request, flags, size].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn pair(reply_ack: bool) -> (BackendChannel, UnixStream) {
        let (ours, theirs) = open_channel(reply_ack).unwrap();
        theirs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ours.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (ours, theirs)
    }

    // Written as the specification lays it out (the vhost crate's backend side cannot send
    // this message): a 12-byte header, no payload.
    #[test]
    fn a_config_change_message_is_acknowledged() {
        let (mut channel, mut backend) = pair(true);
        backend.write_all(&header(CONFIG_CHANGE_MSG, VERSION_1 | FLAG_NEED_REPLY, 0)).unwrap();
        assert_eq!(channel.receive().unwrap(), Message::ConfigChanged);
        let mut reply = [0u8; 20];
        backend.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..12], &header(CONFIG_CHANGE_MSG, VERSION_1 | FLAG_REPLY, 8)[..], "reply header");
        assert_eq!(&reply[12..], &[0u8; 8], "the acknowledgement says success");
        // Without need-reply, or without REPLY_ACK agreed, nothing is sent back.
        backend.write_all(&header(CONFIG_CHANGE_MSG, VERSION_1, 0)).unwrap();
        assert_eq!(channel.receive().unwrap(), Message::ConfigChanged);
        let (mut quiet, mut b2) = pair(false);
        b2.write_all(&header(CONFIG_CHANGE_MSG, VERSION_1 | FLAG_NEED_REPLY, 0)).unwrap();
        assert_eq!(quiet.receive().unwrap(), Message::ConfigChanged);
        b2.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(b2.read(&mut reply).is_err(), "a reply nobody agreed to");
    }

    #[test]
    fn other_requests_are_refused_bad_headers_end_the_channel_and_so_does_eof() {
        let (mut channel, mut backend) = pair(true);
        // An unknown request with a payload: read past, refused with ENOSYS.
        backend.write_all(&header(999, VERSION_1 | FLAG_NEED_REPLY, 16)).unwrap();
        backend.write_all(&[7u8; 16]).unwrap();
        assert_eq!(channel.receive().unwrap(), Message::Refused(999));
        let mut reply = [0u8; 20];
        backend.read_exact(&mut reply).unwrap();
        assert_eq!(u64::from_le_bytes(reply[12..].try_into().unwrap()), (-libc::ENOSYS) as u64);
        // A config change with a payload it must not have is refused too.
        backend.write_all(&header(CONFIG_CHANGE_MSG, VERSION_1, 8)).unwrap();
        backend.write_all(&[0u8; 8]).unwrap();
        assert_eq!(channel.receive().unwrap(), Message::Refused(CONFIG_CHANGE_MSG));
        // The channel still works.
        backend.write_all(&header(CONFIG_CHANGE_MSG, VERSION_1, 0)).unwrap();
        assert_eq!(channel.receive().unwrap(), Message::ConfigChanged);
        // Garbage: a reply flag, a wrong version, an oversized payload.
        for bad in [header(2, VERSION_1 | FLAG_REPLY, 0), header(2, 0, 0), header(2, VERSION_1, MAX_PAYLOAD + 1)] {
            let (mut c, mut b) = pair(true);
            b.write_all(&bad).unwrap();
            assert_eq!(c.receive().unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
        // The backend going away ends the channel.
        drop(backend);
        assert_eq!(channel.receive().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
