//! Disk specs: `format=raw,path=disk.img,direct=on` — an ordered list of `key=value` pairs that
//! names a format and its settings.
//!
//! Rules (checked by [`Spec::parse`]):
//! - entries are separated by `,`; each is `key=value`, split at the first `=`;
//! - keys are non-empty and made of lowercase ASCII letters, digits and `-`;
//! - values are non-empty and never contain `,` (there is no escaping): a path with a comma in
//!   it goes in the daemon's config file, where values are not comma-separated;
//! - a key appears at most once, except those in [`REPEATABLE`] (read with [`Spec::take_all`]).
//!
//! Builders consume the keys they know with [`Spec::take`] and the typed getters, then call
//! [`Spec::finish`], which refuses any key left over. Every error names the key and quotes the
//! whole spec, so a user with several disks on one command line sees which one is wrong.

use std::fmt;

/// Keys that may appear more than once (each occurrence adds one value).
pub const REPEATABLE: &[&str] = &["backing-dir", "backing-file"];

/// Longest spec accepted, in bytes (a command-line argument, not a file).
pub const MAX_SPEC_LEN: usize = 64 * 1024;

/// What is wrong with a spec. Each variant carries the whole spec as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec is empty (or only whitespace).
    #[error("empty disk spec (expected e.g. format=raw,path=disk.img)")]
    Empty,
    /// The spec is longer than [`MAX_SPEC_LEN`].
    #[error("disk spec is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An entry between two commas is empty (`a=1,,b=2`, or a trailing comma).
    #[error("empty entry {index} in disk spec '{spec}' (stray comma?)")]
    EmptyEntry {
        /// 1-based position of the entry.
        index: usize,
        /// The whole spec.
        spec: String,
    },
    /// An entry has no `=`.
    #[error("'{entry}' in disk spec '{spec}' is not key=value")]
    MissingEquals {
        /// The offending entry.
        entry: String,
        /// The whole spec.
        spec: String,
    },
    /// An entry starts with `=`.
    #[error("empty key before '={value}' in disk spec '{spec}'")]
    EmptyKey {
        /// The value that had no key.
        value: String,
        /// The whole spec.
        spec: String,
    },
    /// A key has characters outside `[a-z0-9-]`.
    #[error("bad key '{key}' in disk spec '{spec}': keys are lowercase letters, digits and '-'")]
    BadKey {
        /// The key as written.
        key: String,
        /// The whole spec.
        spec: String,
    },
    /// A key has nothing after its `=`.
    #[error("key '{key}' has an empty value in disk spec '{spec}'")]
    EmptyValue {
        /// The key.
        key: String,
        /// The whole spec.
        spec: String,
    },
    /// A key appears twice.
    #[error("key '{key}' appears twice in disk spec '{spec}'")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The whole spec.
        spec: String,
    },
    /// A required key is absent.
    #[error("disk spec '{spec}' lacks the required key '{key}'{hint}")]
    Missing {
        /// The key.
        key: String,
        /// Extra help (starts with a separator, or is empty).
        hint: String,
        /// The whole spec.
        spec: String,
    },
    /// A value does not parse as the key's type.
    #[error("key '{key}' in disk spec '{spec}': '{value}' is not {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What was expected, e.g. "on or off".
        expected: String,
        /// The whole spec.
        spec: String,
    },
    /// Keys no builder took.
    #[error("unknown key{} {} in disk spec '{spec}'{hint}", if .keys.len() > 1 { "s" } else { "" }, quote_list(.keys))]
    UnknownKeys {
        /// The leftover keys, in spec order.
        keys: Vec<String>,
        /// Extra help, e.g. the keys the format accepts (starts with a separator, or is empty).
        hint: String,
        /// The whole spec.
        spec: String,
    },
}

fn quote_list(keys: &[String]) -> String {
    keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
}

impl From<SpecError> for blockdev::Error {
    fn from(e: SpecError) -> Self {
        blockdev::Error::new(blockdev::ErrorKind::InvalidInput, e.to_string())
    }
}

/// A parsed disk spec: ordered `key=value` pairs, plus the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pairs: Vec<(String, String)>,
    source: String,
}

