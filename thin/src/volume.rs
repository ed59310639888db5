//! `ThinVolume`: one volume of a pool as a `BlockDev`.
//!
//! Each request is split at data block boundaries. A read maps its blocks under the metadata
//! lock, then reads the data blocks (or fills zeros) without it. A write holds a per-block
//! "busy" mark (other writes and discards of that block wait, across threads) while it either
//! writes in place (the block is mapped and not shared) or provisions: reserve a block, write
//! it fully (copying a shared block, zero-filling what the write does not cover unless the block
//! is known to read zeros), and only then map it. A FUA write that made or used an uncommitted
//! mapping completes after the commit that records it.
//!
//! Every write, write-zeroes and discard request counts itself in the volume's `writers` while it
//! runs, and waits first while a snapshot holds the volume suspended.
//!
//! Out of space: a write that needs a block when none is free fails at once with `NoSpace`, or,
//! with a `no_space_wait`, waits up to that long for space (blocks freed, the pool grown).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::pool::{commit, PoolInner};
use super::state::Alloc;
use blockdev::join::try_join_all;
use blockdev::timer;
use blockdev::{BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result};
use smallvec::SmallVec;

/// An open thin volume (dropping it closes it).
pub struct ThinVolume {
    inner: Arc<PoolInner>,
    id: u64,
    name: String,
    no_space_wait: Duration,
}

impl ThinVolume {
    pub(crate) fn new(inner: Arc<PoolInner>, id: u64, name: &str) -> ThinVolume {
        ThinVolume { inner, id, name: name.into(), no_space_wait: Duration::ZERO }
    }

    /// How long a write that needs a data block waits for one when the pool is full before it
    /// fails with `NoSpace` (zero, the default: fail at once). Space comes back when blocks are
    /// freed (discard, a volume removed) or the pool is grown.
    pub fn set_no_space_wait(&mut self, wait: Duration) {
        self.no_space_wait = wait;
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> Result<u64> {
        let st = self.inner.lock();
        st.volumes
            .get(&self.id)
            .map(|v| v.size)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("thin volume '{}' was removed", self.name)))
    }
}

impl Drop for ThinVolume {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(v) = st.volumes.get_mut(&self.id) {
            v.open = v.open.saturating_sub(1);
        }
    }
}

/// A write request in progress on volume `id` until this is dropped (a snapshot waits for it).
struct Writer {
    inner: Arc<PoolInner>,
    id: u64,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let Some(v) = st.volumes.get_mut(&self.id) else { return };
        v.writers = v.writers.saturating_sub(1);
        if v.writers == 0 && v.suspended {
            st.wake_all();
        }
    }
}

/// Count a write request in, once no snapshot holds the volume suspended.
async fn enter(inner: &Arc<PoolInner>, id: u64) -> Result<Writer> {
    poll_fn(|cx| {
        let mut st = inner.lock();
        let Some(v) = st.volumes.get_mut(&id) else {
            return Poll::Ready(Err(Error::new(ErrorKind::NotFound, "thin volume was removed")));
        };
        if !v.suspended {
            v.writers += 1;
            return Poll::Ready(Ok(Writer { inner: inner.clone(), id }));
        }
        st.park(cx.waker());
        Poll::Pending
    })
    .await
}

/// Wait until the pool may have space again (any wake-up: blocks freed, a commit, the pool
/// grown) or until `deadline`. `timer` holds the deadline wake-up once registered (the write
/// keeps it across its waits; dropping it cancels the wake-up).
async fn wait_for_space(inner: &PoolInner, deadline: Instant, timer: &mut Option<timer::Registration>) {
    let mut parked = false;
    poll_fn(|cx| {
        if parked || Instant::now() >= deadline {
            return Poll::Ready(());
        }
        if timer.is_none() {
            match timer::wake_at(deadline, cx.waker()) {
                Some(reg) => *timer = Some(reg),
                None => return Poll::Ready(()),
            }
        }
        inner.lock().park(cx.waker());
        parked = true;
        Poll::Pending
    })
    .await
}

