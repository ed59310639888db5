//! `blkctl raid create|status|fail|replace|scrub`: parse the options and call the `raid` crate on
//! the member files. An array is named by its member list `A:B:C` (any order; roles come from
//! the superblocks; a file that does not exist is a missing member; one file listed twice, under
//! any name, is refused). With `--api-socket PATH`, status, fail, replace and scrub go to the
//! daemon that serves the array instead (`vhost_user_blk::api::raid`), so they run while its I/O
//! goes on. Every check of the arguments and of the members' superblocks comes before the first
//! byte is written; a refused command leaves every member as it was.

mod create;
mod members;
mod replace;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blkctl::progress::{self, Meter, Show, Unit, Watch};
use blockdev::raw::holder::THIS_PROCESS;
use blockdev::size::format_iec;
use blockdev::{BlockDev, ErrorKind, IoCtx, OpenOptions, RawFile};
use raid::{Array, AssembleOptions, MemberList, Status};
use serde_json::{json, Value};
use vhost_user_blk::api::raid::{call, status_json};
use vhost_user_blk::stack::raid_registry::member_key;

use members::{names, position, resolve, role_number, Listed};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The RAID subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create and manage RAID 0, 1 and 5 arrays (served with format=raid,members=A:B:C).
    #[command(subcommand)]
    Raid(RaidCmd),
}

/// What `scrub` exits with, as `qcow2 check` and `thin check` do.
const SCRUB_CODES: &str = "Exit status: 0 every row checked and none left inconsistent (none found, or \
                           --repair fixed them all); 2 mismatches found and left as they were (run again \
                           with --repair); 3 none found, but rows the array could not check (degraded: too \
                           few readable copies); 1 error (the scrub did not run or did not finish).";

/// `blkctl raid ...`.
#[derive(clap::Subcommand)]
pub enum RaidCmd {
    /// Make a new array over files or block devices. Refuses members that hold anything unless
    /// --force; with --size, makes member files that do not exist.
    Create(create::CreateArgs),
    /// Show state, members, degraded, rebuild progress and the last scrub's mismatch count
    /// (read from the superblocks; nothing is written).
    Status {
        /// The members, A:B:C.
        array: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Ask the daemon serving the array (its --api-socket) instead of reading the members.
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
    },
    /// Mark MEMBER (a path from the list, or a role number) faulty. Refused when the array
    /// would not survive without it.
    #[command(after_help = "Exit status: 0 marked faulty (or it was not active), 1 error (nothing written \
                            when a check refused it).")]
    Fail {
        /// The members, A:B:C.
        array: String,
        /// The member to fail.
        member: String,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
        /// Send the command to the daemon serving the array (its --api-socket).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
    },
    /// Replace OLD (faulty, missing or stale: a path from the list, or a role number) with NEW
    /// and rebuild NEW to completion (with --api-socket the daemon rebuilds while it serves the
    /// array; progress is shown until done). Prints the new member list.
    Replace(replace::ReplaceArgs),
    /// Resync if needed, then check every stripe (and with --repair, fix mismatches).
    #[command(after_help = SCRUB_CODES)]
    Scrub {
        /// The members, A:B:C.
        array: String,
        /// Rewrite parity (RAID 5) or copies (RAID 1) that disagree.
        #[arg(long)]
        repair: bool,
        /// Print JSON (top-level "mismatches").
        #[arg(long)]
        json: bool,
        /// Send the command to the daemon serving the array (its --api-socket): the scrub runs
        /// while the daemon serves it.
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
    },
}

impl crate::Group for Cmd {
    fn run(self) -> CmdResult {
        let Cmd::Raid(cmd) = self;
        let io = IoCtx::new()?;
        match cmd {
            RaidCmd::Create(a) => create::run(&io, a),
            RaidCmd::Status { array, json, api_socket: Some(sock) } => {
                resolve(&array)?;
                let v = call(&sock, &json!({"cmd": "raid-status", "members": keys(&array)}))?;
                print_status(&v, json)
            }
            RaidCmd::Status { array, json, api_socket: None } => status(&io, &array, json),
            RaidCmd::Fail { array, member, json, api_socket } => fail(&io, &array, &member, json, api_socket),
            RaidCmd::Replace(a) => replace::run(&io, a),
            RaidCmd::Scrub { array, repair, json, api_socket: Some(sock) } => scrub_live(&sock, &array, repair, json),
            RaidCmd::Scrub { array, repair, json, api_socket: None } => scrub(&io, &array, repair, json),
        }
    }
}

/// The member list with every member as the daemon knows it (absolute paths).
fn keys(array: &str) -> String {
    vhost_user_blk::stack::raid::split_members(array).iter().map(|m| member_key(m)).collect::<Vec<_>>().join(":")
}

