//! Making arrays: `create` (superblocks, metadata areas, zeroed data so parity and mirrors start
//! consistent) and `assemble` (members matched by UUID and role, the newest events counter wins,
//! stale or conflicting members refused by name, degraded start, crash recovery).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, Result};
use rand::RngCore;

use crate::array::{Array, MemberStatus, Status};
use crate::bitmap::Bitmap;
use crate::core::{Core, Counters};
use crate::flush_group::FlushGroup;
use crate::layout::{align_up, Geometry};
use crate::member::{Member, MemberState};
use crate::raid5::ppl::{self, Ppl};
use crate::scrub::resync_range;
use crate::stripe_lock::StripeLocks;
use crate::superblock::{format_uuid, Level, RoleState, Superblock, FLAG_PPL, IN_SYNC, MAX_MEMBERS, SB_SIZE};

/// How to create an array.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// RAID level.
    pub level: Level,
    /// Chunk size in bytes (power of two, 4 KiB to 16 MiB; RAID 1 uses it only as its
    /// resync and locking unit).
    pub chunk: u64,
    /// Keep a write-intent bitmap (RAID 1 and 5).
    pub bitmap: bool,
    /// Keep a partial parity log (RAID 5): the write hole closed.
    pub ppl: bool,
    /// Log slots per member (each holds one stripe update in flight before a flush).
    pub ppl_slots: u64,
    /// Bytes of each member to use, metadata included (None: all of the smallest member).
    pub member_size: Option<u64>,
}

impl CreateOptions {
    /// Defaults for `level`: 64 KiB chunks, bitmap and log on, every member used whole.
    pub fn new(level: Level) -> Self {
        CreateOptions { level, chunk: 64 << 10, bitmap: true, ppl: true, ppl_slots: 64, member_size: None }
    }

    /// Check the options for an array of `members` members before anything is opened or written:
    /// the member count for the level, the chunk size, and a member size that leaves room for
    /// data after the metadata.
    pub fn validate(&self, members: usize) -> Result<()> {
        let level = self.level;
        if members < level.min_members() || members > MAX_MEMBERS {
            return Err(invalid(format!(
                "RAID {} needs {} to {MAX_MEMBERS} members, got {members}",
                level.number(),
                level.min_members()
            )));
        }
        if !self.chunk.is_power_of_two() || !(4096..=16 << 20).contains(&self.chunk) {
            return Err(invalid(format!("chunk size {} is not a power of two from 4K to 16M", self.chunk)));
        }
        if let Some(size) = self.member_size {
            let need = self.data_offset() + self.chunk;
            if size < need {
                return Err(invalid(format!(
                    "member size {size} leaves no room for data: at least {need} bytes ({} of metadata and one \
                     {}-byte chunk)",
                    self.data_offset(),
                    self.chunk
                )));
            }
        }
        Ok(())
    }

    /// The partial parity log's length on each member (0 without one).
    fn ppl_len(&self) -> u64 {
        if self.ppl && self.level == Level::Raid5 {
            ppl::area_len(self.chunk, self.ppl_slots.clamp(4, 4096))
        } else {
            0
        }
    }

    /// Where each member's data area starts: after the superblock, bitmap and log, 1 MiB aligned.
    fn data_offset(&self) -> u64 {
        align_up(BITMAP_OFFSET + BITMAP_LEN + self.ppl_len(), 1 << 20)
    }
}

/// How to assemble an array.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssembleOptions {
    /// Start even when dirty and degraded without write-hole protection (`force=on`).
    pub force: bool,
}

/// Bitmap area: one 4 KiB block after the superblock (32768 regions).
const BITMAP_OFFSET: u64 = SB_SIZE as u64;
const BITMAP_LEN: u64 = 4096;

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u
}

fn build_core(sb: &Superblock, members: Vec<Member>, name: String) -> Core {
    let geo =
        Geometry { level: sb.level, members: sb.members as usize, chunk: u64::from(sb.chunk), data_size: sb.data_size };
    Core {
        geo,
        uuid: sb.uuid,
        name: name.into(),
        data_offset: sb.data_offset,
        members,
        sb: Mutex::new(sb.clone()),
        sb_write: futures::lock::Mutex::new(()),
        dirty: AtomicBool::new(sb.dirty),
        dirty_lock: futures::lock::Mutex::new(()),
        locks: Arc::new(StripeLocks::default()),
        bitmap: None,
        ppl: (sb.flags & FLAG_PPL != 0).then(|| Ppl::new(sb.ppl_offset, sb.ppl_len, u64::from(sb.chunk))),
        epoch: AtomicU64::new(1),
        counters: Counters::default(),
        rr: AtomicUsize::new(0),
        rebuilding: AtomicBool::new(false),
        flush_group: FlushGroup::default(),
        info_cache: std::sync::RwLock::new(None),
    }
}