fn no_space() -> Error {
    Error::new(ErrorKind::NoSpace, "thin pool: out of data space")
}

/// Virtual block `vb` of volume `id` is being written or discarded until this is dropped.
struct Busy {
    inner: Arc<PoolInner>,
    id: u64,
    vb: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(v) = st.volumes.get_mut(&self.id) {
            v.busy.remove(&self.vb);
        }
        st.wake_all();
    }
}

async fn acquire(inner: &Arc<PoolInner>, id: u64, vb: u64) -> Result<Busy> {
    poll_fn(|cx| {
        let mut st = inner.lock();
        let Some(v) = st.volumes.get_mut(&id) else {
            return Poll::Ready(Err(Error::new(ErrorKind::NotFound, "thin volume was removed")));
        };
        if v.busy.insert(vb) {
            return Poll::Ready(Ok(Busy { inner: inner.clone(), id, vb }));
        }
        st.park(cx.waker());
        Poll::Pending
    })
    .await
}

/// One piece of a request inside a single data block.
#[derive(Clone, Copy)]
struct Seg {
    vb: u64,
    within: u64,
    len: u64,
    at: usize,
}

fn segments(bs: u64, off: u64, len: u64) -> SmallVec<[Seg; 2]> {
    let mut out = SmallVec::new();
    let mut done = 0;
    while done < len {
        let pos = off + done;
        let within = pos % bs;
        let n = (bs - within).min(len - done);
        out.push(Seg { vb: pos / bs, within, len: n, at: done as usize });
        done += n;
    }
    out
}

enum WritePlan {
    InPlace { block: u64, uncommitted: bool },
    Provision { block: u64, zeroed: bool, src: Option<u64> },
    NeedCommit,
    NoSpace,
}

/// Write one segment; returns true when its mapping is not committed yet.
/// A write that finds the pool full waits up to `space_wait` for space.
async fn write_seg(
    inner: Arc<PoolInner>,
    io: IoCtx,
    id: u64,
    seg: Seg,
    bufs: IoBufs,
    fua: bool,
    space_wait: Duration,
) -> Result<bool> {
    let _busy = acquire(&inner, id, seg.vb).await?;
    let bs = inner.block_size;
    let mut waits = 0;
    let mut deadline: Option<Instant> = None;
    let mut timer = None;
    let plan = loop {
        let plan = {
            let mut st = inner.lock();
            if let Some(f) = &st.failed {
                return Err(Error::new(ErrorKind::Io, format!("thin pool failed: {f}")));
            }
            let e = st.volumes.get(&id).map_or(0, |v| v.map.get(seg.vb));
            if e != 0 && st.writable_in_place(e - 1) {
                let block = e - 1;
                let uncommitted = st.new_blocks.contains(&block) || st.new_in_commit.contains(&block);
                WritePlan::InPlace { block, uncommitted }
            } else {
                match st.alloc() {
                    Alloc::Block { block, zeroed } => WritePlan::Provision { block, zeroed, src: e.checked_sub(1) },
                    Alloc::NeedCommit => WritePlan::NeedCommit,
                    Alloc::NoSpace => WritePlan::NoSpace,
                }
            }
        };
        match plan {
            WritePlan::NeedCommit if waits < 4 => {
                waits += 1;
                commit(&inner, &io).await?;
            }
            WritePlan::NeedCommit | WritePlan::NoSpace => {
                if space_wait.is_zero() {
                    return Err(no_space());
                }
                let until = *deadline.get_or_insert_with(|| Instant::now() + space_wait);
                if Instant::now() >= until {
                    return Err(no_space());
                }
                wait_for_space(&inner, until, &mut timer).await;
                waits = 0;
            }
            p => break p,
        }
    };
    let data_off = |block: u64| inner.data_offset + block * bs;
    match plan {
        WritePlan::InPlace { block, uncommitted } => {
            inner.data.write(&io, data_off(block) + seg.within, bufs, fua, IoTag::DATA).await?;
            Ok(uncommitted)
        }
        WritePlan::Provision { block, zeroed, src } => {
            let res = provision(&inner, &io, data_off(block), seg, bufs, zeroed, src.map(data_off)).await;
            let mut st = inner.lock();
            match res {
                Ok(()) => {
                    st.inc_ref(block);
                    st.set_mapping(id, seg.vb, block + 1);
                    st.new_blocks.insert(block);
                    Ok(true)
                }
                Err(e) => {
                    st.unreserve(block);
                    Err(e)
                }
            }
        }
        WritePlan::NeedCommit | WritePlan::NoSpace => unreachable!("handled above"),
    }
}

