//! XOR parity over byte slices.

/// `dst ^= src` (over the shorter length). A plain byte loop: the compiler vectorizes it.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// `dst = a ^ b` (over the shortest length): one pass, where a copy then [`xor_into`] makes two.
pub fn xor_pair(dst: &mut [u8], a: &[u8], b: &[u8]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x ^ y;
    }
}

/// True when every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    // OR-fold fixed blocks (vectorized) instead of an early-exit byte loop.
    b.chunks(256).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_twice_restores_and_handles_tails() {
        let orig: Vec<u8> = (0..29u8).collect();
        let key: Vec<u8> = (0..29u8).map(|x| x.wrapping_mul(37)).collect();
        let mut v = orig.clone();
        xor_into(&mut v, &key);
        assert_ne!(v, orig);
        xor_into(&mut v, &key);
        assert_eq!(v, orig);
    }

    #[test]
    fn xor_pair_matches_copy_then_xor() {
        let a: Vec<u8> = (0..100u8).collect();
        let b: Vec<u8> = (0..100u8).map(|x| x.wrapping_mul(91)).collect();
        let mut want = a.clone();
        xor_into(&mut want, &b);
        let mut got = vec![0xee; 100];
        xor_pair(&mut got, &a, &b);
        assert_eq!(got, want);
    }

    #[test]
    fn is_zero_sees_one_bit_anywhere() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v));
        for i in [0, 255, 256, 999] {
            v[i] = 0x10;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
    }
}
