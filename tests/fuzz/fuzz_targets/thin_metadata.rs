//! Fuzz the thin pool's metadata parser: the input's first 8 bytes choose operations, the rest is
//! the start of a pool device (superblock copies, directory and array pages) on a 4 MiB RAM disk.
//! Checksums are recomputed before opening so the fuzzer reaches the fields behind them. Opening,
//! checking, listing and reading/writing volumes may fail with errors, never panic, hang or
//! allocate without bound.
#![no_main]

use std::sync::Arc;

use thin::format::{PAGE_MAGIC, PAGE_SIZE, SB_MAGIC};
use thin::{check, Pool};
use blockdev::{BlockDev, EngineConfig, IoCtx, IoTag, MemDisk, SharedBuf};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static IO: IoCtx = IoCtx::with_config(EngineConfig { pool_buffers_per_class: 2, ..EngineConfig::default() })
        .expect("io_uring engine");
}

const DISK: u64 = 4 << 20;

/// Recompute the checksums of whatever looks like a superblock or a metadata page.
fn fix_checksums(img: &mut [u8]) {
    for (i, page) in img.chunks_mut(PAGE_SIZE).enumerate() {
        if page.len() < PAGE_SIZE {
            break;
        }
        if i < 2 && page[0..8] == SB_MAGIC.to_le_bytes() {
            let crc = crc32(&page[..88]);
            page[88..92].copy_from_slice(&crc.to_le_bytes());
        } else if page[0..4] == PAGE_MAGIC.to_le_bytes() {
            let crc = crc32(&page[8..]);
            page[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 || data.len() > (1 << 20) {
        return;
    }
    let (ops, image) = data.split_at(8);
    let mut img = vec![0u8; image.len().div_ceil(PAGE_SIZE) * PAGE_SIZE];
    img[..image.len()].copy_from_slice(image);
    fix_checksums(&mut img);
    IO.with(|io| {
        let disk: Arc<dyn BlockDev> = Arc::new(MemDisk::new(DISK).expect("mem disk"));
        let mut buf = SharedBuf::from_slice(&img);
        if img.is_empty() || io.block_on(disk.write(io, 0, buf.io(), false, IoTag::DATA)).is_err() {
            return;
        }
        let _ = io.block_on(check::check(io, disk.clone(), None, ops[0] & 1 == 1));
        let Ok(pool) = io.block_on(Pool::open(io, disk, None)) else { return };
        let _ = pool.info();
        let mut scratch = SharedBuf::new(8192);
        for v in pool.list() {
            let Ok(vol) = pool.volume(&v.name) else { continue };
            for (i, &op) in ops[1..].iter().enumerate() {
                let sectors = v.size / 512;
                let at = ((u64::from(op) * 0x9E37_79B9 + i as u64 * 0x1F3D_5B79) % sectors.max(1)) * 512;
                let len = (512 * (1 + u64::from(op % 16))).min(v.size - at);
                let _ = match op % 4 {
                    0 | 1 => io.block_on(vol.read(io, at, scratch.io_range(0, len as usize), IoTag::DATA)),
                    2 => io.block_on(vol.write(io, at, scratch.io_range(0, len as usize), op & 8 != 0, IoTag::DATA)),
                    _ => io.block_on(vol.discard(io, at, len, IoTag::DATA)),
                };
            }
        }
        let _ = io.block_on(pool.commit(io));
    });
});
