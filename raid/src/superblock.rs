//! The superblock every member carries in its first 4 KiB: which array it belongs to, its role,
//! the array's geometry and state, where the bitmap and the partial parity log live, and how far
//! a rebuild onto it got. Parsing never panics: every check names the member and the field.

use blockdev::{Error, ErrorKind, Result};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::format::{Checksummed, Le32, Le64, SuperblockBlock, SuperblockFields};

/// Bytes the superblock occupies at the start of each member.
pub const SB_SIZE: usize = size_of::<SuperblockBlock>();
/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"STRRAID1";
/// The only format version written and read. 2: the partial parity log packs the entries of
/// many stripes into one unit per slot (layout 2, `raid5::ppl_unit`); the superblock's own
/// fields are as in 1, but a build that reads only log layout 1 must not assemble the array.
pub const VERSION: u32 = 2;
/// Most members an array may have.
pub const MAX_MEMBERS: usize = 32;
/// `rebuild_checkpoint` value of a member that is fully in sync.
pub const IN_SYNC: u64 = u64::MAX;
/// Flag: the array keeps a partial parity log (RAID 5 write-hole protection).
pub const FLAG_PPL: u32 = 1;

/// RAID level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Striping, no redundancy.
    Raid0,
    /// N-way mirror.
    Raid1,
    /// Striping with rotating parity (left-symmetric).
    Raid5,
}

impl Level {
    /// The level as a number (0, 1, 5).
    pub fn number(self) -> u32 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5 => 5,
        }
    }

    /// The level for a number, if it is one we implement.
    pub fn from_number(n: u32) -> Option<Level> {
        match n {
            0 => Some(Level::Raid0),
            1 => Some(Level::Raid1),
            5 => Some(Level::Raid5),
            _ => None,
        }
    }

    /// Fewest members the level accepts.
    pub fn min_members(self) -> usize {
        match self {
            Level::Raid0 | Level::Raid1 => 2,
            Level::Raid5 => 3,
        }
    }
}

/// What the array thinks of one role (kept in every member's superblock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleState {
    /// In sync and in use.
    Active,
    /// Failed: no longer read or written.
    Faulty,
    /// A replacement being rebuilt (in sync below its rebuild checkpoint).
    Rebuilding,
}

impl RoleState {
    fn to_byte(self) -> u8 {
        match self {
            RoleState::Active => 0,
            RoleState::Faulty => 1,
            RoleState::Rebuilding => 2,
        }
    }

    fn from_byte(b: u8) -> Option<RoleState> {
        match b {
            0 => Some(RoleState::Active),
            1 => Some(RoleState::Faulty),
            2 => Some(RoleState::Rebuilding),
            _ => None,
        }
    }

    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Active => "active",
            RoleState::Faulty => "faulty",
            RoleState::Rebuilding => "rebuilding",
        }
    }
}

/// A decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// RAID level.
    pub level: Level,
    /// Array identity shared by all members.
    pub uuid: [u8; 16],
    /// Chunk size in bytes (a power of two, 4 KiB to 16 MiB).
    pub chunk: u32,
    /// Number of members (roles).
    pub members: u32,
    /// This member's role (index).
    pub role: u32,
    /// Bumped on every superblock update; the highest wins at assembly.
    pub events: u64,
    /// Writes may have been in flight when the array stopped (resync needed).
    pub dirty: bool,
    /// Byte offset of the data area on the member.
    pub data_offset: u64,
    /// Bytes of data area used on each member.
    pub data_size: u64,
    /// Byte offset and length of the write-intent bitmap (length 0: none).
    pub bitmap_offset: u64,
    /// Length of the bitmap area in bytes.
    pub bitmap_len: u64,
    /// Bytes of member data one bitmap bit covers.
    pub bitmap_region: u64,
    /// Byte offset and length of the partial parity log area (length 0: none).
    pub ppl_offset: u64,
    /// Length of the partial parity log area in bytes.
    pub ppl_len: u64,
    /// How far (bytes of member data) a rebuild onto this member got; [`IN_SYNC`] when in sync.
    pub rebuild_checkpoint: u64,
    /// Feature flags ([`FLAG_PPL`]).
    pub flags: u32,
    /// Mismatches the last scrub found.
    pub mismatches: u64,
    /// The array's view of every role.
    pub role_states: Vec<RoleState>,
}

/// The array UUID as 32 hex digits with dashes (8-4-4-4-12).
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn bad(member: &str, field: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("member {member}: superblock field '{field}': {what}"))
}

