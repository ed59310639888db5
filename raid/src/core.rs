//! The shared state of a running array and what every level needs: member I/O with errors that
//! name the member, superblock updates (events bumped), failing a member, and the array flush
//! that also retires write-intent bits and partial parity log entries.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use blockdev::join::join_all;
use blockdev::{DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result, SharedBuf};

use crate::bitmap::Bitmap;
use crate::flush_group::FlushGroup;
use crate::layout::Geometry;
use crate::member::{Member, MemberState};
use crate::raid5::ppl::Ppl;
use crate::stripe_lock::StripeLocks;
use crate::superblock::{format_uuid, Level, RoleState, Superblock, IN_SYNC};

/// Errors on one member after which it is kicked out even if each was repaired.
pub const MAX_MEMBER_ERRORS: u32 = 16;

/// Counters reported by `status`.
#[derive(Default)]
pub(crate) struct Counters {
    pub read_errors_fixed: AtomicU64,
    pub rebuild_bytes: AtomicU64,
    /// Rows the running scrub has checked, plus one (0: no scrub running).
    pub scrub_rows: AtomicU64,
}

pub(crate) struct Core {
    pub geo: Geometry,
    pub uuid: [u8; 16],
    pub name: Arc<str>,
    pub data_offset: u64,
    pub members: Vec<Member>,
    /// Superblock template (geometry, events, dirty, role states).
    pub sb: Mutex<Superblock>,
    pub sb_write: futures::lock::Mutex<()>,
    pub dirty: AtomicBool,
    pub dirty_lock: futures::lock::Mutex<()>,
    pub locks: Arc<StripeLocks>,
    pub bitmap: Option<Bitmap>,
    pub ppl: Option<Ppl>,
    /// Bumped when a flush starts; writes record the epoch in which they completed.
    pub epoch: AtomicU64,
    pub counters: Counters,
    pub rr: AtomicUsize,
    /// A rebuild is running.
    pub rebuilding: AtomicBool,
    /// Coalesced flushes the write path waits for.
    pub flush_group: FlushGroup,
    /// What `info()` reports, computed from the members once (reset when one is replaced), so
    /// a request's range check does not ask every member.
    pub info_cache: RwLock<Option<DevInfo>>,
}

impl Core {
    pub fn level(&self) -> Level {
        self.geo.level
    }

    pub fn member(&self, m: usize) -> &Member {
        &self.members[m]
    }

    fn member_err(&self, m: usize, e: Error) -> Error {
        e.context(format!("{}: member {m} ({})", self.name, self.members[m].name()))
    }

