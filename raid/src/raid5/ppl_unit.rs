//! On-disk format of the partial parity log, layout version 2 ([`LOG_VERSION`]).
//!
//! The log area of each member is a header block (magic, array UUID, `valid_from`, layout
//! version) followed by fixed slots of `4 KiB + chunk` bytes. A slot holds one *unit*: one
//! header block that describes up to [`MAX_ENTRIES`] entries (one per stripe whose parity lives
//! on this member), then their partial parity payloads back to back (at most one chunk in
//! all). A unit is written with one FUA write, so the log entries of many stripes cost one
//! member write (md's PPL does the same with its `io_unit`). Every entry of a unit shares its
//! sequence number. A unit whose header or any payload fails its checksum was torn by a crash:
//! its write never completed, so none of its stripes' data writes had started, and it is
//! ignored whole.

use blockdev::{Error, ErrorKind, Result};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::format::{
    self, Checksummed, EntryDesc, Le32, Le64, LogHeaderBlock, LogHeaderFields, ModDesc, UnitBlock, UnitFields,
};

/// The log layout this build reads and writes (1: one entry per slot; 2: packed units).
pub const LOG_VERSION: u32 = 2;
/// Block size of the log's headers.
pub const BLOCK: u64 = format::BLOCK as u64;
const UNIT_MAGIC: [u8; 8] = *b"STRPPLU2";
const HEADER_MAGIC: [u8; 8] = *b"STRPPLH1";
/// Most modified ranges one entry records.
pub const MAX_MODS: usize = 32;
/// Most entries one unit holds.
pub const MAX_ENTRIES: usize = 128;
/// Flag: no payload, the partial parity is zero (recompute parity from all the data).
const FLAG_ZERO: u32 = 1;
/// Where entry descriptors start in the unit header.
const ENTRIES_AT: usize = size_of::<UnitFields>();
/// Fixed bytes of one entry descriptor (stripe, lo, hi, flags, payload crc, mod count).
const ENTRY_FIXED: usize = size_of::<EntryDesc>();
/// Bytes of one modified range (member, start, end).
const MOD_LEN: usize = size_of::<ModDesc>();
/// End of the space for descriptors (the header's crc follows).
const DESC_END: usize = UnitBlock::CRC_AT;

/// One log entry. `P` holds the partial parity's bytes: a `Vec` when decoded, a pooled buffer
/// on its way to the log (written from where it was computed, not copied into the unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<P = Vec<u8>> {
    /// Sequence number of the unit holding it (newest wins per stripe).
    pub seq: u64,
    /// Stripe number.
    pub stripe: u64,
    /// Range inside the chunk the partial parity covers.
    pub lo: u64,
    /// End of that range.
    pub hi: u64,
    /// Present members whose ranges `[a, b)` (inside the chunk) are read back at recovery.
    pub mods: Vec<(usize, u64, u64)>,
    /// The partial parity over `[lo, hi)` (None: all zeros).
    pub pp: Option<P>,
}

impl<P: AsRef<[u8]>> Entry<P> {
    fn desc_len(&self) -> usize {
        ENTRY_FIXED + MOD_LEN * self.mods.len().min(MAX_MODS)
    }

    fn payload_len(&self) -> usize {
        self.pp.as_ref().map_or(0, |p| p.as_ref().len())
    }

    /// The payload bytes (empty for a zero partial parity).
    pub fn payload(&self) -> &[u8] {
        self.pp.as_ref().map_or(&[], |p| p.as_ref())
    }
}

/// The space a unit under construction takes, to decide whether one more entry fits.
#[derive(Debug, Clone, Copy)]
pub struct UnitSize {
    count: usize,
    desc: usize,
    payload: usize,
}

impl UnitSize {
    /// An empty unit.
    pub fn new() -> UnitSize {
        UnitSize { count: 0, desc: ENTRIES_AT, payload: 0 }
    }

