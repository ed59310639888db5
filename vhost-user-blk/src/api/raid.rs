//! RAID commands on the control socket: the live forms of `blkctl raid status|fail|replace|scrub`
//! for an array the daemon serves (`format=raid`), named by its member list as on the command line
//! (absolute paths; any order; after a replacement the old or the new list).
//!
//! - `{"cmd":"raid-status","members":"A:B:C"}` → the status object (`state`, `degraded`,
//!   `members`, `rebuild_progress`, `mismatches`, ..., and `rebuild` for the last rebuild started
//!   here: `running`, `seconds`, and when done `bytes` and `mb_s` or `error`)
//! - `{"cmd":"raid-fail","members":"A:B:C","member":"B"}` (a path or a role number)
//! - `{"cmd":"raid-replace","members":"A:B:C","old":"B","new":"D","rate_limit":BYTES_PER_SEC}`
//!   (OLD one of the listed members, or a role number) → `{"role":R,"members":"A:D:C"}` once D is
//!   in place; the rebuild then runs in the background while I/O goes on (follow it with
//!   `raid-status`)
//! - `{"cmd":"raid-scrub","members":"A:B:C","repair":false}` → `{"rows":..,"mismatches":..,
//!   "repaired":..,"unchecked":..}` when the scrub is done (it runs while I/O goes on; `unchecked`
//!   counts rows too few readable copies left to compare)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use ::raid::{Array, RebuildOptions, Status};
use blockdev::{IoCtx, OpenOptions, RawFile};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::stack::raid::split_members;
use crate::stack::raid_registry::{self, member_key};

/// `raid-status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReq {
    /// The array's members, `A:B:C`.
    pub members: String,
}

/// `raid-fail`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailReq {
    /// The array's members, `A:B:C`.
    pub members: String,
    /// The member to mark faulty: a path from the list or a role number.
    pub member: String,
}

/// `raid-replace`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplaceReq {
    /// The array's members, `A:B:C`.
    pub members: String,
    /// The member to replace (faulty, missing or stale; it may no longer exist).
    pub old: String,
    /// The new member: an existing file at least as large.
    pub new: String,
    /// Rebuild at most this many bytes per second.
    #[serde(default)]
    pub rate_limit: Option<u64>,
}

/// `raid-scrub`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScrubReq {
    /// The array's members, `A:B:C`.
    pub members: String,
    /// Rewrite parity or copies that disagree.
    #[serde(default)]
    pub repair: bool,
}

/// The status object both `blkctl raid status --json` and `raid-status` print.
pub fn status_json(st: &Status) -> Value {
    json!({
        "uuid": st.uuid,
        "level": st.level,
        "chunk": st.chunk,
        "size": st.size,
        "state": st.state,
        "degraded": st.degraded,
        "rebuild_progress": st.rebuild_progress,
        "scrub_progress": st.scrub_progress,
        "mismatches": st.mismatches,
        "read_errors_fixed": st.read_errors_fixed,
        "events": st.events,
        "ppl": st.ppl,
        "bitmap": st.bitmap,
        "members": st.members.iter()
            .map(|m| json!({"role": m.role, "name": m.name, "state": m.state, "errors": m.errors}))
            .collect::<Vec<_>>(),
    })
}

fn find(members: &str) -> Result<Arc<Array>, String> {
    let keys: Vec<String> = split_members(members).iter().map(|m| member_key(m)).collect();
    if keys.iter().any(|k| k.is_empty()) || keys.is_empty() {
        return Err(format!("members={members:?}: an empty member name"));
    }
    raid_registry::find(&keys)
}

fn io_ctx() -> Result<IoCtx, String> {
    IoCtx::new().map_err(|e| format!("cannot set up io_uring for the request: {e}"))
}

/// `raid-status`.
pub fn status(req: StatusReq) -> Result<Value, String> {
    let arr = find(&req.members)?;
    let st = arr.status();
    let mut v = status_json(&st);
    if let Some(job) = raid_registry::rebuild_job(&st.uuid) {
        v["rebuild"] = job.to_json();
    }
    Ok(v)
}

/// The role `member` names: a current member's path, else a role number.
fn role_of(arr: &Array, member: &str) -> Result<usize, String> {
    if let Some(r) = arr.role_of(&member_key(member)) {
        return Ok(r);
    }
    let n = arr.status().members.len();
    match member.parse::<usize>() {
        Ok(r) if r < n => Ok(r),
        _ => Err(format!("{member} is not a member of this array (nor a role number below {n})")),
    }
}

/// `raid-fail`.
pub fn fail(req: FailReq) -> Result<Value, String> {
    let arr = find(&req.members)?;
    let role = role_of(&arr, &req.member)?;
    let io = io_ctx()?;
    io.block_on(arr.fail_member(&io, role)).map_err(|e| e.to_string())?;
    Ok(json!({"role": role}))
}

