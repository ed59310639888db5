//! `blkctl raid create|status|fail|replace|scrub`: parse the options and call the `raid` crate on
//! the member files. An array is named by its member list `A:B:C` (any order; roles come from
//! the superblocks; a file that does not exist is a missing member).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use blockdev::size::format_size;
use blockdev::{BlockDev, IoCtx, OpenOptions, RawFile};
use raid::{Array, AssembleOptions, CreateOptions, Level, RebuildOptions, Status};
use serde_json::json;
use vhost_user_blk::stack::raid::open_members;
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
    },
    /// Mark MEMBER (a path from the list, or a role number) faulty.
    Fail {
        /// The members, A:B:C.
        array: String,
        /// The member to fail.
        member: String,
    },
    /// Replace OLD (faulty, missing or stale) with NEW and rebuild NEW to completion.
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
            RaidCmd::Status { array, json } => status(&io, &array, json),
            RaidCmd::Fail { array, member } => fail(&io, &array, &member),
            RaidCmd::Replace { array, old, new, rate_limit } => replace(&io, &array, &old, &new, rate_limit),
            RaidCmd::Scrub { array, repair, json } => scrub(&io, &array, repair, json),
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

fn assemble(io: &IoCtx, array: &str) -> Result<Array, Box<dyn std::error::Error>> {
    let members = open_members(array, &OpenCtx::new(), false)?;
    Ok(io.block_on(raid::assemble(io, members, AssembleOptions::default()))?)
}

fn status_json(st: &Status) -> serde_json::Value {
    json!({
        "uuid": st.uuid,
        "level": st.level,
        "chunk": st.chunk,
        "size": st.size,
        "state": st.state,
        "degraded": st.degraded,
        "rebuild_progress": st.rebuild_progress,
        "mismatches": st.mismatches,
        "events": st.events,
        "ppl": st.ppl,
        "bitmap": st.bitmap,
        "members": st.members.iter().map(|m| json!({"role": m.role, "name": m.name, "state": m.state})).collect::<Vec<_>>(),
    })
}

fn status(io: &IoCtx, array: &str, as_json: bool) -> CmdResult {
    let members = open_members(array, &OpenCtx { read_only: true, ..OpenCtx::new() }, false)?;
    let st = io.block_on(raid::examine(io, members))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status_json(&st))?);
        return Ok(());
    }
    println!("array {}: RAID {}, {}, chunk {}", st.uuid, st.level, format_size(st.size), format_size(st.chunk));
    println!("state: {}, degraded: {}", st.state, if st.degraded { "yes" } else { "no" });
    if let Some(p) = st.rebuild_progress {
        println!("rebuild: {:.1}%", p * 100.0);
    }
    println!("write hole: {}", if st.ppl { "closed (partial parity log)" } else { "no log" });
    println!("last scrub mismatches: {}", st.mismatches);
    for m in &st.members {
        println!("  role {}: {} {}", m.role, m.state, m.name);
    }
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
    let bytes = io.block_on(arr.rebuild(io, opts))?;
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

fn scrub(io: &IoCtx, array: &str, repair: bool, as_json: bool) -> CmdResult {
    let arr = assemble(io, array)?;
    let rep = io.block_on(arr.scrub(io, repair))?;
    io.block_on(arr.close(io))?;
    if as_json {
        println!("{}", json!({"rows": rep.rows, "mismatches": rep.mismatches, "repaired": rep.repaired}));
    } else {
        println!("{} rows checked, {} mismatches, {} repaired", rep.rows, rep.mismatches, rep.repaired);
    }
    Ok(())
}
