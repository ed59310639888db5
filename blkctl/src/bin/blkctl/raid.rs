//! `blkctl raid create|status|fail|replace|scrub`: parse the options and call the `raid` crate on
//! the member files. An array is named by its member list `A:B:C` (any order; roles come from
//! the superblocks; a file that does not exist is a missing member). With `--api-socket PATH`,
//! status, fail, replace and scrub go to the daemon that serves the array instead
//! (`vhost_user_blk::api::raid`), so they run while its I/O goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::size::format_size;
use blockdev::{BlockDev, ErrorKind, IoCtx, OpenOptions, RawFile};
use raid::{Array, AssembleOptions, CreateOptions, Level, MemberList, RebuildOptions};
use serde_json::{json, Value};
use vhost_user_blk::api::raid::{call, status_json};
use vhost_user_blk::stack::raid::{open_members, split_members};
use vhost_user_blk::stack::raid_registry::member_key;
use vhost_user_blk::stack::OpenCtx;

use crate::args;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The RAID subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create and manage RAID 0, 1 and 5 arrays (served with format=raid,members=A:B:C).
    #[command(subcommand)]
    Raid(RaidCmd),
}

/// `blkctl raid ...`.
#[derive(clap::Subcommand)]
pub enum RaidCmd {
    /// Make a new array over existing files or block devices (erases them).
    Create {
        /// RAID level: 0, 1 or 5.
        #[arg(long)]
        level: u32,
        /// Chunk size (4K to 16M, default 64K); RAID 1 uses it only as its resync unit.
        #[arg(long, value_parser = args::size)]
        chunk: Option<u64>,
        /// RAID 5: no partial parity log (leaves the write hole open; for comparisons).
        #[arg(long)]
        no_ppl: bool,
        /// No write-intent bitmap (a crash then resyncs everything).
        #[arg(long)]
        no_bitmap: bool,
        /// Member files, in role order.
        #[arg(required = true, num_args = 2..)]
        members: Vec<String>,
    },
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
    /// Mark MEMBER (a path from the list, or a role number) faulty.
    Fail {
        /// The members, A:B:C.
        array: String,
        /// The member to fail.
        member: String,
        /// Send the command to the daemon serving the array (its --api-socket).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
    },
    /// Replace OLD (faulty, missing or stale) with NEW and rebuild NEW to completion (with
    /// --api-socket the daemon rebuilds while it serves the array; progress is shown until done).
    Replace {
        /// The members, A:B:C (with OLD).
        array: String,
        /// The member to replace (it may no longer exist).
        old: String,
        /// The new member (an existing file at least as large).
        new: String,
        /// Rebuild at most this many bytes per second (e.g. 100M).
        #[arg(long, value_parser = args::size)]
        rate_limit: Option<u64>,
        /// Send the command to the daemon serving the array (its --api-socket).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
        /// With --api-socket: return once the rebuild has started (follow it with `status`).
        #[arg(long, requires = "api_socket")]
        no_wait: bool,
    },
    /// Resync if needed, then check every stripe (and with --repair, fix mismatches).
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
            RaidCmd::Create { level, chunk, no_ppl, no_bitmap, members } => {
                create(&io, level, chunk, no_ppl, no_bitmap, members)
            }
            RaidCmd::Status { array, json, api_socket: Some(sock) } => {
                let v = call(&sock, &json!({"cmd": "raid-status", "members": keys(&array)}))?;
                print_status(&v, json)
            }
            RaidCmd::Status { array, json, api_socket: None } => status(&io, &array, json),
            RaidCmd::Fail { array, member, api_socket: Some(sock) } => {
                let v = call(&sock, &json!({"cmd": "raid-fail", "members": keys(&array), "member": arg_key(&member)}))?;
                println!("member {member} (role {}) marked faulty", v["role"]);
                Ok(())
            }
            RaidCmd::Fail { array, member, api_socket: None } => fail(&io, &array, &member),
            RaidCmd::Replace { array, old, new, rate_limit, api_socket: Some(sock), no_wait } => {
                replace_live(&sock, &array, &old, &new, rate_limit, no_wait)
            }
            RaidCmd::Replace { array, old, new, rate_limit, api_socket: None, .. } => {
                replace(&io, &array, &old, &new, rate_limit)
            }
            RaidCmd::Scrub { array, repair, json, api_socket: Some(sock) } => scrub_live(&sock, &array, repair, json),
            RaidCmd::Scrub { array, repair, json, api_socket: None } => scrub(&io, &array, repair, json),
        }
    }
}

fn open_rw(path: &str) -> Result<Arc<dyn BlockDev>, Box<dyn std::error::Error>> {
    Ok(Arc::new(RawFile::open(Path::new(path), OpenOptions::default()).map_err(|e| e.context(path))?))
}

