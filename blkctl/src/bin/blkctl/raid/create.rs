//! `blkctl raid create --level L [--size SIZE] [--force] A B C ...`: every argument is checked,
//! then every member is opened and locked and looked at, and only then is the first byte written.
//! A member that holds anything (a strata thin pool, a qcow2 image, another array's superblock, a
//! file system, any data in its first MiB) is refused unless `--force`. With `--size`, a member
//! file that does not exist is made (sparse, that size) and removed again if the create fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockdev::signature::refuse_overwrite;
use blockdev::size::format_iec;
use blockdev::{BlockDev, IoCtx, OpenOptions, RawFile};
use raid::{CreateOptions, Level};
use serde_json::json;

use super::members::resolve_names;
use super::CmdResult;
use crate::args;

/// Options of `blkctl raid create`.
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 created, 1 error (every member is left as it was).")]
pub struct CreateArgs {
    /// RAID level: 0, 1 or 5.
    #[arg(long)]
    level: u32,
    /// Chunk size (4K to 16M, default 64K); RAID 1 uses it only as its resync unit.
    #[arg(long, value_parser = args::size)]
    chunk: Option<u64>,
    /// Space to use on each member, metadata included (K, M, G, T suffixes; default: all of the
    /// smallest member). A member file that does not exist is created with this size.
    #[arg(long, value_parser = args::size)]
    size: Option<u64>,
    /// Overwrite members that hold something (a pool, an image, another array, a file system,
    /// data).
    #[arg(long)]
    force: bool,
    /// RAID 5: no partial parity log (leaves the write hole open; for comparisons).
    #[arg(long)]
    no_ppl: bool,
    /// No write-intent bitmap (a crash then resyncs everything).
    #[arg(long)]
    no_bitmap: bool,
    /// Print what was made as JSON.
    #[arg(long)]
    json: bool,
    /// Member files or block devices, in role order.
    #[arg(required = true, num_args = 2..)]
    members: Vec<String>,
}

/// Member files this command made: removed again unless the create succeeds.
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Run `create`.
pub fn run(io: &IoCtx, a: CreateArgs) -> CmdResult {
    let level = Level::from_number(a.level).ok_or_else(|| format!("--level {}: one of 0, 1, 5", a.level))?;
    let mut opts = CreateOptions::new(level);
    if let Some(c) = a.chunk {
        opts.chunk = c;
    }
    opts.ppl = !a.no_ppl;
    opts.bitmap = !a.no_bitmap;
    opts.member_size = a.size;
    opts.validate(a.members.len()).map_err(|e| format!("{e} (--level {}, --chunk, --size)", a.level))?;
    let listed = resolve_names(&a.members.join(" "), &a.members)?;
    if let Some(l) = listed.iter().find(|l| l.id.is_none() && a.size.is_none()) {
        return Err(format!("member {} does not exist (give --size SIZE to create member files)", l.name).into());
    }
    if level == Level::Raid1 && a.chunk.is_some() {
        eprintln!("note: RAID 1 does not stripe; --chunk only sets its resync and locking unit");
    }

    // Open and lock every existing member, and look at what it holds, before writing anything.
    let mut devs: Vec<Option<Arc<dyn BlockDev>>> = Vec::with_capacity(listed.len());
    for l in &listed {
        if l.id.is_none() {
            devs.push(None);
            continue;
        }
        let dev = RawFile::open(Path::new(&l.name), OpenOptions::default())?;
        refuse_overwrite(dev.file(), Path::new(&l.name), a.force)?;
        if let Some(want) = a.size.filter(|&w| w > dev.size()) {
            return Err(format!(
                "member {} has {} ({} bytes), less than --size {} ({want} bytes)",
                l.name,
                format_iec(dev.size()),
                dev.size(),
                format_iec(want)
            )
            .into());
        }
        devs.push(Some(Arc::new(dev)));
    }
    // Then make the missing ones, never over a file that appeared meanwhile.
    let mut made = Made(Vec::new());
    let mut members: Vec<(String, Arc<dyn BlockDev>)> = Vec::with_capacity(listed.len());
    for (l, dev) in listed.iter().zip(devs) {
        let dev = match dev {
            Some(d) => d,
            None => {
                let size = a.size.unwrap_or(0);
                let f = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(&l.name)
                    .map_err(|e| format!("member {}: create: {e}", l.name))?;
                made.0.push(PathBuf::from(&l.name));
                f.set_len(size).map_err(|e| format!("member {}: set its size to {size}: {e}", l.name))?;
                drop(f);
                Arc::new(RawFile::open(Path::new(&l.name), OpenOptions::default())?) as Arc<dyn BlockDev>
            }
        };
        members.push((l.name.clone(), dev));
    }

    let arr = io.block_on(raid::create(io, members, opts))?;
    io.block_on(arr.close(io))?;
    let created: Vec<String> = made.0.drain(..).map(|p| p.display().to_string()).collect();
    let st = arr.status();
    let list = a.members.join(":");
    if a.json {
        let v = json!({
            "level": st.level,
            "uuid": st.uuid,
            "size": st.size,
            "chunk": st.chunk,
            "member_size": a.size,
            "members": a.members,
            "created_files": created,
            "ppl": st.ppl,
            "bitmap": st.bitmap,
            "array": list,
            "spec": format!("format=raid,members={list}"),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "created RAID {} array {}: {} over {} members; serve it with format=raid,members={list}",
            st.level,
            st.uuid,
            format_iec(st.size),
            a.members.len()
        );
    }
    Ok(())
}
