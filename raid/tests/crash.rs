//! Crash tests: seeded 10,000-operation workloads over arrays whose members are CrashDevs that
//! lose their volatile writes (each its own random subset) at random points; the array is then
//! assembled again from what the members kept, and every stable write must read back.
//!
//! - power loss on a healthy array (all members at once): resync by the bitmap;
//! - power loss on a degraded array (the write-hole case): partial parity log replay;
//! - members crashing independently: the first crash fails one member, the array goes on
//!   degraded, a second crash stops it; the rest lose power afterwards.
//! - small writes at queue depth 32 over file members, whose log entries pack into shared
//!   units, crashing either way.

mod common;

use std::sync::Arc;

use blockdev::testdev::{workload, CrashDev, CrashMode, ModelDev, WorkloadConfig};
use blockdev::{BlockDev, IoCtx, MemDisk, OpenOptions, RawFile};
use common::*;
use raid::{assemble, create, AssembleOptions, Level};
use rand::{Rng, SeedableRng};

const MEMBER: u64 = 4 << 20;
const OPS: u64 = 10_000;

struct Rig {
    disks: Vec<Arc<dyn BlockDev>>,
    crash: Vec<CrashDev>,
}

fn rig(n: usize) -> Rig {
    let disks: Vec<Arc<dyn BlockDev>> =
        (0..n).map(|_| Arc::new(MemDisk::new(MEMBER).unwrap()) as Arc<dyn BlockDev>).collect();
    let crash = disks.iter().map(|d| CrashDev::new(d.clone())).collect();
    Rig { disks, crash }
}

impl Rig {
    fn members(&self) -> Vec<(String, Arc<dyn BlockDev>)> {
        self.crash
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("m{i}"), Arc::new(c.clone()) as Arc<dyn BlockDev>))
            .collect()
    }

    fn after_crash(&self) -> Vec<(String, Option<Arc<dyn BlockDev>>)> {
        self.disks.iter().enumerate().map(|(i, d)| (format!("m{i}"), Some(d.clone()))).collect()
    }

    fn crash_rest(&self, io: &IoCtx, seed: u64) {
        for (i, c) in self.crash.iter().enumerate() {
            if !c.is_crashed() {
                io.block_on(c.crash(io, CrashMode::RandomSubset { seed: seed + i as u64 })).unwrap();
            }
        }
    }
}

/// Requests up to 40 KiB: mostly partial stripes (small arrays have 32-48 KiB stripes).
const SHORT: u64 = 40 << 10;
/// Requests up to 160 KiB: runs of full stripes written together, too.
const LONG: u64 = 160 << 10;

fn workload_cfg(seed: u64, qd: usize, max_len: u64) -> WorkloadConfig {
    WorkloadConfig { seed, ops: OPS, queue_depth: qd, max_len, fua_percent: 5, ..Default::default() }
}

/// Run the workload until it ends or the array fails; the error (if any) is the crash.
fn run(io: &IoCtx, model: &ModelDev, cfg: &WorkloadConfig) {
    let _ = io.block_on(workload::run(io, Arc::new(model.clone()) as Arc<dyn BlockDev>, cfg));
}

fn verify(io: &IoCtx, rig: &Rig, model: &ModelDev, what: &str) {
    let arr = io
        .block_on(assemble(io, rig.after_crash(), AssembleOptions::default()))
        .unwrap_or_else(|e| panic!("{what}: assemble after crash: {e}"));
    io.block_on(model.verify_after_crash(&arr, io)).unwrap_or_else(|e| panic!("{what}: {e}"));
    if !arr.status().degraded && level_of(&arr) != Level::Raid0 {
        let rep = io.block_on(arr.scrub(io, false)).unwrap();
        assert_eq!(rep.mismatches, 0, "{what}: scrub after recovery");
    }
}

fn level_of(arr: &raid::Array) -> Level {
    arr.level()
}

fn power_loss(level: Level, n: usize, degraded: Option<usize>, seed: u64, max_len: u64) {
    let io = IoCtx::new().unwrap();
    let rig = rig(n);
    CrashDev::group(&rig.crash);
    let arr = Arc::new(io.block_on(create(&io, rig.members(), small_opts(level))).unwrap());
    if let Some(m) = degraded {
        io.block_on(arr.fail_member(&io, m)).unwrap();
    }
    let model = ModelDev::new(arr.clone());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let victim = (0..n).find(|&m| Some(m) != degraded).unwrap_or(0);
    let at = rng.gen_range(200..3000);
    rig.crash[victim].crash_at_write(at, CrashMode::RandomSubset { seed });
    run(&io, &model, &workload_cfg(seed, [1, 4, 16][rng.gen_range(0..3)], max_len));
    rig.crash_rest(&io, seed);
    drop(arr);
    verify(&io, &rig, &model, &format!("RAID {level:?} degraded={degraded:?} seed {seed} crash at write {at}"));
}

#[test]
fn raid5_power_loss_keeps_stable_writes() {
    for seed in 0..4 {
        power_loss(Level::Raid5, 3 + seed as usize % 2, None, 10 + seed, SHORT);
    }
}

#[test]
fn raid5_degraded_power_loss_keeps_stable_writes() {
    for (seed, failed) in [(20, 0), (21, 1), (22, 2), (23, 0), (24, 3), (25, 1), (26, 2), (27, 0)] {
        power_loss(Level::Raid5, 3 + (failed == 3) as usize, Some(failed), seed, SHORT);
    }
}

#[test]
fn raid1_power_loss_keeps_stable_writes() {
    power_loss(Level::Raid1, 2, None, 30, SHORT);
    power_loss(Level::Raid1, 3, Some(1), 31, SHORT);
}

#[test]
fn raid0_power_loss_keeps_stable_writes() {
    power_loss(Level::Raid0, 3, None, 40, SHORT);
}

