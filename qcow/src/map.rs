//! Where each range of a disk lives (as `qemu-img map`): for every run of the virtual disk, the
//! image in the backing chain that provides it (`depth`), whether it reads as zeros, holds data,
//! is compressed, and where the data sits in that image's file.
//!
//! The rules are QEMU's block status: an unallocated cluster falls through to the backing image
//! (or reads zeros with `present: false` when there is none, or past the backing image's end);
//! zero-flag clusters are `zero` (with an offset when a host cluster is kept); compressed
//! clusters have no offset; a raw backing file reports data and holes as `lseek` finds them.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use blockdev::{Error, ErrorKind, IoCtx, Result};

use crate::backing_policy::BackingPolicy;
use crate::l1l2::{L2Entry, OFFSET_MASK};
use crate::open::{resolve_backing, MAX_CHAIN_DEPTH};
use crate::Qcow2;

/// One run of the map (the fields of `qemu-img map --output=json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// Image in the chain that answers (0: the top image).
    pub depth: u32,
    /// Allocated in the image at `depth` (false: nothing in the chain has it).
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Compressed cluster(s).
    pub compressed: bool,
    /// Offset in the file of the image at `depth`, when there is one.
    pub offset: Option<u64>,
    /// That image's file name (qemu-img's human output prints it).
    pub filename: String,
}

impl MapEntry {
    fn mergeable(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && (self.depth, self.present, self.zero, self.data, self.compressed)
                == (next.depth, next.present, next.zero, next.data, next.compressed)
            && self.filename == next.filename
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// One image of the chain.
enum Layer {
    Qcow2(Box<Qcow2>, String),
    Raw(std::fs::File, u64, String),
}

impl Layer {
    fn size(&self) -> u64 {
        match self {
            Layer::Qcow2(d, _) => d.header().size,
            Layer::Raw(_, s, _) => *s,
        }
    }

    fn name(&self) -> &str {
        match self {
            Layer::Qcow2(_, n) | Layer::Raw(_, _, n) => n,
        }
    }
}

/// What one image says about a run starting at a guest offset.
enum Status {
    /// Not allocated here: ask the backing image. An unallocated subcluster of an allocated
    /// cluster still has its place in the file (QEMU reports that offset when nothing below answers).
    Unallocated(Option<u64>),
    /// Allocated: (zero, data, compressed, offset).
    Here(bool, bool, bool, Option<u64>),
}

/// Open the chain under `path` (each image read-only, backing formats from the headers; no
/// locks with `force_share`; each backing file checked against `policy` before it is opened).
fn open_chain(io: &IoCtx, path: &Path, force_share: bool, policy: &BackingPolicy) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut allowed = None;
    let mut cur: PathBuf = path.to_path_buf();
    let mut format = "qcow2".to_string();
    for _ in 0..=MAX_CHAIN_DEPTH {
        let name = cur.display().to_string();
        match format.as_str() {
            "qcow2" => {
                let opts = crate::Options { read_only: true, ignore_backing: true, force_share, ..Default::default() };
                let dev = io.block_on(crate::open_path(io, &cur, &opts))?;
                let h = dev.header();
                layers.push(Layer::Qcow2(Box::new(dev), name.clone()));
                let Some(b) = h.backing_file else { return Ok(layers) };
                format = h.backing_format.ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("{name}: backing file {b} has no format in the header; formats are never probed"),
                    )
                })?;
                let allowed = match &allowed {
                    Some(a) => a,
                    None => allowed.insert(policy.resolve(path)?),
                };
                cur = allowed.check(&name, &b, &resolve_backing(&cur, &b))?;
            }
            "raw" => {
                let f = std::fs::File::open(&cur).map_err(|e| Error::from_io(e, &name))?;
                let size = f.metadata().map_err(|e| Error::from_io(e, &name))?.len();
                layers.push(Layer::Raw(f, size, name));
                return Ok(layers);
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("{name}: backing format '{other}' is not supported (qcow2, raw)"),
                ))
            }
        }
    }
    Err(Error::new(ErrorKind::InvalidInput, format!("{}: backing chain deeper than {MAX_CHAIN_DEPTH}", path.display())))
}

/// The status of `[off, off+max)` in a qcow2 image: the answer and how far it holds.
fn qcow2_status(io: &IoCtx, dev: &Qcow2, off: u64, max: u64) -> Result<(Status, u64)> {
    let sh = dev.shared();
    let g = sh.geo;
    let cs = g.cluster_size();
    let idx = g.l1_index(off) as usize;
    if sh.lock().l1.get(idx).is_none_or(|e| e & OFFSET_MASK == 0) {
        let cover = g.l1_coverage();
        return Ok((Status::Unallocated(None), ((idx as u64 + 1) * cover - off).min(max)));
    }
    let entry = io.block_on(sh.lookup(io, |m| m.l2_entry(off)))?;
    let within = g.in_cluster(off);
    let to_cluster_end = (cs - within).min(max);
    let st = match entry {
        L2Entry::Unallocated { .. } => Status::Unallocated(None),
        L2Entry::Zero { offset, .. } => Status::Here(true, false, false, (offset != 0).then_some(offset + within)),
        L2Entry::Normal { offset, .. } => Status::Here(false, true, false, Some(offset + within)),
        L2Entry::Compressed { .. } => Status::Here(false, true, true, None),
        L2Entry::Extended { offset, alloc, zero, .. } => {
            let sc = g.subcluster_size();
            let bit = 1u32 << (within / sc);
            let len = (sc - within % sc).min(max);
            let host = (offset != 0).then_some(offset + within);
            let st = if zero & bit != 0 {
                Status::Here(true, false, false, host)
            } else if alloc & bit != 0 && offset != 0 {
                Status::Here(false, true, false, host)
            } else {
                Status::Unallocated(host)
            };
            return Ok((st, len));
        }
    };
    Ok((st, to_cluster_end))
}

