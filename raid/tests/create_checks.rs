//! `create`'s checks come before any write: the member count for the level, the chunk size and
//! the member size are refused by `CreateOptions::validate` (which `blkctl raid create` runs
//! before it opens a member), a member smaller than the size asked for is refused with every
//! member untouched, and a member size limits the space used. A scrub of a degraded array says
//! how many rows it could not check instead of calling them consistent.

mod common;

use blockdev::{BlockDev, IoCtx};
use common::{hash_dev, mem_members, small_opts, without};
use raid::{AssembleOptions, Level};

#[test]
fn options_are_checked_before_anything_is_opened() {
    let e = small_opts(Level::Raid5).validate(2).unwrap_err();
    assert!(e.to_string().contains("RAID 5 needs 3 to 32 members, got 2"), "{e}");
    let e = small_opts(Level::Raid1).validate(33).unwrap_err();
    assert!(e.to_string().contains("got 33"), "{e}");
    let e = raid::CreateOptions { chunk: 3 << 10, ..small_opts(Level::Raid0) }.validate(2).unwrap_err();
    assert!(e.to_string().contains("chunk size 3072"), "{e}");
    let e = raid::CreateOptions { member_size: Some(1 << 20), ..small_opts(Level::Raid1) }.validate(2).unwrap_err();
    assert!(e.to_string().contains("member size 1048576 leaves no room for data"), "{e}");
    small_opts(Level::Raid5).validate(3).unwrap();
}

#[test]
fn a_member_smaller_than_the_size_asked_for_is_refused_untouched() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, 8 << 20);
    let small = mem_members(1, 4 << 20).pop().unwrap();
    let mut all = members.clone();
    all[1] = ("small".into(), small.1.clone());
    for (_, d) in &all {
        common::fill(&io, &**d, 7);
    }
    let before: Vec<u32> = all.iter().map(|(_, d)| hash_dev(&io, &**d)).collect();
    let opts = raid::CreateOptions { member_size: Some(6 << 20), ..small_opts(Level::Raid5) };
    let e = io.block_on(raid::create(&io, all.clone(), opts)).err().expect("refused");
    assert!(e.to_string().contains("member small has 4194304 bytes, less than the member size 6291456"), "{e}");
    let after: Vec<u32> = all.iter().map(|(_, d)| hash_dev(&io, &**d)).collect();
    assert_eq!(before, after, "a refused create wrote to a member");
}

#[test]
fn the_member_size_bounds_the_space_used() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(2, 16 << 20);
    let opts = raid::CreateOptions { member_size: Some(4 << 20), ..small_opts(Level::Raid1) };
    let arr = io.block_on(raid::create(&io, members, opts)).unwrap();
    let st = arr.status();
    // RAID 1 over 4 MiB of each member: 1 MiB of metadata, 3 MiB of data.
    assert_eq!(st.size, 3 << 20);
    assert_eq!(arr.info().size, 3 << 20);
}

#[test]
fn a_degraded_scrub_counts_the_rows_it_could_not_check() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, 4 << 20);
    let arr = io.block_on(raid::create(&io, members.clone(), small_opts(Level::Raid5))).unwrap();
    io.block_on(arr.close(&io)).unwrap();
    drop(arr);
    let arr = io.block_on(raid::assemble(&io, without(&members, Some(2)), AssembleOptions::default())).unwrap();
    let rep = io.block_on(arr.scrub(&io, false)).unwrap();
    assert_eq!(rep.mismatches, 0);
    assert!(rep.rows > 0);
    assert_eq!(rep.unchecked, rep.rows, "no row of a degraded RAID 5 can be checked");
}
