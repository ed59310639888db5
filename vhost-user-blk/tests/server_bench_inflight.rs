//! Not a timed test: what in-flight tracking costs. The same hand-driven frontend
//! (`server_common::ring`) runs 4 KiB reads against a RAM-disk export, with and without an
//! in-flight region (alternating rounds, so drift hits both alike): QD32 IOPS and QD1 mean
//! latency, printed with the ratio. A RAM disk makes the daemon's per-request work the whole
//! cost, so this is the worst case. Ignored by default; on an idle machine run
//!
//!   cargo test --release -p vhost-user-blk --test server_bench_inflight -- --ignored --nocapture
//!
//! (STRATA_BENCH_ROUNDS and STRATA_BENCH_SECS change the 6 rounds of 2 s per variant.)

mod server_common;

use std::time::{Duration, Instant};

use server_common::ring::{Desc, TestFrontend, F_WRITE, T_IN};
use server_common::{mem_disk, serve, tempdir};

const QSIZE: u16 = 128;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `depth` read chains (header, 4 KiB, status) at descriptors 3*i.., all on different blocks.
fn chains(fe: &mut TestFrontend, depth: u16) -> Vec<u16> {
    fe.reset_data();
    (0..depth)
        .map(|i| {
            let hdr = fe.header(T_IN, u64::from(i) * 8);
            let data = fe.alloc(4096, 0);
            let st = fe.status_buf();
            let descs = [
                Desc { addr: hdr, len: 16, flags: 0, next: 0 },
                Desc { addr: data, len: 4096, flags: F_WRITE, next: 0 },
                Desc { addr: st, len: 1, flags: F_WRITE, next: 0 },
            ];
            fe.put_chain(0, 3 * i, &descs)
        })
        .collect()
}

/// Keep `depth` requests in flight for `secs`: (requests completed, elapsed).
fn run(fe: &mut TestFrontend, depth: u16, secs: u64) -> (u64, Duration) {
    let heads = chains(fe, depth);
    for &h in &heads {
        fe.stage(0, h);
    }
    let idx = fe.avail_idx(0);
    fe.set_avail_idx(0, idx);
    fe.kick(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut done = 0u64;
    let mut outstanding = u64::from(depth);
    while outstanding > 0 {
        let Some((id, _)) = fe.next_used_spin(0) else { continue };
        done += 1;
        outstanding -= 1;
        if Instant::now() < end {
            fe.stage(0, id as u16);
            let idx = fe.avail_idx(0);
            fe.set_avail_idx(0, idx);
            fe.kick(0);
            outstanding += 1;
        }
    }
    (done, start.elapsed())
}

#[test]
#[ignore = "benchmark: run on an idle machine with --ignored --nocapture"]
fn bench_inflight_tracking_cost() {
    let rounds = env_or("STRATA_BENCH_ROUNDS", 6);
    let secs = env_or("STRATA_BENCH_SECS", 2);
    let dir = tempdir();
    let exp = serve(dir.path(), "bi", mem_disk(64 << 20), |s| s.queue_size = QSIZE);
    let sock = dir.path().join("bi.sock");
    // [variant][depth] -> (requests, seconds)
    let mut totals = [[(0u64, 0f64); 2]; 2];
    for round in 0..rounds * 2 {
        let tracked = round % 2 == 1;
        for (d, depth) in [32u16, 1].into_iter().enumerate() {
            let mut fe = if tracked {
                TestFrontend::connect_inflight(&sock, 1, QSIZE)
            } else {
                TestFrontend::connect(&sock, 1, QSIZE)
            };
            let (n, t) = run(&mut fe, depth, secs);
            let slot = &mut totals[usize::from(tracked)][d];
            slot.0 += n;
            slot.1 += t.as_secs_f64();
        }
    }
    let iops = |v: usize| totals[v][0].0 as f64 / totals[v][0].1;
    let lat_us = |v: usize| totals[v][1].1 / totals[v][1].0 as f64 * 1e6;
    println!("4 KiB reads, RAM disk, {rounds} rounds of {secs} s each, alternating");
    println!("QD32 IOPS: untracked {:.0}, tracked {:.0}, ratio {:.3}", iops(0), iops(1), iops(1) / iops(0));
    println!(
        "QD1 latency: untracked {:.1} us, tracked {:.1} us, ratio {:.3}",
        lat_us(0),
        lat_us(1),
        lat_us(1) / lat_us(0)
    );
    exp.stop();
}

/// A short run of both variants, so the benchmark's code path stays working.
#[test]
fn bench_inflight_smoke() {
    let dir = tempdir();
    let exp = serve(dir.path(), "bs", mem_disk(16 << 20), |s| s.queue_size = QSIZE);
    let sock = dir.path().join("bs.sock");
    for tracked in [false, true] {
        let mut fe = if tracked {
            TestFrontend::connect_inflight(&sock, 1, QSIZE)
        } else {
            TestFrontend::connect(&sock, 1, QSIZE)
        };
        let (n, _) = run(&mut fe, 8, 0);
        assert_eq!(n, 8, "every request of the first batch completes");
    }
    exp.stop();
}