/// Fill a newly reserved block: the write's bytes plus a copy of `src` (or zeros) around them.
async fn provision(
    inner: &PoolInner,
    io: &IoCtx,
    dst: u64,
    seg: Seg,
    bufs: IoBufs,
    zeroed: bool,
    src: Option<u64>,
) -> Result<()> {
    let bs = inner.block_size;
    if src.is_none() && (zeroed || seg.len == bs) {
        return inner.data.write(io, dst + seg.within, bufs, false, IoTag::data("thin.provision")).await;
    }
    let mut block = io.pool().shared(bs as usize);
    match src {
        Some(src) => inner.data.read(io, src, block.io(), IoTag::data("thin.cow_read")).await?,
        None => block.bytes_mut().fill(0),
    }
    let (w, n) = (seg.within as usize, seg.len as usize);
    bufs.copy_to_slice(0, &mut block.bytes_mut()[w..w + n]);
    inner.data.write(io, dst, block.io(), false, IoTag::data("thin.provision")).await
}

async fn write(
    inner: Arc<PoolInner>,
    io: IoCtx,
    id: u64,
    off: u64,
    bufs: IoBufs,
    fua: bool,
    wait: Duration,
) -> Result<()> {
    let _writer = enter(&inner, id).await?;
    let segs = segments(inner.block_size, off, bufs.len() as u64);
    let uncommitted = if segs.len() == 1 {
        write_seg(inner.clone(), io.clone(), id, segs[0], bufs, fua, wait).await?
    } else {
        let flags = std::rc::Rc::new(std::cell::Cell::new(false));
        let futs: Vec<IoFuture> = segs
            .iter()
            .map(|s| {
                let (inner, io, flags, b) =
                    (inner.clone(), io.clone(), flags.clone(), bufs.slice(s.at, s.len as usize));
                let s = *s;
                Box::pin(async move {
                    if write_seg(inner, io, id, s, b, fua, wait).await? {
                        flags.set(true);
                    }
                    Ok(())
                }) as IoFuture
            })
            .collect();
        try_join_all(futs).await?;
        flags.get()
    };
    if fua && uncommitted {
        commit(&inner, &io).await?;
    }
    Ok(())
}

/// Data blocks a read is using: freed blocks are not reused until it is dropped.
struct Pins<'a> {
    inner: &'a PoolInner,
    blocks: SmallVec<[u64; 2]>,
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        let mut st = self.inner.lock();
        let mut released = false;
        for &b in &self.blocks {
            released |= st.unpin(b);
        }
        if released {
            st.wake_all(); // a write may be waiting for space
        }
    }
}

async fn read(inner: Arc<PoolInner>, io: IoCtx, id: u64, off: u64, bufs: IoBufs) -> Result<()> {
    let segs = segments(inner.block_size, off, bufs.len() as u64);
    // Look the blocks up and pin the mapped ones under one lock; most reads lie in one block.
    let mut pins = Pins { inner: &inner, blocks: SmallVec::new() };
    let entries: SmallVec<[u64; 2]> = {
        let mut st = inner.lock();
        let v = st.volumes.get(&id).ok_or_else(|| Error::new(ErrorKind::NotFound, "thin volume was removed"))?;
        let entries: SmallVec<[u64; 2]> = segs.iter().map(|s| v.map.get(s.vb)).collect();
        for &e in entries.iter().filter(|&&e| e != 0) {
            st.pin(e - 1);
            pins.blocks.push(e - 1);
        }
        entries
    };
    let read_seg = |s: &Seg, e: u64| {
        let b = bufs.slice(s.at, s.len as usize);
        if e == 0 {
            b.zero(0, b.len());
            None
        } else {
            let dev_off = inner.data_offset + (e - 1) * inner.block_size + s.within;
            Some(inner.data.read(&io, dev_off, b, IoTag::DATA))
        }
    };
    if let ([s], [e]) = (&segs[..], &entries[..]) {
        return match read_seg(s, *e) {
            Some(fut) => fut.await,
            None => Ok(()),
        };
    }
    try_join_all(segs.iter().zip(entries).filter_map(|(s, e)| read_seg(s, e))).await.map(|_| ())
}

