//! Regression: a block that stopped being shared in the running transaction is still shared
//! in the last commit, so it must not be written in place. Otherwise a crash before the next
//! commit brings back the other sharer pointing at a block that holds data it never wrote.
//! Plus isolation on a data device that cannot zero (recycled blocks keep old data).

mod thin_common;

use std::sync::Arc;

use blockdev::testdev::{CrashDev, CrashMode};
use blockdev::IoCtx;
use thin::Pool;
use thin_common::*;

fn original() -> Vec<u8> {
    (0..BS as usize).map(|i| (i % 251) as u8 | 1).collect()
}

/// z and its snapshot zs share block 0 in the committed state; `first` writes block 0 (and
/// copies it away), then `second` writes it; the disk crashes keeping every volatile write.
/// Returns what `first` and `second` read after reopening.
fn share_then_crash(first: &str, second: &str) -> (Vec<u8>, Vec<u8>) {
    let io = IoCtx::new().unwrap();
    let disk = mem(16 << 20);
    let crash = CrashDev::new(disk.clone());
    let pool = create(&io, Arc::new(crash.clone()));
    io.block_on(pool.create_volume(&io, "z", 4 * BS)).unwrap();
    {
        let z = pool.volume("z").unwrap();
        write(&io, &z, 0, &original(), false).unwrap();
        flush(&io, &z);
    }
    io.block_on(pool.snapshot(&io, "z", "zs")).unwrap();
    let (a, b) = (pool.volume(first).unwrap(), pool.volume(second).unwrap());
    write(&io, &a, 0, &[0x11; 4096], false).unwrap();
    write(&io, &b, 0, &[0x22; 4096], false).unwrap();
    io.block_on(crash.crash(&io, CrashMode::KeepAll)).unwrap();
    drop((a, b, pool));
    let pool = io.block_on(Pool::open(&io, disk, None)).unwrap();
    let (a, b) = (pool.volume(first).unwrap(), pool.volume(second).unwrap());
    (read(&io, &a, 0, 4096), read(&io, &b, 0, 4096))
}

fn assert_only_own_data(got: &[u8], own: u8, who: &str) {
    let ok = got == &original()[..4096] || got.iter().all(|b| *b == own);
    assert!(ok, "{who} reads data it never wrote after the crash: {:02x?}", &got[..8]);
}

#[test]
fn origin_does_not_see_a_snapshot_write_after_a_crash() {
    let (z, zs) = share_then_crash("z", "zs");
    assert_only_own_data(&z, 0x11, "origin z");
    assert_only_own_data(&zs, 0x22, "snapshot zs");
}

#[test]
fn snapshot_does_not_see_an_origin_write_after_a_crash() {
    let (zs, z) = share_then_crash("zs", "z");
    assert_only_own_data(&zs, 0x11, "snapshot zs");
    assert_only_own_data(&z, 0x22, "origin z");
}

/// Neither discard nor write-zeroes: freed blocks keep their old data and nothing is known to
/// read zeros, so every first write must zero-fill.
struct NoZeroes(Arc<dyn blockdev::BlockDev>);

impl blockdev::BlockDev for NoZeroes {
    fn info(&self) -> blockdev::DevInfo {
        blockdev::DevInfo { discard: false, write_zeroes: false, ..self.0.info() }
    }
    fn read(&self, io: &IoCtx, off: u64, bufs: blockdev::IoBufs, tag: blockdev::IoTag) -> blockdev::IoFuture {
        self.0.read(io, off, bufs, tag)
    }
    fn write(
        &self,
        io: &IoCtx,
        off: u64,
        bufs: blockdev::IoBufs,
        fua: bool,
        tag: blockdev::IoTag,
    ) -> blockdev::IoFuture {
        self.0.write(io, off, bufs, fua, tag)
    }
    fn flush(&self, io: &IoCtx, tag: blockdev::IoTag) -> blockdev::IoFuture {
        self.0.flush(io, tag)
    }
    fn discard(&self, _io: &IoCtx, _off: u64, _len: u64, _tag: blockdev::IoTag) -> blockdev::IoFuture {
        blockdev::ready(Ok(()))
    }
    fn write_zeroes(
        &self,
        _io: &IoCtx,
        _off: u64,
        _len: u64,
        _unmap: bool,
        _tag: blockdev::IoTag,
    ) -> blockdev::IoFuture {
        blockdev::ready(Err(blockdev::Error::new(blockdev::ErrorKind::Unsupported, "no write-zeroes")))
    }
}

#[test]
fn new_volume_on_a_device_without_zeroing_reads_zeros_where_a_removed_one_had_data() {
    let io = IoCtx::new().unwrap();
    let cfg = thin::PoolConfig { block_size: BS as u32, metadata_size: Some(1 << 20) };
    let dev: Arc<dyn blockdev::BlockDev> = Arc::new(NoZeroes(mem((1 << 20) + 8 * BS)));
    let pool = io.block_on(Pool::create(&io, dev, None, cfg)).unwrap();
    io.block_on(pool.create_volume(&io, "old", 8 * BS)).unwrap();
    {
        let old = pool.volume("old").unwrap();
        write(&io, &old, 0, &vec![0x5a; (8 * BS) as usize], false).unwrap();
        flush(&io, &old);
    }
    io.block_on(pool.remove_volume(&io, "old")).unwrap();
    io.block_on(pool.create_volume(&io, "new", 8 * BS)).unwrap();
    let new = pool.volume("new").unwrap();
    for b in 0..8 {
        write(&io, &new, b * BS + 4096, &[0xee; 512], false).unwrap_or_else(|e| panic!("block {b}: {e}"));
    }
    let all = read(&io, &new, 0, (8 * BS) as usize);
    for (b, blk) in all.chunks(BS as usize).enumerate() {
        assert!(blk[..4096].iter().all(|x| *x == 0), "block {b}: head holds the removed volume's data");
        assert!(blk[4096..4608].iter().all(|x| *x == 0xee), "block {b}: lost the write");
        assert!(blk[4608..].iter().all(|x| *x == 0), "block {b}: tail holds the removed volume's data");
    }
}
