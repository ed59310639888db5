//! One frontend connection from accept to hang-up: the vhost crate's `BackendReqHandler` reads,
//! validates and answers each message, calling our [`FrontendHandler`]; this loop looks at
//! each message's header first (MSG_PEEK) and takes SET_BACKEND_REQ_FD itself, because the
//! vhost crate would wrap that socket in a type that cannot send CONFIG_CHANGE_MSG.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

use super::backend_channel::BackendChannel;
use super::handler::FrontendHandler;
use super::limits::MAX_MSG_PAYLOAD;
use super::wire::{MsgHeader, HEADER_LEN, REPLY};
use crate::server::backend::BlkBackend;

/// Ends a connection from another thread (shutting its socket down wakes the dispatch loop).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<UnixStream>);

impl ShutdownHandle {
    /// Hang up on the frontend.
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// A connection being served.
pub struct Connection {
    backend: Arc<BlkBackend>,
    handler: Arc<Mutex<FrontendHandler>>,
    reqs: BackendReqHandler<Mutex<FrontendHandler>>,
    sock: Arc<UnixStream>,
}

impl Connection {
    /// Set up the state of a new connection on `stream` (its worker threads start idle).
    pub fn new(backend: Arc<BlkBackend>, stream: UnixStream) -> io::Result<Connection> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        backend.begin_connection(mem.clone());
        let handler = Arc::new(Mutex::new(FrontendHandler::new(backend.clone(), mem)?));
        let sock = Arc::new(stream.try_clone()?);
        let reqs = BackendReqHandler::from_stream(stream, handler.clone());
        Ok(Connection { backend, handler, reqs, sock })
    }

    /// What ends this connection from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.sock.clone())
    }

    /// Serve messages until the frontend hangs up (Ok) or breaks the protocol (Err).
    pub fn run(&mut self) -> Result<(), VhostUserError> {
        loop {
            match self.peek_header()? {
                None => return Ok(()),
                Some(hdr) if hdr.request.get() == u32::from(FrontendReq::SET_BACKEND_REQ_FD) => {
                    self.set_backend_req_fd()?
                }
                Some(_) => match self.reqs.handle_request() {
                    Ok(()) => {}
                    // The frontend went away (between messages or in the middle of one).
                    Err(
                        VhostUserError::Disconnected | VhostUserError::PartialMessage | VhostUserError::SocketBroken(_),
                    ) => return Ok(()),
                    Err(e) => return Err(e),
                },
            }
        }
    }

    /// After the connection ended and its requests drained: stop its workers, forget it.
    pub fn finish(self) {
        self.handler.lock().unwrap_or_else(|p| p.into_inner()).stop_workers();
        self.backend.end_connection();
    }

    /// The next message's header, left in the socket; None when the frontend hung up.
    fn peek_header(&self) -> Result<Option<MsgHeader>, VhostUserError> {
        let mut buf = [0u8; HEADER_LEN];
        loop {
            // SAFETY: recv into a live buffer of `buf.len()` bytes on the connection's socket.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_PEEK | libc::MSG_WAITALL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VhostUserError::SocketError(e));
            }
            if n == 0 {
                return Ok(None);
            }
            if (n as usize) < HEADER_LEN {
                // A partial header followed by a hang-up: let the vhost crate read and refuse it.
                return Ok(Some(MsgHeader::default()));
            }
            let hdr = MsgHeader::read_from_bytes(&buf).map_err(|_| VhostUserError::InvalidMessage)?;
            if hdr.size.get() as usize > MAX_MSG_PAYLOAD {
                tracing::warn!(export = %self.backend.export.name, "a frontend message announces {} bytes (at most {MAX_MSG_PAYLOAD}): connection closed", hdr.size.get());
                return Err(VhostUserError::InvalidMessage);
            }
            return Ok(Some(hdr));
        }
    }

    /// SET_BACKEND_REQ_FD: keep the socket as the export's backend channel.
    fn set_backend_req_fd(&mut self) -> Result<(), VhostUserError> {
        let mut buf = [0u8; HEADER_LEN];
        let (n, file) = self.sock.recv_with_fd(&mut buf).map_err(|e| VhostUserError::SocketError(e.into()))?;
        if n != HEADER_LEN {
            return Err(VhostUserError::PartialMessage);
        }
        let hdr = MsgHeader::read_from_bytes(&buf).map_err(|_| VhostUserError::InvalidMessage)?;
        // A payload is not expected; one within the limit (checked by the peek) is read and ignored.
        let mut body = vec![0u8; (hdr.size.get() as usize).min(MAX_MSG_PAYLOAD)];
        std::io::Read::read_exact(&mut &*self.sock, &mut body).map_err(VhostUserError::SocketError)?;
        let acked = self.handler.lock().unwrap_or_else(|p| p.into_inner()).acked_protocol();
        if !acked.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            tracing::warn!(export = %self.backend.export.name, "SET_BACKEND_REQ_FD without BACKEND_REQ negotiated: connection closed");
            return Err(VhostUserError::InactiveOperation(VhostUserProtocolFeatures::BACKEND_REQ));
        }
        let stream = file.and_then(|f| {
            let fd = std::os::fd::OwnedFd::from(f);
            is_stream_socket(&fd).then(|| UnixStream::from(fd))
        });
        let ok = match stream {
            Some(s) => {
                let need_reply = acked.contains(VhostUserProtocolFeatures::REPLY_ACK);
                self.backend.set_channel(BackendChannel::new(s, need_reply));
                true
            }
            None => {
                tracing::warn!(export = %self.backend.export.name, "SET_BACKEND_REQ_FD without a Unix stream socket: refused");
                false
            }
        };
        if hdr.need_reply() && acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            let reply = MsgHeader::new(hdr.request.get(), REPLY, 8);
            let mut out = reply.as_bytes().to_vec();
            out.extend_from_slice(U64::new(u64::from(!ok)).as_bytes());
            std::io::Write::write_all(&mut &*self.sock, &out).map_err(VhostUserError::SocketError)?;
        }
        Ok(())
    }
}

fn is_stream_socket(fd: &std::os::fd::OwnedFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`, a live c_int; `fd` is open.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && ty == libc::SOCK_STREAM
}
