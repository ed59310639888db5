//! A pool's metrics for the daemon's `/metrics` page ([`BlockDev::layer_metrics`]): data and
//! metadata space and the low-water mark (dm-thin's `low_water_mark`), which logs one warning
//! when the available data space falls under it and shows as `strata_thin_low_water 1` until
//! space comes back. Read under the pool's metadata lock without walking any map.
//!
//! [`BlockDev::layer_metrics`]: blockdev::BlockDev::layer_metrics

use blockdev::{Error, ErrorKind, LayerSample, Result};

use crate::format::PAGE_SIZE;
use crate::pool::PoolInner;
use crate::Pool;

/// The low-water mark a pool starts with, in percent of its data blocks.
pub const DEFAULT_LOW_WATER_PCT: u8 = 10;

impl Pool {
    /// Set the low-water mark: below `percent` of the data blocks available, the next allocation
    /// logs a warning (once, until space is back above it) and `strata_thin_low_water` reads 1.
    /// `percent` is 0..=100 (0 turns the mark off).
    pub fn set_low_water(&self, percent: u8) -> Result<()> {
        if percent > 100 {
            return Err(Error::new(ErrorKind::InvalidInput, format!("low-water={percent} must be 0..=100 (percent)")));
        }
        self.inner.lock().low_water_pct = percent;
        Ok(())
    }

    /// The low-water mark in percent of the data blocks.
    pub fn low_water(&self) -> u8 {
        self.inner.lock().low_water_pct
    }
}

/// Push the samples of the pool behind `inner`, labelled `pool=UUID`.
pub(crate) fn push(inner: &PoolInner, out: &mut Vec<LayerSample>) {
    let (uuid, data_blocks, available, meta_pages, meta_free, low, pct) = {
        let st = inner.lock();
        (
            st.sb.uuid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            st.sb.data_blocks,
            st.available_blocks(),
            st.sb.meta_pages,
            st.meta_free_pages(),
            st.below_low_water(),
            st.low_water_pct,
        )
    };
    let id = || vec![("pool", uuid.clone())];
    let bs = inner.block_size as f64;
    let page = PAGE_SIZE as f64;
    out.push(LayerSample::gauge(
        "strata_thin_data_bytes",
        "Data space of the thin pool.",
        id(),
        data_blocks as f64 * bs,
    ));
    out.push(LayerSample::gauge(
        "strata_thin_data_used_bytes",
        "Data space of the thin pool in use (not available for allocation).",
        id(),
        data_blocks.saturating_sub(available) as f64 * bs,
    ));
    out.push(LayerSample::gauge(
        "strata_thin_metadata_bytes",
        "Metadata space of the thin pool.",
        id(),
        meta_pages as f64 * page,
    ));
    out.push(LayerSample::gauge(
        "strata_thin_metadata_used_bytes",
        "Metadata space of the thin pool in use.",
        id(),
        meta_pages.saturating_sub(meta_free) as f64 * page,
    ));
    out.push(LayerSample::gauge(
        "strata_thin_low_water_ratio",
        "The thin pool's low-water mark as a share of its data space (0 = off).",
        id(),
        f64::from(pct) / 100.0,
    ));
    out.push(LayerSample::gauge(
        "strata_thin_low_water",
        "1 while the thin pool's available data space is under its low-water mark: grow the pool.",
        id(),
        if low { 1.0 } else { 0.0 },
    ));
}