/// Which role `old` had: a current member that is not active, else the role its superblock
/// names, else the only role that is down.
fn role_to_replace(io: &IoCtx, arr: &Array, old: &str) -> Result<usize, String> {
    let st = arr.status();
    let key = member_key(old);
    if let Some(r) = arr.role_of(&key) {
        if st.members[r].state == "active" {
            return Err(format!("{old} (role {r}) is active: fail it first"));
        }
        return Ok(r);
    }
    if Path::new(&key).exists() {
        let dev = RawFile::open(Path::new(&key), OpenOptions { read_only: true, ..OpenOptions::default() })
            .map_err(|e| e.to_string())?;
        let sb = io.block_on(::raid::read_superblock(io, old, &dev)).map_err(|e| e.to_string())?;
        if sb.uuid != arr.uuid() {
            return Err(format!("{old} is not a member of array {}", st.uuid));
        }
        let r = sb.role as usize;
        if st.members.get(r).is_some_and(|m| m.state == "active") {
            return Err(format!("{old} (role {r}) is active: fail it first"));
        }
        return Ok(r);
    }
    let down: Vec<usize> = st.members.iter().filter(|m| m.state != "active").map(|m| m.role).collect();
    match down.as_slice() {
        [r] => Ok(*r),
        [] => Err(format!("{old}: no member of array {} is down", st.uuid)),
        _ => Err(format!("cannot tell which role {old} had: roles {down:?} are down (name it by role number)")),
    }
}

/// `raid-replace`: put `new` in `old`'s place and start the rebuild in the background.
pub fn replace(req: ReplaceReq) -> Result<Value, String> {
    let arr = find(&req.members)?;
    let io = io_ctx()?;
    // OLD is one of the members the request lists, or a role number: never a stranger whose
    // superblock (or absence) would pick a role by itself.
    let listed: Vec<String> = split_members(&req.members).iter().map(|m| member_key(m)).collect();
    let n = arr.status().members.len();
    let role = if listed.contains(&member_key(&req.old)) {
        role_to_replace(&io, &arr, &req.old)?
    } else {
        match req.old.parse::<usize>() {
            Ok(r) if !Path::new(&req.old).exists() && r < n => r,
            _ => {
                return Err(format!(
                    "{} is not a member of the array {} (nor a role number below {n})",
                    req.old, req.members
                ))
            }
        }
    };
    let new_key = member_key(&req.new);
    if arr.role_of(&new_key).is_some() {
        return Err(format!("{} is already a member of this array", req.new));
    }
    let dev = RawFile::open(Path::new(&new_key), OpenOptions::default()).map_err(|e| e.to_string())?;
    io.block_on(arr.replace(&io, role, new_key.clone(), Arc::new(dev))).map_err(|e| e.to_string())?;
    raid_registry::add_key(&arr, new_key.clone());
    let opts = RebuildOptions { rate_limit: req.rate_limit, ..RebuildOptions::default() };
    raid_registry::start_rebuild(arr.clone(), opts)?;
    let old_key = member_key(&req.old);
    let list: Vec<String> = split_members(&req.members)
        .iter()
        .map(|m| if member_key(m) == old_key { new_key.clone() } else { m.clone() })
        .collect();
    Ok(json!({"role": role, "members": list.join(":")}))
}

/// `raid-scrub`: check (and with `repair`, fix) every row while the array is served.
pub fn scrub(req: ScrubReq) -> Result<Value, String> {
    let arr = find(&req.members)?;
    let io = io_ctx()?;
    let rep = io.block_on(arr.scrub(&io, req.repair)).map_err(|e| e.to_string())?;
    Ok(json!({"rows": rep.rows, "mismatches": rep.mismatches, "repaired": rep.repaired, "unchecked": rep.unchecked}))
}

/// Send one request to the control socket at `socket` and return its `result` (or `null`);
/// an `ok:false` answer becomes its error message.
pub fn call(socket: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("{}: cannot connect to the daemon's control socket: {e}", socket.display()))?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| format!("{}: {e}", socket.display()))?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|e| format!("{}: not a control socket answer ({e}): {answer:?}", socket.display()))?;
    if v["ok"] == true {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(v["error"].as_str().unwrap_or("the daemon refused the request").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Request;

    #[test]
    fn requests_parse_with_optional_fields() {
        let r: Request = serde_json::from_str(r#"{"cmd":"raid-scrub","members":"a:b:c"}"#).unwrap();
        assert_eq!(r, Request::RaidScrub(ScrubReq { members: "a:b:c".into(), repair: false }));
        let r: Request =
            serde_json::from_str(r#"{"cmd":"raid-replace","members":"a:b","old":"b","new":"d","rate_limit":5}"#)
                .unwrap();
        assert!(matches!(r, Request::RaidReplace(ReplaceReq { rate_limit: Some(5), .. })));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"raid-fail","members":"a:b"}"#).is_err());
    }

    #[test]
    fn an_array_not_served_is_an_error_that_says_so() {
        let e = status(StatusReq { members: "/nonexistent/raid-c-x:/nonexistent/raid-c-y".into() }).unwrap_err();
        assert!(e.contains("no array with members"), "{e}");
    }
}
