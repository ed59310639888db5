//! `MemDisk`: a disk in RAM, allocated lazily in 1 MiB chunks (a `format=mem` export, a test
//! member, a model's backing store). Operations complete synchronously.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use crate::{check_resize, ready, BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result};

const CHUNK: u64 = 1 << 20;
/// Chunks per segment of the chunk table (4 GiB of disk): the table grows a segment at a time,
/// so a resize never moves the chunks requests are using.
const SEGMENT_CHUNKS: usize = 4096;

type Chunk = RwLock<Option<Box<[u8]>>>;

/// A RAM disk. Unwritten chunks read as zeros and take no memory.
pub struct MemDisk {
    info: DevInfo,
    /// The size now (`info.size` is the size at creation); only [`BlockDev::resize`] changes it.
    size: AtomicU64,
    /// Segments of [`SEGMENT_CHUNKS`] chunks, made when the size first reaches them.
    segments: Box<[OnceLock<Box<[Chunk]>>]>,
    /// Serializes resizes.
    resizing: Mutex<()>,
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
        let max_segments = (Self::MAX_SIZE / CHUNK) as usize / SEGMENT_CHUNKS;
        let disk = MemDisk {
            info: DevInfo { optimal_io_size: 0, ..DevInfo::simple(size) },
            size: AtomicU64::new(size),
            segments: (0..max_segments).map(|_| OnceLock::new()).collect(),
            resizing: Mutex::new(()),
        };
        disk.make_segments(size);
        Ok(disk)
    }

    /// Make the segments that hold `[0, size)`.
    fn make_segments(&self, size: u64) {
        let chunks = size.div_ceil(CHUNK) as usize;
        for seg in &self.segments[..chunks.div_ceil(SEGMENT_CHUNKS)] {
            seg.get_or_init(|| (0..SEGMENT_CHUNKS).map(|_| RwLock::new(None)).collect());
        }
    }

    /// Chunk `idx`, inside the size (its segment exists once the size covers it).
    fn chunk(&self, idx: usize) -> &Chunk {
        match self.segments[idx / SEGMENT_CHUNKS].get() {
            Some(seg) => &seg[idx % SEGMENT_CHUNKS],
            // Unreachable: requests are checked against the size, whose segments exist.
            None => unreachable!("mem disk chunk {idx} past the made segments"),
        }
    }

    fn current(&self) -> DevInfo {
        DevInfo { size: self.size.load(Ordering::Acquire), ..self.info }
    }

    /// Bytes of RAM actually allocated.
    pub fn allocated_bytes(&self) -> u64 {
        let made = self.segments.iter().filter_map(OnceLock::get);
        made.flat_map(|seg| seg.iter()).filter(|c| c.read().map(|g| g.is_some()).unwrap_or(false)).count() as u64
            * CHUNK
    }

    fn do_resize(&self, new_size: u64, shrink: bool) -> Result<u64> {
        let _one = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.size.load(Ordering::Acquire);
        let what = format!("mem disk ({})", crate::size::format_size(old));
        check_resize(&what, old, new_size, 512, shrink)?;
        if new_size > Self::MAX_SIZE {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{what}: new size {new_size} is over the 16T a mem disk can hold"),
            ));
        }
        if new_size < old {
            // What lies past the new end goes: it must read zeros if the disk grows again.
            self.size.store(new_size, Ordering::Release);
            Self::each_chunk(new_size, old - new_size, |idx, at, _pos, n| {
                let mut guard = self.chunk(idx).write().unwrap_or_else(|p| p.into_inner());
                if at == 0 {
                    *guard = None;
                } else if let Some(data) = guard.as_mut() {
                    data[at..at + n].fill(0);
                }
            });
        } else {
            self.make_segments(new_size);
            self.size.store(new_size, Ordering::Release);
        }
        Ok(new_size)
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
        self.current().check_range(off, bufs.len() as u64)?;
        Self::each_chunk(off, bufs.len() as u64, |idx, at, pos, n| {
            let guard = self.chunk(idx).read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(data) => bufs.copy_from_slice(pos, &data[at..at + n]),
                None => bufs.zero(pos, n),
            }
        });
        Ok(())
    }

    fn do_write(&self, off: u64, bufs: &IoBufs) -> Result<()> {
        self.current().check_write(off, bufs.len() as u64)?;
        Self::each_chunk(off, bufs.len() as u64, |idx, at, pos, n| {
            let mut guard = self.chunk(idx).write().unwrap_or_else(|p| p.into_inner());
            let data = guard.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            bufs.copy_to_slice(pos, &mut data[at..at + n]);
        });
        Ok(())
    }

    fn do_zero(&self, off: u64, len: u64, dealloc: bool) -> Result<()> {
        self.current().check_write(off, len)?;
        Self::each_chunk(off, len, |idx, at, _pos, n| {
            let mut guard = self.chunk(idx).write().unwrap_or_else(|p| p.into_inner());
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
        self.current()
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

    fn resize(&self, _io: &IoCtx, new_size: u64, shrink: bool) -> Result<u64> {
        self.do_resize(new_size, shrink)
    }

    fn describe(&self) -> String {
        format!("mem:{}", crate::size::format_size(self.size.load(Ordering::Acquire)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_grows_past_a_segment_and_a_shrink_drops_the_tail() {
        let io = IoCtx::new().unwrap();
        let d = MemDisk::new(4 << 20).unwrap();
        let mut b = crate::SharedBuf::from_slice(&[7u8; 4096]);
        io.block_on(d.write(&io, (4 << 20) - 4096, b.io(), false, IoTag::DATA)).unwrap();
        let big = (SEGMENT_CHUNKS as u64 * CHUNK) + (8 << 20);
        assert_eq!(d.resize(&io, big, false).unwrap(), big);
        assert_eq!(d.info().size, big);
        io.block_on(d.write(&io, big - 4096, b.io(), false, IoTag::DATA)).unwrap();
        let e = d.resize(&io, 1 << 20, false).unwrap_err().to_string();
        assert!(e.contains("needs shrink"), "{e}");
        assert_eq!(d.info().size, big, "a refused shrink changed the size");
        assert_eq!(d.resize(&io, 2 << 20, true).unwrap(), 2 << 20);
        assert!(io.block_on(d.read(&io, (4 << 20) - 4096, crate::SharedBuf::new(4096).io(), IoTag::DATA)).is_err());
        d.resize(&io, 4 << 20, false).unwrap();
        let mut back = crate::SharedBuf::from_slice(&[1u8; 4096]);
        io.block_on(d.read(&io, (4 << 20) - 4096, back.io(), IoTag::DATA)).unwrap();
        assert!(back.io().to_vec().iter().all(|&x| x == 0), "data past a shrink came back");
        assert!(d.resize(&io, MemDisk::MAX_SIZE + (1 << 20), false).is_err());
    }
}
