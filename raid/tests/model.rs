//! Model-based: seeded random reads, writes, flushes, discards and write-zeroes at random queue
//! depths through a ModelDev on top of each array, healthy and with a member failing midway.

mod common;

use std::sync::Arc;

use blockdev::testdev::{workload, ModelDev, WorkloadConfig};
use blockdev::{BlockDev, IoCtx};
use common::*;
use raid::{create, Level};
use rand::{Rng, SeedableRng};

const MEMBER: u64 = 4 << 20;

fn run_model(level: Level, n: usize, fail_midway: Option<usize>, seed: u64) {
    let io = IoCtx::new().unwrap();
    let members = mem_members(n, MEMBER);
    let arr = Arc::new(io.block_on(create(&io, members, small_opts(level))).unwrap());
    let model = ModelDev::new(arr.clone());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for round in 0..4u64 {
        if round == 2 {
            if let Some(m) = fail_midway {
                io.block_on(arr.fail_member(&io, m)).unwrap();
            }
        }
        let qd = [1, 4, 16, 32][rng.gen_range(0..4)];
        let cfg = WorkloadConfig {
            seed: seed * 100 + round,
            ops: 300,
            queue_depth: qd,
            max_len: 96 << 10,
            allow_overlap: true,
            ..Default::default()
        };
        io.block_on(workload::run(&io, Arc::new(model.clone()) as Arc<dyn BlockDev>, &cfg))
            .unwrap_or_else(|e| panic!("RAID {level:?} round {round} qd {qd}: {e}"));
    }
    io.block_on(model.verify_all(&*arr, &io)).unwrap();
    if level != Level::Raid0 && fail_midway.is_none() {
        assert_eq!(io.block_on(arr.scrub(&io, false)).unwrap().mismatches, 0);
    }
}

#[test]
fn raid0_matches_model_at_random_queue_depths() {
    run_model(Level::Raid0, 3, None, 1);
}

#[test]
fn raid1_matches_model_at_random_queue_depths() {
    run_model(Level::Raid1, 3, None, 2);
}

#[test]
fn raid5_matches_model_at_random_queue_depths() {
    run_model(Level::Raid5, 4, None, 3);
}

#[test]
fn raid1_matches_model_with_a_member_failing_midway() {
    run_model(Level::Raid1, 2, Some(0), 4);
}

#[test]
fn raid5_matches_model_with_each_member_failing_midway() {
    for m in 0..3 {
        run_model(Level::Raid5, 3, Some(m), 5 + m as u64);
    }
}
