//! Helpers shared by the thin pool tests (included with `mod thin_common;`).

#![allow(dead_code)]

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, MemDisk, SharedBuf};
use thin::{Pool, PoolConfig};

/// The pools' block size.
pub const BS: u64 = 64 << 10;

/// A RAM disk.
pub fn mem(size: u64) -> Arc<dyn BlockDev> {
    Arc::new(MemDisk::new(size).unwrap())
}

/// A fresh pool with default settings on one device.
pub fn create(io: &IoCtx, dev: Arc<dyn BlockDev>) -> Pool {
    io.block_on(Pool::create(io, dev, None, PoolConfig::default())).unwrap()
}

/// Write `data` at `off`.
pub fn write(io: &IoCtx, dev: &dyn BlockDev, off: u64, data: &[u8], fua: bool) -> blockdev::Result<()> {
    let mut b = SharedBuf::from_slice(data);
    io.block_on(dev.write(io, off, b.io(), fua, IoTag::DATA))
}

/// Read `len` bytes at `off`.
pub fn read(io: &IoCtx, dev: &dyn BlockDev, off: u64, len: usize) -> Vec<u8> {
    let mut b = SharedBuf::new(len);
    io.block_on(dev.read(io, off, b.io(), IoTag::DATA)).unwrap();
    b.bytes().to_vec()
}

/// Flush `dev`.
pub fn flush(io: &IoCtx, dev: &dyn BlockDev) {
    io.block_on(dev.flush(io, IoTag::DATA)).unwrap();
}