    /// As [`Core::read_member`], without boxing the future (for the write path's pre-reads).
    pub fn read_member_io(&self, io: &IoCtx, m: usize, off: u64, bufs: IoBufs, tag: IoTag) -> MemberIo<'_> {
        let fut = match self.members[m].dev() {
            Some(dev) => dev.read(io, self.data_offset + off, bufs, tag),
            None => blockdev::ready(Err(Error::new(ErrorKind::Io, "member is missing"))),
        };
        MemberIo { fut, core: self, m }
    }

    /// As [`Core::write_member`], without boxing the future (for the write path).
    pub fn write_member_io(&self, io: &IoCtx, m: usize, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> MemberIo<'_> {
        let fut = match self.members[m].dev() {
            Some(dev) => dev.write(io, self.data_offset + off, bufs, fua, tag),
            None => blockdev::ready(Err(Error::new(ErrorKind::Io, "member is missing"))),
        };
        MemberIo { fut, core: self, m }
    }

    /// Read `bufs.len()` bytes at data-area offset `off` of member `m`.
    pub fn read_member(&self, io: &IoCtx, m: usize, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        let Some(dev) = self.members[m].dev() else {
            return blockdev::ready(Err(self.member_err(m, Error::new(ErrorKind::Io, "member is missing"))));
        };
        let fut = dev.read(io, self.data_offset + off, bufs, tag);
        let (array, member) = (self.name.clone(), self.members[m].name_arc());
        Box::pin(async move { fut.await.map_err(|e| e.context(format!("{array}: member {m} ({member})"))) })
    }

    /// Write `bufs` at data-area offset `off` of member `m`.
    pub fn write_member(&self, io: &IoCtx, m: usize, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        self.write_member_raw(io, m, self.data_offset + off, bufs, fua, tag)
    }

    /// Write at an absolute offset of member `m` (metadata areas).
    pub fn write_member_raw(&self, io: &IoCtx, m: usize, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        let Some(dev) = self.members[m].dev() else {
            return blockdev::ready(Err(self.member_err(m, Error::new(ErrorKind::Io, "member is missing"))));
        };
        let fut = dev.write(io, off, bufs, fua, tag);
        let (array, member) = (self.name.clone(), self.members[m].name_arc());
        Box::pin(async move { fut.await.map_err(|e| e.context(format!("{array}: member {m} ({member})"))) })
    }

    /// Read member `m` at data offset `off` into a fresh buffer.
    pub async fn read_member_buf(&self, io: &IoCtx, m: usize, off: u64, len: usize, tag: IoTag) -> Result<SharedBuf> {
        let mut b = io.pool().shared(len);
        self.read_member(io, m, off, b.io(), tag).await?;
        Ok(b)
    }

    /// Members written by array writes.
    pub fn writable_members(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&m| self.members[m].writable()).collect()
    }

    /// Whether the array keeps working without member `m`.
    pub fn survives_without(&self, m: usize) -> bool {
        let others = (0..self.members.len()).filter(|&o| o != m);
        match self.level() {
            Level::Raid0 => false,
            Level::Raid1 => others.clone().any(|o| self.members[o].state() == MemberState::Active),
            Level::Raid5 => {
                let st = self.members[m].state();
                st != MemberState::Active || others.clone().all(|o| self.members[o].state() == MemberState::Active)
            }
        }
    }

    /// Member `m` failed with `err`: mark it faulty (in memory and in the others' superblocks)
    /// when the array survives that, else hand the error back.
    pub async fn member_failed(&self, io: &IoCtx, m: usize, err: Error) -> Result<()> {
        if !self.members[m].writable() {
            return Ok(());
        }
        if !self.survives_without(m) {
            return Err(err);
        }
        tracing::warn!("{}: member {m} ({}) failed, continuing degraded: {err}", self.name, self.members[m].name());
        self.members[m].set_state(MemberState::Faulty);
        self.flush_group.note_failure();
        self.write_superblocks(io).await
    }

    /// A read error on member `m` was repaired (or not): count it; kick the member out when it
    /// keeps failing. Returns an error only when the array cannot go on.
    pub async fn note_member_error(&self, io: &IoCtx, m: usize, err: Error, repaired: bool) -> Result<()> {
        let n = self.members[m].errors.fetch_add(1, Ordering::Relaxed) + 1;
        if repaired {
            self.counters.read_errors_fixed.fetch_add(1, Ordering::Relaxed);
        }
        if !repaired || n >= MAX_MEMBER_ERRORS {
            return self.member_failed(io, m, err).await;
        }
        tracing::warn!("{}: member {m}: read error repaired ({n} so far): {err}", self.name);
        Ok(())
    }

    /// The superblock member `m` should carry now.
    pub fn superblock_for(&self, m: usize) -> Superblock {
        let mut sb = self.sb.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sb.role = m as u32;
        sb.dirty = self.dirty.load(Ordering::Acquire);
        sb.rebuild_checkpoint = match self.members[m].state() {
            MemberState::Rebuilding => self.members[m].rebuild_pos.load(Ordering::Acquire),
            _ => IN_SYNC,
        };
        sb
    }

    /// Write every writable member's superblock (events bumped once), FUA.
    pub async fn write_superblocks(&self, io: &IoCtx) -> Result<()> {
        let _g = self.sb_write.lock().await;
        {
            let mut sb = self.sb.lock().unwrap_or_else(|p| p.into_inner());
            sb.events = sb.events.saturating_add(1);
            sb.role_states = self
                .members
                .iter()
                .map(|mb| match mb.state() {
                    MemberState::Active => RoleState::Active,
                    MemberState::Rebuilding => RoleState::Rebuilding,
                    _ => RoleState::Faulty,
                })
                .collect();
        }
        let targets = self.writable_members();
        let futs = targets.iter().map(|&m| {
            let buf = SharedBuf::from_slice(&self.superblock_for(m).encode());
            let mut buf = buf;
            self.write_member_raw(io, m, 0, buf.io(), true, IoTag::meta("raid.superblock"))
        });
        let results = join_all(futs).await;
        let mut ok = 0;
        let mut last_err = None;
        for (m, r) in targets.iter().zip(results) {
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::warn!("{}: superblock write to member {m} failed: {e}", self.name);
                    if self.survives_without(*m) {
                        self.members[*m].set_state(MemberState::Faulty);
                    }
                    last_err = Some(e);
                }
            }
        }
        match (ok, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Before the first write after a clean start: mark the array dirty on disk.
    pub async fn ensure_dirty(&self, io: &IoCtx) -> Result<()> {
        if self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.dirty_lock.lock().await;
        if self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        self.dirty.store(true, Ordering::Release);
        self.write_superblocks(io).await
    }

    /// Flush every writable member, then retire write-intent bits and log entries of writes
    /// that completed before the flush started (a guest's flush, a checkpoint).
    pub async fn flush_all(&self, io: &IoCtx) -> Result<()> {
        self.flush_members(io, true).await
    }

    /// Flush every writable member and retire the log entries of writes that completed before
    /// the flush started; with `clear_bits`, their write-intent bits too. The write path's own
    /// flushes ([`FlushGroup`]) leave the bits set: clearing them there would make the next
    /// writes to those regions set them again, one more bitmap write each (bits left set only
    /// widen a resync).
    pub async fn flush_members(&self, io: &IoCtx, clear_bits: bool) -> Result<()> {
        let e = self.epoch.fetch_add(1, Ordering::AcqRel);
        let targets = self.writable_members();
        let futs = targets.iter().map(|&m| match self.members[m].dev() {
            Some(d) => d.flush(io, IoTag::meta("raid.flush")),
            None => blockdev::ready(Ok(())),
        });
        let results = join_all(futs).await;
        for (m, r) in targets.into_iter().zip(results) {
            if let Err(err) = r {
                self.member_failed(io, m, self.member_err(m, err)).await?;
            }
        }
        if let Some(ppl) = &self.ppl {
            ppl.after_flush(self, io, e).await?;
        }
        if let (Some(bm), true) = (&self.bitmap, clear_bits) {
            bm.after_flush(self, io, e).await?;
        }
        Ok(())
    }

    /// The current epoch (recorded by a completing write).
    pub fn epoch_now(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Human name with the UUID.
    pub fn describe(&self) -> String {
        format!("raid{}:{}", self.level().number(), format_uuid(&self.uuid))
    }
}

/// A member operation whose error names the array and the member (formatted only on error).
pub(crate) struct MemberIo<'a> {
    fut: IoFuture,
    core: &'a Core,
    m: usize,
}

impl std::future::Future for MemberIo<'_> {
    type Output = Result<()>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<()>> {
        let (core, m) = (self.core, self.m);
        self.fut.as_mut().poll(cx).map(|r| r.map_err(|e| core.member_err(m, e)))
    }
}

/// Run `futs` in parallel; on failure of member writes, fail those members and succeed if the
/// array survives. `members[i]` is the member `futs[i]` writes.
pub(crate) async fn write_members_tolerant<F: std::future::Future<Output = Result<()>> + Unpin>(
    core: &Core,
    io: &IoCtx,
    members: &[usize],
    futs: impl IntoIterator<Item = F>,
) -> Result<Vec<usize>> {
    let results = join_all(futs).await;
    let mut failed = Vec::new();
    for (&m, r) in members.iter().zip(results) {
        if let Err(e) = r {
            core.member_failed(io, m, e).await?;
            failed.push(m);
        }
    }
    Ok(failed)
}
