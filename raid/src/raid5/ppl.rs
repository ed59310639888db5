//! The partial parity log (in the spirit of md's PPL) that closes the RAID 5 write hole.
//!
//! Before a stripe write that could leave parity inconsistent with what a missing member needs,
//! an entry goes (FUA) to the log area of that stripe's parity member: the stripe, the modified
//! ranges of the present members, and the partial parity `PP = newP ^ (new data of those
//! ranges)` — the XOR of everything else in the stripe, including a missing member's data. After
//! a crash, `P = PP ^ (modified ranges as found on disk)` is consistent with the disk whatever
//! subset of the writes landed, so a missing member reconstructs to data it really held.
//!
//! Healthy full-stripe writes carry no entry (unless an older entry of the stripe could still be
//! replayed: then a header-only "recompute" entry supersedes it). An entry assumes the bytes it
//! does not cover are stable, so a stripe written since the last flush is flushed before the
//! next logged write to it. Entries live in fixed slots (`seq % slots`); a log header per member
//! records `valid_from`, below which entries are stable and never replayed. It advances after a
//! flush; a slot is reused only once its previous entry is below it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use blockdev::{IoCtx, IoTag, Result, SharedBuf};

use crate::core::Core;
use crate::member::MemberState;
use crate::raid5::parity::xor_into;

const ENTRY_MAGIC: [u8; 8] = *b"STRPPLE1";
const HEADER_MAGIC: [u8; 8] = *b"STRPPLH1";
const BLOCK: u64 = 4096;
const MAX_MODS: usize = 32;
/// Flag: no payload, the partial parity is zero (recompute parity from all the data).
const FLAG_ZERO: u32 = 1;
/// Tracked stripes after which a write forces a flush (bounds memory without guest flushes).
const MAX_TRACKED: usize = 1 << 16;

/// Bytes of log area for `slots` entries of chunk size `chunk`.
pub fn area_len(chunk: u64, slots: u64) -> u64 {
    BLOCK + slots * (BLOCK + chunk)
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number (newest wins per stripe).
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
    pub pp: Option<Vec<u8>>,
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

impl Entry {
    /// Encode as header block plus payload.
    pub fn encode(&self, uuid: &[u8; 16]) -> Vec<u8> {
        let mut b = vec![0u8; self.encoded_len()];
        self.encode_into(uuid, &mut b);
        b
    }

    /// Bytes [`Entry::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        BLOCK as usize + self.pp.as_ref().map_or(0, Vec::len)
    }

    /// Encode into `b` (exactly [`Entry::encoded_len`] bytes, any prior contents).
    fn encode_into(&self, uuid: &[u8; 16], b: &mut [u8]) {
        let payload = self.pp.as_deref().unwrap_or(&[]);
        b[..BLOCK as usize].fill(0);
        b[0..8].copy_from_slice(&ENTRY_MAGIC);
        b[8..24].copy_from_slice(uuid);
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.stripe.to_le_bytes());
        b[40..44].copy_from_slice(&(self.lo as u32).to_le_bytes());
        b[44..48].copy_from_slice(&(self.hi as u32).to_le_bytes());
        b[48..52].copy_from_slice(&(self.mods.len() as u32).to_le_bytes());
        let flags = if self.pp.is_none() { FLAG_ZERO } else { 0 };
        b[52..56].copy_from_slice(&flags.to_le_bytes());
        b[56..60].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        for (i, &(m, a, e)) in self.mods.iter().take(MAX_MODS).enumerate() {
            let at = 64 + i * 12;
            b[at..at + 4].copy_from_slice(&(m as u32).to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&(a as u32).to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&(e as u32).to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..BLOCK as usize - 4]);
        b[BLOCK as usize - 4..BLOCK as usize].copy_from_slice(&crc.to_le_bytes());
        b[BLOCK as usize..].copy_from_slice(payload);
    }

    /// Decode a slot (header block plus up to `chunk` payload bytes); None if it holds no valid
    /// entry of this array. Never panics.
    pub fn decode(b: &[u8], uuid: &[u8; 16], chunk: u64, members: usize) -> Option<Entry> {
        let hb = b.get(..BLOCK as usize)?;
        if hb[0..8] != ENTRY_MAGIC || hb[8..24] != uuid[..] {
            return None;
        }
        if crc32fast::hash(&hb[..BLOCK as usize - 4]) != u32_at(hb, BLOCK as usize - 4) {
            return None;
        }
        let (lo, hi) = (u64::from(u32_at(hb, 40)), u64::from(u32_at(hb, 44)));
        let n = u32_at(hb, 48) as usize;
        if lo >= hi || hi > chunk || n > MAX_MODS.min(members) {
            return None;
        }
        let mut mods = Vec::with_capacity(n);
        for i in 0..n {
            let at = 64 + i * 12;
            let (m, a, e) = (u32_at(hb, at) as usize, u64::from(u32_at(hb, at + 4)), u64::from(u32_at(hb, at + 8)));
            if m >= members || a >= e || a < lo || e > hi {
                return None;
            }
            mods.push((m, a, e));
        }
        let pp = if u32_at(hb, 52) & FLAG_ZERO != 0 {
            None
        } else {
            let payload = b.get(BLOCK as usize..(BLOCK + hi - lo) as usize)?;
            if crc32fast::hash(payload) != u32_at(hb, 56) {
                return None;
            }
            Some(payload.to_vec())
        };
        Some(Entry { seq: u64_at(hb, 24), stripe: u64_at(hb, 32), lo, hi, mods, pp })
    }
}

