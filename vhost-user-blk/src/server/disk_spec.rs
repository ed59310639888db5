//! A `--disk` spec (`socket=PATH,format=FMT,KEY=VALUE,...`): the export keys are taken here, the
//! rest describes the device and goes to the opener.

use std::collections::HashMap;
use std::sync::Arc;

use blockdev::BlockDev;

use crate::spec::Spec;
use crate::stack::{open_disk, OpenCtx};

use super::export::ExportSettings;
use super::qos::limits::{is_limit_key, Limits};

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

/// Split `a=b,c=d` into pairs with the spec syntax rules of [`Spec::parse`].
pub fn split_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let spec = Spec::parse(text).map_err(|e| e.to_string())?;
    Ok(spec.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect())
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

/// `sqpoll=on|off|MS`: on is a 1 ms idle time, a number is the idle time in milliseconds.
fn parse_sqpoll(v: &str) -> Result<u32, String> {
    match v {
        "on" | "true" | "yes" => Ok(1),
        "off" | "false" | "no" => Ok(0),
        _ => v.parse().map_err(|_| format!("sqpoll={v:?}: expected on, off or an idle time in milliseconds")),
    }
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
        let mut limits = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "throttle-group" => s.throttle_group = Some(v),
                _ if is_limit_key(&k) => limits.push((k, v)),
                "socket" => socket = Some(v),
                "name" => name = Some(v),
                "num-queues" => s.num_queues = parse_num(&k, &v)?,
                "queue-size" => s.queue_size = parse_num(&k, &v)?,
                "read-only" => s.read_only = parse_bool(&k, &v)?,
                "serial" => s.serial = v,
                "logical-block-size" => s.logical_block_size = parse_num(&k, &v)?,
                "write-cache" => s.write_cache = parse_bool(&k, &v)?,
                "queues-per-thread" => s.queues_per_thread = parse_num(&k, &v)?,
                "poll-us" => s.poll_us = Some(parse_num(&k, &v)?),
                "sqpoll" => s.sqpoll_ms = parse_sqpoll(&v)?,
                _ => device.push((k, v)),
            }
        }
        let socket = socket.ok_or("missing socket=PATH")?;
        if socket.is_empty() {
            return Err("socket= is empty".into());
        }
        s.socket = socket.clone().into();
        s.limits = Limits::from_pairs(limits.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        s.validate()?;
        let has_node = device.iter().any(|(k, _)| k == "node");
        if has_node && device.len() != 1 {
            return Err("node=NAME serves a named node as it is: no format or other device keys with it".into());
        }
        if !has_node && !device.iter().any(|(k, _)| k == "format") {
            return Err("missing format=FMT (formats are named, never probed) or node=NAME".into());
        }
        Ok(DiskSpec { name: name.unwrap_or(socket), settings: s, device })
    }

    /// The device keys as a spec string (`format=raw,path=...`).
    pub fn device_spec(&self) -> String {
        self.device.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// Open a device from its keys with the stack builder (`format=raw,path=...`, `format=mem,...`
/// and every format registered there); `read_only` opens the whole stack read-only. `nodes` are
/// the named nodes a path-valued key may name as `node:NAME`; `node=NAME` alone is that node.
pub fn open_device(
    keys: &[(String, String)],
    read_only: bool,
    nodes: &HashMap<String, Arc<dyn BlockDev>>,
) -> Result<Arc<dyn BlockDev>, String> {
    if let [(k, name)] = keys {
        if k == "node" {
            return nodes.get(name).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = nodes.keys().map(String::as_str).collect();
                known.sort_unstable();
                format!(
                    "node={name}: no such node (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )
            });
        }
    }
    let mut spec = Spec::from_pairs(keys.iter().cloned()).map_err(|e| e.to_string())?;
    let ctx = OpenCtx { read_only, nodes: nodes.clone() };
    open_disk(&mut spec, &ctx).map_err(|e| e.to_string())
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
    fn queues_per_thread_groups_queues_onto_threads() {
        let d = DiskSpec::parse("socket=s,format=mem,size=1M,num-queues=5,queues-per-thread=2").unwrap();
        assert_eq!((d.settings.queues_per_thread, d.settings.threads()), (2, 3));
        assert_eq!(DiskSpec::parse("socket=s,format=mem,num-queues=3").unwrap().settings.threads(), 3);
    }

    #[test]
    fn bad_specs_are_refused_with_the_key_named() {
        assert!(DiskSpec::parse("format=mem,size=1M").unwrap_err().contains("socket"));
        assert!(DiskSpec::parse("socket=s,size=1M").unwrap_err().contains("format"));
        assert!(DiskSpec::parse("socket=s,format=mem,num-queues=65").unwrap_err().contains("num-queues"));
        assert!(DiskSpec::parse("socket=s,format=mem,queue-size=1000").unwrap_err().contains("queue-size"));
        let qpt = DiskSpec::parse("socket=s,format=mem,num-queues=2,queues-per-thread=3").unwrap_err();
        assert!(qpt.contains("queues-per-thread"), "{qpt}");
        assert!(DiskSpec::parse("socket=s,format=mem,poll-us=10001").unwrap_err().contains("poll-us"));
        assert_eq!(DiskSpec::parse("socket=s,format=mem,poll-us=0").unwrap().settings.poll_us, Some(0));
        assert_eq!(DiskSpec::parse("socket=s,format=mem,sqpoll=on").unwrap().settings.sqpoll_ms, 1);
        assert_eq!(DiskSpec::parse("socket=s,format=mem,sqpoll=off").unwrap().settings.sqpoll_ms, 0);
        assert_eq!(DiskSpec::parse("socket=s,format=mem,sqpoll=20").unwrap().settings.sqpoll_ms, 20);
        assert!(DiskSpec::parse("socket=s,format=mem,sqpoll=1001").unwrap_err().contains("sqpoll"));
        assert!(DiskSpec::parse("socket=s,format=mem,sqpoll=fast").unwrap_err().contains("sqpoll"));
        assert!(DiskSpec::parse("socket=s,format=mem,read-only=maybe").unwrap_err().contains("read-only"));
        assert!(DiskSpec::parse("socket=s,socket=t,format=mem").unwrap_err().contains("twice"));
        assert!(DiskSpec::parse("socket=s,format=mem,,size=1M").is_err());
    }

    #[test]
    fn limit_keys_and_throttle_group_are_export_keys() {
        let d = DiskSpec::parse("socket=s,format=mem,size=1M,iops-total=5000,bps-read=100M,throttle-group=g").unwrap();
        assert_eq!(d.settings.limits.describe(), "bps-read=104857600,iops-total=5000");
        assert_eq!(d.settings.throttle_group.as_deref(), Some("g"));
        assert_eq!(d.device_spec(), "format=mem,size=1M");
        for (spec, needle) in [
            ("socket=s,format=mem,iops-total=-1", "iops-total"),
            ("socket=s,format=mem,iops-total=0", "iops-total=0"),
            ("socket=s,format=mem,iops-total=18446744073709551616", "iops-total"),
            ("socket=s,format=mem,bps-total-max=5", "needs bps-total"),
            ("socket=s,format=mem,throttle-group=", "throttle-group"),
        ] {
            let e = DiskSpec::parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn opener_refuses_unknown_format_and_keys() {
        let keys = |s: &str| split_pairs(s).unwrap();
        let none = HashMap::new();
        assert!(open_device(&keys("format=qcow9"), false, &none).is_err());
        assert!(open_device(&keys("format=mem,size=1M,bogus=1"), false, &none).err().unwrap().contains("bogus"));
        assert_eq!(open_device(&keys("format=mem,size=1M"), false, &none).unwrap().info().size, 1 << 20);
    }

    #[test]
    fn node_key_serves_a_named_node_and_unknown_nodes_are_named() {
        let keys = |s: &str| split_pairs(s).unwrap();
        let mut nodes = HashMap::new();
        nodes.insert("a".to_string(), open_device(&keys("format=mem,size=2M"), false, &HashMap::new()).unwrap());
        assert_eq!(open_device(&keys("node=a"), false, &nodes).unwrap().info().size, 2 << 20);
        let e = open_device(&keys("node=b"), false, &nodes).err().unwrap();
        assert!(e.contains("node=b") && e.contains("known: a"), "{e}");
        assert!(DiskSpec::parse("socket=s,node=a,format=raw").unwrap_err().contains("node=NAME"));
    }
}
