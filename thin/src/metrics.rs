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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::{BlockDev, IoCtx, MemDisk, SharedBuf};

    use crate::{Pool, PoolConfig};

    fn sample(out: &[LayerSample], name: &str) -> f64 {
        out.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}")).value
    }

    use blockdev::LayerSample;

    #[test]
    fn the_low_water_mark_moves_with_its_percent_and_shows_in_the_samples() {
        let io = IoCtx::new().unwrap();
        let pool = io
            .block_on(Pool::create(&io, Arc::new(MemDisk::new(8 << 20).unwrap()), None, PoolConfig::default()))
            .unwrap();
        io.block_on(pool.create_volume(&io, "v", 4 << 20)).unwrap();
        let vol = pool.volume("v").unwrap();
        let data_blocks = pool.info().data_blocks;
        let bs = pool.info().block_size;
        // Use about half of the pool.
        let mut w = SharedBuf::from_slice(&[5u8; 4096]);
        let used = data_blocks / 2;
        for b in 0..used {
            io.block_on(vol.write(&io, b * bs, w.io(), false, blockdev::IoTag::DATA)).unwrap();
        }
        assert_eq!(pool.low_water(), super::DEFAULT_LOW_WATER_PCT);
        let mut out = Vec::new();
        vol.layer_metrics(&mut out);
        assert_eq!(sample(&out, "strata_thin_low_water"), 0.0, "half free is above 10%");
        assert_eq!(sample(&out, "strata_thin_data_used_bytes"), (used * bs) as f64);
        assert_eq!(sample(&out, "strata_thin_data_bytes"), (data_blocks * bs) as f64);
        assert!(sample(&out, "strata_thin_metadata_used_bytes") > 0.0);
        pool.set_low_water(60).unwrap();
        assert!(pool.info().below_low_water);
        out.clear();
        vol.layer_metrics(&mut out);
        assert_eq!(sample(&out, "strata_thin_low_water"), 1.0, "half free is under 60%");
        assert_eq!(sample(&out, "strata_thin_low_water_ratio"), 0.6);
        pool.set_low_water(0).unwrap();
        assert!(!pool.info().below_low_water, "0 turns the mark off");
        let e = pool.set_low_water(101).unwrap_err();
        assert!(e.to_string().contains("low-water=101"), "{e}");
        assert_eq!(pool.low_water(), 0, "a refused value changes nothing");
    }
}