fn valid_key(key: &str) -> bool {
    key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Spec {
    /// Parse `key=value,key=value,...` (see the module docs for the rules).
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_LEN {
            return Err(SpecError::TooLong { len: text.len(), max: MAX_SPEC_LEN });
        }
        if text.trim().is_empty() {
            return Err(SpecError::Empty);
        }
        let spec = || text.to_string();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (i, entry) in text.split(',').enumerate() {
            if entry.is_empty() {
                return Err(SpecError::EmptyEntry { index: i + 1, spec: spec() });
            }
            let Some((key, value)) = entry.split_once('=') else {
                return Err(SpecError::MissingEquals { entry: entry.to_string(), spec: spec() });
            };
            if key.is_empty() {
                return Err(SpecError::EmptyKey { value: value.to_string(), spec: spec() });
            }
            if !valid_key(key) {
                return Err(SpecError::BadKey { key: key.to_string(), spec: spec() });
            }
            if value.is_empty() {
                return Err(SpecError::EmptyValue { key: key.to_string(), spec: spec() });
            }
            if !REPEATABLE.contains(&key) && pairs.iter().any(|(k, _)| k == key) {
                return Err(SpecError::DuplicateKey { key: key.to_string(), spec: spec() });
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Spec { pairs, source: text.to_string() })
    }

    /// Build a spec from pairs (a config file's table, where values may contain commas).
    /// Keys are checked as in [`Spec::parse`]; values must be non-empty.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Spec, SpecError> {
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let source = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let spec = || source.clone();
        for (i, (key, value)) in pairs.iter().enumerate() {
            if key.is_empty() {
                return Err(SpecError::EmptyKey { value: value.clone(), spec: spec() });
            }
            if !valid_key(key) {
                return Err(SpecError::BadKey { key: key.clone(), spec: spec() });
            }
            if value.is_empty() {
                return Err(SpecError::EmptyValue { key: key.clone(), spec: spec() });
            }
            if !REPEATABLE.contains(&key.as_str()) && pairs[..i].iter().any(|(k, _)| k == key) {
                return Err(SpecError::DuplicateKey { key: key.clone(), spec: spec() });
            }
        }
        Ok(Spec { pairs, source })
    }

    /// The spec as originally written (for messages), whatever has been taken since.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value of `key`, if present and not yet taken.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The keys not yet taken, in spec order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }

    /// The pairs not yet taken, in spec order (a repeated key once per value).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when every key has been taken.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Remove `key` and return its value. A [`REPEATABLE`] key read this way is taken whole:
    /// every occurrence goes, and the first value is returned (a single-value reader never
    /// leaves a second value behind for `finish` to trip over).
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.take_all(key).into_iter().next()
    }

    /// Remove every occurrence of `key` (a [`REPEATABLE`] one) and return the values in order.
    pub fn take_all(&mut self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.pairs.retain(|(k, v)| {
            if k == key {
                out.push(v.clone());
            }
            k != key
        });
        out
    }

    /// Remove `key`, which must be present; `hint` is appended to the error (e.g. an example).
    pub fn take_required(&mut self, key: &str, hint: &str) -> Result<String, SpecError> {
        self.take(key).ok_or_else(|| self.missing(key, hint))
    }

    /// The error for a required `key` that is absent; `hint` is appended (e.g. an example).
    pub fn missing(&self, key: &str, hint: &str) -> SpecError {
        SpecError::Missing {
            key: key.to_string(),
            hint: if hint.is_empty() { String::new() } else { format!(" ({hint})") },
            spec: self.source.clone(),
        }
    }

    fn bad_value(&self, key: &str, value: &str, expected: &str) -> SpecError {
        SpecError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
            spec: self.source.clone(),
        }
    }

    /// Remove `key` and parse it as a switch: `on`/`true` or `off`/`false`.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, SpecError> {
        let Some(v) = self.take(key) else { return Ok(None) };
        match v.as_str() {
            "on" | "true" => Ok(Some(true)),
            "off" | "false" => Ok(Some(false)),
            _ => Err(self.bad_value(key, &v, "on, off, true or false")),
        }
    }

    /// Remove `key` and parse it as a size: bytes with an optional K, M, G or T suffix.
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>, SpecError> {
        let Some(v) = self.take(key) else { return Ok(None) };
        blockdev::size::parse_size(&v)
            .map(Some)
            .map_err(|_| self.bad_value(key, &v, "a size (a number with an optional K, M, G or T suffix)"))
    }

    /// Remove `key` and parse it as a decimal `u32`.
    pub fn take_u32(&mut self, key: &str) -> Result<Option<u32>, SpecError> {
        let Some(v) = self.take(key) else { return Ok(None) };
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad_value(key, &v, "a whole number"));
        }
        v.parse::<u32>().map(Some).map_err(|_| self.bad_value(key, &v, "a whole number below 2^32"))
    }

    /// Remove `key` and parse it as a duration: a whole number with `ms`, `s` or `m` (`500ms`,
    /// `30s`, `2m`); `0` is allowed. At most one day.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<std::time::Duration>, SpecError> {
        let Some(v) = self.take(key) else { return Ok(None) };
        let expected = "a duration such as 0, 500ms, 30s or 2m (at most a day)";
        let (num, unit_ms) = if let Some(n) = v.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000)
        } else if let Some(n) = v.strip_suffix('m') {
            (n, 60_000)
        } else if v == "0" {
            ("0", 1)
        } else {
            return Err(self.bad_value(key, &v, expected));
        };
        let ms = if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
            num.parse::<u64>().ok().and_then(|n| n.checked_mul(unit_ms)).filter(|&ms| ms <= 86_400_000)
        } else {
            None
        };
        ms.map(|ms| Some(std::time::Duration::from_millis(ms))).ok_or_else(|| self.bad_value(key, &v, expected))
    }

    /// Check that every key was taken; otherwise name the leftovers. `accepted` (the keys the
    /// consumer knows, may be empty) is listed in the message.
    pub fn finish(&self, accepted: &[&str]) -> Result<(), SpecError> {
        if self.pairs.is_empty() {
            return Ok(());
        }
        let hint =
            if accepted.is_empty() { String::new() } else { format!(" (accepted here: {})", accepted.join(", ")) };
        Err(SpecError::UnknownKeys {
            keys: self.pairs.iter().map(|(k, _)| k.clone()).collect(),
            hint,
            spec: self.source.clone(),
        })
    }
}

