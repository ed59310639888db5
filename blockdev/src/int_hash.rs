//! A hasher for integer keys that come from a device's own layout (RAID stripe numbers, thin
//! data blocks). The standard SipHash guards against keys chosen to collide, which these maps do
//! not need: nobody outside chooses the keys. A multiply and a fold cost a few cycles where
//! SipHash costs tens, on lookups made on every request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by integers, hashed with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Multiplicative hashing (Fibonacci) with the high half folded into the low, so both the
/// bucket index (low bits) and the control byte (high bits) vary with every key bit.
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        let m = u128::from(self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(29) ^ v;
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn neighbouring_keys_spread_over_buckets_and_control_bytes() {
        let b = BuildHasherDefault::<IntHasher>::default();
        let hashes: Vec<u64> = (0..4096u64).map(|k| b.hash_one(k)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 2500, "{} distinct bucket indexes of 4096", low.len());
        assert_eq!(high.len(), 128, "every 7-bit control value used");
    }

    #[test]
    fn map_works_as_a_map() {
        let mut m: IntMap<u64, u32> = IntMap::default();
        for k in 0..1000u64 {
            m.insert(k * 7, k as u32);
        }
        assert!((0..1000u64).all(|k| m.get(&(k * 7)) == Some(&(k as u32))));
        assert_eq!(m.get(&1), None);
    }
}
