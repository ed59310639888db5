//! Sizes on command lines and in specs: plain bytes or a K, M, G, T suffix (powers of 1024).

use crate::{Error, ErrorKind, Result};

/// Parse `"64K"`, `"1G"`, `"4096"`, `"2MiB"`; the suffix is case-insensitive.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("'{s}' is not a size (use a number with an optional K, M, G or T suffix)"),
        )
    };
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        Some('p') => (&body[..body.len() - 1], 50),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("size '{s}' is too large")))
}

/// Render a byte count with the largest exact binary suffix (`1G`, `1536K`, `1000`).
pub fn format_size(n: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{}", n >> shift, suffix);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_powers_of_1024() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
    }

    #[test]
    fn garbage_is_refused_with_the_input_named() {
        for s in ["", "K", "1.5G", "-1", "12X", "99999999999999999999"] {
            let e = parse_size(s).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{s}");
        }
        assert!(parse_size("abc").unwrap_err().to_string().contains("'abc'"));
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn format_round_trips() {
        for n in [0u64, 512, 65536, 1 << 30, 3 << 20] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
    }
}