/// Every member (but `degraded`, failed first) crashes on its own at a random write.
fn independent_crashes(level: Level, n: usize, degraded: Option<usize>, seed: u64, max_len: u64) {
    let io = IoCtx::new().unwrap();
    let rig = rig(n);
    let arr = Arc::new(io.block_on(create(&io, rig.members(), small_opts(level))).unwrap());
    if let Some(m) = degraded {
        io.block_on(arr.fail_member(&io, m)).unwrap();
    }
    let model = ModelDev::new(arr.clone());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for (i, c) in rig.crash.iter().enumerate() {
        if Some(i) != degraded {
            c.crash_at_write(rng.gen_range(100..4000), CrashMode::RandomSubset { seed: seed * 10 + i as u64 });
        }
    }
    run(&io, &model, &workload_cfg(seed, [1, 8, 16][rng.gen_range(0..3)], max_len));
    rig.crash_rest(&io, seed * 100);
    drop(arr);
    verify(&io, &rig, &model, &format!("RAID {level:?}, independent crashes, degraded={degraded:?}, seed {seed}"));
}

#[test]
fn raid5_members_crashing_independently_keep_stable_writes() {
    for seed in 50..56 {
        independent_crashes(Level::Raid5, 4, None, seed, SHORT);
    }
}

#[test]
fn degraded_raid5_members_crashing_independently_keep_stable_writes() {
    for (seed, failed) in [(60, 0), (61, 1), (62, 2), (63, 3)] {
        independent_crashes(Level::Raid5, 4, Some(failed), seed, SHORT);
    }
}

#[test]
fn raid1_members_crashing_independently_keep_stable_writes() {
    independent_crashes(Level::Raid1, 3, None, 70, SHORT);
    independent_crashes(Level::Raid1, 3, Some(2), 71, SHORT);
}

#[test]
fn dirty_degraded_raid5_without_log_refuses_to_start_unless_forced() {
    let io = IoCtx::new().unwrap();
    let rig = rig(3);
    CrashDev::group(&rig.crash);
    let opts = raid::CreateOptions { ppl: false, ..small_opts(Level::Raid5) };
    let arr = Arc::new(io.block_on(create(&io, rig.members(), opts)).unwrap());
    write_at(&io, &*arr, 0, &[1; 4096]);
    rig.crash_rest(&io, 1);
    drop(arr);
    let mut members = rig.after_crash();
    members[1].1 = None;
    let err = io.block_on(assemble(&io, members.clone(), AssembleOptions::default())).err().unwrap();
    assert!(err.to_string().contains("force=on"), "{err}");
    let arr = io.block_on(assemble(&io, members, AssembleOptions { force: true })).unwrap();
    assert!(arr.status().degraded);
}

#[test]
fn raid5_long_writes_survive_power_loss_and_independent_crashes() {
    // Runs of full stripes take their own path (one write per member for the whole run).
    for seed in 80..83 {
        power_loss(Level::Raid5, 3 + seed as usize % 2, None, seed, LONG);
    }
    power_loss(Level::Raid5, 4, Some(1), 83, LONG);
    independent_crashes(Level::Raid5, 4, None, 84, LONG);
    independent_crashes(Level::Raid5, 4, Some(2), 85, LONG);
}

/// Small writes (4-8 KiB) to different stripes, 32 in flight: their partial parity log entries
/// pack into shared units (one log write for many stripes). Members crash independently at
/// random writes (or all at once, `power`), on a healthy or a degraded array.
fn packed_entries(seed: u64, degraded: Option<usize>, power: bool) {
    let io = IoCtx::new().unwrap();
    // Files under io_uring: log writes complete later, so entries arrive while one is in flight.
    let dir = std::env::temp_dir().join(format!("raid-crash-packed-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disks: Vec<Arc<dyn BlockDev>> = (0..4)
        .map(|i| {
            let p = dir.join(format!("m{i}"));
            std::fs::File::create(&p).unwrap().set_len(MEMBER).unwrap();
            Arc::new(RawFile::open(&p, OpenOptions::default()).unwrap()) as Arc<dyn BlockDev>
        })
        .collect();
    let rig = Rig { crash: disks.iter().map(|d| CrashDev::new(d.clone())).collect(), disks };
    if power {
        CrashDev::group(&rig.crash);
    }
    let arr = Arc::new(io.block_on(create(&io, rig.members(), small_opts(Level::Raid5))).unwrap());
    if let Some(m) = degraded {
        io.block_on(arr.fail_member(&io, m)).unwrap();
    }
    let model = ModelDev::new(arr.clone());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for (i, c) in rig.crash.iter().enumerate() {
        if Some(i) != degraded && (!power || i == 0) {
            c.crash_at_write(rng.gen_range(500..6000), CrashMode::RandomSubset { seed: seed * 10 + i as u64 });
        }
    }
    let cfg = WorkloadConfig { min_len: 4096, max_len: 8192, align: 4096, ..workload_cfg(seed, 32, 8192) };
    run(&io, &model, &cfg);
    let (units, entries) = arr.log_packing().unwrap();
    rig.crash_rest(&io, seed * 100);
    drop(arr);
    let what = format!("packed log entries, seed {seed}, degraded={degraded:?}, power loss={power}");
    verify(&io, &rig, &model, &what);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{what}: {entries} log entries in {units} units");
    assert!(entries > units + units / 20, "{what}: {entries} entries in {units} units: the log did not pack");
}

#[test]
fn raid5_packed_log_entries_survive_crashes_at_queue_depth_32() {
    for seed in 90..93 {
        packed_entries(seed, None, false);
    }
    packed_entries(93, None, true);
    packed_entries(94, Some(1), false);
    packed_entries(95, Some(3), true);
}
