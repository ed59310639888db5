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

/// The log layout this build reads and writes (1: one entry per slot; 2: packed units).
pub const LOG_VERSION: u32 = 2;
/// Block size of the log's headers.
pub const BLOCK: u64 = 4096;
const UNIT_MAGIC: [u8; 8] = *b"STRPPLU2";
const HEADER_MAGIC: [u8; 8] = *b"STRPPLH1";
/// Most modified ranges one entry records.
pub const MAX_MODS: usize = 32;
/// Most entries one unit holds.
pub const MAX_ENTRIES: usize = 128;
/// Flag: no payload, the partial parity is zero (recompute parity from all the data).
const FLAG_ZERO: u32 = 1;
/// Where entry descriptors start in the unit header.
const ENTRIES_AT: usize = 64;
/// Fixed bytes of one entry descriptor (stripe, lo, hi, flags, payload crc, mod count).
const ENTRY_FIXED: usize = 28;
/// Bytes of one modified range (member, start, end).
const MOD_LEN: usize = 12;
/// End of the space for descriptors (the last 4 bytes are the header's crc).
const DESC_END: usize = BLOCK as usize - 4;

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

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Encode a unit of `entries` with sequence `seq` into `b`, which must be exactly the
/// [`UnitSize::bytes`] of those entries (any prior contents).
pub fn encode_unit<P: AsRef<[u8]>>(uuid: &[u8; 16], seq: u64, entries: &[Entry<P>], b: &mut [u8]) {
    let (head, mut rest) = b.split_at_mut(BLOCK as usize);
    encode_unit_header(uuid, seq, entries, head);
    for e in entries {
        let (dst, tail) = rest.split_at_mut(e.payload_len());
        dst.copy_from_slice(e.payload());
        rest = tail;
    }
}

/// Encode the header block (exactly [`BLOCK`] bytes, any prior contents) of a unit of
/// `entries`: the unit is this block followed by the entries' payloads in order, which a
/// vectored write can take from where they are.
pub fn encode_unit_header<P: AsRef<[u8]>>(uuid: &[u8; 16], seq: u64, entries: &[Entry<P>], b: &mut [u8]) {
    b.fill(0);
    b[0..8].copy_from_slice(&UNIT_MAGIC);
    b[8..24].copy_from_slice(uuid);
    b[24..32].copy_from_slice(&seq.to_le_bytes());
    put32(b, 32, entries.len() as u32);
    let mut at = ENTRIES_AT;
    let mut pay = 0usize;
    for e in entries {
        let payload = e.payload();
        b[at..at + 8].copy_from_slice(&e.stripe.to_le_bytes());
        put32(b, at + 8, e.lo as u32);
        put32(b, at + 12, e.hi as u32);
        put32(b, at + 16, if e.pp.is_none() { FLAG_ZERO } else { 0 });
        put32(b, at + 20, crc32fast::hash(payload));
        let mods = &e.mods[..e.mods.len().min(MAX_MODS)];
        put32(b, at + 24, mods.len() as u32);
        at += ENTRY_FIXED;
        for &(m, lo, hi) in mods {
            put32(b, at, m as u32);
            put32(b, at + 4, lo as u32);
            put32(b, at + 8, hi as u32);
            at += MOD_LEN;
        }
        pay += payload.len();
    }
    put32(b, 36, pay as u32);
    let crc = crc32fast::hash(&b[..DESC_END]);
    put32(b, DESC_END, crc);
}

/// Decode a slot (unit header plus up to `chunk` payload bytes): its sequence number and
/// entries, or None if it holds no complete unit of this array. Never panics.
pub fn decode_unit(b: &[u8], uuid: &[u8; 16], chunk: u64, members: usize) -> Option<(u64, Vec<Entry>)> {
    let hb = b.get(..BLOCK as usize)?;
    if hb[0..8] != UNIT_MAGIC || hb[8..24] != uuid[..] || crc32fast::hash(&hb[..DESC_END]) != u32_at(hb, DESC_END) {
        return None;
    }
    let seq = u64_at(hb, 24);
    let count = u32_at(hb, 32) as usize;
    let total = u32_at(hb, 36) as u64;
    if count == 0 || count > MAX_ENTRIES || total > chunk {
        return None;
    }
    let payloads = b.get(BLOCK as usize..(BLOCK + total) as usize)?;
    let mut entries = Vec::with_capacity(count);
    let (mut at, mut pay) = (ENTRIES_AT, 0usize);
    for _ in 0..count {
        if at + ENTRY_FIXED > DESC_END {
            return None;
        }
        let stripe = u64_at(hb, at);
        let (lo, hi) = (u64::from(u32_at(hb, at + 8)), u64::from(u32_at(hb, at + 12)));
        let (flags, crc, n) = (u32_at(hb, at + 16), u32_at(hb, at + 20), u32_at(hb, at + 24) as usize);
        at += ENTRY_FIXED;
        if lo >= hi || hi > chunk || n > MAX_MODS.min(members) || at + n * MOD_LEN > DESC_END {
            return None;
        }
        let mut mods = Vec::with_capacity(n);
        for _ in 0..n {
            let (m, a, e) = (u32_at(hb, at) as usize, u64::from(u32_at(hb, at + 4)), u64::from(u32_at(hb, at + 8)));
            if m >= members || a >= e || a < lo || e > hi {
                return None;
            }
            mods.push((m, a, e));
            at += MOD_LEN;
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
    let mut b = vec![0u8; BLOCK as usize];
    b[0..8].copy_from_slice(&HEADER_MAGIC);
    b[8..24].copy_from_slice(uuid);
    b[24..32].copy_from_slice(&valid_from.to_le_bytes());
    put32(&mut b, 32, LOG_VERSION);
    let crc = crc32fast::hash(&b[..DESC_END]);
    put32(&mut b, DESC_END, crc);
    b
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
    let Some(hb) = b.get(..BLOCK as usize) else { return Header::Missing };
    let ok =
        hb[0..8] == HEADER_MAGIC && hb[8..24] == uuid[..] && crc32fast::hash(&hb[..DESC_END]) == u32_at(hb, DESC_END);
    match (ok, u32_at(hb, 32)) {
        (false, _) => Header::Missing,
        (true, LOG_VERSION) => Header::Valid(u64_at(hb, 24)),
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
        encode_unit(&[1; 16], 7, entries, &mut b);
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
    fn headers_of_other_layouts_are_recognized() {
        let h = encode_header(&[1; 16], 42);
        assert_eq!(decode_header(&h, &[1; 16]), Header::Valid(42));
        let mut v1 = h.clone();
        put32(&mut v1, 32, 0);
        let crc = crc32fast::hash(&v1[..DESC_END]);
        put32(&mut v1, DESC_END, crc);
        assert_eq!(decode_header(&v1, &[1; 16]), Header::OtherVersion(0));
        assert_eq!(decode_header(&h, &[2; 16]), Header::Missing);
    }
}
