//! `limits` and `set-limits`: an export's I/O limits while it is served.
//!
//! - `{"cmd":"limits","name":"NAME"}` → `{"name":..,"group":null|"G","members":N,"limits":{"iops-total":5000,..}}`
//! - `{"cmd":"set-limits","name":"NAME","limits":{"iops-total":5000,"bps-write":0,..}}` → the
//!   same answer with the new limits. Only the keys given change; 0 removes that limit. On an
//!   export in a throttle group it changes the group's limits, for every member (as QEMU's
//!   `block_set_io_throttle`). The result is validated whole first: an error changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::server::Daemon;

/// `limits`: the limits in force on an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitsReq {
    /// Export name.
    pub name: String,
}

/// `set-limits`: change some of an export's limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetLimitsReq {
    /// Export name.
    pub name: String,
    /// Keys to change (`iops-total`, `bps-read-max`, ...), each a whole number; 0 removes it.
    pub limits: Map<String, Value>,
}

fn answer(name: &str, group: &crate::server::qos::ThrottleGroup) -> Value {
    json!({"name": name, "group": group.name(), "members": group.members(), "limits": group.limits()})
}

/// Carry out `limits`.
pub fn get(daemon: &Daemon, req: LimitsReq) -> Result<Value, String> {
    let export = daemon.export(&req.name).ok_or(format!("{}: no such export", req.name))?;
    Ok(answer(&req.name, export.qos.group()))
}

/// Carry out `set-limits`.
pub fn set(daemon: &Daemon, req: SetLimitsReq) -> Result<Value, String> {
    let export = daemon.export(&req.name).ok_or(format!("{}: no such export", req.name))?;
    let group = export.qos.group();
    let new = group.limits().updated(&req.limits).map_err(|e| format!("{}: {e}", req.name))?;
    group.set_limits(new);
    tracing::info!(export = %req.name, group = group.name(), limits = %new.describe(), "I/O limits changed");
    Ok(answer(&req.name, group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{handle, Request};
    use crate::server::DiskSpec;

    #[test]
    fn set_limits_changes_the_group_and_refuses_bad_input_without_change() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::new();
        for n in ["a", "b"] {
            let sock = dir.path().join(format!("{n}.sock"));
            let spec = format!("socket={},name={n},format=mem,size=1M,throttle-group=g,iops-total=100", sock.display());
            d.add(&DiskSpec::parse(&spec).unwrap()).unwrap();
        }
        let req = |s: &str| handle(&d, serde_json::from_str::<Request>(s).unwrap());
        let r = req(r#"{"cmd":"set-limits","name":"a","limits":{"iops-total":500,"iops-total-max":1000}}"#);
        assert_eq!(r["result"]["limits"], json!({"iops-total": 500, "iops-total-max": 1000}), "{r}");
        let r = req(r#"{"cmd":"limits","name":"b"}"#);
        assert_eq!((r["result"]["group"].as_str(), r["result"]["members"].as_u64()), (Some("g"), Some(2)), "{r}");
        assert_eq!(r["result"]["limits"]["iops-total"], 500);
        for (bad, needle) in [
            (r#"{"cmd":"set-limits","name":"nope","limits":{"iops-total":1}}"#, "nope: no such export"),
            (r#"{"cmd":"set-limits","name":"a","limits":{"iops-total":-1}}"#, "negative"),
            (r#"{"cmd":"set-limits","name":"a","limits":{"iops-total":18446744073709551616}}"#, "whole number"),
            (r#"{"cmd":"set-limits","name":"a","limits":{"iops-totl":1}}"#, "unknown limit key"),
            (r#"{"cmd":"set-limits","name":"a","limits":{"iops-total-max":10}}"#, "lower than"),
            (r#"{"cmd":"set-limits","name":"a","limits":{"iops-read":10}}"#, "cannot be set together"),
        ] {
            let r = req(bad);
            assert_eq!(r["ok"], false, "{bad}: {r}");
            assert!(r["error"].as_str().unwrap().contains(needle), "{bad}: {r}");
        }
        let r = req(r#"{"cmd":"limits","name":"a"}"#);
        assert_eq!(r["result"]["limits"], json!({"iops-total": 500, "iops-total-max": 1000}), "unchanged: {r}");
        let r = req(r#"{"cmd":"set-limits","name":"a","limits":{"iops-total":0,"iops-total-max":0}}"#);
        assert_eq!(r["result"]["limits"], json!({}), "{r}");
        assert!(!d.export("b").unwrap().qos.on());
        d.shutdown();
    }

    #[test]
    fn an_export_whose_limits_disagree_with_its_group_is_refused_and_nothing_served() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::new();
        let spec = |n: &str, l: &str| {
            let sock = dir.path().join(format!("{n}.sock"));
            DiskSpec::parse(&format!("socket={},name={n},format=mem,size=1M,throttle-group=g{l}", sock.display()))
                .unwrap()
        };
        d.add(&spec("a", ",iops-total=100")).unwrap();
        let e = d.add(&spec("b", ",iops-total=200")).unwrap_err();
        assert!(e.contains("throttle-group=g") && e.contains("iops-total=100"), "{e}");
        assert!(d.export("b").is_none() && !dir.path().join("b.sock").exists());
        d.add(&spec("c", "")).unwrap();
        assert_eq!(d.export("c").unwrap().qos.group().limits().describe(), "iops-total=100");
        d.shutdown();
    }
}
