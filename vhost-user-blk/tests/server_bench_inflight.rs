//! Not a timed test: what in-flight tracking costs. The same hand-driven frontend
//! (`server_common::ring`) runs 4 KiB reads against a RAM-disk export, with and without an
//! in-flight region (alternating rounds, so drift hits both alike): QD32 IOPS and QD1 mean
//! latency, printed with the ratio. A RAM disk makes the daemon's per-request work the whole
//! cost, so this is the worst case. Ignored by default; on an idle machine run
//!
//!   cargo test --release -p vhost-user-blk --test server_bench_inflight -- --ignored --nocapture
//!
//! (STRATA_BENCH_ROUNDS and STRATA_BENCH_SECS change the 6 rounds of 2 s per variant;
//! STRATA_BENCH_REPORT=docs/bench/82-inflight-cost.json saves every round for docs/bench.md.)

mod server_common;

use std::time::{Duration, Instant};

use server_common::ring::{Desc, TestFrontend, F_WRITE, T_IN};
use server_common::timings::{TimingRow, Timings};
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
    // [variant][depth] -> µs per request, one sample per round
    let mut us_per_request = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for round in 0..rounds * 2 {
        let tracked = round % 2 == 1;
        for (d, depth) in [32u16, 1].into_iter().enumerate() {
            let mut fe = if tracked {
                TestFrontend::connect_inflight(&sock, 1, QSIZE)
            } else {
                TestFrontend::connect(&sock, 1, QSIZE)
            };
            let (n, t) = run(&mut fe, depth, secs);
            us_per_request[usize::from(tracked)][d].push(t.as_secs_f64() / n as f64 * 1e6);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let iops = |v: usize| 1e6 / median(&us_per_request[v][0]);
    let lat_us = |v: usize| median(&us_per_request[v][1]);
    println!("4 KiB reads, RAM disk, {rounds} rounds of {secs} s each, alternating (medians)");
    println!("QD32 IOPS: untracked {:.0}, tracked {:.0}, ratio {:.3}", iops(0), iops(1), iops(1) / iops(0));
    println!(
        "QD1 latency: untracked {:.1} us, tracked {:.1} us, ratio {:.3}",
        lat_us(0),
        lat_us(1),
        lat_us(1) / lat_us(0)
    );
    if let Ok(path) = std::env::var("STRATA_BENCH_REPORT") {
        let mut rows = Vec::new();
        for (d, what) in
            ["4 KiB reads at QD32: wall time per request", "4 KiB reads at QD1: latency"].into_iter().enumerate()
        {
            for (v, backend) in ["without a region", "with an in-flight region"].into_iter().enumerate() {
                rows.push(TimingRow {
                    what: what.into(),
                    backend: backend.into(),
                    samples: us_per_request[v][d].clone(),
                });
            }
        }
        Timings {
            section: "In-flight tracking: what the region costs",
            title: format!("the test frontend against a `format=mem` export, {rounds} rounds of {secs} s per variant, alternating"),
            command: format!("STRATA_BENCH_ROUNDS={rounds} STRATA_BENCH_SECS={secs} STRATA_BENCH_REPORT=docs/bench/82-inflight-cost.json cargo test --release -p vhost-user-blk --test server_bench_inflight -- --ignored --nocapture"),
            unit: "µs",
            reference: Some("without a region"),
            notes: "The same hand-driven frontend (vhost-user-blk/tests/server_common/ring.rs, spinning on the used ring) with and without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD set up; a RAM disk, so the daemon's own work per request is the whole cost (the worst case). QD32: the round's wall time over the requests it completed; QD1: the mean latency. The issue's bar: at most 3% more.".into(),
        }
        .save(&path, rows);
    }
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
