//! A quick engine probe: 4 KiB random reads or writes at a queue depth on one file, one thread.
//! `cargo run --release -p blockdev --example qd_probe -- FILE [read|write] [QD] [SECONDS]`
//! (The full harness is `blkctl bench`; this isolates the engine for profiling.)

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: qd_probe FILE [read|write] [QD] [SECONDS]");
    let write = args.get(2).is_some_and(|a| a == "write");
    let qd: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dev: Arc<dyn BlockDev> = Arc::new(RawFile::open(path, OpenOptions::default()).expect("open"));
    let blocks = dev.info().size / 4096;
    let io = IoCtx::new().expect("engine");
    let done = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..qd {
        let (dev, io2, done) = (dev.clone(), io.clone(), done.clone());
        tasks.push(io.spawn(async move {
            let mut buf = io2.pool().shared(4096);
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ t as u64;
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % blocks) * 4096;
                let r = if write {
                    dev.write(&io2, off, buf.io(), false, IoTag::DATA).await
                } else {
                    dev.read(&io2, off, buf.io(), IoTag::DATA).await
                };
                r.expect("io");
                done.set(done.get() + 1);
            }
        }));
    }
    let start = Instant::now();
    io.block_on(async {
        for t in tasks {
            t.await;
        }
    });
    let el = start.elapsed().as_secs_f64();
    println!("{} qd{qd}: {:.0} IOPS", if write { "randwrite" } else { "randread" }, done.get() as f64 / el);
}
