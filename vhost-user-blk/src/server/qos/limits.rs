//! The limits of one export or throttle group, in QEMU's throttle vocabulary: six leaky buckets
//! (`iops-total|read|write`, `bps-total|read|write`), each with an average rate, a burst rate
//! `...-max` and the seconds a burst may last `...-max-length`, and `iops-size` (a request
//! larger than it counts as several operations). Parsed from `--disk`/config keys or from a
//! `set-limits` request, and validated as QEMU's `throttle_is_valid` does; each error names the key.

use std::collections::BTreeMap;

use serde::Serialize;

/// Largest value any key takes (QEMU's `THROTTLE_VALUE_MAX`): 10^15 operations or bytes per second.
pub const MAX_VALUE: u64 = 1_000_000_000_000_000;

/// The six buckets, in the order of [`Limits::buckets`].
pub const BUCKET_NAMES: [&str; 6] = ["bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write"];

/// One bucket's settings; 0 means unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketLimit {
    /// Average rate per second.
    pub avg: u64,
    /// Burst rate per second (`...-max`).
    pub max: u64,
    /// Seconds a burst at `max` may last (`...-max-length`; 0 is the default, 1).
    pub max_length: u64,
}

/// Every limit of an export or group. All zero is "no limits".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Indexed as [`BUCKET_NAMES`].
    pub buckets: [BucketLimit; 6],
    /// Bytes one I/O operation counts for at most (`iops-size`; 0 = a request is one operation).
    pub iops_size: u64,
}

/// Which field of a bucket a key names.
#[derive(Clone, Copy)]
enum Field {
    Avg,
    Max,
    MaxLength,
}

/// Where a key goes: `None` is `iops-size`.
fn locate(key: &str) -> Option<Option<(usize, Field)>> {
    if key == "iops-size" {
        return Some(None);
    }
    for (i, name) in BUCKET_NAMES.iter().enumerate() {
        let Some(rest) = key.strip_prefix(name) else { continue };
        let field = match rest {
            "" => Field::Avg,
            "-max" => Field::Max,
            "-max-length" => Field::MaxLength,
            _ => continue,
        };
        return Some(Some((i, field)));
    }
    None
}

/// True when `key` is a limit key (`iops-total`, `bps-read-max`, `iops-size`, ...).
pub fn is_limit_key(key: &str) -> bool {
    locate(key).is_some()
}

/// Every limit key, for help texts and errors.
pub fn all_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for name in BUCKET_NAMES {
        keys.push(name.to_string());
        keys.push(format!("{name}-max"));
        keys.push(format!("{name}-max-length"));
    }
    keys.push("iops-size".into());
    keys
}

/// Parse a `--disk` or config value of `key`: a whole number; a `bps-*` key and `iops-size`
/// also take a size suffix (`100M` is 100 MiB). Zero is refused here: leaving the key out is
/// "no limit" (`set-limits` takes 0 to remove one).
pub fn parse_value(key: &str, v: &str) -> Result<u64, String> {
    let bytes = key.starts_with("bps-") && !key.ends_with("-max-length") || key == "iops-size";
    let n = if bytes {
        blockdev::size::parse_size(v).map_err(|e| format!("{key}={v:?}: {e}"))?
    } else {
        v.parse::<u64>().map_err(|_| format!("{key}={v:?}: expected a whole number from 1 to {MAX_VALUE}"))?
    };
    if n == 0 {
        return Err(format!("{key}=0: a limit must be at least 1 (leave the key out for no limit)"));
    }
    Ok(n)
}

