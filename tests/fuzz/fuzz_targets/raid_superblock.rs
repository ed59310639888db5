//! Fuzz the RAID superblock parser and what assembly reads behind it (bitmaps, the partial
//! parity log). The input's first byte picks 2 to 4 members and `force=on`, the next 8 choose
//! operations, and the rest is split evenly into the start of each member (superblock, bitmap,
//! log area) on 4 MiB RAM disks. Superblock checksums are recomputed so the fuzzer reaches the
//! fields behind them. Decoding, examining, assembling, I/O, scrub and close may fail with
//! errors, never panic, hang or allocate without bound.
#![no_main]

use std::sync::Arc;

use blockdev::{BlockDev, EngineConfig, IoCtx, IoTag, MemDisk, SharedBuf};
use libfuzzer_sys::fuzz_target;
use raid::superblock::{Superblock, MAGIC, SB_SIZE};
use raid::{AssembleOptions, MemberList};

thread_local! {
    static IO: IoCtx = IoCtx::with_config(EngineConfig { pool_buffers_per_class: 2, ..EngineConfig::default() })
        .expect("io_uring engine");
}

const DISK: u64 = 4 << 20;

fn fix_checksum(img: &mut [u8]) {
    if img.len() >= SB_SIZE && img[0..8] == MAGIC {
        let crc = crc32fast::hash(&img[..SB_SIZE - 4]);
        img[SB_SIZE - 4..SB_SIZE].copy_from_slice(&crc.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 || data.len() > (1 << 20) {
        return;
    }
    let (head, rest) = data.split_at(9);
    let n = 2 + usize::from(head[0] % 3);
    let force = head[0] & 0x80 != 0;
    let ops = &head[1..];
    let part = rest.len() / n;
    let mut images: Vec<Vec<u8>> = (0..n).map(|i| rest[i * part..(i + 1) * part].to_vec()).collect();
    for img in &mut images {
        fix_checksum(img);
        let _ = Superblock::decode("fuzz", img, Some(DISK));
        let _ = Superblock::decode("fuzz", img, None);
    }
    IO.with(|io| {
        let mut members: MemberList = Vec::new();
        for (i, img) in images.iter().enumerate() {
            // A member whose op bit is set is missing (the array may start degraded).
            if ops[0] & (1 << i) != 0 && ops[0] & 0x40 != 0 {
                members.push((format!("m{i}"), None));
                continue;
            }
            let disk: Arc<dyn BlockDev> = Arc::new(MemDisk::new(DISK).expect("mem disk"));
            if !img.is_empty() {
                let len = img.len().div_ceil(512) * 512;
                let mut b = SharedBuf::new(len);
                b.bytes_mut()[..img.len()].copy_from_slice(img);
                if io.block_on(disk.write(io, 0, b.io(), false, IoTag::DATA)).is_err() {
                    return;
                }
            }
            members.push((format!("m{i}"), Some(disk)));
        }
        let _ = io.block_on(raid::examine(io, members.clone()));
        let Ok(arr) = io.block_on(raid::assemble(io, members, AssembleOptions { force })) else { return };
        let _ = arr.status();
        let size = arr.info().size;
        let mut scratch = SharedBuf::new(65536);
        for (i, &op) in ops[1..].iter().enumerate() {
            let sectors = size / 512;
            let at = ((u64::from(op) * 0x9E37_79B9 + i as u64 * 0x1F3D_5B79) % sectors.max(1)) * 512;
            let len = (4096 * (1 + u64::from(op % 16))).min(size - at);
            let _ = match op % 5 {
                0 | 1 => io.block_on(arr.read(io, at, scratch.io_range(0, len as usize), IoTag::DATA)),
                2 => io.block_on(arr.write(io, at, scratch.io_range(0, len as usize), op & 8 != 0, IoTag::DATA)),
                3 => io.block_on(arr.flush(io, IoTag::DATA)),
                _ => io.block_on(arr.write_zeroes(io, at, len, false, IoTag::DATA)),
            };
        }
        if ops[7] & 1 == 1 {
            let _ = io.block_on(arr.scrub(io, ops[7] & 2 != 0));
        }
        let _ = io.block_on(arr.close(io));
    });
});