/// Create a new array over `members` (name, device), erasing them.
pub async fn create(io: &IoCtx, members: Vec<(String, Arc<dyn BlockDev>)>, opts: CreateOptions) -> Result<Array> {
    let n = members.len();
    let level = opts.level;
    opts.validate(n)?;
    for (name, dev) in &members {
        let i = dev.info();
        if i.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, format!("member {name} is read-only")));
        }
        if i.logical_block_size > 4096 {
            return Err(invalid(format!("member {name}: block size {} above 4096", i.logical_block_size)));
        }
        if let Some(want) = opts.member_size.filter(|&w| w > i.size) {
            return Err(invalid(format!(
                "member {name} has {} bytes, less than the member size {want} asked for",
                i.size
            )));
        }
    }
    let use_ppl = opts.ppl && level == Level::Raid5;
    let use_bitmap = opts.bitmap && level != Level::Raid0;
    let ppl_offset = BITMAP_OFFSET + BITMAP_LEN;
    let ppl_len = opts.ppl_len();
    let data_offset = opts.data_offset();
    let smallest = members.iter().map(|(_, d)| d.info().size).min().unwrap_or(0);
    let min_size = opts.member_size.map_or(smallest, |w| w.min(smallest));
    let data_size = min_size.saturating_sub(data_offset) / opts.chunk * opts.chunk;
    if data_size == 0 {
        let small = members.iter().min_by_key(|(_, d)| d.info().size).map(|(n, _)| n.clone()).unwrap_or_default();
        return Err(invalid(format!(
            "member {small} is too small: {min_size} bytes leaves no room for data after {data_offset} bytes of metadata"
        )));
    }
    let region = align_up(data_size.div_ceil(BITMAP_LEN * 8), 4096).next_power_of_two().max(opts.chunk);
    let sb = Superblock {
        level,
        uuid: new_uuid(),
        chunk: opts.chunk as u32,
        members: n as u32,
        role: 0,
        events: 0,
        dirty: false,
        data_offset,
        data_size,
        bitmap_offset: if use_bitmap { BITMAP_OFFSET } else { 0 },
        bitmap_len: if use_bitmap { BITMAP_LEN } else { 0 },
        bitmap_region: if use_bitmap { region } else { 0 },
        ppl_offset: if use_ppl { ppl_offset } else { 0 },
        ppl_len,
        rebuild_checkpoint: IN_SYNC,
        flags: if use_ppl { FLAG_PPL } else { 0 },
        mismatches: 0,
        role_states: vec![RoleState::Active; n],
    };
    let slots: Vec<Member> =
        members.iter().map(|(name, d)| Member::new(name.clone(), Some(d.clone()), MemberState::Active)).collect();
    let mut core = build_core(&sb, slots, format!("raid{}:{}", level.number(), format_uuid(&sb.uuid)));
    if use_bitmap {
        core.bitmap = Some(Bitmap::new(BITMAP_OFFSET, BITMAP_LEN, region, data_size, None));
    }
    let core = Arc::new(core);
    // Zero the data areas (parity of zeros is zero, mirrors agree) and the metadata areas.
    for (m, (name, dev)) in members.iter().enumerate() {
        dev.write_zeroes(io, data_offset, data_size, true, IoTag::meta("raid.create_zero"))
            .await
            .map_err(|e| e.context(format!("create: zeroing member {name}")))?;
        dev.write_zeroes(io, BITMAP_OFFSET, data_offset - BITMAP_OFFSET, false, IoTag::meta("raid.create_zero"))
            .await
            .map_err(|e| e.context(format!("create: zeroing metadata of member {name}")))?;
        if let Some(p) = &core.ppl {
            p.format_member(&core, io, m).await?;
        }
    }
    core.flush_all(io).await?;
    core.write_superblocks(io).await?;
    tracing::info!("{}: created over {n} members, {} bytes", core.name, core.geo.array_size());
    Ok(Array { core })
}

/// Members as assembly takes them: (name, device or `None` when missing).
pub type MemberList = Vec<(String, Option<Arc<dyn BlockDev>>)>;

/// A member device with its name and superblock.
type FoundMember = (String, Arc<dyn BlockDev>, Superblock);

