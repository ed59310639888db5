//! Which reads a partial-stripe write needs: read-modify-write (old data of the modified ranges
//! plus old parity) or reconstruct-write (the unmodified ranges), whichever reads fewer bytes;
//! a reconstruct from parity when a member needed by both is unreadable.

use smallvec::SmallVec;

/// The modified byte range `[a, b)` of one data chunk (offsets inside the chunk), if any.
pub type ModRange = Option<(u64, u64)>;

/// How the new parity of a stripe is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Every data chunk is fully rewritten: parity from the new data alone, no reads.
    FullStripe,
    /// Read old parity and the old modified ranges.
    ReadModifyWrite,
    /// Read the unmodified parts of every data chunk.
    ReconstructWrite,
    /// Data chunk `u` is unreadable: read everything else, rebuild `u`'s old data from parity.
    Degraded(usize),
    /// Nothing works (two members unreadable).
    Impossible,
}

/// The pieces of `[lo, hi)` outside `m` (0, 1 or 2 ranges).
pub fn complement(lo: u64, hi: u64, m: ModRange) -> SmallVec<[(u64, u64); 2]> {
    match m {
        None => smallvec::smallvec![(lo, hi)],
        Some((a, b)) => [(lo, a), (b, hi)].into_iter().filter(|(x, y)| x < y).collect(),
    }
}

/// Pick the plan. `chunk`: chunk size; `mods[i]`: data chunk i's modified range; `readable(i,
/// a, b)`: data chunk i (or parity, as `i == mods.len()`) holds valid data over `[a, b)`.
pub fn choose(chunk: u64, mods: &[ModRange], readable: impl Fn(usize, u64, u64) -> bool) -> Plan {
    let d = mods.len();
    if mods.iter().all(|m| *m == Some((0, chunk))) {
        return Plan::FullStripe;
    }
    let lo = mods.iter().flatten().map(|m| m.0).min().unwrap_or(0);
    let hi = mods.iter().flatten().map(|m| m.1).max().unwrap_or(0);
    let len = hi - lo;
    let modded: u64 = mods.iter().flatten().map(|(a, b)| b - a).sum();
    let rmw_ok = readable(d, lo, hi) && mods.iter().enumerate().all(|(i, m)| m.is_none_or(|(a, b)| readable(i, a, b)));
    let rcw_ok = mods.iter().enumerate().all(|(i, m)| complement(lo, hi, *m).iter().all(|&(a, b)| readable(i, a, b)));
    let rmw_bytes = len + modded;
    let rcw_bytes = len * d as u64 - modded;
    match (rmw_ok, rcw_ok) {
        (true, true) if rmw_bytes < rcw_bytes => Plan::ReadModifyWrite,
        (true, _) if !rcw_ok => Plan::ReadModifyWrite,
        (_, true) => Plan::ReconstructWrite,
        _ => {
            let bad: Vec<usize> = (0..d).filter(|&i| !readable(i, lo, hi)).collect();
            if bad.len() == 1 && readable(d, lo, hi) {
                Plan::Degraded(bad[0])
            } else {
                Plan::Impossible
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 4096;

    #[test]
    fn full_stripe_needs_no_reads() {
        assert_eq!(choose(C, &[Some((0, C)); 3], |_, _, _| false), Plan::FullStripe);
    }

    #[test]
    fn small_write_on_wide_stripe_uses_rmw() {
        let mods = [Some((0, 512)), None, None, None];
        assert_eq!(choose(C, &mods, |_, _, _| true), Plan::ReadModifyWrite);
    }

    #[test]
    fn mostly_full_stripe_uses_reconstruct_write() {
        let mods = [Some((0, C)), Some((0, C)), None];
        assert_eq!(choose(C, &mods, |_, _, _| true), Plan::ReconstructWrite);
    }

    #[test]
    fn unreadable_parity_forces_reconstruct_write() {
        let mods = [Some((0, 512)), None, None, None];
        assert_eq!(choose(C, &mods, |i, _, _| i != 4), Plan::ReconstructWrite);
    }

    #[test]
    fn unreadable_modified_and_unmodified_data_goes_degraded() {
        let mods = [Some((0, 512)), Some((0, 1024))];
        assert_eq!(choose(C, &mods, |i, _, _| i != 0), Plan::Degraded(0));
        assert_eq!(choose(C, &mods, |i, _, _| i == 1), Plan::Impossible);
    }
}
