//! The partial parity log never deadlocks on its own slots: a full-stripe write that must
//! supersede an older entry of its stripe, while every slot holds a unit, gets a slot once a
//! flush makes the older writes stable (its own in-flight write must not keep them live).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use blockdev::IoCtx;
use common::*;
use raid::{create, CreateOptions, Level};

const MEMBER: u64 = 4 << 20;
const CHUNK: u64 = 16 << 10;

#[test]
fn full_stripe_write_over_a_logged_stripe_gets_a_slot_when_the_log_is_full() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let io = IoCtx::new().unwrap();
        let members = mem_members(3, MEMBER);
        let opts = CreateOptions { ppl_slots: 4, ..small_opts(Level::Raid5) };
        let arr = io.block_on(create(&io, members, opts)).unwrap();
        let stripe = 2 * CHUNK; // data bytes per stripe on 3 members
                                // Four partial writes to four stripes: four logged units fill the four slots.
        for s in 0..4u64 {
            write_at(&io, &arr, s * stripe + 512, &[s as u8 + 1; 4096]);
        }
        // A full-stripe write to stripe 0, whose older entry may still be replayed: it logs a
        // superseding entry and needs a slot.
        let full = vec![0xab; stripe as usize];
        write_at(&io, &arr, 0, &full);
        let back = read_at(&io, &arr, 0, stripe as usize);
        let _ = done_tx.send(back == full && read_at(&io, &arr, stripe + 512, 4096) == vec![2; 4096]);
    });
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(ok) => assert!(ok, "data read back differs"),
        Err(_) => panic!("the full-stripe write never got a log slot (deadlock)"),
    }
}
