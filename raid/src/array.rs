//! `Array`: a running RAID array, the [`BlockDev`] its users see, plus the management calls
//! (status, fail, replace, rebuild, scrub, close).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockdev::{BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result};

use crate::core::Core;
use crate::member::MemberState;
use crate::superblock::{format_uuid, Level};
use crate::{raid0, raid1, raid5};

/// A running array. Cheap to share (`Arc<Array>` as `Arc<dyn BlockDev>`).
pub struct Array {
    pub(crate) core: Arc<Core>,
}

/// One member in a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Role (index).
    pub role: usize,
    /// The name it was opened under (path), or `-` when missing.
    pub name: String,
    /// `active`, `faulty`, `rebuilding` or `missing`.
    pub state: &'static str,
    /// Errors seen on it since it joined.
    pub errors: u32,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Array UUID.
    pub uuid: String,
    /// RAID level (0, 1, 5).
    pub level: u32,
    /// Chunk size in bytes.
    pub chunk: u64,
    /// Size the array exposes, in bytes.
    pub size: u64,
    /// `clean`, `active` (dirty), `degraded` or `rebuilding`.
    pub state: &'static str,
    /// Some member is not active.
    pub degraded: bool,
    /// Every role.
    pub members: Vec<MemberStatus>,
    /// Rebuild progress in [0, 1] while a member is rebuilding.
    pub rebuild_progress: Option<f64>,
    /// Scrub progress in [0, 1] while a scrub runs.
    pub scrub_progress: Option<f64>,
    /// Mismatches the last scrub found.
    pub mismatches: u64,
    /// Read errors repaired from redundancy.
    pub read_errors_fixed: u64,
    /// Superblock events counter.
    pub events: u64,
    /// Partial parity log on (RAID 5 write hole closed).
    pub ppl: bool,
    /// Write-intent bitmap on.
    pub bitmap: bool,
}

impl Array {
    /// The level.
    pub fn level(&self) -> Level {
        self.core.level()
    }

    /// The array UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.core.uuid
    }

    /// Partial parity log units written since assembly and the entries they held (None
    /// without a log): entries per unit says how well the log packs concurrent writes.
    pub fn log_packing(&self) -> Option<(u64, u64)> {
        self.core.ppl.as_ref().map(|p| p.packing())
    }

    /// A status snapshot.
    pub fn status(&self) -> Status {
        let c = &self.core;
        let members: Vec<MemberStatus> = c
            .members
            .iter()
            .enumerate()
            .map(|(role, m)| MemberStatus {
                role,
                name: if m.state() == MemberState::Missing { "-".into() } else { m.name() },
                state: m.state().as_str(),
                errors: m.errors.load(Ordering::Relaxed),
            })
            .collect();
        let degraded = c.members.iter().any(|m| m.state() != MemberState::Active);
        let rebuilding = c.members.iter().find(|m| m.state() == MemberState::Rebuilding);
        let rebuild_progress = rebuilding
            .map(|m| m.rebuild_pos.load(Ordering::Relaxed).min(c.geo.data_size) as f64 / c.geo.data_size as f64);
        let state = if rebuilding.is_some() {
            "rebuilding"
        } else if degraded {
            "degraded"
        } else if c.dirty.load(Ordering::Relaxed) {
            "active"
        } else {
            "clean"
        };
        let (events, mismatches) = {
            let sb = c.sb.lock().unwrap_or_else(|p| p.into_inner());
            (sb.events, sb.mismatches)
        };
        Status {
            uuid: format_uuid(&c.uuid),
            level: c.level().number(),
            chunk: c.geo.chunk,
            size: c.geo.array_size(),
            state,
            degraded,
            members,
            rebuild_progress,
            scrub_progress: match c.counters.scrub_rows.load(Ordering::Acquire) {
                0 => None,
                n => Some((n - 1) as f64 / c.geo.stripes().max(1) as f64),
            },
            mismatches,
            read_errors_fixed: c.counters.read_errors_fixed.load(Ordering::Relaxed),
            events,
            ppl: c.ppl.is_some(),
            bitmap: c.bitmap.is_some(),
        }
    }

    /// The device in role `role` (None when missing).
    pub fn member_device(&self, role: usize) -> Option<Arc<dyn BlockDev>> {
        self.core.members.get(role).and_then(|m| m.dev())
    }

    /// Role of the member opened as `name`, if any.
    pub fn role_of(&self, name: &str) -> Option<usize> {
        self.core.members.iter().position(|m| m.state() != MemberState::Missing && m.name() == name)
    }

    /// Mark member `role` faulty (as if it had failed); refused when the array would not survive.
    pub async fn fail_member(&self, io: &IoCtx, role: usize) -> Result<()> {
        let c = &self.core;
        if role >= c.members.len() {
            return Err(Error::new(ErrorKind::InvalidInput, format!("{}: no member {role}", c.name)));
        }
        if !c.member(role).writable() {
            return Ok(());
        }
        if !c.survives_without(role) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: failing member {role} ({}) would stop the array", c.name, c.member(role).name()),
            ));
        }
        c.member_failed(io, role, Error::new(ErrorKind::Io, "marked faulty on request")).await
    }

    /// Flush and mark the array clean on every member (a clean shutdown: no resync at the next
    /// assembly).
    pub async fn close(&self, io: &IoCtx) -> Result<()> {
        let c = &self.core;
        c.flush_all(io).await?;
        if let Some(bm) = &c.bitmap {
            bm.clear_all(c, io).await?;
        }
        c.dirty.store(false, Ordering::Release);
        c.write_superblocks(io).await
    }
}

