//! A deep queue of requests that complete at once (a RAM disk, or reads that hit the page
//! cache) is answered a few requests at a time: the worker publishes what finished, and
//! notifies, every few requests instead of once after the whole queue, so the guest refills
//! the queue while the worker goes on.

mod server_common;

use std::time::Duration;

use server_common::ring::*;
use server_common::{mem_disk, serve, tempdir};

const QSIZE: u16 = 128;

#[test]
fn a_deep_queue_is_answered_in_several_notified_batches() {
    let dir = tempdir();
    let served = serve(dir.path(), "pipeline", mem_disk(1 << 20), |s| {
        s.queue_size = QSIZE;
        s.poll_us = Some(0);
    });
    // No EVENT_IDX: the device signals every time it adds to the used ring (unless the guest
    // sets NO_INTERRUPT, which this one never does).
    let mut fe = TestFrontend::connect(&served.export.settings.socket, 1, QSIZE);
    let n: u16 = 32;
    let mut reads = Vec::new();
    for i in 0..n {
        let hdr = fe.header(T_IN, u64::from(i));
        let data = fe.alloc(512, 0xee);
        let st = fe.status_buf();
        let head = fe.put_chain(
            0,
            i * 3,
            &[
                Desc { addr: hdr, len: 16, flags: 0, next: 0 },
                Desc { addr: data, len: 512, flags: F_WRITE, next: 0 },
                Desc { addr: st, len: 1, flags: F_WRITE, next: 0 },
            ],
        );
        reads.push((head, data, st));
    }
    // All of them at once, with one kick: the worker finds the whole queue in one look.
    for &(head, _, _) in &reads {
        fe.stage(0, head);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    fe.set_avail_idx(0, fe.avail_idx(0));
    fe.kick(0);
    let mut answered = Vec::new();
    for _ in 0..n {
        let (id, len) = fe.next_used(0, Duration::from_secs(5)).expect("every request answered within 5 s");
        answered.push(id as u16);
        assert_eq!(len, 513, "a 512-byte read answers its data and the status byte");
    }
    answered.sort_unstable();
    let mut heads: Vec<u16> = reads.iter().map(|r| r.0).collect();
    heads.sort_unstable();
    assert_eq!(answered, heads, "each request answered once");
    for &(head, data, st) in &reads {
        assert_eq!(fe.byte(st), S_OK, "read of head {head}");
        assert_eq!(fe.read(data, 512), vec![0u8; 512], "a fresh RAM disk reads zeros (head {head})");
    }
    // The call eventfd counts the device's signals (nobody else reads it). One signal for the
    // whole queue means the guest learnt of the first answer only after the last was done.
    let signals = fe.queues[0].call.read().expect("the device signalled");
    eprintln!("{n} requests answered with {signals} signals");
    assert!(signals >= 3, "{n} requests popped together were answered with {signals} signal(s): not pipelined");
    served.stop();
}