/// Unmap the whole blocks of `[off, off+len)`; with `zero_partial`, write zeros over the mapped
/// parts of partial blocks (write-zeroes), otherwise leave them (discard).
async fn unmap(
    inner: Arc<PoolInner>,
    io: IoCtx,
    id: u64,
    off: u64,
    len: u64,
    zero_partial: bool,
    wait: Duration,
) -> Result<()> {
    let _writer = enter(&inner, id).await?;
    let bs = inner.block_size;
    for s in segments(bs, off, len) {
        if s.len == bs {
            let _busy = acquire(&inner, id, s.vb).await?;
            let mut st = inner.lock();
            if let Some(f) = &st.failed {
                return Err(Error::new(ErrorKind::Io, format!("thin pool failed: {f}")));
            }
            if st.volumes.get(&id).is_some_and(|v| v.map.get(s.vb) != 0) {
                st.set_mapping(id, s.vb, 0);
            }
        } else if zero_partial {
            let mapped = inner.lock().volumes.get(&id).is_some_and(|v| v.map.get(s.vb) != 0);
            if mapped {
                let mut z = io.pool().shared(s.len as usize);
                z.bytes_mut().fill(0);
                let seg = Seg { at: 0, ..s };
                write_seg(inner.clone(), io.clone(), id, seg, z.io(), false, wait).await?;
            }
        }
    }
    Ok(())
}

impl BlockDev for ThinVolume {
    fn layer_metrics(&self, out: &mut Vec<blockdev::LayerSample>) {
        crate::metrics::push(&self.inner, out);
        self.inner.meta.layer_metrics(out);
        if !self.inner.shared_dev {
            self.inner.data.layer_metrics(out);
        }
    }

    fn info(&self) -> DevInfo {
        let data = self.inner.data.info();
        DevInfo {
            size: self.size().unwrap_or(0),
            logical_block_size: data.logical_block_size.max(512),
            physical_block_size: data.physical_block_size.max(4096),
            mem_align: data.mem_align,
            read_only: false,
            discard: true,
            write_zeroes: true,
            optimal_io_size: self.inner.block_size as u32,
            volatile_cache: true,
        }
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_range(off, bufs.len() as u64) {
            return blockdev::ready(Err(e));
        }
        Box::pin(read(self.inner.clone(), io.clone(), self.id, off, bufs))
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, bufs.len() as u64) {
            return blockdev::ready(Err(e));
        }
        Box::pin(write(self.inner.clone(), io.clone(), self.id, off, bufs, fua, self.no_space_wait))
    }

    fn flush(&self, io: &IoCtx, _tag: IoTag) -> IoFuture {
        let (inner, io) = (self.inner.clone(), io.clone());
        Box::pin(async move { commit(&inner, &io).await })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return blockdev::ready(Err(e));
        }
        Box::pin(unmap(self.inner.clone(), io.clone(), self.id, off, len, false, self.no_space_wait))
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, _unmap: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return blockdev::ready(Err(e));
        }
        Box::pin(unmap(self.inner.clone(), io.clone(), self.id, off, len, true, self.no_space_wait))
    }

    fn over_network(&self) -> bool {
        self.inner.meta.over_network() || self.inner.data.over_network()
    }

    fn describe(&self) -> String {
        format!("thin:{}", self.name)
    }
}