/// Open the listed members (writable unless `read_only`); a member another process holds (a
/// daemon serving the array) is an error that points at --api-socket.
fn open_listed(array: &str, list: &[Listed], read_only: bool) -> Result<MemberList, Box<dyn std::error::Error>> {
    let mut out: MemberList = Vec::with_capacity(list.len());
    for l in list {
        if l.id.is_none() {
            tracing::warn!("raid member {} does not exist: treated as missing", l.name);
            out.push((l.name.clone(), None));
            continue;
        }
        let opts = OpenOptions { read_only, ..OpenOptions::default() };
        match RawFile::open(Path::new(&l.name), opts) {
            Ok(d) => out.push((l.name.clone(), Some(Arc::new(d) as Arc<dyn BlockDev>))),
            Err(e) if e.kind() == ErrorKind::Locked && !e.to_string().contains(THIS_PROCESS) => {
                return Err(format!(
                    "member {e}\nthe array's members are in use: if a vhost-user-blk daemon serves {array}, send \
                     the command to the daemon with --api-socket PATH (its control socket)"
                )
                .into())
            }
            // RawFile's errors start with the path.
            Err(e) => return Err(format!("member {e}").into()),
        }
    }
    Ok(out)
}

fn assemble(io: &IoCtx, array: &str) -> Result<Array, Box<dyn std::error::Error>> {
    let list = resolve(array)?;
    let members = open_listed(array, &list, false)?;
    Ok(io.block_on(raid::assemble(io, members, AssembleOptions::default()))?)
}

fn status(io: &IoCtx, array: &str, as_json: bool) -> CmdResult {
    let list = resolve(array)?;
    let members = open_listed(array, &list, true)?;
    let st = io.block_on(raid::examine(io, members))?;
    print_status(&status_json(&st), as_json)
}

