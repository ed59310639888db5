//! Resizing volumes through the pool API: a shrink must be asked for, is refused while mapped
//! data lies past the new end (saying how much, and the smallest size that keeps it) unless told
//! to drop it, relative sizes apply to the size now, and a dropped tail reads zeros when the
//! volume grows again. Also: the pool says by how much it is overcommitted, and a device that
//! holds a pool is described with its volumes.

mod thin_common;

use blockdev::size::SizeChange;
use blockdev::{ErrorKind, IoCtx};
use thin::{existing_pool, ResizeOptions, Resized};
use thin_common::*;

const MIB: u64 = 1 << 20;
const SHRINK: ResizeOptions = ResizeOptions { shrink: true, discard_data: false };
const DISCARD: ResizeOptions = ResizeOptions { shrink: true, discard_data: true };

fn size_of(pool: &thin::Pool, name: &str) -> u64 {
    pool.list().iter().find(|v| v.name == name).expect("volume").size
}

#[test]
fn shrink_needs_the_flag_and_refuses_mapped_data_past_the_end_naming_the_amount() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(64 << 20));
    io.block_on(pool.create_volume(&io, "a", 16 * MIB)).unwrap();
    {
        let a = pool.volume("a").unwrap();
        // Two blocks of data past 4 MiB: one at 8 MiB, one at the very end.
        write(&io, &a, 8 * MIB, &[1; 4096], false).unwrap();
        write(&io, &a, 16 * MIB - 4096, &[2; 4096], false).unwrap();
        write(&io, &a, 0, &[3; 4096], false).unwrap();
        flush(&io, &a);
    }
    let tx = pool.info().transaction_id;

    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(4 * MIB), ResizeOptions::default())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("'a'") && e.to_string().contains("--shrink"), "{e}");

    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(4 * MIB), SHRINK)).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(msg.contains("128 KiB (131072 bytes) of mapped data"), "{msg}");
    assert!(msg.contains("--discard-data") && msg.contains("16 MiB"), "{msg}");
    // Nothing changed: same size, same data, no new transaction.
    assert_eq!(size_of(&pool, "a"), 16 * MIB);
    assert_eq!(pool.info().transaction_id, tx);
    assert_eq!(pool.mapped_past("a", 4 * MIB).unwrap(), 2 * BS);
    assert_eq!(pool.mapped_end("a").unwrap(), 16 * MIB);

    // A shrink that cuts only unmapped space needs --shrink alone.
    let r = io.block_on(pool.resize_volume(&io, "a", SizeChange::Shrink(MIB - 64 * 1024), SHRINK));
    assert!(r.is_err(), "the last block is mapped: {r:?}");
    let r = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(8 * MIB + BS), SHRINK)).unwrap_err();
    assert!(r.to_string().contains("64 KiB (65536 bytes)"), "{r}");

    let r = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(4 * MIB), DISCARD)).unwrap();
    assert_eq!(r, Resized { old_size: 16 * MIB, size: 4 * MIB, discarded: 2 * BS });
    assert_eq!(pool.list()[0].mapped_blocks, 1);
    assert_eq!(pool.info().used_blocks, 1);
    assert!(pool.audit().errors.is_empty() && pool.audit().leaks.is_empty());
}

#[test]
fn relative_sizes_apply_to_the_size_now() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 4 * MIB)).unwrap();
    let r = io.block_on(pool.resize_volume(&io, "a", SizeChange::Grow(MIB), ResizeOptions::default())).unwrap();
    assert_eq!((r.old_size, r.size, r.discarded), (4 * MIB, 5 * MIB, 0));
    // A relative shrink is a shrink too.
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::Shrink(MIB), ResizeOptions::default())).unwrap_err();
    assert!(e.to_string().contains("--shrink"), "{e}");
    io.block_on(pool.resize_volume(&io, "a", SizeChange::Shrink(2 * MIB), SHRINK)).unwrap();
    assert_eq!(size_of(&pool, "a"), 3 * MIB);
    // Past zero, not a multiple of 512, or past the largest volume: refused, named.
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::Shrink(3 * MIB), SHRINK)).unwrap_err();
    assert!(e.to_string().contains("'a'"), "{e}");
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::Shrink(4 * MIB), SHRINK)).unwrap_err();
    assert!(e.to_string().contains("more than the current size"), "{e}");
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::Grow(100), SHRINK)).unwrap_err();
    assert!(e.to_string().contains("multiple of 512"), "{e}");
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::Grow(u64::MAX), SHRINK)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = io.block_on(pool.resize_volume(&io, "zz", SizeChange::To(MIB), SHRINK)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(size_of(&pool, "a"), 3 * MIB);
}