impl Superblock {
    /// Encode into a 4 KiB block (crc32 in the last 4 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut role_states = [0u8; MAX_MEMBERS];
        for (b, s) in role_states.iter_mut().zip(&self.role_states) {
            *b = s.to_byte();
        }
        let mut block = SuperblockBlock::new_zeroed();
        block.fields = SuperblockFields {
            magic: MAGIC,
            version: Le32::new(VERSION),
            level: Le32::new(self.level.number()),
            uuid: self.uuid,
            chunk: Le32::new(self.chunk),
            members: Le32::new(self.members),
            role: Le32::new(self.role),
            state: Le32::new(u32::from(self.dirty)),
            events: Le64::new(self.events),
            data_offset: Le64::new(self.data_offset),
            data_size: Le64::new(self.data_size),
            bitmap_offset: Le64::new(self.bitmap_offset),
            bitmap_len: Le64::new(self.bitmap_len),
            bitmap_region: Le64::new(self.bitmap_region),
            ppl_offset: Le64::new(self.ppl_offset),
            ppl_len: Le64::new(self.ppl_len),
            rebuild_checkpoint: Le64::new(self.rebuild_checkpoint),
            flags: Le32::new(self.flags),
            reserved: [0; 4],
            role_states,
            mismatches: Le64::new(self.mismatches),
        };
        block.seal();
        block.as_bytes().to_vec()
    }

    /// Decode and validate `b` read from `member` (named in every error). `member_size`, when
    /// known, bounds the data area.
    pub fn decode(member: &str, b: &[u8], member_size: Option<u64>) -> Result<Superblock> {
        let Ok((block, _)) = SuperblockBlock::ref_from_prefix(b) else {
            return Err(bad(member, "size", format!("truncated: {} bytes, need {SB_SIZE}", b.len())));
        };
        let f = &block.fields;
        if f.magic != MAGIC {
            return Err(bad(member, "magic", "not a strata RAID member (no superblock)"));
        }
        let crc = block.computed_crc();
        if block.crc.get() != crc {
            return Err(bad(member, "crc32", format!("checksum {:#x} != computed {crc:#x}", block.crc.get())));
        }
        let version = f.version.get();
        if version != VERSION {
            return Err(bad(
                member,
                "version",
                format!("{version} is not supported (only {VERSION}: partial parity log layout {VERSION})"),
            ));
        }
        let level_n = f.level.get();
        let level = Level::from_number(level_n).ok_or_else(|| bad(member, "level", format!("{level_n} unknown")))?;
        let sb = Superblock {
            level,
            uuid: f.uuid,
            chunk: f.chunk.get(),
            members: f.members.get(),
            role: f.role.get(),
            dirty: match f.state.get() {
                0 => false,
                1 => true,
                v => return Err(bad(member, "state", format!("{v} is neither clean (0) nor dirty (1)"))),
            },
            events: f.events.get(),
            data_offset: f.data_offset.get(),
            data_size: f.data_size.get(),
            bitmap_offset: f.bitmap_offset.get(),
            bitmap_len: f.bitmap_len.get(),
            bitmap_region: f.bitmap_region.get(),
            ppl_offset: f.ppl_offset.get(),
            ppl_len: f.ppl_len.get(),
            rebuild_checkpoint: f.rebuild_checkpoint.get(),
            flags: f.flags.get(),
            mismatches: f.mismatches.get(),
            role_states: Vec::new(),
        };
        let n = sb.members as usize;
        if n < level.min_members() || n > MAX_MEMBERS {
            return Err(bad(
                member,
                "members",
                format!("{n} (RAID {level_n} needs {} to {MAX_MEMBERS})", level.min_members()),
            ));
        }
        let mut states = Vec::with_capacity(n);
        for (i, &byte) in f.role_states.iter().take(n).enumerate() {
            let s = RoleState::from_byte(byte)
                .ok_or_else(|| bad(member, "role_states", format!("role {i} has unknown state {byte}")))?;
            states.push(s);
        }
        let sb = Superblock { role_states: states, ..sb };
        sb.validate(member, member_size)?;
        Ok(sb)
    }

    fn validate(&self, member: &str, member_size: Option<u64>) -> Result<()> {
        if self.role >= self.members {
            return Err(bad(member, "role", format!("{} is not below members ({})", self.role, self.members)));
        }
        if !self.chunk.is_power_of_two() || !(4096..=16 << 20).contains(&self.chunk) {
            return Err(bad(member, "chunk", format!("{} is not a power of two from 4K to 16M", self.chunk)));
        }
        let chunk = u64::from(self.chunk);
        if self.data_offset < SB_SIZE as u64 || !self.data_offset.is_multiple_of(4096) {
            return Err(bad(
                member,
                "data_offset",
                format!("{} is not 4K-aligned after the superblock", self.data_offset),
            ));
        }
        if self.data_size == 0 || !self.data_size.is_multiple_of(chunk) {
            return Err(bad(
                member,
                "data_size",
                format!("{} is not a non-zero multiple of the chunk", self.data_size),
            ));
        }
        let end = self.data_offset.checked_add(self.data_size);
        if let (Some(size), end) = (member_size, end) {
            if end.is_none_or(|e| e > size) {
                return Err(bad(
                    member,
                    "data_size",
                    format!("data area {}+{} reaches past the member's end ({size})", self.data_offset, self.data_size),
                ));
            }
        } else if end.is_none() {
            return Err(bad(member, "data_size", "data area overflows"));
        }
        let areas = [("bitmap", self.bitmap_offset, self.bitmap_len), ("ppl", self.ppl_offset, self.ppl_len)];
        for (name, off, len) in areas {
            if len == 0 {
                continue;
            }
            let inside = off >= SB_SIZE as u64
                && off.is_multiple_of(4096)
                && len.is_multiple_of(4096)
                && off.checked_add(len).is_some_and(|e| e <= self.data_offset);
            if !inside {
                return Err(bad(
                    member,
                    name,
                    format!("area {off}+{len} is not 4K-aligned between the superblock and the data"),
                ));
            }
        }
        if self.bitmap_len > 0 && self.ppl_len > 0 {
            let (b0, b1) = (self.bitmap_offset, self.bitmap_offset + self.bitmap_len);
            let (p0, p1) = (self.ppl_offset, self.ppl_offset + self.ppl_len);
            if b0 < p1 && p0 < b1 {
                return Err(bad(member, "ppl", "log area overlaps the bitmap"));
            }
        }
        if self.bitmap_len > 0 {
            let bits = self.bitmap_len.saturating_mul(8);
            let ok = self.bitmap_region >= 4096
                && self.bitmap_region.is_power_of_two()
                && self.data_size.div_ceil(self.bitmap_region) <= bits;
            if !ok {
                return Err(bad(
                    member,
                    "bitmap_region",
                    format!("{} cannot cover {} bytes with {bits} bits", self.bitmap_region, self.data_size),
                ));
            }
        }
        if self.flags & !FLAG_PPL != 0 {
            return Err(bad(member, "flags", format!("unknown flags {:#x}", self.flags)));
        }
        if self.flags & FLAG_PPL != 0 && (self.level != Level::Raid5 || self.ppl_len == 0) {
            return Err(bad(member, "flags", "partial parity log flag without a RAID 5 log area"));
        }
        if self.rebuild_checkpoint != IN_SYNC && self.rebuild_checkpoint > self.data_size {
            return Err(bad(
                member,
                "rebuild_checkpoint",
                format!("{} is past the data size", self.rebuild_checkpoint),
            ));
        }
        Ok(())
    }

    /// True when `other` describes the same array geometry (everything but role, events,
    /// state, checkpoint and role states).
    pub fn same_geometry(&self, other: &Superblock) -> bool {
        self.level == other.level
            && self.uuid == other.uuid
            && self.chunk == other.chunk
            && self.members == other.members
            && self.data_offset == other.data_offset
            && self.data_size == other.data_size
            && self.bitmap_offset == other.bitmap_offset
            && self.bitmap_len == other.bitmap_len
            && self.bitmap_region == other.bitmap_region
            && self.ppl_offset == other.ppl_offset
            && self.ppl_len == other.ppl_len
            && self.flags == other.flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            level: Level::Raid5,
            uuid: [7; 16],
            chunk: 65536,
            members: 3,
            role: 1,
            events: 9,
            dirty: true,
            data_offset: 1 << 20,
            data_size: 64 << 20,
            bitmap_offset: 4096,
            bitmap_len: 4096,
            bitmap_region: 65536,
            ppl_offset: 8192,
            ppl_len: 69632 * 4,
            rebuild_checkpoint: IN_SYNC,
            flags: FLAG_PPL,
            mismatches: 3,
            role_states: vec![RoleState::Active, RoleState::Faulty, RoleState::Rebuilding],
        }
    }

    #[test]
    fn encode_decode_round_trips() {
        let sb = sample();
        let back = Superblock::decode("m1", &sb.encode(), Some(128 << 20)).unwrap();
        assert_eq!(back, sb);
    }

    #[test]
    fn version_1_is_refused_by_member_and_field() {
        let mut block = SuperblockBlock::read_from_bytes(&sample().encode()).unwrap();
        block.fields.version = Le32::new(1);
        block.seal();
        let b = block.as_bytes();
        let err = Superblock::decode("disk-b.img", b, None).unwrap_err().to_string();
        assert!(err.contains("disk-b.img") && err.contains("'version'") && err.contains("1 is not supported"), "{err}");
    }

    #[test]
    fn truncated_superblock_names_member_and_size() {
        let err = Superblock::decode("disk-b.img", &sample().encode()[..100], None).unwrap_err();
        assert!(err.to_string().contains("disk-b.img") && err.to_string().contains("'size'"), "{err}");
    }

    #[test]
    fn every_single_bit_flip_is_refused_without_panic() {
        let enc = sample().encode();
        for bit in 0..SB_SIZE * 8 {
            let mut b = enc.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode("m", &b, None).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn contradicting_fields_are_named() {
        let mut sb = sample();
        sb.role = 3;
        let err = Superblock::decode("m0", &sb.encode(), None).unwrap_err();
        assert!(err.to_string().contains("'role'"), "{err}");
        let mut sb = sample();
        sb.ppl_offset = 4096;
        let err = Superblock::decode("m0", &sb.encode(), None).unwrap_err();
        assert!(err.to_string().contains("'ppl'"), "{err}");
        let err = Superblock::decode("m0", &sample().encode(), Some(1 << 20)).unwrap_err();
        assert!(err.to_string().contains("'data_size'"), "{err}");
    }
}
