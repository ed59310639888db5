//! Dropping a qcow2 device releases its image file: nothing (a cache, an in-flight table, a
//! cycle through the shared state) keeps the file — and its memory or lock — alive.

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, MemDisk, SharedBuf};
use qcow::{create, open_dev, CreateOptions, Options};

#[test]
fn dropping_the_device_releases_the_image_file() {
    let io = IoCtx::new().expect("engine");
    let file: Arc<dyn BlockDev> = Arc::new(MemDisk::new(8 << 20).expect("mem disk"));
    io.block_on(create(&io, &file, &CreateOptions { size: 4 << 20, cluster_size: 4096, ..Default::default() }))
        .expect("create image");
    for round in 0..3 {
        let dev = io.block_on(open_dev(&io, file.clone(), None, &Options::default())).expect("open image");
        let mut buf = SharedBuf::from_slice(&[round as u8 + 1; 8192]);
        io.block_on(dev.write(&io, 4096 * round, buf.io(), false, IoTag::DATA)).expect("write");
        io.block_on(dev.flush(&io, IoTag::DATA)).expect("flush");
        let mut back = SharedBuf::new(8192);
        io.block_on(dev.read(&io, 4096 * round, back.io(), IoTag::DATA)).expect("read");
        io.block_on(dev.close(&io)).expect("close");
        drop(dev);
        assert_eq!(Arc::strong_count(&file), 1, "round {round}: the device still holds the image file after drop");
    }
}
