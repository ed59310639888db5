//! Fuzz the qcow2 layer with an untrusted image: the input's first bytes choose a few operations,
//! the rest is the image file itself (on a RAM disk with room to grow). Opening, reading, writing,
//! flushing, discarding and checking may fail with errors, never panic, hang or allocate past the
//! caps (L1 at most 32 MiB, refcount table at most 8 MiB, as QEMU).
#![no_main]

use std::sync::Arc;

use blockdev::{BlockDev, EngineConfig, IoCtx, IoTag, MemDisk, SharedBuf};
use libfuzzer_sys::fuzz_target;
use qcow::check::{check, Repair};
use qcow::{open_dev, Options};

thread_local! {
    // A small buffer pool: the default keeps up to 64 buffers per size class for queue depth,
    // which only inflates this single-request target's memory (and libFuzzer's RSS limit).
    static IO: IoCtx = IoCtx::with_config(EngineConfig { pool_buffers_per_class: 2, ..EngineConfig::default() })
        .expect("io_uring engine");
}

/// Room for the image to grow into when a write allocates clusters.
const HEADROOM: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 || data.len() > (1 << 20) {
        return;
    }
    let (ops, image) = data.split_at(8);
    let size = (image.len() as u64).div_ceil(512) * 512 + HEADROOM;
    let disk = MemDisk::new(size).expect("mem disk");
    IO.with(|io| {
        let mut buf = SharedBuf::from_slice(image);
        let padded_len = image.len().div_ceil(512) * 512;
        if padded_len > image.len() {
            let mut p = SharedBuf::new(padded_len);
            p.bytes_mut()[..image.len()].copy_from_slice(image);
            buf = p;
        }
        if io.block_on(disk.write(io, 0, buf.io(), false, IoTag::DATA)).is_err() {
            return;
        }
        let file: Arc<dyn BlockDev> = Arc::new(disk);
        let opts = Options { ignore_backing: true, l2_cache_bytes: 64 << 10, refcount_cache_bytes: 64 << 10, ..Options::default() };
        let Ok(dev) = io.block_on(open_dev(io, file, None, &opts)) else { return };
        let vsize = dev.info().size;
        if vsize == 0 {
            return;
        }
        let mut scratch = SharedBuf::new(64 << 10);
        for (i, &op) in ops.iter().enumerate() {
            // Offsets spread over the virtual disk, in 512-byte units.
            let sectors = vsize / 512;
            let at = (u64::from(op) * 0x9E37_79B9 + i as u64 * 0x1F3D_5B79) % sectors.max(1) * 512;
            let len = (512 * (1 + u64::from(op % 16))).min(vsize - at);
            let _ = match op % 5 {
                0 | 1 => io.block_on(dev.read(io, at, scratch.io_range(0, len as usize), IoTag::DATA)),
                2 => io.block_on(dev.write(io, at, scratch.io_range(0, len as usize), false, IoTag::DATA)),
                3 => io.block_on(dev.discard(io, at, len, IoTag::DATA)),
                _ => io.block_on(dev.flush(io, IoTag::DATA)),
            };
        }
        let _ = io.block_on(check(io, &dev, Repair::None));
        let _ = io.block_on(dev.close(io));
    });
});
