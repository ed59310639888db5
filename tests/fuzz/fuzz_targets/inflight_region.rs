//! Fuzz the in-flight region's recovery (`inflight_region::recover`): a region a frontend kept
//! across a daemon restart may hold anything. The input's first 8 bytes choose the region's
//! queue size (1 to 64), the ring's size (up to twice that: larger rings are refused), and the
//! ring's avail and used indices; the rest fills the region of two queues. Recovery must return
//! the requests to resubmit (each a descriptor of the ring, none twice, no more than were made
//! available) or an error, never panic, loop or touch memory outside the region.
#![no_main]

use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use vhost_user_blk::server::protocol::inflight_region::{create_memfd, queue_region_size, recover, reset_queue, Region};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let queue_size = u16::from(data[0] % 64) + 1;
    let ring_size = u16::from(data[1]) % (2 * queue_size) + 1;
    let avail = u16::from_le_bytes([data[2], data[3]]);
    let used = u16::from_le_bytes([data[4], data[5]]);
    let len = 2 * queue_region_size(queue_size);
    let file = create_memfd(len).expect("memfd");
    let body = &data[8..];
    file.write_all_at(&body[..body.len().min(len)], 0).expect("fill the region");
    let region = Region::map(&file, 0, len as u64, 2, queue_size).expect("a region of the right size maps");
    for q in 0..2 {
        match recover(&region, q, ring_size, avail, used) {
            Ok(found) => {
                assert!(ring_size <= queue_size);
                let mut seen = vec![false; usize::from(queue_size)];
                for &h in &found.resubmit {
                    assert!(h < ring_size, "head {h} outside a ring of {ring_size}");
                    assert!(!std::mem::replace(&mut seen[usize::from(h)], true), "head {h} twice");
                }
                assert!(found.resubmit.len() <= usize::from(avail.wrapping_sub(used)));
                // A second recovery finds the same requests (the fix-up is done once).
                let again = recover(&region, q, ring_size, avail, used).expect("a recovered queue recovers again");
                assert_eq!(again.resubmit, found.resubmit);
            }
            Err(_) => {
                reset_queue(&region, q, used);
                let clean = recover(&region, q, ring_size.min(queue_size), avail, used).expect("a reset queue recovers");
                assert!(clean.resubmit.is_empty());
            }
        }
    }
});
