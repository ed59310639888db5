//! Assembly refusals and member faults: stale and conflicting members named, read errors
//! repaired from redundancy and counted, a member that keeps failing kicked out, rebuilds that
//! run under I/O and resume after a crash.

mod common;

use std::sync::Arc;

use blockdev::testdev::{workload, CrashDev, CrashMode, FaultDev, ModelDev, WorkloadConfig};
use blockdev::{BlockDev, IoCtx, MemDisk};
use common::*;
use raid::{assemble, create, AssembleOptions, Level, RebuildOptions};

const MEMBER: u64 = 4 << 20;

#[test]
fn stale_member_is_left_out_by_name() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, MEMBER);
    let arr = io.block_on(create(&io, members.clone(), small_opts(Level::Raid1))).unwrap();
    fill(&io, &arr, 1);
    // Keep an old copy of member 2's superblock area, then move the array on without it.
    let old2 = clone_members(&io, &members[2..]);
    io.block_on(arr.fail_member(&io, 2)).unwrap();
    io.block_on(arr.close(&io)).unwrap();
    let mut m = without(&members, None);
    m[2] = ("old-m2".into(), Some(old2[0].1.clone()));
    let arr = io.block_on(assemble(&io, m, AssembleOptions::default())).unwrap();
    let st = arr.status();
    assert_eq!(st.members[2].state, "missing");
    assert!(st.degraded);
}

#[test]
fn members_of_two_arrays_are_refused_by_name() {
    let io = IoCtx::new().unwrap();
    let a = mem_members(2, MEMBER);
    let b = mem_members(2, MEMBER);
    io.block_on(create(&io, a.clone(), small_opts(Level::Raid1))).unwrap();
    io.block_on(create(&io, b.clone(), small_opts(Level::Raid1))).unwrap();
    let mixed = vec![("a0".to_string(), Some(a[0].1.clone())), ("b1".to_string(), Some(b[1].1.clone()))];
    let err = io.block_on(assemble(&io, mixed, AssembleOptions::default())).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("a0") || msg.contains("b1"), "{msg}");
    assert!(msg.contains("belongs to array"), "{msg}");
}

#[test]
fn two_members_claiming_one_role_are_refused() {
    let io = IoCtx::new().unwrap();
    let a = mem_members(2, MEMBER);
    io.block_on(create(&io, a.clone(), small_opts(Level::Raid1))).unwrap();
    let twin = clone_members(&io, &a[..1]);
    let m = vec![("a0".to_string(), Some(a[0].1.clone())), ("twin".to_string(), Some(twin[0].1.clone()))];
    let err = io.block_on(assemble(&io, m, AssembleOptions::default())).err().unwrap();
    assert!(err.to_string().contains("both claim role 0"), "{err}");
}

#[test]
fn bit_flipped_superblock_names_the_member() {
    let io = IoCtx::new().unwrap();
    let a = mem_members(3, MEMBER);
    io.block_on(create(&io, a.clone(), small_opts(Level::Raid5))).unwrap();
    let mut sb = read_at(&io, &*a[1].1, 0, 4096);
    sb[40] ^= 0x10;
    write_at(&io, &*a[1].1, 0, &sb);
    let err = io.block_on(assemble(&io, without(&a, None), AssembleOptions::default())).err().unwrap();
    assert!(err.to_string().contains("member m1") && err.to_string().contains("crc32"), "{err}");
}

type Named = Vec<(String, Arc<dyn BlockDev>)>;

fn faulty_members(n: usize) -> (Vec<Arc<FaultDev>>, Named) {
    let faults: Vec<Arc<FaultDev>> =
        (0..n).map(|_| Arc::new(FaultDev::new(Arc::new(MemDisk::new(MEMBER).unwrap())))).collect();
    let members = faults.iter().enumerate().map(|(i, f)| (format!("m{i}"), f.clone() as Arc<dyn BlockDev>)).collect();
    (faults, members)
}

fn read_errors_are_repaired(level: Level, n: usize) {
    let io = IoCtx::new().unwrap();
    let (faults, members) = faulty_members(n);
    let arr = io.block_on(create(&io, members, small_opts(level))).unwrap();
    fill(&io, &arr, 5);
    let before = hash_dev(&io, &arr);
    let data_start = (1u64 << 20) / 512;
    faults[1].set_repair_on_write(true);
    // Row 0 of member 1 holds data at both levels (RAID 5 stripe 0 has its parity on member 2).
    faults[1].add_bad_sectors(&[data_start + 3, data_start + 10, data_start + 20]);
    // RAID 1 spreads reads: read everything twice so both mirrors are asked.
    assert_eq!(hash_dev(&io, &arr), before);
    assert_eq!(hash_dev(&io, &arr), before);
    let st = arr.status();
    assert!(st.read_errors_fixed >= 1, "{st:?}");
    assert_eq!(st.members[1].state, "active");
    assert!(faults[1].bad_sectors().is_empty(), "bad sectors rewritten: {:?}", faults[1].bad_sectors());
    // A dead member: reads fail over and it is kicked out.
    faults[1].fail_all();
    assert_eq!(hash_dev(&io, &arr), before);
    assert_eq!(hash_dev(&io, &arr), before);
    assert_eq!(arr.status().members[1].state, "faulty");
}

#[test]
fn raid1_read_errors_are_repaired_and_a_dead_member_kicked() {
    read_errors_are_repaired(Level::Raid1, 2);
}

#[test]
fn raid5_read_errors_are_repaired_and_a_dead_member_kicked() {
    read_errors_are_repaired(Level::Raid5, 3);
}