fn create(io: &IoCtx, level: u32, chunk: Option<u64>, no_ppl: bool, no_bitmap: bool, members: Vec<String>) -> CmdResult {
    let level = Level::from_number(level).ok_or_else(|| format!("--level {level}: one of 0, 1, 5"))?;
    if level == Level::Raid1 && chunk.is_some() {
        eprintln!("note: RAID 1 does not stripe; --chunk only sets its resync and locking unit");
    }
    let mut opts = CreateOptions::new(level);
    if let Some(c) = chunk {
        opts.chunk = c;
    }
    opts.ppl = !no_ppl;
    opts.bitmap = !no_bitmap;
    let devs = members.iter().map(|m| Ok((m.clone(), open_rw(m)?))).collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let arr = io.block_on(raid::create(io, devs, opts))?;
    io.block_on(arr.close(io))?;
    let st = arr.status();
    println!("created RAID {} array {}: {} over {} members", st.level, st.uuid, format_size(st.size), members.len());
    println!("serve it with: format=raid,members={}", members.join(":"));
    Ok(())
}

/// The member list with every member as the daemon knows it (absolute paths).
fn keys(array: &str) -> String {
    split_members(array).iter().map(|m| member_key(m)).collect::<Vec<_>>().join(":")
}

/// A member argument as a key, unless it is a role number.
fn arg_key(member: &str) -> String {
    if member.parse::<usize>().is_ok() && !Path::new(member).exists() {
        member.to_string()
    } else {
        member_key(member)
    }
}

/// Open the members; a member another process holds (a daemon serving the array) is an error
/// that points at --api-socket.
fn members(array: &str, ctx: &OpenCtx) -> Result<MemberList, Box<dyn std::error::Error>> {
    open_members(array, ctx, false).map_err(|e| {
        if e.kind() == ErrorKind::Locked {
            format!(
                "{e}\nthe array's members are in use: if a vhost-user-blk daemon serves it, send the command \
                 to the daemon with --api-socket PATH (its control socket)"
            )
            .into()
        } else {
            e.into()
        }
    })
}

fn assemble(io: &IoCtx, array: &str) -> Result<Array, Box<dyn std::error::Error>> {
    let members = members(array, &OpenCtx::new())?;
    Ok(io.block_on(raid::assemble(io, members, AssembleOptions::default()))?)
}

fn status(io: &IoCtx, array: &str, as_json: bool) -> CmdResult {
    let members = members(array, &OpenCtx { read_only: true, ..OpenCtx::new() })?;
    let st = io.block_on(raid::examine(io, members))?;
    print_status(&status_json(&st), as_json)
}