impl Array {
    /// `info()` from the members (see [`Core::info_cache`](crate::core::Core)).
    fn compute_info(&self) -> DevInfo {
        let c = &self.core;
        let mut lbs = 512u32;
        let mut align = 1u32;
        let mut read_only = false;
        let mut discard = c.level() == Level::Raid0;
        for m in &c.members {
            if let Some(d) = m.dev() {
                let i = d.info();
                lbs = lbs.max(i.logical_block_size);
                align = align.max(i.mem_align);
                read_only |= i.read_only;
                discard &= i.discard;
            }
        }
        DevInfo {
            size: c.geo.array_size(),
            logical_block_size: lbs,
            physical_block_size: lbs.max(4096),
            mem_align: align,
            read_only,
            discard,
            write_zeroes: true,
            optimal_io_size: u32::try_from(c.geo.stripe_bytes()).unwrap_or(0),
            volatile_cache: true,
        }
    }
}

impl BlockDev for Array {
    fn info(&self) -> DevInfo {
        if let Some(i) = *self.core.info_cache.read().unwrap_or_else(|p| p.into_inner()) {
            return i;
        }
        let i = self.compute_info();
        *self.core.info_cache.write().unwrap_or_else(|p| p.into_inner()) = Some(i);
        i
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_range(off, bufs.len() as u64) {
            return blockdev::ready(Err(e));
        }
        let (c, io) = (self.core.clone(), io.clone());
        match c.level() {
            Level::Raid0 => Box::pin(raid0::read(c, io, off, bufs, tag)),
            Level::Raid1 => Box::pin(raid1::read(c, io, off, bufs, tag)),
            Level::Raid5 => Box::pin(raid5::read(c, io, off, bufs, tag)),
        }
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, bufs.len() as u64) {
            return blockdev::ready(Err(e));
        }
        let (c, io) = (self.core.clone(), io.clone());
        match c.level() {
            Level::Raid0 => Box::pin(raid0::write(c, io, off, bufs, fua, tag)),
            Level::Raid1 => Box::pin(raid1::write(c, io, off, bufs, fua, tag)),
            Level::Raid5 => Box::pin(raid5::write(c, io, off, bufs, fua)),
        }
    }

    fn flush(&self, io: &IoCtx, _tag: IoTag) -> IoFuture {
        let (c, io) = (self.core.clone(), io.clone());
        Box::pin(async move { c.flush_all(&io).await })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return blockdev::ready(Err(e));
        }
        let (c, io) = (self.core.clone(), io.clone());
        match c.level() {
            Level::Raid0 => Box::pin(raid0::zero(c, io, off, len, true, true)),
            // Discarding under redundancy could leave mirrors or parity disagreeing: a no-op.
            Level::Raid1 | Level::Raid5 => blockdev::ready(Ok(())),
        }
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return blockdev::ready(Err(e));
        }
        let (c, io) = (self.core.clone(), io.clone());
        match c.level() {
            Level::Raid0 => Box::pin(raid0::zero(c, io, off, len, false, unmap)),
            Level::Raid1 => Box::pin(raid1::write_zeroes(c, io, off, len, unmap)),
            Level::Raid5 => Box::pin(raid5::write_zeroes(c, io, off, len)),
        }
    }

    fn layer_metrics(&self, out: &mut Vec<blockdev::LayerSample>) {
        crate::metrics::push(self, out);
    }

    fn resize(&self, _io: &IoCtx, _new_size: u64, _shrink: bool) -> blockdev::Result<u64> {
        Err(blockdev::Error::new(
            blockdev::ErrorKind::Unsupported,
            format!(
                "{}: a RAID array cannot change size while in use: its size comes from its members and \
                 its on-disk superblocks record the layout (no reshape); grow a volume or image on top of it instead",
                self.core.describe()
            ),
        ))
    }

    fn over_network(&self) -> bool {
        self.core.members.iter().any(|m| m.dev().is_some_and(|d| d.over_network()))
    }

    fn describe(&self) -> String {
        self.core.describe()
    }
}