#[test]
fn a_dropped_tail_inside_a_kept_block_reads_zeros_after_growing_again() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 2 * BS)).unwrap();
    io.block_on(pool.snapshot(&io, "a", "empty")).unwrap();
    {
        let a = pool.volume("a").unwrap();
        write(&io, &a, 0, &vec![5; 2 * BS as usize], false).unwrap();
    }
    // Share the block with a snapshot: zeroing the tail must copy it, not write in place.
    io.block_on(pool.snapshot(&io, "a", "s")).unwrap();
    let half = BS / 2;
    let r = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(half), DISCARD)).unwrap();
    assert_eq!(r.discarded, 2 * BS - half);
    io.block_on(pool.resize_volume(&io, "a", SizeChange::To(2 * BS), ResizeOptions::default())).unwrap();
    let a = pool.volume("a").unwrap();
    let got = read(&io, &a, 0, 2 * BS as usize);
    assert!(got[..half as usize].iter().all(|&b| b == 5), "the kept part changed");
    assert!(got[half as usize..].iter().all(|&b| b == 0), "the dropped part came back");
    let s = pool.volume("s").unwrap();
    assert_eq!(read(&io, &s, 0, 2 * BS as usize), vec![5; 2 * BS as usize], "the snapshot changed");
    let audit = pool.audit();
    assert!(audit.errors.is_empty() && audit.leaks.is_empty(), "{:?}", audit.errors);
}

#[test]
fn shrinking_an_open_volume_is_refused_before_anything_changes() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 4 * MIB)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 3 * MIB, &[1; 4096], false).unwrap();
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(MIB + 512), DISCARD)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    assert!(e.to_string().contains("open"), "{e}");
    assert_eq!(read(&io, &a, 3 * MIB, 4096), vec![1; 4096]);
    // Growing an open volume is fine.
    io.block_on(pool.resize_volume(&io, "a", SizeChange::Grow(MIB), ResizeOptions::default())).unwrap();
}

#[test]
fn pool_info_says_how_much_is_provisioned() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    let size = pool.info().size();
    assert_eq!(pool.info().provisioned, 0);
    assert!(pool.info().overcommit_text().contains("not overcommitted"), "{}", pool.info().overcommit_text());
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    io.block_on(pool.create_volume(&io, "b", 1 << 30)).unwrap();
    let i = pool.info();
    assert_eq!(i.provisioned, 2 << 30);
    assert!((i.overcommit_ratio() - (2u64 << 30) as f64 / size as f64).abs() < 1e-9);
    let text = i.overcommit_text();
    assert!(text.starts_with("overcommitted ") && text.contains("2 GiB provisioned on 15"), "{text}");
}

#[test]
fn a_device_holding_a_pool_is_described_with_its_volumes() {
    let io = IoCtx::new().unwrap();
    let dev = mem(16 << 20);
    assert_eq!(io.block_on(existing_pool(&io, &dev, None)), None);
    let pool = create(&io, dev.clone());
    // A fresh pool has only superblock slot 1 written.
    let fresh = io.block_on(existing_pool(&io, &dev, None)).unwrap();
    assert!(fresh.starts_with("a strata thin pool") && fresh.contains("no volumes"), "{fresh}");
    for n in ["vm1", "vm2"] {
        io.block_on(pool.create_volume(&io, n, MIB)).unwrap();
    }
    let two = io.block_on(existing_pool(&io, &dev, None)).unwrap();
    assert!(two.contains("2 volumes: vm1, vm2"), "{two}");
    for n in 0..10 {
        io.block_on(pool.create_volume(&io, &format!("x{n}"), MIB)).unwrap();
    }
    let many = io.block_on(existing_pool(&io, &dev, None)).unwrap();
    assert!(many.contains("12 volumes") && many.contains("and 4 more"), "{many}");
}