impl Limits {
    /// True when nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.avg == 0)
    }

    /// Set `key` to `value` (0 unsets it); an unknown key is an error naming the known ones.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), String> {
        let Some(place) = locate(key) else {
            return Err(format!("unknown limit key {key:?} (known: {})", all_keys().join(", ")));
        };
        if value > MAX_VALUE {
            return Err(format!("{key}={value}: more than the largest limit, {MAX_VALUE}"));
        }
        match place {
            None => self.iops_size = value,
            Some((i, Field::Avg)) => self.buckets[i].avg = value,
            Some((i, Field::Max)) => self.buckets[i].max = value,
            Some((i, Field::MaxLength)) => self.buckets[i].max_length = value,
        }
        Ok(())
    }

    /// Limits from `--disk`/config pairs (each key a limit key; see [`parse_value`]), validated.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Limits, String> {
        let mut l = Limits::default();
        let mut seen = Vec::new();
        for (k, v) in pairs {
            if seen.contains(&k) {
                return Err(format!("{k}: given twice"));
            }
            seen.push(k);
            l.set(k, parse_value(k, v)?)?;
        }
        l.validate()?;
        Ok(l)
    }

    /// These limits changed by a `set-limits` request's `{"key": number, ...}`: each value a whole
    /// number 0..=[`MAX_VALUE`], 0 removing that limit. The result is validated; `self` is untouched.
    pub fn updated(&self, changes: &serde_json::Map<String, serde_json::Value>) -> Result<Limits, String> {
        let mut l = *self;
        for (k, v) in changes {
            if !is_limit_key(k) {
                return Err(format!("unknown limit key {k:?} (known: {})", all_keys().join(", ")));
            }
            let n = v.as_u64().ok_or_else(|| match v.as_i64() {
                Some(n) if n < 0 => format!("{k}={n}: a limit cannot be negative (0 removes it)"),
                _ => format!("{k}={v}: expected a whole number from 0 (remove) to {MAX_VALUE}"),
            })?;
            l.set(k, n)?;
        }
        l.validate()?;
        Ok(l)
    }

    /// QEMU's rules: a total and its read/write split are not both set; a burst needs its
    /// average and is not below it; a burst length needs a burst; `burst * length` stays within
    /// [`MAX_VALUE`].
    pub fn validate(&self) -> Result<(), String> {
        for (i, b) in self.buckets.iter().enumerate() {
            let name = BUCKET_NAMES[i];
            for (what, v) in [("", b.avg), ("-max", b.max), ("-max-length", b.max_length)] {
                if v > MAX_VALUE {
                    return Err(format!("{name}{what}={v}: more than the largest limit, {MAX_VALUE}"));
                }
            }
            if b.max != 0 && b.avg == 0 {
                return Err(format!("{name}-max={} needs {name} (the average rate) set too", b.max));
            }
            if b.max != 0 && b.max < b.avg {
                return Err(format!(
                    "{name}-max={} is lower than {name}={}: a burst is at least the average",
                    b.max, b.avg
                ));
            }
            if b.max_length > 1 && b.max == 0 {
                return Err(format!("{name}-max-length={} needs {name}-max (the burst rate) set too", b.max_length));
            }
            if b.max.saturating_mul(b.max_length.max(1)) > MAX_VALUE {
                return Err(format!(
                    "{name}-max={} for {name}-max-length={} seconds is a burst larger than {MAX_VALUE}",
                    b.max, b.max_length
                ));
            }
        }
        for base in [0, 3] {
            let [t, r, w] = [base, base + 1, base + 2].map(|i| self.buckets[i].avg != 0);
            if t && (r || w) {
                let (total, read, write) = (BUCKET_NAMES[base], BUCKET_NAMES[base + 1], BUCKET_NAMES[base + 2]);
                return Err(format!("{total} cannot be set together with {read} or {write}"));
            }
        }
        Ok(())
    }

    /// The keys set, with their values (what `blkctl limits` prints).
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (i, b) in self.buckets.iter().enumerate() {
            let name = BUCKET_NAMES[i];
            for (what, v) in [("", b.avg), ("-max", b.max), ("-max-length", b.max_length)] {
                if v != 0 {
                    m.insert(format!("{name}{what}"), v);
                }
            }
        }
        if self.iops_size != 0 {
            m.insert("iops-size".into(), self.iops_size);
        }
        m
    }

    /// As `key=value,...` (empty when nothing is limited), for messages.
    pub fn describe(&self) -> String {
        self.to_map().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

impl Serialize for Limits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Limits, String> {
        Limits::from_pairs(s.split(',').map(|kv| kv.split_once('=').unwrap()))
    }

    #[test]
    fn keys_parse_into_their_buckets() {
        let l =
            parse("iops-total=5000,iops-total-max=8000,iops-total-max-length=4,bps-read=100M,iops-size=8K").unwrap();
        assert_eq!(l.buckets[3], BucketLimit { avg: 5000, max: 8000, max_length: 4 });
        assert_eq!(l.buckets[1].avg, 100 << 20);
        assert_eq!(l.iops_size, 8192);
        assert_eq!(
            l.describe(),
            "bps-read=104857600,iops-size=8192,iops-total=5000,iops-total-max=8000,iops-total-max-length=4"
        );
        assert!(Limits::default().is_empty() && !l.is_empty());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (spec, needle) in [
            ("iops-total=-5", "iops-total"),
            ("iops-total=0", "at least 1"),
            ("iops-total=18446744073709551616", "iops-total"),
            ("iops-total=1000000000000001", "largest"),
            ("bps-total=1.5", "bps-total"),
            ("iops-totl=5", "unknown limit key \"iops-totl\""),
            ("iops-total-max=10", "needs iops-total"),
            ("iops-total=100,iops-total-max=50", "lower than"),
            ("iops-total=100,iops-total-max-length=5", "needs iops-total-max"),
            ("iops-total=100,iops-read=50", "cannot be set together"),
            ("bps-write=1,bps-total=5", "cannot be set together"),
            ("iops-total=5,iops-total=6", "twice"),
            ("iops-read=1,iops-read-max=1000000000000000,iops-read-max-length=2", "burst larger"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn set_limits_changes_merge_and_zero_removes() {
        let l = parse("iops-total=100,iops-total-max=200").unwrap();
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        let u = l.updated(&m(json!({"iops-total-max": 0, "bps-write": 1000}))).unwrap();
        assert_eq!(u.describe(), "bps-write=1000,iops-total=100");
        assert!(l.updated(&m(json!({"iops-total": 0}))).unwrap_err().contains("needs iops-total"));
        assert!(l.updated(&m(json!({"iops-total": -1}))).unwrap_err().contains("negative"));
        assert!(l.updated(&m(json!({"iops-total": 1.5}))).unwrap_err().contains("whole number"));
        assert!(l.updated(&m(json!({"iops-total": "5"}))).unwrap_err().contains("whole number"));
        let big: serde_json::Value = serde_json::from_str(r#"{"iops-total": 18446744073709551616}"#).unwrap();
        assert!(l.updated(&m(big)).unwrap_err().contains("whole number"));
        assert!(l.updated(&m(json!({"nope": 1}))).unwrap_err().contains("unknown limit key"));
        assert_eq!(l.updated(&m(json!({"iops-total": 0, "iops-total-max": 0}))).unwrap(), Limits::default());
    }
}
