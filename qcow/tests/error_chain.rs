//! An I/O error under a qcow2 metadata write reaches the caller with every cause kept: the
//! qcow2 layer's words, the device's, and the kernel's errno at the bottom of the source chain.

use std::error::Error as _;
use std::sync::Arc;

use blockdev::testdev::{FaultDev, FaultError, FaultRule};
use blockdev::{BlockDev, Error, IoCtx, IoTag, MemDisk, SharedBuf};
use qcow::{CreateOptions, Options};

#[test]
fn a_failed_l2_update_names_every_layer_down_to_the_errno() {
    let io = IoCtx::new().unwrap();
    let mem: Arc<dyn BlockDev> = Arc::new(MemDisk::new(64 << 20).unwrap());
    let opts = CreateOptions { size: 16 << 20, ..Default::default() };
    io.block_on(qcow::create(&io, &mem, &opts)).unwrap();
    let fault = Arc::new(FaultDev::new(mem));
    let dev = io.block_on(qcow::open_dev(&io, fault.clone(), None, &Options::default())).unwrap();
    fault.add_rule(FaultRule::new().site("qcow2.l2_update").error(FaultError::Io));

    let mut buf = SharedBuf::from_slice(&[7u8; 4096]);
    let err = io.block_on(dev.write(&io, 1 << 20, buf.io(), true, IoTag::DATA)).unwrap_err();

    let mut chain = vec![err.message().to_string()];
    let mut next = err.source();
    let mut bottom_errno = None;
    while let Some(cause) = next {
        match cause.downcast_ref::<Error>() {
            Some(ours) => chain.push(ours.message().to_string()),
            None => {
                bottom_errno = cause.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error());
                chain.push(cause.to_string());
            }
        }
        next = cause.source();
    }
    assert_eq!(err.errno(), Some(libc::EIO), "{err}");
    assert_eq!(bottom_errno, Some(libc::EIO), "the chain must end at the OS error: {chain:?}");
    assert!(chain.len() >= 3, "the qcow2 layer adds its own words above the device's: {chain:?}");
    assert!(chain.iter().any(|c| c.contains("faultdev")), "{chain:?}");
    assert!(
        chain[0].contains("qcow2") && chain[0].contains("L2 table"),
        "the outermost words are the qcow2 layer's: {chain:?}"
    );
}
