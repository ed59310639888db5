//! What one frontend may ask of the daemon: beyond these caps a request is refused (an error
//! reply or the end of the connection, with a log line), never allocated for.
//!
//! - Memory regions: at most [`MAX_MEM_REGIONS`] at a time (GET_MAX_MEM_SLOTS answers this;
//!   SET_MEM_TABLE carries at most 8 by the message format);
//! - queues: the export's `num-queues`; an index beyond it is refused;
//! - queue size: the export's `queue-size` (at most 32768, the split ring's limit);
//! - message size: 4 KiB of payload (the vhost crate's `MAX_MSG_SIZE`), checked on the header
//!   before any body is read;
//! - connections waiting per socket: [`LISTEN_BACKLOG`] (one frontend is served at a time; a
//!   connection beyond the backlog is refused by the kernel, `EAGAIN` for a non-blocking
//!   connect, a wait for a blocking one);
//! - the in-flight region: at most `num-queues` queues of at most `queue-size` descriptors each.

/// Most memory regions a frontend may have mapped at once (QEMU's limit for DIMM hotplug with
/// CONFIGURE_MEM_SLOTS is 509 too).
pub const MAX_MEM_REGIONS: usize = 509;

/// Largest message payload a frontend may send (bytes), as the vhost crate enforces.
pub const MAX_MSG_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;

/// Connections the kernel keeps waiting on an export's socket while one frontend is served.
pub const LISTEN_BACKLOG: i32 = 8;
