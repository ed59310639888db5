//! Resizing a volume. Growing is always allowed (overcommit included). Shrinking must be asked
//! for, is refused while the volume is open, and is refused while mapped blocks lie past the new
//! end unless the caller says to drop them: a slip of a size never loses data silently.

use super::pool::{check_size, Pool};
use blockdev::size::{format_iec, SizeChange};
use blockdev::{Error, ErrorKind, IoCtx, IoTag, Result};

/// What a resize may do to a volume's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResizeOptions {
    /// A smaller size is allowed (`blkctl thin resize --shrink`); without it a shrink is refused.
    pub shrink: bool,
    /// Mapped data past the new end may be dropped (`--discard-data`); without it a shrink over
    /// mapped blocks is refused, saying how much they hold.
    pub discard_data: bool,
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// The size before, in bytes.
    pub old_size: u64,
    /// The size now, in bytes.
    pub size: u64,
    /// Bytes of mapped blocks that lay past the new end and were dropped (0 unless shrunk with
    /// [`ResizeOptions::discard_data`]).
    pub discarded: u64,
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

fn iec_and_bytes(n: u64) -> String {
    format!("{} ({n} bytes)", format_iec(n))
}

impl Pool {
    /// Bytes of volume `name`'s mapped blocks that lie at or past `offset` (up to its size): what
    /// a shrink to `offset` would cut off.
    pub fn mapped_past(&self, name: &str, offset: u64) -> Result<u64> {
        let bs = self.inner.block_size;
        let st = self.inner.lock();
        let v = &st.volumes[&st.volume_id(name)?];
        Ok(v.map
            .nonzero()
            .map(|(vb, _)| {
                let (start, end) = (vb * bs, ((vb + 1) * bs).min(v.size));
                end.saturating_sub(start.max(offset))
            })
            .sum())
    }

    /// The end of volume `name`'s highest mapped block (capped at its size; 0 when nothing is
    /// mapped): the smallest size a shrink can go to without cutting off data.
    pub fn mapped_end(&self, name: &str) -> Result<u64> {
        let bs = self.inner.block_size;
        let st = self.inner.lock();
        let v = &st.volumes[&st.volume_id(name)?];
        Ok(v.map.nonzero().map(|(vb, _)| ((vb + 1) * bs).min(v.size)).max().unwrap_or(0))
    }

    /// Change volume `name`'s size to `change` (absolute, or relative to its size now) and commit.
    ///
    /// A smaller size is refused unless `opts.shrink`, refused while the volume is open (served),
    /// and refused while mapped blocks lie past the new end unless `opts.discard_data` (the error
    /// says how many bytes they hold and the smallest size that keeps them). When data is
    /// dropped and the new end falls inside a mapped block, the part of that block past the end
    /// is zeroed first (copied if shared), so growing the volume again reads zeros there.
    /// Every refusal changes nothing.
    pub async fn resize_volume(
        &self,
        io: &IoCtx,
        name: &str,
        change: SizeChange,
        opts: ResizeOptions,
    ) -> Result<Resized> {
        let what = format!("thin volume '{name}'");
        let old = {
            let st = self.inner.lock();
            st.volumes[&st.volume_id(name)?].size
        };
        let new = change.apply(old).map_err(|e| e.context(&what))?;
        check_size(name, new)?;
        let mut discarded = 0;
        if new < old {
            if !opts.shrink {
                return Err(invalid(format!(
                    "{what}: {} is smaller than its size {}; shrinking cuts off its end: pass --shrink",
                    iec_and_bytes(new),
                    iec_and_bytes(old)
                )));
            }
            self.refuse_open_shrink(name)?;
            discarded = self.mapped_past(name, new)?;
            if discarded > 0 && !opts.discard_data {
                let keep = self.mapped_end(name)?;
                return Err(invalid(format!(
                    "{what}: {} of mapped data lie past the new end at {}; refusing to cut them off \
                     (--discard-data drops them; a size of at least {} keeps them)",
                    iec_and_bytes(discarded),
                    iec_and_bytes(new),
                    iec_and_bytes(keep)
                )));
            }
            self.zero_tail_of_last_block(io, name, new, old).await?;
        }
        {
            let mut st = self.inner.lock();
            let id = st.volume_id(name)?;
            let v = &st.volumes[&id];
            if v.size != old {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!("{what}: resized by another request meanwhile (now {}); try again", iec_and_bytes(v.size)),
                ));
            }
            if new < old && v.open > 0 {
                return Err(open_error(&what));
            }
            st.resize_volume(id, new);
        }
        self.commit(io).await?;
        Ok(Resized { old_size: old, size: new, discarded })
    }

    fn refuse_open_shrink(&self, name: &str) -> Result<()> {
        let st = self.inner.lock();
        if st.volumes[&st.volume_id(name)?].open > 0 {
            return Err(open_error(&format!("thin volume '{name}'")));
        }
        Ok(())
    }

    /// Zero `[new, end of its block)` (up to `old`) when that block is mapped: the shrink keeps
    /// the block, and what lies past the new end must not come back if the volume grows again.
    async fn zero_tail_of_last_block(&self, io: &IoCtx, name: &str, new: u64, old: u64) -> Result<()> {
        let bs = self.inner.block_size;
        let block_end = new.div_ceil(bs) * bs;
        let len = block_end.min(old) - new;
        let mapped = {
            let st = self.inner.lock();
            let v = &st.volumes[&st.volume_id(name)?];
            v.map.get(new / bs) != 0
        };
        if len == 0 || !mapped {
            return Ok(());
        }
        let vol = self.volume(name)?;
        let res = blockdev::BlockDev::write_zeroes(&vol, io, new, len, false, IoTag::meta("thin.shrink_tail")).await;
        drop(vol);
        res.map_err(|e| e.context(format!("thin volume '{name}': zero the part of its last block past the new end")))
    }
}

fn open_error(what: &str) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!("{what} is open (served): cannot shrink it while in use; stop serving it first"),
    )
}
