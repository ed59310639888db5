//! The foundation of strata: the [`BlockDev`] trait that every layer implements and consumes,
//! the per-thread io_uring engine ([`IoCtx`]), buffers that point straight into guest memory
//! ([`IoBufs`]), and the plain devices: [`RawFile`] (a file or block device) and [`MemDisk`].
//!
//! With the `test-utils` feature it also provides the test devices every crate's tests use:
//! `FaultDev` (injected errors), `CrashDev` (volatile writes lost on a simulated crash) and
//! `ModelDev` (a shadow disk that checks what a real device reads back).

mod bufs;
mod dev;
pub mod engine;
mod error;
mod info;
pub mod int_hash;
pub mod join;
pub mod layer_metrics;
mod mem;
pub mod raw;
pub mod signature;
pub mod size;
mod tag;
#[cfg(feature = "test-utils")]
pub mod testdev;
pub mod thread;
pub mod timer;

pub use bufs::{BufPool, DmaBuf, IoBufs, Keepalive, SharedBuf};
pub use dev::{check_resize, ready, BlockDev, IoFuture};
pub use engine::{EngineConfig, FileHandle, IoCtx, JoinHandle, RemoteWaker};
pub use error::{Error, ErrorKind, Result};
pub use info::DevInfo;
pub use layer_metrics::{LayerSample, SampleKind};
pub use mem::MemDisk;
pub use raw::{OpenOptions, RawFile};
pub use tag::{IoClass, IoTag};
