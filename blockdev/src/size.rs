//! Sizes on command lines and in specs: plain bytes or a K, M, G, T suffix (powers of 1024).

use crate::{Error, ErrorKind, Result};

/// Parse `"64K"`, `"1G"`, `"4096"`, `"2MiB"`, `"1.5G"`: a number with an optional K, M, G, T or
/// P suffix (powers of 1024, case-insensitive, `B`/`iB` optional). A fraction needs a suffix of
/// K or more and is rounded down to whole bytes, as `qemu-img` does.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("'{s}' is not a size (use a number with an optional K, M, G, T or P suffix, e.g. 10G or 1.5G)"),
        )
    };
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (number, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        Some('p') => (&body[..body.len() - 1], 50),
        _ => (body, 0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || (number.contains('.') && fraction.is_empty()) {
        return Err(bad());
    }
    if !fraction.is_empty() && shift == 0 {
        return Err(Error::new(ErrorKind::InvalidInput, format!("'{s}': a fraction of a byte is not a size")));
    }
    let too_large = || Error::new(ErrorKind::InvalidInput, format!("size '{s}' is too large"));
    let n: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = n.checked_mul(1u64 << shift).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Fraction digits beyond 15 cannot change a byte count below 2^64 (1P * 1e-15 < 2).
        let kept = &fraction[..fraction.len().min(15)];
        let num: u128 = kept.parse().map_err(|_| bad())?;
        let part = (num << shift) / 10u128.pow(kept.len() as u32);
        bytes = bytes.checked_add(part as u64).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// A size on a resize's command line: absolute, or `+SIZE` / `-SIZE` relative to the current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    /// `SIZE`: this size.
    To(u64),
    /// `+SIZE`: the current size plus this much.
    Grow(u64),
    /// `-SIZE`: the current size less this much.
    Shrink(u64),
}

impl SizeChange {
    /// Parse `10G`, `+1G` or `-512M`.
    pub fn parse(s: &str) -> Result<SizeChange> {
        let t = s.trim();
        if let Some(d) = t.strip_prefix('+') {
            Ok(SizeChange::Grow(parse_size(d)?))
        } else if let Some(d) = t.strip_prefix('-') {
            Ok(SizeChange::Shrink(parse_size(d)?))
        } else {
            Ok(SizeChange::To(parse_size(t)?))
        }
    }

    /// The new size, given the current one.
    pub fn apply(self, current: u64) -> Result<u64> {
        match self {
            SizeChange::To(n) => Ok(n),
            SizeChange::Grow(d) => current
                .checked_add(d)
                .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("+{d} bytes on {current} bytes overflows"))),
            SizeChange::Shrink(d) => current.checked_sub(d).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("-{} is more than the current size {}", format_iec(d), format_iec(current)),
                )
            }),
        }
    }
}

/// Render a byte count for people in IEC units with three significant digits, as `qemu-img`
/// prints sizes: `512 B`, `64 KiB`, `1.5 GiB`, `0.977 GiB` (a unit is left at 1000 of it).
pub fn format_iec(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && n as f64 >= 1000.0 * (1u64 << (10 * unit)) as f64 {
        unit += 1;
    }
    let v = n as f64 / (1u64 << (10 * unit)) as f64;
    // Three significant digits, trailing zeros dropped (C's %0.3g for these magnitudes).
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text} {}", UNITS[unit])
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
        for s in ["", "K", "1.5", "1.", ".5G", "-1", "12X", "1.5.5G", "99999999999999999999"] {
            let e = parse_size(s).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{s}");
        }
        assert!(parse_size("abc").unwrap_err().to_string().contains("'abc'"));
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn fractions_round_down_to_bytes_as_qemu_img() {
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0.5k").unwrap(), 512);
        assert_eq!(parse_size("1.0001K").unwrap(), 1024);
        assert!(parse_size("16384.5P").is_err());
    }

    #[test]
    fn relative_sizes_apply_to_the_current_one() {
        assert_eq!(SizeChange::parse("+1G").unwrap().apply(1 << 30).unwrap(), 2 << 30);
        assert_eq!(SizeChange::parse("-512M").unwrap().apply(1 << 30).unwrap(), 512 << 20);
        assert_eq!(SizeChange::parse("2G").unwrap().apply(1 << 30).unwrap(), 2 << 30);
        assert!(SizeChange::parse("-2G").unwrap().apply(1 << 30).is_err());
        assert!(SizeChange::parse(&format!("+{}", u64::MAX)).unwrap().apply(1).is_err());
        assert!(SizeChange::parse("+x").is_err());
    }

    #[test]
    fn iec_output_has_three_significant_digits() {
        assert_eq!(format_iec(0), "0 B");
        assert_eq!(format_iec(512), "512 B");
        assert_eq!(format_iec(1 << 30), "1 GiB");
        assert_eq!(format_iec(3 << 29), "1.5 GiB");
        assert_eq!(format_iec(1000 << 20), "0.977 GiB");
        assert_eq!(format_iec(100 << 20), "100 MiB");
        assert_eq!(format_iec(10_737_418_240), "10 GiB");
    }

    #[test]
    fn format_round_trips() {
        for n in [0u64, 512, 65536, 1 << 30, 3 << 20] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
    }
}