/// Data or hole at `off` of a raw file (as QEMU's file driver: `SEEK_DATA`/`SEEK_HOLE`):
/// true for data, and how many bytes (at most `max`) the answer holds for.
pub fn raw_extent(f: &std::fs::File, name: &str, off: u64, max: u64) -> Result<(bool, u64)> {
    let fd = f.as_raw_fd();
    let seek = |whence| {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `off` (all hole up to the end).
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(Error::from_io(e, format!("{name}: lseek at {off}")));
        }
        Ok(Some(r as u64))
    };
    match seek(libc::SEEK_DATA)? {
        Some(d) if d == off => {
            let hole = seek(libc::SEEK_HOLE)?.unwrap_or(off + max);
            Ok((true, (hole.max(off + 1) - off).min(max)))
        }
        Some(d) => Ok((false, (d - off).clamp(1, max))),
        None => Ok((false, max)),
    }
}

fn raw_status(f: &std::fs::File, name: &str, off: u64, max: u64) -> Result<(Status, u64)> {
    let (data, n) = raw_extent(f, name, off, max)?;
    Ok((Status::Here(!data, data, false, Some(off)), n))
}

/// The map of the disk in the image at `path`, following its backing chain.
pub fn map_path(io: &IoCtx, path: &Path) -> Result<Vec<MapEntry>> {
    map_path_with(io, path, false)
}

/// As [`map_path`]; with `force_share` no file of the chain is locked (`qemu-img map -U`).
pub fn map_path_with(io: &IoCtx, path: &Path, force_share: bool) -> Result<Vec<MapEntry>> {
    map_path_policy(io, path, force_share, &BackingPolicy::default())
}

/// As [`map_path_with`], with backing files allowed by `policy` (see [`BackingPolicy`]).
pub fn map_path_policy(io: &IoCtx, path: &Path, force_share: bool, policy: &BackingPolicy) -> Result<Vec<MapEntry>> {
    let layers = open_chain(io, path, force_share, policy)?;
    let size = layers[0].size();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut off = 0;
    while off < size {
        let mut len = size - off;
        let mut depth = 0usize;
        let e = loop {
            let layer = &layers[depth];
            let (st, n) = match layer {
                Layer::Qcow2(d, _) => qcow2_status(io, d, off, len)?,
                Layer::Raw(f, _, name) => raw_status(f, name, off, len)?,
            };
            len = n;
            let entry = |zero, data, compressed, offset| MapEntry {
                start: off,
                length: len,
                depth: depth as u32,
                present: true,
                zero,
                data,
                compressed,
                offset,
                filename: layer.name().to_string(),
            };
            match st {
                Status::Here(z, d, c, o) => break entry(z, d, c, o),
                Status::Unallocated(at) => {
                    let absent = MapEntry { present: false, ..entry(true, false, false, at) };
                    let Some(next) = layers.get(depth + 1) else { break absent };
                    if off >= next.size() {
                        break absent;
                    }
                    len = len.min(next.size() - off);
                    depth += 1;
                }
            }
        };
        off += e.length;
        match out.last_mut() {
            Some(last) if last.mergeable(&e) => last.length += e.length,
            _ => out.push(e),
        }
    }
    Ok(out)
}

/// The map as `qemu-img map --output=json` prints it (byte for byte).
pub fn to_qemu_json(entries: &[MapEntry]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut s = format!(
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            );
            if let Some(o) = e.offset {
                s.push_str(&format!(", \"offset\": {o}"));
            }
            s.push('}');
            s
        })
        .collect();
    format!("[{}]\n", lines.join(",\n"))
}

/// The map as `qemu-img map` prints it by default (data runs only); compressed data has no
/// offset to print, which is an error as in qemu-img.
pub fn to_human(entries: &[MapEntry]) -> Result<String> {
    let mut s = format!("{:<16}{:<16}{:<16}{}\n", "Offset", "Length", "Mapped to", "File");
    let hex = |v: u64| if v == 0 { "0".to_string() } else { format!("{v:#x}") };
    for e in entries {
        if e.data && e.offset.is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: compressed clusters have no offset to print (use --json)", e.filename),
            ));
        }
        if e.data && !e.zero {
            s.push_str(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                hex(e.start),
                hex(e.length),
                hex(e.offset.unwrap_or(0)),
                e.filename
            ));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, length: u64, offset: Option<u64>) -> MapEntry {
        MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset,
            filename: "x".into(),
        }
    }

    #[test]
    fn runs_merge_only_when_offsets_continue() {
        assert!(e(0, 10, Some(100)).mergeable(&e(10, 5, Some(110))));
        assert!(!e(0, 10, Some(100)).mergeable(&e(10, 5, Some(200))));
        assert!(!e(0, 10, Some(100)).mergeable(&e(10, 5, None)));
    }

    #[test]
    fn json_is_qemus_text() {
        let s = to_qemu_json(&[
            e(0, 65536, Some(327680)),
            MapEntry { offset: None, zero: true, data: false, ..e(65536, 512, None) },
        ]);
        assert_eq!(
            s,
            "[{ \"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 327680},\n{ \"start\": 65536, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false, \"compressed\": false}]\n"
        );
    }
}
