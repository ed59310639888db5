//! Copying a disk between raw and qcow2 files (as `qemu-img convert`): the whole guest view of
//! the source (a qcow2 source's backing chain included) goes into a new destination; ranges that
//! read as zeros are not written (the destination stays sparse), and with `compress` every data
//! cluster of a qcow2 destination is written compressed.

use std::path::Path;
use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, OpenOptions, RawFile, Result, SharedBuf};

use crate::compress_write::CompressedWriter;
use crate::{CreateOptions, Qcow2};

/// A disk image format `convert` reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain file holding the disk bytes.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::new(ErrorKind::InvalidInput, format!("format '{s}': use raw or qcow2"))),
        }
    }
}

/// What `convert` does.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Format of the source (never probed).
    pub src_format: Format,
    /// Format of the destination.
    pub dst_format: Format,
    /// Write compressed clusters (qcow2 destination only).
    pub compress: bool,
    /// Cluster size of a qcow2 destination.
    pub cluster_size: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { src_format: Format::Qcow2, dst_format: Format::Qcow2, compress: false, cluster_size: 64 << 10 }
    }
}

/// What a finished conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size of the destination.
    pub size: u64,
    /// Bytes written to the destination (zero ranges are skipped).
    pub written: u64,
}

/// Bytes read per step.
const CHUNK: u64 = 1 << 20;

fn err(path: &Path, kind: ErrorKind, msg: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("{}: {msg}", path.display()))
}

/// Ranges `[start, end)` of the source that may hold data (the rest reads as zeros).
fn data_ranges(io: &IoCtx, src: &Path, fmt: Format, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |s: u64, e: u64| match out.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => out.push((s, e)),
    };
    match fmt {
        Format::Qcow2 => {
            for e in crate::map::map_path(io, src)? {
                if !e.zero {
                    push(e.start, e.start + e.length);
                }
            }
        }
        Format::Raw => {
            let f = std::fs::File::open(src).map_err(|e| err(src, ErrorKind::Io, e))?;
            let mut off = 0;
            while off < size {
                let (data, n) = crate::map::raw_extent(&f, &src.display().to_string(), off, size - off)?;
                if data {
                    push(off, off + n);
                }
                off += n;
            }
        }
    }
    Ok(out)
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Convert `src` into a new `dst` (created or truncated). `progress(done, total)` is called as
/// the copy advances (bytes of the virtual disk).
pub fn convert(
    io: &IoCtx,
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    if opts.compress && opts.dst_format != Format::Qcow2 {
        return Err(err(dst, ErrorKind::InvalidInput, "compression needs a qcow2 destination (-O qcow2)"));
    }
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(src), std::fs::canonicalize(dst)) {
        if a == b {
            return Err(err(dst, ErrorKind::InvalidInput, "is the source itself; refusing to overwrite it"));
        }
    }
    let source: Arc<dyn BlockDev> = match opts.src_format {
        Format::Qcow2 => {
            let o = crate::Options { read_only: true, ..Default::default() };
            Arc::new(io.block_on(crate::open_path(io, src, &o))?)
        }
        Format::Raw => {
            let o = OpenOptions { read_only: true, growable: true, ..Default::default() };
            Arc::new(RawFile::open(src, o)?)
        }
    };
    // A raw file of odd length becomes a disk rounded up to whole sectors (as qemu-img).
    let size = source.info().size.next_multiple_of(512);
    let ranges = data_ranges(io, src, opts.src_format, source.info().size)?;
    let (dev, qcow): (Arc<dyn BlockDev>, Option<Arc<Qcow2>>) = match opts.dst_format {
        Format::Qcow2 => {
            let c = CreateOptions { size, cluster_size: opts.cluster_size, ..Default::default() };
            crate::create_path(io, dst, &c).map_err(|e| e.context(dst.display().to_string()))?;
            let q = Arc::new(io.block_on(crate::open_path(io, dst, &crate::Options::default()))?);
            (q.clone() as Arc<dyn BlockDev>, Some(q))
        }
        Format::Raw => {
            let o = OpenOptions { growable: true, ..Default::default() };
            (Arc::new(RawFile::create(dst, size, o)?), None)
        }
    };
    let grain = match opts.dst_format {
        Format::Qcow2 => opts.cluster_size,
        Format::Raw => 4096,
    };
    let mut cw = match (&qcow, opts.compress) {
        (Some(q), true) => Some(CompressedWriter::new(q)),
        _ => None,
    };
    let mut stats = ConvertStats { size, written: 0 };
    let chunk = CHUNK.max(grain);
    progress(0, size);
    for (start, end) in ranges {
        // Whole grains around the range, so zero detection and compression see whole clusters.
        let mut off = start / grain * grain;
        let end = end.next_multiple_of(grain).min(size);
        while off < end {
            let n = (chunk - off % chunk).min(end - off);
            let mut buf = SharedBuf::new(n as usize);
            let src_n = n.min(source.info().size.saturating_sub(off));
            if src_n > 0 {
                io.block_on(source.read(io, off, buf.io_range(0, src_n as usize), IoTag::DATA))?;
            }
            let bytes = buf.bytes().to_vec();
            let mut g = 0u64;
            while g < n {
                let gl = grain.min(n - g);
                let piece = &bytes[g as usize..(g + gl) as usize];
                if is_zero(piece) {
                    g += gl;
                    continue;
                }
                if let Some(w) = cw.as_mut() {
                    io.block_on(w.write_cluster(io, off + g, piece))?;
                    stats.written += gl;
                    g += gl;
                    continue;
                }
                // Coalesce the following non-zero grains into one write.
                let mut e = g + gl;
                while e < n {
                    let el = grain.min(n - e);
                    if is_zero(&bytes[e as usize..(e + el) as usize]) {
                        break;
                    }
                    e += el;
                }
                let mut wb = SharedBuf::from_slice(&bytes[g as usize..e as usize]);
                io.block_on(dev.write(io, off + g, wb.io(), false, IoTag::DATA))?;
                stats.written += e - g;
                g = e;
            }
            off += n;
            progress(off, size);
        }
    }
    match &qcow {
        Some(q) => io.block_on(q.close(io))?,
        None => io.block_on(dev.flush(io, IoTag::DATA))?,
    }
    progress(size, size);
    Ok(stats)
}
