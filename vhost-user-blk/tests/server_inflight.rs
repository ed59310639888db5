//! In-flight tracking across a daemon crash: requests complete out of order, the daemon is
//! SIGKILLed with some still in flight, and a new daemon, given the frontend's in-flight region,
//! resubmits exactly those: every request completes once, with the right data. Without the
//! region a frontend falls back to the used index (as QEMU does), which re-runs requests that
//! had completed and loses those still in flight: this test fails that way when run with
//! `STRATA_TEST_NO_INFLIGHT=1`.
//!
//! Requests are held back by the daemon's debug-build test hook `STRATA_TEST_HOLD_FROM`
//! (`src/server/worker/test_hold.rs`): those at or beyond that byte offset never complete.

mod server_common;

use std::collections::HashMap;
use std::time::Duration;

use server_common::ring::{Desc, TestFrontend, F_WRITE, S_OK, S_UNTOUCHED, T_OUT};
use server_common::{tempdir, DaemonProcess};

const HOLD_FROM: u64 = 2 << 20;
const QSIZE: u16 = 64;

fn daemon(sock: &std::path::Path, img: &std::path::Path, hold: bool) -> DaemonProcess {
    let disk = format!("socket={},format=raw,path={},num-queues=1,queue-size={QSIZE}", sock.display(), img.display());
    let env: &[(&str, &str)] = if hold { &[("STRATA_TEST_HOLD_FROM", "2097152")] } else { &[] };
    DaemonProcess::start_env(&["--disk", &disk], env, &[sock])
}

/// A write request's chain (header, 4 KiB of `fill`, status) at descriptor `first`: (head,
/// status address).
fn write_chain(fe: &mut TestFrontend, first: u16, offset: u64, fill: u8) -> (u16, u64) {
    let hdr = fe.header(T_OUT, offset / 512);
    let data = fe.data(&[fill; 4096]);
    let st = fe.status_buf();
    let descs = [
        Desc { addr: hdr, len: 16, flags: 0, next: 0 },
        Desc { addr: data, len: 4096, flags: 0, next: 0 },
        Desc { addr: st, len: 1, flags: F_WRITE, next: 0 },
    ];
    (fe.put_chain(0, first, &descs), st)
}

/// Collect used entries of queue 0 until `n` arrived (or 5 s passed), then 300 ms more to
/// catch any that should not come; counts per head.
fn collect_used(fe: &mut TestFrontend, n: usize, into: &mut HashMap<u32, u32>) {
    let mut got = 0;
    while got < n {
        let Some((id, _)) = fe.next_used(0, Duration::from_secs(5)) else { break };
        *into.entry(id).or_default() += 1;
        got += 1;
    }
    while let Some((id, _)) = fe.next_used(0, Duration::from_millis(300)) {
        *into.entry(id).or_default() += 1;
    }
}

#[test]
fn a_new_daemon_resubmits_exactly_the_requests_the_killed_one_had_in_flight() {
    let with_region = std::env::var_os("STRATA_TEST_NO_INFLIGHT").is_none();
    let dir = tempdir();
    let (sock, img) = (dir.path().join("vu.sock"), dir.path().join("disk.img"));
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let first = daemon(&sock, &img, true);
    let mut fe = if with_region {
        TestFrontend::connect_inflight(&sock, 1, QSIZE)
    } else {
        TestFrontend::connect(&sock, 1, QSIZE)
    };

    // Six writes in avail order: held (beyond HOLD_FROM) and quick ones interleaved.
    let offsets = [HOLD_FROM, 0, HOLD_FROM + 4096, 4096, HOLD_FROM + 8192, 8192];
    let mut reqs = Vec::new();
    for (i, &off) in offsets.iter().enumerate() {
        let fill = 0x10 + i as u8;
        let (head, st) = write_chain(&mut fe, 3 * i as u16, off, fill);
        fe.stage(0, head);
        reqs.push((head, st, off, fill));
    }
    let idx = fe.avail_idx(0);
    fe.set_avail_idx(0, idx);
    fe.kick(0);

    // The quick ones complete, out of order with the held ones.
    let mut used = HashMap::new();
    collect_used(&mut fe, 3, &mut used);
    let quick: Vec<u32> = reqs.iter().filter(|r| r.2 < HOLD_FROM).map(|r| u32::from(r.0)).collect();
    assert_eq!(
        used.keys().copied().collect::<std::collections::BTreeSet<_>>(),
        quick.iter().copied().collect(),
        "before the crash: {used:?}"
    );
    for r in &reqs {
        let want = if r.2 < HOLD_FROM { S_OK } else { S_UNTOUCHED };
        assert_eq!(fe.byte(r.1), want, "status of the request at {}", r.2);
    }

    first.kill();
    let second = daemon(&sock, &img, false);
    fe.resume_after_crash(&sock);
    collect_used(&mut fe, 3, &mut used);
    for r in &reqs {
        assert_eq!(
            used.get(&u32::from(r.0)),
            Some(&1),
            "the request at {} (head {}) must complete exactly once: {used:?}",
            r.2,
            r.0
        );
        assert_eq!(fe.byte(r.1), S_OK, "status of the request at {}", r.2);
    }
    assert_eq!(used.len(), reqs.len(), "used entries for heads never submitted: {used:?}");

    // Every write reached the disk.
    for r in &reqs {
        let (st, data) = fe.read_sectors(0, r.2 / 512, 4096);
        assert_eq!(st, S_OK);
        assert!(data.iter().all(|&b| b == r.3), "data at {} is not the request's", r.2);
    }
    second.stop();
}
