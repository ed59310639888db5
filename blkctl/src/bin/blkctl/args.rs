//! Value parsers shared by every subcommand group: sizes, durations, lists.

use std::time::Duration;

/// A size with an optional K, M, G or T suffix (powers of 1024).
pub fn size(s: &str) -> Result<u64, String> {
    blockdev::size::parse_size(s).map_err(|e| e.to_string())
}

/// A duration: `3s`, `500ms`, `2m`, or plain seconds (`3`, `0.5`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 3s, 500ms, 1m)");
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 || v * scale > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(duration("2").unwrap(), Duration::from_secs(2));
        for bad in ["", "s", "-1s", "0", "1h", "nan"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(size("64M").unwrap(), 64 << 20);
        assert!(size("64X").unwrap_err().contains("'64X'"));
    }
}