fn print_status(v: &Value, as_json: bool) -> CmdResult {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let size = format_iec(v["size"].as_u64().unwrap_or(0));
    let chunk = format_iec(v["chunk"].as_u64().unwrap_or(0));
    println!("array {}: RAID {}, {size}, chunk {chunk}", v["uuid"].as_str().unwrap_or("?"), v["level"]);
    let degraded = if v["degraded"] == true { "yes" } else { "no" };
    println!("state: {}, degraded: {degraded}", v["state"].as_str().unwrap_or("?"));
    if let Some(p) = v["rebuild_progress"].as_f64() {
        println!("rebuild: {:.1}%", p * 100.0);
    }
    let rb = &v["rebuild"];
    if let Some(e) = rb["error"].as_str() {
        println!("last rebuild failed: {e}");
    } else if let Some(mbs) = rb["mb_s"].as_f64() {
        println!("last rebuild: {} in {:.2}s ({mbs:.1} MB/s)", format_iec(rb["bytes"].as_u64().unwrap_or(0)), rb["seconds"].as_f64().unwrap_or(0.0));
    }
    println!("write hole: {}", if v["ppl"] == true { "closed (partial parity log)" } else { "no log" });
    println!("last scrub mismatches: {}", v["mismatches"]);
    if let Some(n) = v["read_errors_fixed"].as_u64().filter(|&n| n > 0) {
        println!("read errors repaired: {n}");
    }
    for m in v["members"].as_array().into_iter().flatten() {
        println!("  role {}: {} {}", m["role"], m["state"].as_str().unwrap_or("?"), m["name"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The role `member` names in the array whose superblocks say `st` (a listed path, or a role
/// number), for `fail`.
fn member_role(array: &str, list: &[Listed], member: &str, st: &Status) -> Result<usize, String> {
    let n = st.members.len();
    if let Some(i) = position(list, member) {
        if list[i].id.is_none() {
            return Err(format!("{member}: does not exist: it is a missing member already"));
        }
        return st
            .members
            .iter()
            .find(|m| m.name == list[i].name)
            .map(|m| m.role)
            .ok_or_else(|| format!("{member}: its superblock gives it no role in array {}", st.uuid));
    }
    role_number(member, n).ok_or_else(|| {
        format!(
            "{member} is not a member of the array {array}: its members are {} (name one of them, or a role number \
             below {n})",
            names(list)
        )
    })
}

/// Refuse to fail `role` when the array would stop without it (from the superblocks' view).
fn check_survives(st: &Status, role: usize) -> Result<(), String> {
    let n = st.members.len();
    let others = st.members.iter().filter(|m| m.role != role && m.state == "active").count();
    let survives = match st.level {
        0 => false,
        1 => others >= 1,
        _ => others + 1 >= n,
    };
    if survives {
        Ok(())
    } else {
        Err(format!(
            "failing role {role} ({}) would stop the array: RAID {} with {others} other active member(s) of {n}",
            st.members[role].name, st.level
        ))
    }
}

fn fail(io: &IoCtx, array: &str, member: &str, as_json: bool, api_socket: Option<PathBuf>) -> CmdResult {
    let list = resolve(array)?;
    let (role, already) = match api_socket {
        Some(sock) => {
            let arg = match position(&list, member) {
                Some(i) => member_key(&list[i].name),
                None if member.parse::<usize>().is_ok() => member.to_string(),
                None => {
                    return Err(format!(
                        "{member} is not a member of the array {array}: its members are {} (name one of them, or a \
                         role number)",
                        names(&list)
                    )
                    .into())
                }
            };
            let v = call(&sock, &json!({"cmd": "raid-fail", "members": keys(array), "member": arg}))?;
            (v["role"].as_u64().unwrap_or(0) as usize, None)
        }
        None => {
            let members = open_listed(array, &list, false)?;
            let st = io.block_on(raid::examine(io, members.clone()))?;
            let role = member_role(array, &list, member, &st)?;
            let state = st.members[role].state;
            if state == "active" {
                check_survives(&st, role)?;
                let arr = io.block_on(raid::assemble(io, members, AssembleOptions::default()))?;
                io.block_on(arr.fail_member(io, role))?;
                io.block_on(arr.close(io))?;
                (role, None)
            } else {
                (role, Some(state))
            }
        }
    };
    if as_json {
        let v = json!({"array": array, "member": member, "role": role, "state": already.unwrap_or("faulty"),
                       "changed": already.is_none()});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(state) = already {
        println!("member {member} (role {role}) is already {state}: nothing to do");
    } else {
        println!("member {member} (role {role}) marked faulty; replace it with: blkctl raid replace {array} {member} NEW");
    }
    Ok(())
}

/// Print a scrub's result (`rows`, `mismatches`, `repaired`, `unchecked`) and exit with its code
/// ([`SCRUB_CODES`]).
fn finish_scrub(array: &str, repair: bool, v: &Value, as_json: bool) -> CmdResult {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let (rows, mismatches, repaired, unchecked) = (n("rows"), n("mismatches"), n("repaired"), n("unchecked"));
    let code = if mismatches > repaired {
        2
    } else if unchecked > 0 {
        3
    } else {
        0
    };
    if as_json {
        let v = json!({"array": array, "repair": repair, "rows": rows, "mismatches": mismatches,
                       "repaired": repaired, "unchecked": unchecked, "exit_code": code});
        println!("{v}");
    } else {
        let mut line = format!("scrub of {array}: {rows} rows checked, {mismatches} mismatches, {repaired} repaired");
        if unchecked > 0 {
            line.push_str(&format!("; {unchecked} rows could not be checked (degraded: too few readable copies)"));
        }
        if mismatches > repaired {
            line.push_str("; run it again with --repair to fix them");
        }
        println!("{line}");
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `scrub --api-socket`: the request waits for the scrub; meanwhile another connection polls
/// `raid-status` and shows the progress on stderr.
fn scrub_live(sock: &Path, array: &str, repair: bool, as_json: bool) -> CmdResult {
    resolve(array)?;
    let req = json!({"cmd": "raid-scrub", "members": keys(array), "repair": repair});
    let sock2 = sock.to_path_buf();
    let worker = std::thread::spawn(move || call(&sock2, &req));
    let status_req = json!({"cmd": "raid-status", "members": keys(array)});
    let show = progress::show_on_stderr(false);
    let mut meter = Meter::new("scrub", Unit::Permille, 1000, show);
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        if show == Show::Off {
            continue;
        }
        if let Ok(st) = call(sock, &status_req) {
            if let Some(p) = st["scrub_progress"].as_f64() {
                meter.set((p.clamp(0.0, 1.0) * 1000.0) as u64);
            }
        }
    }
    meter.finish();
    let v = worker.join().map_err(|_| "the scrub request thread panicked")??;
    finish_scrub(array, repair, &v, as_json)
}

fn scrub(io: &IoCtx, array: &str, repair: bool, as_json: bool) -> CmdResult {
    let arr = Arc::new(assemble(io, array)?);
    let watched = arr.clone();
    let progress = Watch::start("scrub", progress::show_on_stderr(false), move || watched.status().scrub_progress);
    let rep = io.block_on(arr.scrub(io, repair));
    drop(progress);
    let rep = rep?;
    io.block_on(arr.close(io))?;
    let v = json!({"rows": rep.rows, "mismatches": rep.mismatches, "repaired": rep.repaired, "unchecked": rep.unchecked});
    finish_scrub(array, repair, &v, as_json)
}