/// Read and decode member `name`'s superblock.
pub async fn read_superblock(io: &IoCtx, name: &str, dev: &dyn BlockDev) -> Result<Superblock> {
    let size = dev.info().size;
    if size < SB_SIZE as u64 {
        return Err(Error::new(ErrorKind::Corrupt, format!("member {name}: {size} bytes cannot hold a superblock")));
    }
    let mut buf = io.pool().shared(SB_SIZE);
    dev.read(io, 0, buf.io(), IoTag::meta("raid.superblock"))
        .await
        .map_err(|e| e.context(format!("member {name}: reading the superblock")))?;
    Superblock::decode(name, buf.bytes(), Some(size))
}

/// Assemble the array on `members` (name, device; `None` when the member is missing).
pub async fn assemble(io: &IoCtx, members: MemberList, opts: AssembleOptions) -> Result<Array> {
    let mut found: Vec<FoundMember> = Vec::new();
    for (name, dev) in &members {
        if let Some(dev) = dev {
            let sb = read_superblock(io, name, &**dev).await?;
            found.push((name.clone(), dev.clone(), sb));
        }
    }
    let Some(newest_i) = (0..found.len()).max_by_key(|&i| found[i].2.events) else {
        return Err(Error::new(ErrorKind::NotFound, "assemble: no member present"));
    };
    let newest = found[newest_i].2.clone();
    let newest_name = found[newest_i].0.clone();
    let n = newest.members as usize;
    for (name, _, sb) in &found {
        if sb.uuid != newest.uuid {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "member {name} belongs to array {}, not {} (of member {newest_name})",
                    format_uuid(&sb.uuid),
                    format_uuid(&newest.uuid)
                ),
            ));
        }
        if !sb.same_geometry(&newest) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("member {name}: superblock geometry contradicts member {newest_name}'s"),
            ));
        }
    }
    let mut slots: Vec<Option<FoundMember>> = (0..n).map(|_| None).collect();
    for (name, dev, sb) in found {
        let role = sb.role as usize;
        if let Some((other, _, _)) = &slots[role] {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("members {other} and {name} both claim role {role}"),
            ));
        }
        if newest.role_states[role] == RoleState::Faulty {
            tracing::warn!("member {name} (role {role}) is marked faulty in the array: not used");
            continue;
        }
        if sb.events.saturating_add(1) < newest.events {
            tracing::warn!(
                "member {name} (role {role}) is stale (events {} < {}): not used, replace it to rebuild",
                sb.events,
                newest.events
            );
            continue;
        }
        slots[role] = Some((name, dev, sb));
    }
    let mut dirty = newest.dirty;
    let member_slots: Vec<Member> = slots
        .iter()
        .enumerate()
        .map(|(role, s)| match s {
            None => Member::new(format!("role{role}"), None, MemberState::Missing),
            Some((name, dev, sb)) => {
                dirty |= sb.dirty;
                let rebuilding = newest.role_states[role] == RoleState::Rebuilding;
                let m = Member::new(
                    name.clone(),
                    Some(dev.clone()),
                    if rebuilding { MemberState::Rebuilding } else { MemberState::Active },
                );
                if rebuilding {
                    let cp = if sb.rebuild_checkpoint == IN_SYNC { 0 } else { sb.rebuild_checkpoint };
                    m.rebuild_pos.store(cp, Ordering::Release);
                }
                m
            }
        })
        .collect();
    let active = member_slots.iter().filter(|m| m.state() == MemberState::Active).count();
    let enough = match newest.level {
        Level::Raid0 => active == n,
        Level::Raid1 => active >= 1,
        Level::Raid5 => active + 1 >= n,
    };
    let uuid = format_uuid(&newest.uuid);
    if !enough {
        let missing: Vec<String> = member_slots
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state() != MemberState::Active)
            .map(|(r, m)| format!("role {r} ({})", m.state().as_str()))
            .collect();
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "array {uuid} (RAID {}): not enough members to start: {} unavailable",
                newest.level.number(),
                missing.join(", ")
            ),
        ));
    }
    let degraded = active < n;
    let mut sb = newest.clone();
    sb.dirty = dirty;
    let mut core = build_core(&sb, member_slots, format!("raid{}:{uuid}", newest.level.number()));
    if sb.bitmap_len > 0 {
        let bits = merged_bitmap(io, &core, &sb).await?;
        core.bitmap = Some(Bitmap::new(sb.bitmap_offset, sb.bitmap_len, sb.bitmap_region, sb.data_size, Some(&bits)));
    }
    let core = Arc::new(core);
    if dirty {
        recover(io, &core, degraded, opts).await?;
    }
    core.write_superblocks(io).await?;
    Ok(Array { core })
}