fn print_status(v: &Value, as_json: bool) -> CmdResult {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let size = format_size(v["size"].as_u64().unwrap_or(0));
    let chunk = format_size(v["chunk"].as_u64().unwrap_or(0));
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
        println!("last rebuild: {} in {:.2}s ({mbs:.1} MB/s)", format_size(rb["bytes"].as_u64().unwrap_or(0)), rb["seconds"].as_f64().unwrap_or(0.0));
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

fn print_scrub(v: &Value, as_json: bool) {
    if as_json {
        println!("{v}");
    } else {
        println!("{} rows checked, {} mismatches, {} repaired", v["rows"], v["mismatches"], v["repaired"]);
    }
}

/// `replace --api-socket`: the daemon swaps the member in and rebuilds in the background; show
/// progress until it is done (unless `no_wait`).
fn replace_live(sock: &Path, array: &str, old: &str, new: &str, rate_limit: Option<u64>, no_wait: bool) -> CmdResult {
    let req = json!({"cmd": "raid-replace", "members": keys(array), "old": arg_key(old), "new": member_key(new),
                     "rate_limit": rate_limit});
    let v = call(sock, &req)?;
    let list = v["members"].as_str().unwrap_or("?").to_string();
    println!("role {} replaced by {new}; the daemon is rebuilding it", v["role"]);
    if !no_wait {
        let status_req = json!({"cmd": "raid-status", "members": list});
        loop {
            let st = call(sock, &status_req)?;
            let rb = &st["rebuild"];
            if rb["running"] == true {
                if let Some(p) = st["rebuild_progress"].as_f64() {
                    eprint!("\rrebuild: {:5.1}%", p * 100.0);
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            eprintln!();
            if let Some(e) = rb["error"].as_str() {
                return Err(format!("the rebuild failed: {e}").into());
            }
            println!(
                "rebuilt role {} onto {new}: {} in {:.2}s ({:.1} MB/s)",
                v["role"],
                format_size(rb["bytes"].as_u64().unwrap_or(0)),
                rb["seconds"].as_f64().unwrap_or(0.0),
                rb["mb_s"].as_f64().unwrap_or(0.0)
            );
            break;
        }
    }
    println!("the array is now: {list}");
    Ok(())
}

fn find_role(arr: &Array, member: &str) -> Result<usize, Box<dyn std::error::Error>> {
    if let Some(r) = arr.role_of(member) {
        return Ok(r);
    }
    member.parse::<usize>().map_err(|_| format!("{member} is not a member of this array (nor a role number)").into())
}

fn fail(io: &IoCtx, array: &str, member: &str) -> CmdResult {
    let arr = assemble(io, array)?;
    let role = find_role(&arr, member)?;
    io.block_on(arr.fail_member(io, role))?;
    io.block_on(arr.close(io))?;
    println!("member {member} (role {role}) marked faulty");
    Ok(())
}

fn replace(io: &IoCtx, array: &str, old: &str, new: &str, rate_limit: Option<u64>) -> CmdResult {
    let arr = assemble(io, array)?;
    let st = arr.status();
    let role = match arr.role_of(old).filter(|&r| st.members[r].state != "active") {
        Some(r) => r,
        None if Path::new(old).exists() => {
            let dev = RawFile::open(Path::new(old), OpenOptions { read_only: true, ..OpenOptions::default() })?;
            let sb = io.block_on(raid::read_superblock(io, old, &dev))?;
            if st.members[sb.role as usize].state == "active" {
                return Err(format!("{old} (role {}) is active: fail it first", sb.role).into());
            }
            sb.role as usize
        }
        None => {
            let down: Vec<usize> = st.members.iter().filter(|m| m.state != "active").map(|m| m.role).collect();
            match down.as_slice() {
                [r] => *r,
                _ => return Err(format!("cannot tell which role {old} had: roles {down:?} are down").into()),
            }
        }
    };
    let dev = open_rw(new)?;
    io.block_on(arr.replace(io, role, new.to_string(), dev))?;
    let t = Instant::now();
    let opts = RebuildOptions { rate_limit, ..Default::default() };
    // Progress on stderr from a watcher thread while this one runs the rebuild.
    let arr = Arc::new(arr);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watched, stop) = (arr.clone(), done.clone());
    let watcher = std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(p) = watched.status().rebuild_progress {
                eprint!("\rrebuild: {:5.1}%", p * 100.0);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let res = io.block_on(arr.rebuild(io, opts));
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = watcher.join();
    eprintln!();
    let bytes = res?;
    let secs = t.elapsed().as_secs_f64();
    io.block_on(arr.close(io))?;
    println!(
        "rebuilt role {role} onto {new}: {} in {secs:.2}s ({:.1} MB/s)",
        format_size(bytes),
        bytes as f64 / secs.max(1e-9) / 1e6
    );
    let list: Vec<String> =
        vhost_user_blk::stack::raid::split_members(array).into_iter().map(|m| if m == old { new.to_string() } else { m }).collect();
    println!("the array is now: {}", list.join(":"));
    Ok(())
}

/// `scrub --api-socket`: the request waits for the scrub; meanwhile another connection polls
/// `raid-status` and shows the progress on stderr.
fn scrub_live(sock: &Path, array: &str, repair: bool, as_json: bool) -> CmdResult {
    let req = json!({"cmd": "raid-scrub", "members": keys(array), "repair": repair});
    let sock2 = sock.to_path_buf();
    let worker = std::thread::spawn(move || call(&sock2, &req));
    let status_req = json!({"cmd": "raid-status", "members": keys(array)});
    let mut shown = false;
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(st) = call(sock, &status_req) {
            if let Some(p) = st["scrub_progress"].as_f64() {
                eprint!("\rscrub: {:5.1}%", p * 100.0);
                shown = true;
            }
        }
    }
    if shown {
        eprintln!();
    }
    let v = worker.join().map_err(|_| "the scrub request thread panicked")??;
    print_scrub(&v, as_json);
    Ok(())
}

fn scrub(io: &IoCtx, array: &str, repair: bool, as_json: bool) -> CmdResult {
    let arr = Arc::new(assemble(io, array)?);
    // Progress on stderr from a watcher thread while this one scrubs.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watched, stop) = (arr.clone(), done.clone());
    let watcher = std::thread::spawn(move || {
        let mut shown = false;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(p) = watched.status().scrub_progress {
                eprint!("\rscrub: {:5.1}%", p * 100.0);
                shown = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if shown {
            eprintln!();
        }
    });
    let rep = io.block_on(arr.scrub(io, repair));
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = watcher.join();
    let rep = rep?;
    io.block_on(arr.close(io))?;
    print_scrub(&json!({"rows": rep.rows, "mismatches": rep.mismatches, "repaired": rep.repaired}), as_json);
    Ok(())
}
