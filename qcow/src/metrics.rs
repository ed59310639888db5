//! An open image's metrics for the daemon's `/metrics` page ([`BlockDev::layer_metrics`]): the
//! host bytes it occupies and its virtual size. Read under the metadata lock, without I/O.
//!
//! [`BlockDev::layer_metrics`]: blockdev::BlockDev::layer_metrics

use std::sync::atomic::Ordering;

use blockdev::LayerSample;

use crate::shared::Shared;

/// Push the samples of the image behind `sh`, labelled `image=NAME`.
pub(crate) fn push(sh: &Shared, out: &mut Vec<LayerSample>) {
    let end = sh.lock().zero_from;
    let id = || vec![("image", sh.name.clone())];
    out.push(LayerSample::gauge(
        "strata_qcow2_allocated_bytes",
        "Host bytes the qcow2 image occupies: up to the end of its last allocated cluster \
         (clusters freed inside are reused before it grows).",
        id(),
        end as f64,
    ));
    out.push(LayerSample::gauge(
        "strata_qcow2_virtual_size_bytes",
        "Virtual size of the qcow2 image.",
        id(),
        sh.size.load(Ordering::Acquire) as f64,
    ));
}
