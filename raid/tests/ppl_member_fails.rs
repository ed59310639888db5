//! A member that fails while a RAID 5 write's log entry waits for its unit to be written: the
//! data writes then skip that member, and the entry (which lists it as modified) cannot be
//! replayed, since its range cannot be read back. The write must log what the stripe now means
//! before it writes, or a crash that keeps one data write and loses the parity write leaves the
//! missing member reconstructing to garbage — over bytes the guest never touched.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use blockdev::testdev::{CrashDev, CrashMode};
use blockdev::{BlockDev, DevInfo, IoBufs, IoCtx, IoFuture, IoTag, MemDisk};
use common::{read_at, small_opts, write_at};
use raid::{assemble, create, AssembleOptions, Level};

/// Holds log unit writes (site `raid5.ppl`) while armed, until opened.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    open: AtomicBool,
    held: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

/// Resolves once the gate is open.
struct Wait(Arc<Gate>);

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.0.wakers.lock().unwrap().push(cx.waker().clone());
        if self.0.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A member that passes everything through, except that log unit writes wait at the gate.
struct GateDev {
    inner: Arc<dyn BlockDev>,
    gate: Arc<Gate>,
}

impl BlockDev for GateDev {
    fn info(&self) -> DevInfo {
        self.inner.info()
    }
    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        self.inner.read(io, off, bufs, tag)
    }
    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        if tag.site != "raid5.ppl" || !self.gate.armed.load(Ordering::SeqCst) {
            return self.inner.write(io, off, bufs, fua, tag);
        }
        self.gate.held.store(true, Ordering::SeqCst);
        let (inner, gate, io) = (self.inner.clone(), self.gate.clone(), io.clone());
        Box::pin(async move {
            Wait(gate).await;
            inner.write(&io, off, bufs, fua, tag).await
        })
    }
    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        self.inner.flush(io, tag)
    }
    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        self.inner.discard(io, off, len, tag)
    }
    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
        self.inner.write_zeroes(io, off, len, unmap, tag)
    }
}

/// Resolves once the gate holds a write.
struct Held(Arc<Gate>);

impl Future for Held {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.held.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        // Spin through the executor until the write task reaches the gate.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn a_member_failing_while_the_entry_waits_is_logged_before_the_writes() {
    const CHUNK: usize = 16 << 10;
    let io = IoCtx::new().unwrap();
    let disks: Vec<Arc<dyn BlockDev>> =
        (0..4).map(|_| Arc::new(MemDisk::new(8 << 20).unwrap()) as Arc<dyn BlockDev>).collect();
    let crash: Vec<CrashDev> = disks.iter().map(|d| CrashDev::new(d.clone())).collect();
    let gate = Arc::new(Gate::default());
    let members: Vec<(String, Arc<dyn BlockDev>)> = crash
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let dev = GateDev { inner: Arc::new(c.clone()), gate: gate.clone() };
            (format!("m{i}"), Arc::new(dev) as Arc<dyn BlockDev>)
        })
        .collect();
    let arr = Arc::new(io.block_on(create(&io, members, small_opts(Level::Raid5))).unwrap());
    // Stripe 0: parity on m3, data chunks 0, 1, 2 on m0, m1, m2. Make it stable.
    let old: Vec<u8> = (0..3 * CHUNK).map(|i| (i * 7 + i / 4096) as u8).collect();
    write_at(&io, arr.as_ref(), 0, &old);
    io.block_on(arr.flush(&io, IoTag::DATA)).unwrap();

    // A write over the end of chunk 0 and the start of chunk 1 (m0 and m1 modified); its log
    // unit (to m3) waits at the gate while m0 fails.
    gate.armed.store(true, Ordering::SeqCst);
    let new = vec![0xA5u8; 8192];
    let (a2, io2, n2) = (arr.clone(), io.clone(), new.clone());
    let w = io.spawn(async move {
        let mut b = blockdev::SharedBuf::from_slice(&n2);
        a2.write(&io2, (CHUNK - 4096) as u64, b.io(), false, IoTag::DATA).await
    });
    io.block_on(Held(gate.clone()));
    io.block_on(arr.fail_member(&io, 0)).unwrap();
    gate.open();
    io.block_on(w).unwrap();

    // Power loss: m1's data write survives, m3's parity write does not (log units are FUA).
    io.block_on(crash[1].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[3].crash(&io, CrashMode::KeepNone)).unwrap();
    io.block_on(crash[2].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[0].crash(&io, CrashMode::KeepAll)).unwrap();
    drop(arr);

    let after = disks.iter().enumerate().map(|(i, d)| (format!("m{i}"), Some(d.clone()))).collect();
    let arr = io.block_on(assemble(&io, after, AssembleOptions::default())).unwrap();
    assert!(arr.status().degraded, "m0 stays out (marked faulty before the crash)");
    let got = read_at(&io, &arr, 0, 3 * CHUNK);
    // m0's first 12 KiB were never written by the guest since the flush: they must read back.
    assert!(got[..CHUNK - 4096] == old[..CHUNK - 4096], "chunk 0 below the write reconstructs to garbage");
    // The written ranges read old or new, sector by sector; everything else reads old.
    for s in (0..3 * CHUNK).step_by(512) {
        let (g, o) = (&got[s..s + 512], &old[s..s + 512]);
        let in_write = (CHUNK - 4096..CHUNK + 4096).contains(&s);
        assert!(g == o || (in_write && g.iter().all(|&x| x == 0xA5)), "sector at byte {s}: neither old nor new");
    }
}
