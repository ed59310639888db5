//! Helpers shared by the raid integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, MemDisk, SharedBuf};
use raid::{CreateOptions, Level};

/// `n` RAM members of `size` bytes named m0, m1, ...
pub fn mem_members(n: usize, size: u64) -> Vec<(String, Arc<dyn BlockDev>)> {
    (0..n).map(|i| (format!("m{i}"), Arc::new(MemDisk::new(size).unwrap()) as Arc<dyn BlockDev>)).collect()
}

/// Small-array options: 16 KiB chunks, 16 log slots.
pub fn small_opts(level: Level) -> CreateOptions {
    CreateOptions { chunk: 16 << 10, ppl_slots: 16, ..CreateOptions::new(level) }
}

/// Members as `assemble` takes them, with role `missing` left out.
pub fn without(
    members: &[(String, Arc<dyn BlockDev>)],
    missing: Option<usize>,
) -> Vec<(String, Option<Arc<dyn BlockDev>>)> {
    members
        .iter()
        .enumerate()
        .map(|(i, (n, d))| (n.clone(), if Some(i) == missing { None } else { Some(d.clone()) }))
        .collect()
}

/// CRC-32 of the whole device.
pub fn hash_dev(io: &IoCtx, dev: &dyn BlockDev) -> u32 {
    let size = dev.info().size;
    let mut h = crc32fast::Hasher::new();
    let step = 1 << 20;
    let mut off = 0;
    while off < size {
        let n = step.min(size - off) as usize;
        let mut b = SharedBuf::new(n);
        io.block_on(dev.read(io, off, b.io(), IoTag::DATA)).unwrap();
        h.update(b.bytes());
        off += n as u64;
    }
    h.finalize()
}

/// Fill the device with seeded pseudo-random data, with writes of odd sizes and offsets.
pub fn fill(io: &IoCtx, dev: &dyn BlockDev, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let size = dev.info().size;
    let mut off = 0;
    while off < size {
        let n = (rng.gen_range(1..=96u64) * 512).min(size - off);
        let mut data = vec![0u8; n as usize];
        rng.fill(&mut data[..]);
        let mut b = SharedBuf::from_slice(&data);
        io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
        off += n;
    }
    io.block_on(dev.flush(io, IoTag::DATA)).unwrap();
}

/// Write `data` at `off` and flush.
pub fn write_at(io: &IoCtx, dev: &dyn BlockDev, off: u64, data: &[u8]) {
    let mut b = SharedBuf::from_slice(data);
    io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
}

/// Read `len` bytes at `off`.
pub fn read_at(io: &IoCtx, dev: &dyn BlockDev, off: u64, len: usize) -> Vec<u8> {
    let mut b = SharedBuf::new(len);
    io.block_on(dev.read(io, off, b.io(), IoTag::DATA)).unwrap();
    b.bytes().to_vec()
}

/// Copies of `members` (fresh RAM disks with the same bytes), to assemble them several ways.
pub fn clone_members(io: &IoCtx, members: &[(String, Arc<dyn BlockDev>)]) -> Vec<(String, Arc<dyn BlockDev>)> {
    members
        .iter()
        .map(|(name, d)| {
            let size = d.info().size;
            let copy = MemDisk::new(size).unwrap();
            let step = 1 << 20;
            let mut off = 0;
            while off < size {
                let n = step.min(size - off) as usize;
                let mut b = SharedBuf::new(n);
                io.block_on(d.read(io, off, b.io(), IoTag::DATA)).unwrap();
                if b.bytes().iter().any(|&x| x != 0) {
                    io.block_on(copy.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
                }
                off += n as u64;
            }
            (name.clone(), Arc::new(copy) as Arc<dyn BlockDev>)
        })
        .collect()
}