    /// Add `e` if it fits a unit of a log with chunk size `chunk` (the first entry always does).
    pub fn try_add<P: AsRef<[u8]>>(&mut self, e: &Entry<P>, chunk: u64) -> bool {
        let (desc, payload) = (self.desc + e.desc_len(), self.payload + e.payload_len());
        let fits = self.count == 0 || (self.count < MAX_ENTRIES && desc <= DESC_END && payload as u64 <= chunk);
        if fits {
            *self = UnitSize { count: self.count + 1, desc, payload };
        }
        fits
    }

    /// Bytes the unit's write takes (header block plus payloads).
    pub fn bytes(&self) -> usize {
        BLOCK as usize + self.payload
    }
}

impl Default for UnitSize {
    fn default() -> Self {
        UnitSize::new()
    }
}

/// Store `value` at the start of `dst` and return the rest (None when it does not fit).
fn put<'a, T: IntoBytes + Immutable>(dst: &'a mut [u8], value: &T) -> Option<&'a mut [u8]> {
    let (head, rest) = dst.split_at_mut_checked(size_of::<T>())?;
    head.copy_from_slice(value.as_bytes());
    Some(rest)
}

fn too_big(what: String) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("partial parity log unit: {what}"))
}

/// Encode a unit of `entries` with sequence `seq` into `b`, which must be exactly the
/// [`UnitSize::bytes`] of those entries (any prior contents).
pub fn encode_unit<P: AsRef<[u8]>>(uuid: &[u8; 16], seq: u64, entries: &[Entry<P>], b: &mut [u8]) -> Result<()> {
    let len = b.len();
    let (head, mut rest) = b
        .split_at_mut_checked(BLOCK as usize)
        .ok_or_else(|| too_big(format!("a buffer of {len} bytes cannot hold its header block")))?;
    encode_unit_header(uuid, seq, entries, head)?;
    for e in entries {
        let (dst, tail) = rest
            .split_at_mut_checked(e.payload_len())
            .ok_or_else(|| too_big(format!("the buffer has no room for the payload of stripe {}", e.stripe)))?;
        dst.copy_from_slice(e.payload());
        rest = tail;
    }
    Ok(())
}

/// Encode the header block (exactly [`BLOCK`] bytes, any prior contents) of a unit of
/// `entries`: the unit is this block followed by the entries' payloads in order, which a
/// vectored write can take from where they are. The entries must fit ([`UnitSize`]): if they
/// do not, or `b` is not one block, nothing valid is written and the error says why.
pub fn encode_unit_header<P: AsRef<[u8]>>(uuid: &[u8; 16], seq: u64, entries: &[Entry<P>], b: &mut [u8]) -> Result<()> {
    let len = b.len();
    let block =
        UnitBlock::mut_from_bytes(b).map_err(|_| too_big(format!("a header block is {BLOCK} bytes, not {len}")))?;
    block.zero();
    let mut descs: &mut [u8] = &mut block.descs;
    let mut payload_len = 0usize;
    for e in entries {
        let payload = e.payload();
        let mods = &e.mods[..e.mods.len().min(MAX_MODS)];
        let desc = EntryDesc {
            stripe: Le64::new(e.stripe),
            lo: Le32::new(e.lo as u32),
            hi: Le32::new(e.hi as u32),
            flags: Le32::new(if e.pp.is_none() { FLAG_ZERO } else { 0 }),
            payload_crc: Le32::new(crc32fast::hash(payload)),
            mods: Le32::new(mods.len() as u32),
        };
        let full = || too_big(format!("{} entries do not fit one header block", entries.len()));
        descs = put(descs, &desc).ok_or_else(full)?;
        for &(m, lo, hi) in mods {
            let range = ModDesc { member: Le32::new(m as u32), lo: Le32::new(lo as u32), hi: Le32::new(hi as u32) };
            descs = put(descs, &range).ok_or_else(full)?;
        }
        payload_len += payload.len();
    }
    block.fields = UnitFields {
        magic: UNIT_MAGIC,
        uuid: *uuid,
        seq: Le64::new(seq),
        count: Le32::new(entries.len() as u32),
        payload_len: Le32::new(payload_len as u32),
        reserved: [0; 24],
    };
    block.seal();
    Ok(())
}

