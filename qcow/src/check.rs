//! Consistency check and repair of an image's metadata.

use blockdev::{Error, ErrorKind, IoCtx, Result};

use crate::Qcow2;

/// A writable open of an image with the dirty bit set: its refcounts must be rebuilt first.
pub async fn repair_on_open(_io: &IoCtx, dev: &Qcow2) -> Result<()> {
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{}: the image is dirty (lazy refcounts); repair it with qemu-img check -r all first",
            dev.shared().name
        ),
    ))
}
