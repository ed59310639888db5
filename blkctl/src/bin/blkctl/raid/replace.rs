//! `blkctl raid replace ARRAY OLD NEW`: OLD must be one of ARRAY's members (by what it is:
//! device and inode, any spelling) or a role number, and not active; NEW must exist, not be a
//! member already, and hold nothing but zeros or this array's own superblock (an old member put
//! back) unless `--force`. All of that is checked, and every member and NEW are opened and
//! locked, before the first byte is written. The command prints the member list of the array it
//! made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::signature::{probe, Signature};
use blockdev::size::format_iec;
use blockdev::{IoCtx, OpenOptions, RawFile};
use raid::{AssembleOptions, RebuildOptions, Status};
use serde_json::{json, Value};
use vhost_user_blk::api::raid::call;
use vhost_user_blk::stack::raid_registry::member_key;

use super::members::{names, position, resolve, role_number, Listed};
use super::{keys, open_listed, CmdResult};
use blkctl::progress::{self, Meter, Show, Unit, Watch};
use crate::args;

/// Options of `blkctl raid replace`.
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 replaced (and rebuilt, unless --no-wait), 1 error (nothing written \
                        when a check refused it).")]
pub struct ReplaceArgs {
    /// The members, A:B:C (with OLD).
    array: String,
    /// The member to replace: a path from the list (faulty, missing or stale; it may no longer
    /// exist) or a role number.
    old: String,
    /// The new member: an existing file or block device at least as large as the others.
    new: String,
    /// Rebuild at most this many bytes per second (e.g. 100M).
    #[arg(long, value_parser = args::size)]
    rate_limit: Option<u64>,
    /// Overwrite a NEW that holds something (anything but zeros or this array's superblock).
    #[arg(long)]
    force: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    /// Send the command to the daemon serving the array (its --api-socket).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// With --api-socket: return once the rebuild has started (follow it with `status`).
    #[arg(long, requires = "api_socket")]
    no_wait: bool,
}

/// OLD as the user named it.
#[derive(Debug, Clone, Copy)]
enum Old {
    /// The listed member at this index.
    Listed(usize),
    /// A role number.
    Role(usize),
}

/// Check the arguments that need no member opened: the list, OLD in it (or a number), NEW not in
/// it and existing.
fn check_args(a: &ReplaceArgs) -> Result<(Vec<Listed>, Old), String> {
    let list = resolve(&a.array)?;
    let old = match position(&list, &a.old) {
        Some(i) => Old::Listed(i),
        // Roles go up to the member count; the superblocks say how many (checked once read).
        None => match role_number(&a.old, raid::superblock::MAX_MEMBERS) {
            Some(r) => Old::Role(r),
            None => {
                return Err(format!(
                    "{} is not a member of the array {}: its members are {} (name one of them, or a role number)",
                    a.old,
                    a.array,
                    names(&list)
                ))
            }
        },
    };
    if let Some(i) = position(&list, &a.new) {
        return Err(format!("{} is already a member of the array (listed as {})", a.new, list[i].name));
    }
    if !Path::new(&a.new).exists() {
        return Err(format!("{}: does not exist (make it first, as large as the other members)", a.new));
    }
    Ok((list, old))
}

/// Refuse a NEW that holds something other than zeros or a superblock of the array `uuid`.
fn check_new(io: &IoCtx, a: &ReplaceArgs, dev: &RawFile, uuid: &str) -> CmdResult {
    if a.force {
        return Ok(());
    }
    let sig = probe(dev.file(), Path::new(&a.new))?;
    let ours = || {
        io.block_on(raid::read_superblock(io, &a.new, dev))
            .is_ok_and(|sb| raid::superblock::format_uuid(&sb.uuid) == uuid)
    };
    match sig {
        None => Ok(()),
        Some(Signature::Header("a strata RAID member")) if ours() => Ok(()),
        Some(sig) => Err(format!(
            "{}: holds {sig}; refusing to overwrite it with a rebuild (--force overwrites)",
            a.new
        )
        .into()),
    }
}

/// The role OLD names, from the members' superblocks (`st`); refused while it is active.
fn role_of(a: &ReplaceArgs, list: &[Listed], old: Old, st: &Status) -> Result<usize, String> {
    let n = st.members.len();
    let role = match old {
        Old::Role(r) if r >= n => {
            return Err(format!(
                "{} is not a member of the array {}: its members are {} (name one of them, or a role number below {n})",
                a.old,
                a.array,
                names(list)
            ));
        }
        Old::Role(r) => r,
        Old::Listed(i) if list[i].id.is_some() => st
            .members
            .iter()
            .find(|m| m.name == list[i].name)
            .map(|m| m.role)
            .ok_or_else(|| format!("{}: its superblock gives it no role in array {}", a.old, st.uuid))?,
        Old::Listed(_) => {
            let missing: Vec<usize> = st.members.iter().filter(|m| m.state == "missing").map(|m| m.role).collect();
            match missing.as_slice() {
                [r] => *r,
                [] => return Err(format!("{}: does not exist, but no role of array {} is missing", a.old, st.uuid)),
                _ => {
                    return Err(format!(
                        "{}: does not exist, and roles {missing:?} are missing: name the role by number",
                        a.old
                    ))
                }
            }
        }
    };
    let m = &st.members[role];
    if m.state == "active" {
        let named = if m.name == a.old { String::new() } else { format!(", {}", m.name) };
        return Err(format!(
            "{} (role {role}{named}) is an active member: fail it first (blkctl raid fail {} {}), then replace it",
            a.old, a.array, a.old
        ));
    }
    Ok(role)
}