/// Prints the keys not yet taken as `key=value,...` (the whole spec before anything is taken).
impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Spec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Spec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_in_order() {
        let s = Spec::parse("format=raw,path=/tmp/d.img,direct=on").unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["format", "path", "direct"]);
        assert_eq!(s.get("path"), Some("/tmp/d.img"));
        assert_eq!(s.get("nope"), None);
    }

    #[test]
    fn value_may_contain_equals_sign() {
        let s = Spec::parse("format=raw,path=/a=b").unwrap();
        assert_eq!(s.get("path"), Some("/a=b"));
    }

    #[test]
    fn display_round_trips() {
        let text = "format=mem,size=1G,x-y2=a b";
        let s = Spec::parse(text).unwrap();
        assert_eq!(s.to_string(), text);
        assert_eq!(Spec::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn take_removes_key_and_display_shows_rest() {
        let mut s = Spec::parse("format=mem,size=1G").unwrap();
        assert_eq!(s.take("format").as_deref(), Some("mem"));
        assert_eq!(s.take("format"), None);
        assert_eq!(s.to_string(), "size=1G");
        assert_eq!(s.source(), "format=mem,size=1G");
    }

    #[test]
    fn a_repeatable_key_keeps_every_value_in_order() {
        let mut s = Spec::parse("format=qcow2,backing-dir=/a,path=x,backing-dir=/b").unwrap();
        assert_eq!(s.pairs().filter(|(k, _)| *k == "backing-dir").count(), 2);
        assert_eq!(s.take_all("backing-dir"), ["/a", "/b"]);
        assert_eq!(s.to_string(), "format=qcow2,path=x");
        assert!(Spec::from_pairs([("backing-file", "/a"), ("backing-file", "/b")]).is_ok());
        let mut once = Spec::parse("backing-dir=/a,backing-dir=/b").unwrap();
        assert_eq!(once.take("backing-dir").as_deref(), Some("/a"));
        assert!(once.get("backing-dir").is_none(), "a single-value read takes every occurrence");
    }

    #[test]
    fn duplicate_key_is_refused_naming_it() {
        let e = Spec::parse("format=raw,path=a,path=b").unwrap_err();
        assert!(matches!(&e, SpecError::DuplicateKey { key, .. } if key == "path"));
        assert!(e.to_string().contains("'path'") && e.to_string().contains("format=raw,path=a,path=b"), "{e}");
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(matches!(Spec::parse(""), Err(SpecError::Empty)));
        assert!(matches!(Spec::parse("  "), Err(SpecError::Empty)));
        assert!(matches!(Spec::parse("format=raw,"), Err(SpecError::EmptyEntry { index: 2, .. })));
        assert!(matches!(Spec::parse("a=1,,b=2"), Err(SpecError::EmptyEntry { index: 2, .. })));
        assert!(
            matches!(Spec::parse("format=raw,direct"), Err(SpecError::MissingEquals { entry, .. }) if entry == "direct")
        );
        assert!(matches!(Spec::parse("=raw"), Err(SpecError::EmptyKey { .. })));
        assert!(matches!(Spec::parse("Format=raw"), Err(SpecError::BadKey { key, .. }) if key == "Format"));
        assert!(matches!(Spec::parse("for mat=raw"), Err(SpecError::BadKey { .. })));
        assert!(matches!(Spec::parse("format="), Err(SpecError::EmptyValue { key, .. }) if key == "format"));
        let long = "a=".to_string() + &"x".repeat(MAX_SPEC_LEN);
        assert!(matches!(Spec::parse(&long), Err(SpecError::TooLong { .. })));
    }

    #[test]
    fn typed_getters_parse_and_name_bad_values() {
        let mut s = Spec::parse("direct=on,ro=false,size=64K,n=12,bad=maybe,big=99999999999,sz=12Q").unwrap();
        assert_eq!(s.take_bool("direct").unwrap(), Some(true));
        assert_eq!(s.take_bool("ro").unwrap(), Some(false));
        assert_eq!(s.take_bool("absent").unwrap(), None);
        assert_eq!(s.take_size("size").unwrap(), Some(65536));
        assert_eq!(s.take_u32("n").unwrap(), Some(12));
        let e = s.take_bool("bad").unwrap_err();
        assert!(e.to_string().contains("'bad'") && e.to_string().contains("'maybe'"), "{e}");
        assert!(matches!(s.take_u32("big"), Err(SpecError::BadValue { .. })));
        let e = s.take_size("sz").unwrap_err();
        assert!(e.to_string().contains("'sz'") && e.to_string().contains("'12Q'"), "{e}");
    }

    #[test]
    fn take_u32_refuses_signs_and_spaces() {
        for v in ["+1", "-1", " 1", "0x10"] {
            let mut s = Spec::from_pairs([("n", v)]).unwrap();
            assert!(s.take_u32("n").is_err(), "{v}");
        }
    }

    #[test]
    fn finish_names_leftover_keys() {
        let mut s = Spec::parse("format=raw,path=a,colour=blue,flavour=x").unwrap();
        s.take("format");
        s.take("path");
        let e = s.finish(&["path", "direct"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("'colour', 'flavour'") && msg.contains("accepted here: path, direct"), "{msg}");
        assert!(msg.contains("format=raw,path=a,colour=blue,flavour=x"), "{msg}");
        s.take("colour");
        s.take("flavour");
        assert!(s.finish(&[]).is_ok());
    }

    #[test]
    fn take_required_reports_missing_key() {
        let mut s = Spec::parse("format=raw").unwrap();
        let e = s.take_required("path", "path=FILE").unwrap_err();
        assert_eq!(e.to_string(), "disk spec 'format=raw' lacks the required key 'path' (path=FILE)");
    }

    #[test]
    fn from_pairs_allows_commas_in_values_but_checks_keys() {
        let s = Spec::from_pairs([("format", "raw"), ("path", "/a,b.img")]).unwrap();
        assert_eq!(s.get("path"), Some("/a,b.img"));
        assert!(matches!(Spec::from_pairs([("a", "1"), ("a", "2")]), Err(SpecError::DuplicateKey { .. })));
        assert!(matches!(Spec::from_pairs([("A", "1")]), Err(SpecError::BadKey { .. })));
    }

    #[test]
    fn durations_take_units_and_refuse_the_rest() {
        let mut s = Spec::parse("a=0,b=500ms,c=30s,d=2m,e=5,f=1.5s,g=-1s,h=2d,i=99999m").unwrap();
        let ms = |s: &mut Spec, k| s.take_duration(k).map(|d| d.map(|d| d.as_millis()));
        assert_eq!(ms(&mut s, "a").unwrap(), Some(0));
        assert_eq!(ms(&mut s, "b").unwrap(), Some(500));
        assert_eq!(ms(&mut s, "c").unwrap(), Some(30_000));
        assert_eq!(ms(&mut s, "d").unwrap(), Some(120_000));
        assert_eq!(ms(&mut s, "z").unwrap(), None);
        for bad in ["e", "f", "g", "h", "i"] {
            let e = ms(&mut s, bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("duration"), "{e}");
        }
    }
}
