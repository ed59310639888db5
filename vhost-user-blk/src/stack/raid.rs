//! `format=raid,members=A:B:C[,force=on][,direct=on]`: a RAID 0, 1 or 5 array assembled from
//! its members' superblocks ([`raid::assemble`]). Each member is a file or block device, or
//! `node:NAME`; a member file that does not exist is a missing member and the array starts
//! degraded (if its level allows). `force=on` starts an array that is dirty and degraded
//! without write-hole protection. Crash recovery (log replay, bitmap resync) runs before the
//! device is handed out.

use std::path::Path;
use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, OpenOptions, RawFile, Result};
use raid::{AssembleOptions, MemberList, RebuildOptions};

use super::raid_registry::{self, member_key};
use super::{Format, OpenCtx, NODE_PREFIX};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "raid",
    build,
    help: "format=raid,members=A:B:C[,force=on][,direct=on] — a RAID 0/1/5 array (blkctl raid create makes one)",
};

const KEYS: &[&str] = &["members", "force", "direct"];

/// Split a member list on ':' (a `node:NAME` member keeps its colon).
pub fn split_members(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut parts = list.split(':').peekable();
    while let Some(p) = parts.next() {
        if format!("{p}:") == NODE_PREFIX {
            if let Some(name) = parts.next() {
                out.push(format!("{NODE_PREFIX}{name}"));
                continue;
            }
        }
        out.push(p.to_string());
    }
    out
}

/// Open the members named in `list`: (name, device or None when the file does not exist).
pub fn open_members(list: &str, ctx: &OpenCtx, direct: bool) -> Result<MemberList> {
    open_member_names(list, split_members(list), ctx, direct)
}

/// Open the members `names` (split from `list`, which errors quote).
fn open_member_names(list: &str, names: Vec<String>, ctx: &OpenCtx, direct: bool) -> Result<MemberList> {
    if names.iter().any(|n| n.is_empty()) {
        return Err(Error::new(ErrorKind::InvalidInput, format!("members={list}: an empty member name")));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let dev: Option<Arc<dyn BlockDev>> = if let Some(node) = name.strip_prefix(NODE_PREFIX) {
            let dev = ctx
                .nodes
                .get(node)
                .cloned()
                .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("members={list}: no node '{node}'")))?;
            Some(dev)
        } else if Path::new(&name).exists() {
            let opts = OpenOptions { read_only: ctx.read_only, direct, ..OpenOptions::default() };
            Some(Arc::new(RawFile::open(Path::new(&name), opts).map_err(|e| e.context(format!("member {name}")))?))
        } else {
            tracing::warn!("raid member {name} does not exist: treated as missing");
            None
        };
        out.push((name, dev));
    }
    Ok(out)
}

fn build(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let list = spec.take_required("members", "members=A:B:C")?;
    let force = spec.take_bool("force")?.unwrap_or(false);
    let direct = spec.take_bool("direct")?.unwrap_or(false);
    spec.finish(KEYS)?;
    if ctx.read_only {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("disk spec '{}': arrays are served writable only (assembly may resync)", spec.source()),
        ));
    }
    // Members go by their keys (absolute paths), so the control socket finds the array by any
    // spelling of its member list.
    let keys: Vec<String> = split_members(&list).iter().map(|n| member_key(n)).collect();
    let members = open_member_names(&list, keys.clone(), ctx, direct)?;
    let io = IoCtx::new()?;
    let arr = Arc::new(
        io.block_on(raid::assemble(&io, members, AssembleOptions { force }))
            .map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?,
    );
    raid_registry::register(keys, &arr);
    if arr.status().rebuild_progress.is_some() {
        // A rebuild interrupted by a stop resumes from its checkpoint while the array is served.
        raid_registry::start_rebuild(arr.clone(), RebuildOptions::default())
            .map_err(|e| Error::new(ErrorKind::Io, format!("disk spec '{}': {e}", spec.source())))?;
    }
    Ok(arr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::open_spec;
    use blockdev::{IoTag, SharedBuf};

    fn files(dir: &tempfile::TempDir, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.img"));
                std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
                p.display().to_string()
            })
            .collect()
    }

    fn create(paths: &[String], level: raid::Level) {
        let io = IoCtx::new().unwrap();
        let members = paths
            .iter()
            .map(|p| {
                (p.clone(), Arc::new(RawFile::open(Path::new(p), OpenOptions::default()).unwrap()) as Arc<dyn BlockDev>)
            })
            .collect();
        let arr = io.block_on(raid::create(&io, members, raid::CreateOptions::new(level))).unwrap();
        io.block_on(arr.close(&io)).unwrap();
    }

    #[test]
    fn serves_an_array_and_starts_degraded_without_a_member() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(&dir, 3);
        create(&paths, raid::Level::Raid5);
        let spec = format!("format=raid,members={}", paths.join(":"));
        let io = IoCtx::new().unwrap();
        {
            let dev = open_spec(&spec, &OpenCtx::new()).unwrap();
            let mut b = SharedBuf::from_slice(&[7u8; 8192]);
            io.block_on(dev.write(&io, 65536, b.io(), true, IoTag::DATA)).unwrap();
        }
        std::fs::remove_file(&paths[1]).unwrap();
        let dev = open_spec(&spec, &OpenCtx::new()).unwrap();
        let mut b = SharedBuf::new(8192);
        io.block_on(dev.read(&io, 65536, b.io(), IoTag::DATA)).unwrap();
        assert!(b.bytes().iter().all(|&x| x == 7));
    }

    #[test]
    fn dirty_degraded_array_without_a_log_starts_only_with_force_on() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(&dir, 3);
        let io = IoCtx::new().unwrap();
        let members = paths
            .iter()
            .map(|p| {
                (p.clone(), Arc::new(RawFile::open(Path::new(p), OpenOptions::default()).unwrap()) as Arc<dyn BlockDev>)
            })
            .collect();
        let opts = raid::CreateOptions { ppl: false, ..raid::CreateOptions::new(raid::Level::Raid5) };
        {
            let arr = io.block_on(raid::create(&io, members, opts)).unwrap();
            let mut b = SharedBuf::from_slice(&[3u8; 4096]);
            // Written and dropped without a clean close: the array stays dirty.
            io.block_on(arr.write(&io, 0, b.io(), true, IoTag::DATA)).unwrap();
        }
        std::fs::remove_file(&paths[2]).unwrap();
        let spec = format!("format=raid,members={}", paths.join(":"));
        let e = open_spec(&spec, &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("force=on"), "{e}");
        let dev = open_spec(&format!("{spec},force=on"), &OpenCtx::new()).unwrap();
        let mut b = SharedBuf::new(4096);
        io.block_on(dev.read(&io, 0, b.io(), IoTag::DATA)).unwrap();
        assert!(b.bytes().iter().all(|&x| x == 3));
    }

    #[test]
    fn unknown_key_and_missing_members_key_are_refused() {
        let e = open_spec("format=raid,members=a:b,colour=red", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = open_spec("format=raid", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("members"), "{e}");
    }

    #[test]
    fn node_members_keep_their_colon() {
        assert_eq!(split_members("a.img:node:x:b.img"), vec!["a.img", "node:x", "b.img"]);
    }
}