/// OR of every present member's bitmap.
async fn merged_bitmap(io: &IoCtx, core: &Core, sb: &Superblock) -> Result<Vec<u8>> {
    let mut out = vec![0u8; sb.bitmap_len as usize];
    for m in &core.members {
        if m.state() == MemberState::Missing {
            continue;
        }
        let Some(dev) = m.dev() else { continue };
        let mut b = io.pool().shared(sb.bitmap_len as usize);
        dev.read(io, sb.bitmap_offset, b.io(), IoTag::meta("raid.bitmap")).await?;
        for (o, x) in out.iter_mut().zip(b.bytes()) {
            *o |= *x;
        }
    }
    Ok(out)
}

/// After an unclean stop: replay the partial parity log (degraded RAID 5), or resync the
/// regions the bitmap marks (or everything without a bitmap).
async fn recover(io: &IoCtx, core: &Core, degraded: bool, opts: AssembleOptions) -> Result<()> {
    let level = core.level();
    if level == Level::Raid0 {
        return Ok(());
    }
    if level == Level::Raid5 && degraded {
        match &core.ppl {
            Some(ppl) => {
                let n = ppl.recover(core, io).await?;
                tracing::info!("{}: dirty and degraded: replayed the partial parity log for {n} stripes", core.name);
            }
            None if opts.force => {
                tracing::warn!("{}: dirty and degraded without write-hole protection: started by force", core.name)
            }
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: the array is dirty and degraded and has no partial parity log: data of the missing \
                         member may be inconsistent; start it with force=on to accept that",
                        core.name
                    ),
                ))
            }
        }
        return Ok(());
    }
    let regions = match &core.bitmap {
        Some(bm) => bm.dirty_regions(),
        None => vec![(0, core.geo.data_size)],
    };
    if let Some(ppl) = &core.ppl {
        // Not needed for consistency here (the resync below recomputes parity), but it moves
        // the log past its entries.
        ppl.recover(core, io).await?;
    }
    let mut fixed = 0;
    for (off, len) in &regions {
        fixed += resync_range(core, io, *off, *len).await?;
    }
    core.flush_all(io).await?;
    if let Some(bm) = &core.bitmap {
        bm.clear_all(core, io).await?;
    }
    tracing::info!("{}: resynced {} regions after an unclean stop ({fixed} rows fixed)", core.name, regions.len());
    Ok(())
}

/// The array's state as its members' superblocks describe it, without assembling or writing
/// anything (`blkctl raid status`).
pub async fn examine(io: &IoCtx, members: MemberList) -> Result<Status> {
    let mut found: Vec<(String, Superblock)> = Vec::new();
    for (name, dev) in &members {
        if let Some(dev) = dev {
            found.push((name.clone(), read_superblock(io, name, &**dev).await?));
        }
    }
    let Some(newest) = found.iter().map(|(_, sb)| sb).max_by_key(|sb| sb.events).cloned() else {
        return Err(Error::new(ErrorKind::NotFound, "examine: no member present"));
    };
    let n = newest.members as usize;
    let mut roles: Vec<MemberStatus> =
        (0..n).map(|role| MemberStatus { role, name: "-".into(), state: "missing", errors: 0 }).collect();
    let mut progress = None;
    for (name, sb) in &found {
        if sb.uuid != newest.uuid {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("member {name} belongs to array {}, not {}", format_uuid(&sb.uuid), format_uuid(&newest.uuid)),
            ));
        }
        let role = (sb.role as usize).min(n - 1);
        let state = match newest.role_states[role] {
            RoleState::Faulty => "faulty",
            _ if sb.events.saturating_add(1) < newest.events => "stale",
            RoleState::Rebuilding => {
                let cp = if sb.rebuild_checkpoint == IN_SYNC { 0 } else { sb.rebuild_checkpoint };
                progress = Some(cp as f64 / sb.data_size as f64);
                "rebuilding"
            }
            RoleState::Active => "active",
        };
        roles[role] = MemberStatus { role, name: name.clone(), state, errors: 0 };
    }
    let geo = Geometry { level: newest.level, members: n, chunk: u64::from(newest.chunk), data_size: newest.data_size };
    let degraded = roles.iter().any(|m| m.state != "active");
    let state = if progress.is_some() {
        "rebuilding"
    } else if degraded {
        "degraded"
    } else if newest.dirty {
        "active"
    } else {
        "clean"
    };
    Ok(Status {
        uuid: format_uuid(&newest.uuid),
        level: newest.level.number(),
        chunk: geo.chunk,
        size: geo.array_size(),
        state,
        degraded,
        members: roles,
        rebuild_progress: progress,
        scrub_progress: None,
        mismatches: newest.mismatches,
        read_errors_fixed: 0,
        events: newest.events,
        ppl: newest.flags & FLAG_PPL != 0,
        bitmap: newest.bitmap_len > 0,
    })
}
