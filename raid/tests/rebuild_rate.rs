//! A rate-limited rebuild keeps to its rate (it sleeps on the shared timer between rows) and
//! leaves the thread free for other I/O while it sleeps.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, IoCtx, IoTag, MemDisk, SharedBuf};
use common::*;
use raid::{create, Level, RebuildOptions};

const MEMBER: u64 = 4 << 20;

#[test]
fn a_rate_limited_rebuild_takes_its_time_and_the_thread_keeps_serving() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(2, MEMBER);
    let arr = Arc::new(io.block_on(create(&io, members, small_opts(Level::Raid1))).unwrap());
    fill(&io, &*arr, 3);
    let before = hash_dev(&io, &*arr);
    io.block_on(arr.fail_member(&io, 1)).unwrap();
    let spare: Arc<dyn BlockDev> = Arc::new(MemDisk::new(MEMBER).unwrap());
    io.block_on(arr.replace(&io, 1, "spare".into(), spare)).unwrap();

    let size = arr.info().size;
    // The whole array at this rate takes about half a second.
    let rate = size * 2;
    let opts = RebuildOptions { rate_limit: Some(rate), ..Default::default() };
    let (a2, io2) = (arr.clone(), io.clone());
    let t0 = Instant::now();
    let rebuild = io.spawn(async move { a2.rebuild(&io2, opts).await });
    // Reads on the same thread while the rebuild sleeps between rows.
    let reads = Rc::new(Cell::new(0u32));
    let (a3, io3, r3) = (arr.clone(), io.clone(), reads.clone());
    let reader = io.spawn(async move {
        let mut b = SharedBuf::new(4096);
        for i in 0..50u64 {
            a3.read(&io3, (i * 4096) % size, b.io(), IoTag::DATA).await.unwrap();
            r3.set(r3.get() + 1);
        }
    });
    io.block_on(reader);
    let reads_done_at = t0.elapsed();
    let rebuilt = io.block_on(rebuild).unwrap();
    let took = t0.elapsed();

    assert!(rebuilt >= size, "rebuilt {rebuilt} of {size} bytes");
    let due = Duration::from_secs_f64(rebuilt as f64 / rate as f64);
    assert!(took >= due, "a rebuild of {rebuilt} bytes at {rate} B/s took {took:?}, less than {due:?}");
    assert!(took < due + Duration::from_secs(10), "the rebuild overslept: {took:?} for {due:?}");
    assert_eq!(reads.get(), 50);
    assert!(reads_done_at < took, "the reads waited for the rebuild ({reads_done_at:?} of {took:?})");
    assert!(!arr.status().degraded);
    assert_eq!(hash_dev(&io, &*arr), before);
    assert_eq!(io.block_on(arr.scrub(&io, false)).unwrap().mismatches, 0);
}