fn encode_header(uuid: &[u8; 16], valid_from: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[0..8].copy_from_slice(&HEADER_MAGIC);
    b[8..24].copy_from_slice(uuid);
    b[24..32].copy_from_slice(&valid_from.to_le_bytes());
    let crc = crc32fast::hash(&b[..BLOCK as usize - 4]);
    b[BLOCK as usize - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_header(b: &[u8], uuid: &[u8; 16]) -> Option<u64> {
    let hb = b.get(..BLOCK as usize)?;
    let ok = hb[0..8] == HEADER_MAGIC
        && hb[8..24] == uuid[..]
        && crc32fast::hash(&hb[..BLOCK as usize - 4]) == u32_at(hb, BLOCK as usize - 4);
    ok.then(|| u64_at(hb, 24))
}

#[derive(Default)]
struct Track {
    inflight: u32,
    epoch: u64,
    seqs: Vec<u64>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    persisted_valid_from: u64,
    live: BTreeMap<u64, u64>,
    tracked: HashMap<u64, Track>,
    last_logged: HashMap<u64, u64>,
}

/// The running log.
pub(crate) struct Ppl {
    offset: u64,
    slot_size: u64,
    slots: u64,
    state: Mutex<State>,
    header_lock: futures::lock::Mutex<()>,
}

impl Ppl {
    /// A log in `[offset, offset+len)` of every member, for chunk size `chunk`.
    pub fn new(offset: u64, len: u64, chunk: u64) -> Ppl {
        let slot_size = BLOCK + chunk;
        Ppl {
            offset,
            slot_size,
            slots: (len.saturating_sub(BLOCK) / slot_size).max(1),
            state: Mutex::new(State::default()),
            header_lock: futures::lock::Mutex::new(()),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write to stripe `s` must flush first: the stripe has writes that may not be stable yet
    /// and this write is partial (its entry would assume the rest of the stripe stable), or
    /// too many stripes are tracked. A `full` stripe write's entry covers the whole stripe.
    pub fn needs_flush_before(&self, s: u64, full: bool) -> bool {
        let st = self.st();
        (!full && st.tracked.contains_key(&s)) || st.tracked.len() >= MAX_TRACKED
    }

    /// A write to stripe `s` starts.
    pub fn begin(&self, s: u64) {
        self.st().tracked.entry(s).or_default().inflight += 1;
    }

    /// The write to stripe `s` that began completed in `epoch`.
    pub fn end(&self, s: u64, epoch: u64) {
        if let Some(t) = self.st().tracked.get_mut(&s) {
            t.inflight = t.inflight.saturating_sub(1);
            t.epoch = t.epoch.max(epoch);
        }
    }

    /// An entry of stripe `s` may still be replayed at recovery.
    pub fn has_replayable(&self, s: u64) -> bool {
        let st = self.st();
        st.last_logged.get(&s).is_some_and(|&q| q >= st.persisted_valid_from)
    }

    /// Write `entry` (its `seq` is assigned here) to the log of `parity_member`, FUA.
    pub async fn log(&self, core: &Core, io: &IoCtx, parity_member: usize, mut entry: Entry) -> Result<()> {
        let mut tries = 0u32;
        let seq = loop {
            {
                let mut st = self.st();
                let seq = st.next_seq;
                if seq < st.persisted_valid_from + self.slots {
                    st.next_seq += 1;
                    st.live.insert(seq, entry.stripe);
                    st.tracked.entry(entry.stripe).or_default().seqs.push(seq);
                    st.last_logged.insert(entry.stripe, seq);
                    break seq;
                }
            }
            // The slot still holds a replayable entry: make completed writes stable.
            core.flush_group.flush(core, io).await?;
            tries += 1;
            if tries > 2 {
                yield_now().await;
            }
        };
        entry.seq = seq;
        let at = self.offset + BLOCK + (seq % self.slots) * self.slot_size;
        let mut buf = io.pool().shared(entry.encoded_len());
        entry.encode_into(&core.uuid, buf.bytes_mut());
        core.write_member_raw(io, parity_member, at, buf.io(), true, IoTag::meta("raid5.ppl")).await
    }

    /// After a flush that started in epoch `e`: retire stable writes and advance `valid_from`.
    pub async fn after_flush(&self, core: &Core, io: &IoCtx, e: u64) -> Result<()> {
        let new_vf = {
            let mut st = self.st();
            let done: Vec<u64> =
                st.tracked.iter().filter(|(_, t)| t.inflight == 0 && t.epoch <= e).map(|(&s, _)| s).collect();
            for s in done {
                if let Some(t) = st.tracked.remove(&s) {
                    for q in t.seqs {
                        st.live.remove(&q);
                    }
                }
            }
            let vf = st.live.keys().next().copied().unwrap_or(st.next_seq);
            (vf > st.persisted_valid_from).then_some(vf)
        };
        if let Some(vf) = new_vf {
            self.write_header(core, io, vf).await?;
        }
        Ok(())
    }

    /// Write `valid_from` to every writable member's log header (FUA).
    async fn write_header(&self, core: &Core, io: &IoCtx, vf: u64) -> Result<()> {
        let _g = self.header_lock.lock().await;
        if vf <= self.st().persisted_valid_from {
            return Ok(());
        }
        let bytes = encode_header(&core.uuid, vf);
        let targets = core.writable_members();
        let futs = targets
            .iter()
            .map(|&m| {
                let mut b = SharedBuf::from_slice(&bytes);
                core.write_member_raw(io, m, self.offset, b.io(), true, IoTag::meta("raid5.ppl_header"))
            })
            .collect();
        crate::core::write_members_tolerant(core, io, &targets, futs).await?;
        let mut st = self.st();
        st.persisted_valid_from = st.persisted_valid_from.max(vf);
        let pvf = st.persisted_valid_from;
        st.last_logged.retain(|_, q| *q >= pvf);
        Ok(())
    }

    /// Format the area on member `m` (a header with `valid_from` 0, empty slots).
    pub async fn format_member(&self, core: &Core, io: &IoCtx, m: usize) -> Result<()> {
        let total = (BLOCK + self.slots * self.slot_size) as usize;
        let mut zeros = io.pool().shared(total);
        zeros.bytes_mut().fill(0);
        zeros.bytes_mut()[..BLOCK as usize].copy_from_slice(&encode_header(&core.uuid, self.st().persisted_valid_from));
        core.write_member_raw(io, m, self.offset, zeros.io(), true, IoTag::meta("raid5.ppl_format")).await
    }

    /// Crash recovery: replay the newest replayable entry of each stripe, then start the log
    /// after the newest sequence seen. Returns how many stripes were replayed.
    pub async fn recover(&self, core: &Core, io: &IoCtx) -> Result<usize> {
        let geo = core.geo;
        let mut newest: HashMap<u64, (usize, Entry)> = HashMap::new();
        let mut max_seq = None::<u64>;
        let total = (BLOCK + self.slots * self.slot_size) as usize;
        for p in 0..core.members.len() {
            if core.member(p).state() != MemberState::Active {
                continue;
            }
            let Some(dev) = core.member(p).dev() else { continue };
            let mut area = io.pool().shared(total);
            dev.read(io, self.offset, area.io(), IoTag::meta("raid5.ppl_recover")).await?;
            let bytes = area.bytes();
            let vf = decode_header(bytes, &core.uuid).unwrap_or(0);
            for slot in 0..self.slots {
                let at = (BLOCK + slot * self.slot_size) as usize;
                let Some(e) = bytes.get(at..at + self.slot_size as usize) else { break };
                let Some(e) = Entry::decode(e, &core.uuid, geo.chunk, geo.members) else { continue };
                max_seq = max_seq.max(Some(e.seq));
                if e.seq < vf || e.stripe >= geo.stripes() || geo.parity_member(e.stripe) != p {
                    continue;
                }
                if newest.get(&e.stripe).is_none_or(|(_, old)| old.seq < e.seq) {
                    newest.insert(e.stripe, (p, e));
                }
            }
        }
        let mut replayed = 0;
        for (_, (p, e)) in newest {
            if self.replay(core, io, p, &e).await? {
                replayed += 1;
            }
        }
        let next = max_seq.map_or(0, |q| q + 1);
        {
            let mut st = self.st();
            st.next_seq = next;
        }
        core.flush_all(io).await?;
        self.write_header(core, io, next).await?;
        {
            let mut st = self.st();
            st.persisted_valid_from = next;
        }
        Ok(replayed)
    }

    /// Recompute parity of one logged stripe from the partial parity and the disk.
    async fn replay(&self, core: &Core, io: &IoCtx, p: usize, e: &Entry) -> Result<bool> {
        let base = e.stripe * core.geo.chunk;
        if e.mods.iter().any(|&(m, a, b)| !core.member(m).readable(base + a, b - a)) {
            tracing::warn!(
                "{}: stripe {}: a logged member is missing; parity left as it is (its written range may read back torn)",
                core.name,
                e.stripe
            );
            return Ok(false);
        }
        let len = (e.hi - e.lo) as usize;
        let mut parity = e.pp.clone().unwrap_or_else(|| vec![0; len]);
        for &(m, a, b) in &e.mods {
            let got = core.read_member_buf(io, m, base + a, (b - a) as usize, IoTag::meta("raid5.ppl_replay")).await?;
            let at = (a - e.lo) as usize;
            xor_into(&mut parity[at..at + (b - a) as usize], got.bytes());
        }
        let mut buf = SharedBuf::from_slice(&parity);
        core.write_member(io, p, base + e.lo, buf.io(), false, IoTag::meta("raid5.ppl_replay")).await?;
        Ok(true)
    }
}

/// Let other tasks on this thread run once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_rejects_other_arrays() {
        let e = Entry { seq: 5, stripe: 9, lo: 512, hi: 1536, mods: vec![(0, 512, 1024)], pp: Some(vec![3; 1024]) };
        let enc = e.encode(&[1; 16]);
        assert_eq!(Entry::decode(&enc, &[1; 16], 4096, 3), Some(e));
        assert_eq!(Entry::decode(&enc, &[2; 16], 4096, 3), None);
        let mut torn = enc.clone();
        torn[4096 + 10] ^= 1;
        assert_eq!(Entry::decode(&torn, &[1; 16], 4096, 3), None);
    }
}
