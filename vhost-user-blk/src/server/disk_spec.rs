//! A `--disk` spec (`socket=PATH,format=FMT,KEY=VALUE,...`): the export keys are taken here, the
//! rest describes the device and goes to the opener.

use std::sync::Arc;

use blockdev::{size::parse_size, BlockDev, MemDisk, OpenOptions, RawFile};

use super::export::ExportSettings;

/// Keys that belong to the export rather than the device.
pub const EXPORT_KEYS: &[&str] =
    &["socket", "num-queues", "queue-size", "read-only", "serial", "logical-block-size", "write-cache", "name"];

/// A `--disk` spec split into its export settings and its device keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Export name (the `name` key, else the socket path).
    pub name: String,
    /// The export settings.
    pub settings: ExportSettings,
    /// Device keys, in order (`format` first among them).
    pub device: Vec<(String, String)>,
}

/// Split `a=b,c=d` into pairs; every item must have a `=`, and no key may repeat.
pub fn split_pairs(spec: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{item:?} is not KEY=VALUE"));
        };
        if out.iter().any(|(key, _)| key == k) {
            return Err(format!("key {k:?} given twice"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Parse `on|off|true|false|yes|no|1|0` for `key`.
pub fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v:?}: expected on or off")),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{key}={v:?}: expected a number"))
}

impl DiskSpec {
    /// Parse a `--disk` spec.
    pub fn parse(spec: &str) -> Result<DiskSpec, String> {
        Self::from_pairs(split_pairs(spec)?)
    }

    /// Build from key/value pairs (a parsed spec, or a config file's export table).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<DiskSpec, String> {
        let mut socket = None;
        let mut name = None;
        let mut s = ExportSettings::new("");
        let mut device = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "socket" => socket = Some(v),
                "name" => name = Some(v),
                "num-queues" => s.num_queues = parse_num(&k, &v)?,
                "queue-size" => s.queue_size = parse_num(&k, &v)?,
                "read-only" => s.read_only = parse_bool(&k, &v)?,
                "serial" => s.serial = v,
                "logical-block-size" => s.logical_block_size = parse_num(&k, &v)?,
                "write-cache" => s.write_cache = parse_bool(&k, &v)?,
                _ => device.push((k, v)),
            }
        }
        let socket = socket.ok_or("missing socket=PATH")?;
        if socket.is_empty() {
            return Err("socket= is empty".into());
        }
        s.socket = socket.clone().into();
        s.validate()?;
        if !device.iter().any(|(k, _)| k == "format") {
            return Err("missing format=FMT (formats are named, never probed)".into());
        }
        Ok(DiskSpec { name: name.unwrap_or(socket), settings: s, device })
    }

    /// The device keys as a spec string (`format=raw,path=...`).
    pub fn device_spec(&self) -> String {
        self.device.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// Open a device from its keys: `format=raw,path=FILE[,direct=on]` or `format=mem,size=SIZE`.
///
/// A stand-in for the stack builder (`stack::open_disk`) until it lands; unknown keys are refused.
pub fn open_device(keys: &[(String, String)], read_only: bool) -> Result<Arc<dyn BlockDev>, String> {
    let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let format = get("format").ok_or("missing format=FMT")?;
    let allowed: &[&str] = match format {
        "raw" => &["format", "path", "direct"],
        "mem" => &["format", "size"],
        other => return Err(format!("format={other}: unknown format (raw, mem)")),
    };
    if let Some((k, _)) = keys.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(format!("format={format}: unknown key {k:?}"));
    }
    match format {
        "raw" => {
            let path = get("path").ok_or("format=raw needs path=FILE")?;
            let direct = get("direct").map(|v| parse_bool("direct", v)).transpose()?.unwrap_or(false);
            let dev = RawFile::open(path, OpenOptions { read_only, direct, ..OpenOptions::default() })
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(dev))
        }
        _ => {
            let size = get("size").ok_or("format=mem needs size=SIZE")?;
            let size = parse_size(size).map_err(|e| format!("size={size}: {e}"))?;
            Ok(Arc::new(MemDisk::new(size).map_err(|e| e.to_string())?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_keys_are_split_from_device_keys() {
        let d = DiskSpec::parse("socket=/tmp/a.sock,format=mem,size=1M,num-queues=2,read-only=on,serial=abc").unwrap();
        assert_eq!(d.settings.num_queues, 2);
        assert!(d.settings.read_only);
        assert_eq!(d.device_spec(), "format=mem,size=1M");
        assert_eq!(d.name, "/tmp/a.sock");
    }

    #[test]
    fn bad_specs_are_refused_with_the_key_named() {
        assert!(DiskSpec::parse("format=mem,size=1M").unwrap_err().contains("socket"));
        assert!(DiskSpec::parse("socket=s,size=1M").unwrap_err().contains("format"));
        assert!(DiskSpec::parse("socket=s,format=mem,num-queues=65").unwrap_err().contains("num-queues"));
        assert!(DiskSpec::parse("socket=s,format=mem,queue-size=1000").unwrap_err().contains("queue-size"));
        assert!(DiskSpec::parse("socket=s,format=mem,read-only=maybe").unwrap_err().contains("read-only"));
        assert!(DiskSpec::parse("socket=s,socket=t,format=mem").unwrap_err().contains("twice"));
    }

    #[test]
    fn opener_refuses_unknown_format_and_keys() {
        let keys = |s: &str| split_pairs(s).unwrap();
        assert!(open_device(&keys("format=qcow9"), false).is_err());
        assert!(open_device(&keys("format=mem,size=1M,bogus=1"), false).err().unwrap().contains("bogus"));
        assert_eq!(open_device(&keys("format=mem,size=1M"), false).unwrap().info().size, 1 << 20);
    }
}
