//! `MemDisk`: a disk in RAM, allocated lazily in 1 MiB chunks (a `format=mem` export, a test
//! member, a model's backing store). Operations complete synchronously.

use std::sync::RwLock;

use crate::{ready, BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result};

const CHUNK: u64 = 1 << 20;

/// A RAM disk. Unwritten chunks read as zeros and take no memory.
pub struct MemDisk {
    info: DevInfo,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemDisk {
    /// Largest size accepted (chunk table of 16 Mi entries).
    pub const MAX_SIZE: u64 = 16 << 40;

    /// A zeroed RAM disk of `size` bytes (a multiple of 512, at most 16 TiB).
    pub fn new(size: u64) -> Result<MemDisk> {
        if size == 0 || !size.is_multiple_of(512) || size > Self::MAX_SIZE {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("mem disk size {size} must be a non-zero multiple of 512 up to 16T"),
            ));
        }
        let n = size.div_ceil(CHUNK) as usize;
        Ok(MemDisk {
            info: DevInfo { optimal_io_size: 0, ..DevInfo::simple(size) },
            chunks: (0..n).map(|_| RwLock::new(None)).collect(),
        })
    }

    /// Bytes of RAM actually allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks.iter().filter(|c| c.read().map(|g| g.is_some()).unwrap_or(false)).count() as u64 * CHUNK
    }

    /// Visit `[off, off+len)` chunk by chunk: (chunk index, offset in chunk, offset in request, length).
    fn each_chunk(off: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut done = 0u64;
        while done < len {
            let pos = off + done;
            let idx = (pos / CHUNK) as usize;
            let in_chunk = (pos % CHUNK) as usize;
            let n = (CHUNK - pos % CHUNK).min(len - done) as usize;
            f(idx, in_chunk, done as usize, n);
            done += n as u64;
        }
    }

    fn do_read(&self, off: u64, bufs: &IoBufs) -> Result<()> {
        self.info.check_range(off, bufs.len() as u64)?;
        Self::each_chunk(off, bufs.len() as u64, |idx, at, pos, n| {
            let guard = self.chunks[idx].read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(data) => bufs.copy_from_slice(pos, &data[at..at + n]),
                None => bufs.zero(pos, n),
            }
        });
        Ok(())
    }

    fn do_write(&self, off: u64, bufs: &IoBufs) -> Result<()> {
        self.info.check_write(off, bufs.len() as u64)?;
        Self::each_chunk(off, bufs.len() as u64, |idx, at, pos, n| {
            let mut guard = self.chunks[idx].write().unwrap_or_else(|p| p.into_inner());
            let data = guard.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            bufs.copy_to_slice(pos, &mut data[at..at + n]);
        });
        Ok(())
    }

    fn do_zero(&self, off: u64, len: u64, dealloc: bool) -> Result<()> {
        self.info.check_write(off, len)?;
        Self::each_chunk(off, len, |idx, at, _pos, n| {
            let mut guard = self.chunks[idx].write().unwrap_or_else(|p| p.into_inner());
            if dealloc && at == 0 && n as u64 == CHUNK {
                *guard = None;
            } else if let Some(data) = guard.as_mut() {
                data[at..at + n].fill(0);
            }
        });
        Ok(())
    }
}

impl BlockDev for MemDisk {
    fn info(&self) -> DevInfo {
        self.info
    }

    fn read(&self, _io: &IoCtx, off: u64, bufs: IoBufs, _tag: IoTag) -> IoFuture {
        ready(self.do_read(off, &bufs))
    }

    fn write(&self, _io: &IoCtx, off: u64, bufs: IoBufs, _fua: bool, _tag: IoTag) -> IoFuture {
        ready(self.do_write(off, &bufs))
    }

    fn flush(&self, _io: &IoCtx, _tag: IoTag) -> IoFuture {
        ready(Ok(()))
    }

    fn discard(&self, _io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        ready(self.do_zero(off, len, true))
    }

    fn write_zeroes(&self, _io: &IoCtx, off: u64, len: u64, unmap: bool, _tag: IoTag) -> IoFuture {
        ready(self.do_zero(off, len, unmap))
    }

    fn describe(&self) -> String {
        format!("mem:{}", crate::size::format_size(self.info.size))
    }
}
