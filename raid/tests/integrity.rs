//! For every level and every single missing member the array's contents hash the same as before
//! (mdadm's 01r5integ idea); likewise after a rebuild, and scrub then finds nothing.

mod common;

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx};
use common::*;
use raid::{assemble, create, AssembleOptions, Level, RebuildOptions};

const MEMBER: u64 = 4 << 20;

fn integrity_with_each_member_missing(level: Level, n: usize) {
    let io = IoCtx::new().unwrap();
    let members = mem_members(n, MEMBER);
    let arr = io.block_on(create(&io, members.clone(), small_opts(level))).unwrap();
    fill(&io, &arr, 42);
    let before = hash_dev(&io, &arr);
    io.block_on(arr.close(&io)).unwrap();
    drop(arr);
    for missing in 0..n {
        // A degraded start records the missing member as failed: use a fresh copy each time.
        let copy = clone_members(&io, &members);
        let arr = io.block_on(assemble(&io, without(&copy, Some(missing)), AssembleOptions::default())).unwrap();
        assert!(arr.status().degraded);
        assert_eq!(hash_dev(&io, &arr), before, "RAID {level:?}: contents differ with member {missing} missing");
    }
}

#[test]
fn raid1_contents_survive_each_missing_member() {
    integrity_with_each_member_missing(Level::Raid1, 3);
}

#[test]
fn raid5_contents_survive_each_missing_member() {
    integrity_with_each_member_missing(Level::Raid5, 4);
}

#[test]
fn raid0_refuses_to_start_with_a_member_missing() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, MEMBER);
    let arr = io.block_on(create(&io, members.clone(), small_opts(Level::Raid0))).unwrap();
    fill(&io, &arr, 1);
    let before = hash_dev(&io, &arr);
    io.block_on(arr.close(&io)).unwrap();
    let err = io.block_on(assemble(&io, without(&members, Some(1)), AssembleOptions::default())).err().unwrap();
    assert!(err.to_string().contains("role 1"), "{err}");
    let arr = io.block_on(assemble(&io, without(&members, None), AssembleOptions::default())).unwrap();
    assert_eq!(hash_dev(&io, &arr), before);
}

fn degraded_writes_then_rebuild(level: Level, n: usize) {
    for failed in 0..n {
        let io = IoCtx::new().unwrap();
        let members = mem_members(n, MEMBER);
        let arr = io.block_on(create(&io, members.clone(), small_opts(level))).unwrap();
        fill(&io, &arr, 7);
        io.block_on(arr.fail_member(&io, failed)).unwrap();
        // Write degraded: odd ranges over the whole array.
        fill(&io, &arr, 100 + failed as u64);
        let before = hash_dev(&io, &arr);
        let replacement: Arc<dyn BlockDev> = Arc::new(blockdev::MemDisk::new(MEMBER).unwrap());
        io.block_on(arr.replace(&io, failed, "new".into(), replacement)).unwrap();
        io.block_on(arr.rebuild(&io, RebuildOptions::default())).unwrap();
        assert!(!arr.status().degraded);
        assert_eq!(hash_dev(&io, &arr), before, "after rebuild of member {failed}");
        let rep = io.block_on(arr.scrub(&io, false)).unwrap();
        assert_eq!(rep.mismatches, 0, "scrub after rebuild of member {failed}");
        // The rebuilt member alone (with another one missing) serves the same data.
        io.block_on(arr.close(&io)).unwrap();
        let other = (failed + 1) % n;
        let arr2 = io
            .block_on(assemble(
                &io,
                without(&members_with(&members, failed, &arr), Some(other)),
                AssembleOptions::default(),
            ))
            .unwrap();
        assert_eq!(hash_dev(&io, &arr2), before, "rebuilt member {failed} with member {other} missing");
    }
}

/// The member list with `role` replaced by the array's current device in that role.
fn members_with(
    members: &[(String, Arc<dyn BlockDev>)],
    role: usize,
    arr: &raid::Array,
) -> Vec<(String, Arc<dyn BlockDev>)> {
    let mut m = members.to_vec();
    m[role] = ("new".into(), arr.member_device(role).unwrap());
    m
}

#[test]
fn raid1_degraded_writes_then_rebuild_keep_contents() {
    degraded_writes_then_rebuild(Level::Raid1, 2);
}

#[test]
fn raid5_degraded_writes_then_rebuild_keep_contents() {
    degraded_writes_then_rebuild(Level::Raid5, 3);
}

#[test]
fn scrub_counts_and_repairs_a_corrupted_parity_chunk() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, MEMBER);
    let arr = io.block_on(create(&io, members.clone(), small_opts(Level::Raid5))).unwrap();
    fill(&io, &arr, 3);
    io.block_on(arr.close(&io)).unwrap();
    // Corrupt 4 KiB of member 2's data area behind the array's back.
    let data_offset = io.block_on(raid::read_superblock(&io, "m2", &*members[2].1)).unwrap().data_offset;
    write_at(&io, &*members[2].1, data_offset + 8192, &[0xEE; 4096]);
    let rep = io.block_on(arr.scrub(&io, false)).unwrap();
    assert_eq!(rep.mismatches, 1);
    assert_eq!(arr.status().mismatches, 1);
    let rep = io.block_on(arr.scrub(&io, true)).unwrap();
    assert_eq!(rep.repaired, 1);
    assert_eq!(io.block_on(arr.scrub(&io, false)).unwrap().mismatches, 0);
    assert_eq!(arr.status().mismatches, 0);
}