/// Decode a slot (unit header plus up to `chunk` payload bytes): its sequence number and
/// entries, or None if it holds no complete unit of this array. Never panics.
pub fn decode_unit(b: &[u8], uuid: &[u8; 16], chunk: u64, members: usize) -> Option<(u64, Vec<Entry>)> {
    let (block, after) = UnitBlock::ref_from_prefix(b).ok()?;
    let f = &block.fields;
    if f.magic != UNIT_MAGIC || f.uuid != *uuid || block.computed_crc() != block.crc.get() {
        return None;
    }
    let seq = f.seq.get();
    let count = f.count.get() as usize;
    let total = f.payload_len.get() as u64;
    if count == 0 || count > MAX_ENTRIES || total > chunk {
        return None;
    }
    let payloads = after.get(..total as usize)?;
    let mut entries = Vec::with_capacity(count);
    let mut descs: &[u8] = &block.descs;
    let mut pay = 0usize;
    for _ in 0..count {
        let (d, rest) = EntryDesc::read_from_prefix(descs).ok()?;
        let (stripe, lo, hi) = (d.stripe.get(), u64::from(d.lo.get()), u64::from(d.hi.get()));
        let (flags, crc, n) = (d.flags.get(), d.payload_crc.get(), d.mods.get() as usize);
        if lo >= hi || hi > chunk || n > MAX_MODS.min(members) {
            return None;
        }
        let (ranges, rest) = <[ModDesc]>::ref_from_prefix_with_elems(rest, n).ok()?;
        descs = rest;
        let mut mods = Vec::with_capacity(n);
        for r in ranges {
            let (m, a, e) = (r.member.get() as usize, u64::from(r.lo.get()), u64::from(r.hi.get()));
            if m >= members || a >= e || a < lo || e > hi {
                return None;
            }
            mods.push((m, a, e));
        }
        let pp = if flags & FLAG_ZERO != 0 {
            None
        } else {
            let p = payloads.get(pay..pay + (hi - lo) as usize)?;
            if crc32fast::hash(p) != crc {
                return None;
            }
            pay += p.len();
            Some(p.to_vec())
        };
        entries.push(Entry { seq, stripe, lo, hi, mods, pp });
    }
    (pay as u64 == total).then_some((seq, entries))
}

/// The log area's header block: `valid_from` and the layout version.
pub fn encode_header(uuid: &[u8; 16], valid_from: u64) -> Vec<u8> {
    let mut block = LogHeaderBlock::new_zeroed();
    block.fields = LogHeaderFields {
        magic: HEADER_MAGIC,
        uuid: *uuid,
        valid_from: Le64::new(valid_from),
        version: Le32::new(LOG_VERSION),
    };
    block.seal();
    block.as_bytes().to_vec()
}

/// What a log area's header block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// No valid header of this array (never formatted, or torn): nothing below 0 is stable.
    Missing,
    /// A header of this layout: entries below `valid_from` are stable.
    Valid(u64),
    /// A header of another layout version (1 had no version field: it reads as 0).
    OtherVersion(u32),
}