#[test]
fn rebuild_runs_while_io_goes_on() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, MEMBER);
    let arr = Arc::new(io.block_on(create(&io, members, small_opts(Level::Raid5))).unwrap());
    let model = ModelDev::new(arr.clone());
    let cfg = WorkloadConfig { seed: 9, ops: 400, queue_depth: 8, max_len: 64 << 10, ..Default::default() };
    io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap();
    io.block_on(arr.fail_member(&io, 1)).unwrap();
    let spare: Arc<dyn BlockDev> = Arc::new(MemDisk::new(MEMBER).unwrap());
    io.block_on(arr.replace(&io, 1, "spare".into(), spare)).unwrap();
    let a2 = arr.clone();
    let io2 = io.clone();
    let opts = RebuildOptions { checkpoint_every: 256 << 10, ..Default::default() };
    let rebuild = io.spawn(async move { a2.rebuild(&io2, opts).await });
    let cfg = WorkloadConfig { seed: 10, ops: 600, queue_depth: 8, max_len: 64 << 10, ..Default::default() };
    io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap();
    io.block_on(rebuild).unwrap();
    assert!(!arr.status().degraded);
    io.block_on(model.verify_all(&*arr, &io)).unwrap();
    assert_eq!(io.block_on(arr.scrub(&io, false)).unwrap().mismatches, 0);
}

/// A rebuild of role `failed` stopped after 1 MiB and a power loss resumes from its checkpoint
/// after assembly; the contents then hash as before and scrub finds nothing.
fn rebuild_interrupted_by_a_crash(level: Level, n: usize, failed: usize) {
    let what = format!("RAID {level:?}, member {failed} of {n}");
    let io = IoCtx::new().unwrap();
    let disks: Vec<Arc<dyn BlockDev>> =
        (0..=n).map(|_| Arc::new(MemDisk::new(MEMBER).unwrap()) as Arc<dyn BlockDev>).collect();
    let crash: Vec<CrashDev> = disks.iter().map(|d| CrashDev::new(d.clone())).collect();
    CrashDev::group(&crash);
    let members: Vec<(String, Arc<dyn BlockDev>)> = crash
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, c)| (format!("m{i}"), Arc::new(c.clone()) as Arc<dyn BlockDev>))
        .collect();
    let arr = io.block_on(create(&io, members, small_opts(level))).unwrap();
    fill(&io, &arr, 11 + failed as u64);
    let before = hash_dev(&io, &arr);
    io.block_on(arr.fail_member(&io, failed)).unwrap();
    io.block_on(arr.replace(&io, failed, "spare".into(), Arc::new(crash[n].clone()))).unwrap();
    let opts = RebuildOptions { checkpoint_every: 128 << 10, stop_after: Some(1 << 20), ..Default::default() };
    io.block_on(arr.rebuild(&io, opts)).unwrap();
    io.block_on(crash[0].crash(&io, CrashMode::KeepNone)).unwrap();
    drop(arr);
    let mut after: Vec<(String, Option<Arc<dyn BlockDev>>)> =
        (0..n).map(|i| (format!("m{i}"), Some(disks[i].clone()))).collect();
    after[failed].0 = "old".into();
    after.push(("spare".into(), Some(disks[n].clone())));
    let arr = io.block_on(assemble(&io, after, AssembleOptions::default())).unwrap();
    let st = arr.status();
    assert_eq!(st.members[failed].state, "rebuilding", "{what}: {st:?}");
    let progress = st.rebuild_progress.unwrap();
    assert!(progress > 0.2 && progress < 0.9, "{what}: resumes from the checkpoint, not from 0: {progress}");
    let rest = io.block_on(arr.rebuild(&io, RebuildOptions::default())).unwrap();
    assert!(rest < MEMBER, "{what}: rebuilt {rest} bytes after resuming");
    assert_eq!(hash_dev(&io, &arr), before, "{what}");
    assert_eq!(io.block_on(arr.scrub(&io, false)).unwrap().mismatches, 0, "{what}");
}

#[test]
fn raid5_rebuild_interrupted_by_a_crash_resumes_from_its_checkpoint() {
    for failed in 0..3 {
        rebuild_interrupted_by_a_crash(Level::Raid5, 3, failed);
    }
}

#[test]
fn raid1_rebuild_interrupted_by_a_crash_resumes_from_its_checkpoint() {
    for failed in 0..2 {
        rebuild_interrupted_by_a_crash(Level::Raid1, 2, failed);
    }
}

#[test]
fn partial_parity_log_of_another_layout_is_refused_by_name() {
    let io = IoCtx::new().unwrap();
    let members = mem_members(3, MEMBER);
    let arr = io.block_on(create(&io, members.clone(), small_opts(Level::Raid5))).unwrap();
    fill(&io, &arr, 2);
    // Left dirty (no close). Member 1's log header now says layout 1 (no version field: 0).
    drop(arr);
    let dev = &members[1].1;
    let mut sb = blockdev::SharedBuf::new(4096);
    io.block_on(dev.read(&io, 0, sb.io(), blockdev::IoTag::DATA)).unwrap();
    let ppl_offset = raid::Superblock::decode("m1", sb.bytes(), None).unwrap().ppl_offset;
    let mut h = blockdev::SharedBuf::new(4096);
    io.block_on(dev.read(&io, ppl_offset, h.io(), blockdev::IoTag::DATA)).unwrap();
    let b = h.bytes_mut();
    b[32..36].fill(0);
    let crc = crc32fast::hash(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    io.block_on(dev.write(&io, ppl_offset, h.io(), false, blockdev::IoTag::DATA)).unwrap();
    // Degraded and dirty: the log must be replayed, and this build cannot read it.
    let err = io.block_on(assemble(&io, without(&members, Some(0)), AssembleOptions::default())).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("member m1") && msg.contains("layout version 0 is not supported"), "{msg}");
}