/// The member list after `role` got NEW: OLD's entry replaced, else the entry that held the role,
/// else the only entry no role claims (a missing file), else NEW added.
fn new_list(a: &ReplaceArgs, list: &[Listed], old: Old, role: usize, st: &Status) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|l| l.name.clone()).collect();
    let at = match old {
        Old::Listed(i) => Some(i),
        Old::Role(_) => list.iter().position(|l| st.members[role].name == l.name).or_else(|| {
            let free: Vec<usize> =
                (0..list.len()).filter(|&i| !st.members.iter().any(|m| m.name == list[i].name)).collect();
            (free.len() == 1).then(|| free[0])
        }),
    };
    match at {
        Some(i) => names[i] = a.new.clone(),
        None => names.push(a.new.clone()),
    }
    names
}

/// Run `replace`.
pub fn run(io: &IoCtx, a: ReplaceArgs) -> CmdResult {
    let (list, old) = check_args(&a)?;
    if let Some(sock) = a.api_socket.clone() {
        return live(io, &sock, &a, &list, old);
    }
    let members = open_listed(&a.array, &list, false)?;
    let new_dev = RawFile::open(Path::new(&a.new), OpenOptions::default())?;
    let st = io.block_on(raid::examine(io, members.clone()))?;
    let role = role_of(&a, &list, old, &st)?;
    check_new(io, &a, &new_dev, &st.uuid)?;

    let arr = io.block_on(raid::assemble(io, members, AssembleOptions::default()))?;
    io.block_on(arr.replace(io, role, a.new.clone(), Arc::new(new_dev)))?;
    let t = Instant::now();
    let opts = RebuildOptions { rate_limit: a.rate_limit, ..Default::default() };
    let arr = Arc::new(arr);
    let watched = arr.clone();
    let progress = Watch::start("rebuild", progress::show_on_stderr(false), move || watched.status().rebuild_progress);
    let res = io.block_on(arr.rebuild(io, opts));
    let secs = t.elapsed().as_secs_f64();
    drop(progress);
    let bytes = res?;
    io.block_on(arr.close(io))?;
    let names = new_list(&a, &list, old, role, &st);
    report(&a, role, &names.join(":"), Some((bytes, secs)))
}

/// Print what was done: one line, or with `--json` an object.
fn report(a: &ReplaceArgs, role: usize, array: &str, rebuilt: Option<(u64, f64)>) -> CmdResult {
    let mb_s = rebuilt.map(|(b, s)| b as f64 / s.max(1e-9) / 1e6);
    if a.json {
        let v: Value = json!({
            "role": role,
            "old": a.old,
            "new": a.new,
            "array": array,
            "rebuilt": rebuilt.is_some(),
            "bytes": rebuilt.map(|r| r.0),
            "seconds": rebuilt.map(|r| r.1),
            "mb_s": mb_s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match rebuilt {
        Some((bytes, secs)) => println!(
            "rebuilt role {role} onto {} (replacing {}): {} in {secs:.2}s ({:.1} MB/s); the array is now {array}",
            a.new,
            a.old,
            format_iec(bytes),
            mb_s.unwrap_or(0.0)
        ),
        None => println!(
            "role {role} ({}) replaced by {}; the daemon is rebuilding it; the array is now {array}",
            a.old, a.new
        ),
    }
    Ok(())
}

/// `replace --api-socket`: the daemon swaps the member in and rebuilds in the background; show
/// progress until it is done (unless `--no-wait`).
fn live(io: &IoCtx, sock: &Path, a: &ReplaceArgs, list: &[Listed], old: Old) -> CmdResult {
    let status_req = json!({"cmd": "raid-status", "members": keys(&a.array)});
    let st = call(sock, &status_req)?;
    {
        // A look at NEW under a shared lock: refused while anything else writes it.
        let dev = RawFile::open(Path::new(&a.new), OpenOptions { read_only: true, ..OpenOptions::default() })?;
        check_new(io, a, &dev, st["uuid"].as_str().unwrap_or(""))?;
    }
    let old_arg = match old {
        Old::Listed(i) => member_key(&list[i].name),
        Old::Role(r) => r.to_string(),
    };
    let req = json!({"cmd": "raid-replace", "members": keys(&a.array), "old": old_arg, "new": member_key(&a.new),
                     "rate_limit": a.rate_limit});
    let v = call(sock, &req)?;
    let role = v["role"].as_u64().unwrap_or(0) as usize;
    // The list in the user's spelling when OLD was named by path; the daemon's otherwise.
    let array = match old {
        Old::Listed(i) => {
            let mut names: Vec<String> = list.iter().map(|l| l.name.clone()).collect();
            names[i] = a.new.clone();
            names.join(":")
        }
        Old::Role(_) => v["members"].as_str().unwrap_or("?").to_string(),
    };
    if a.no_wait {
        return report(a, role, &array, None);
    }
    let status_req = json!({"cmd": "raid-status", "members": v["members"]});
    let show = progress::show_on_stderr(false);
    let mut meter = Meter::new("rebuild", Unit::Permille, 1000, show);
    loop {
        let st = call(sock, &status_req)?;
        let rb = &st["rebuild"];
        if rb["running"] == true {
            if let (Show::Bar, Some(p)) = (show, st["rebuild_progress"].as_f64()) {
                meter.set((p.clamp(0.0, 1.0) * 1000.0) as u64);
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        meter.finish();
        if let Some(e) = rb["error"].as_str() {
            return Err(format!("role {role} was replaced by {}, but the rebuild failed: {e}", a.new).into());
        }
        let bytes = rb["bytes"].as_u64().unwrap_or(0);
        let secs = rb["seconds"].as_f64().unwrap_or(0.0);
        return report(a, role, &array, Some((bytes, secs)));
    }
}