/// Decode the log area's header block. Never panics.
pub fn decode_header(b: &[u8], uuid: &[u8; 16]) -> Header {
    let Ok((block, _)) = LogHeaderBlock::ref_from_prefix(b) else { return Header::Missing };
    let f = &block.fields;
    let ok = f.magic == HEADER_MAGIC && f.uuid == *uuid && block.computed_crc() == block.crc.get();
    match (ok, f.version.get()) {
        (false, _) => Header::Missing,
        (true, LOG_VERSION) => Header::Valid(f.valid_from.get()),
        (true, v) => Header::OtherVersion(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stripe: u64, lo: u64, hi: u64, pp: Option<Vec<u8>>) -> Entry {
        Entry { seq: 7, stripe, lo, hi, mods: vec![(0, lo, hi), (2, lo, lo + 512)], pp }
    }

    fn encode(entries: &[Entry]) -> Vec<u8> {
        let mut size = UnitSize::new();
        for e in entries {
            assert!(size.try_add(e, 65536));
        }
        let mut b = vec![0xAA; size.bytes()];
        encode_unit(&[1; 16], 7, entries, &mut b).unwrap();
        b
    }

    #[test]
    fn packed_unit_round_trips_and_rejects_other_arrays() {
        let es = vec![
            entry(9, 512, 1536, Some(vec![3; 1024])),
            entry(4, 0, 4096, None),
            entry(11, 0, 4096, Some(vec![5; 4096])),
        ];
        let enc = encode(&es);
        assert_eq!(enc.len(), 4096 + 1024 + 4096);
        assert_eq!(decode_unit(&enc, &[1; 16], 65536, 3), Some((7, es)));
        assert_eq!(decode_unit(&enc, &[2; 16], 65536, 3), None);
    }

    #[test]
    fn a_torn_payload_drops_the_whole_unit() {
        let es = vec![entry(9, 0, 4096, Some(vec![3; 4096])), entry(10, 0, 4096, Some(vec![4; 4096]))];
        let mut enc = encode(&es);
        enc[4096 + 4096 + 10] ^= 1;
        assert_eq!(decode_unit(&enc, &[1; 16], 65536, 3), None);
        assert_eq!(decode_unit(&enc[..4096 + 4096], &[1; 16], 65536, 3), None);
    }

    #[test]
    fn every_flipped_header_bit_is_refused() {
        let es = vec![entry(9, 0, 4096, Some(vec![3; 4096]))];
        let enc = encode(&es);
        for bit in 0..(4096 * 8) {
            let mut b = enc.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_unit(&b, &[1; 16], 65536, 3), None, "bit {bit}");
        }
    }

    #[test]
    fn units_stop_growing_at_one_chunk_of_payload() {
        let mut size = UnitSize::new();
        let e = entry(1, 0, 16384, Some(vec![0; 16384]));
        assert_eq!((0..8).filter(|_| size.try_add(&e, 65536)).count(), 4);
        let mut one = UnitSize::new();
        assert!(one.try_add(&entry(1, 0, 65536, Some(vec![0; 65536])), 65536));
    }

    #[test]
    fn entries_that_overflow_the_header_block_are_an_error_not_a_torn_unit() {
        let many: Vec<Entry> = (0..MAX_ENTRIES as u64)
            .map(|s| Entry { seq: 7, stripe: s, lo: 0, hi: 512, mods: vec![(0, 0, 512); MAX_MODS], pp: None })
            .collect();
        let mut b = vec![0u8; BLOCK as usize];
        let err = encode_unit_header(&[1; 16], 7, &many, &mut b).unwrap_err();
        assert!(err.to_string().contains("do not fit one header block"), "{err}");
        let one = &many[..1];
        let err = encode_unit_header(&[1; 16], 7, one, &mut b[..100]).unwrap_err();
        assert!(err.to_string().contains("not 100"), "{err}");
        let err = encode_unit(&[1; 16], 7, &[entry(1, 0, 512, Some(vec![1; 512]))], &mut b).unwrap_err();
        assert!(err.to_string().contains("no room for the payload of stripe 1"), "{err}");
    }

    #[test]
    fn headers_of_other_layouts_are_recognized() {
        let h = encode_header(&[1; 16], 42);
        assert_eq!(decode_header(&h, &[1; 16]), Header::Valid(42));
        let mut v1 = LogHeaderBlock::read_from_bytes(&h).unwrap();
        v1.fields.version = Le32::new(0);
        v1.seal();
        assert_eq!(decode_header(v1.as_bytes(), &[1; 16]), Header::OtherVersion(0));
        assert_eq!(decode_header(&h, &[2; 16]), Header::Missing);
    }
}
