//! XOR parity over byte slices.

/// `dst ^= src` (equal lengths).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (d8, s8) = (&mut dst[..n], &src[..n]);
    let mut dc = d8.chunks_exact_mut(8);
    let mut sc = s8.chunks_exact(8);
    for (d, s) in (&mut dc).zip(&mut sc) {
        let mut a = [0u8; 8];
        a.copy_from_slice(d);
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        d.copy_from_slice(&(u64::from_ne_bytes(a) ^ u64::from_ne_bytes(b)).to_ne_bytes());
    }
    for (d, s) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *d ^= *s;
    }
}

/// True when every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
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
}
