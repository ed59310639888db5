//! Copying a disk between raw and qcow2 files (as `qemu-img convert`): the whole guest view of
//! the source (a qcow2 source's backing chain included) goes into a new destination; ranges that
//! read as zeros are not written (the destination stays sparse), and with `compress` every data
//! cluster of a qcow2 destination is written compressed. The destination is written beside an
//! existing one and renamed over it when complete (`newfile`).

use std::path::Path;
use std::sync::Arc;

use blockdev::join::try_join_all;
use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, OpenOptions, RawFile, Result, SharedBuf};
use futures::stream::{self, StreamExt};

use crate::compress_write::CompressedWriter;
use crate::newfile::{NewFile, Overwrite};
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
    /// Where a qcow2 source's backing files may come from (default: its own directory only).
    pub backing_policy: crate::BackingPolicy,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            src_format: Format::Qcow2,
            dst_format: Format::Qcow2,
            compress: false,
            cluster_size: 64 << 10,
            backing_policy: crate::BackingPolicy::default(),
        }
    }
}

/// What a finished conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size of the destination.
    pub size: u64,
    /// Bytes written to the destination (zero ranges are skipped).
    pub written: u64,
    /// An existing destination file was replaced.
    pub replaced: bool,
}

/// Bytes read per step.
const CHUNK: u64 = 1 << 20;

/// Steps in flight at once.
const IN_FLIGHT: usize = 8;

fn err(path: &Path, kind: ErrorKind, msg: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("{}: {msg}", path.display()))
}

/// Ranges `[start, end)` of the source that may hold data (the rest reads as zeros).
fn data_ranges(io: &IoCtx, src: &Path, opts: &ConvertOptions, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |s: u64, e: u64| match out.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => out.push((s, e)),
    };
    match opts.src_format {
        Format::Qcow2 => {
            for e in crate::map::map_path_policy(io, src, false, &opts.backing_policy)? {
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

/// The steps of the copy: `(offset, length)` pieces of at most `chunk` bytes covering whole grains
/// around each data range (so zero detection and compression see whole clusters).
fn chunks(ranges: &[(u64, u64)], grain: u64, chunk: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let mut off = start / grain * grain;
        let end = end.next_multiple_of(grain).min(size);
        while off < end {
            let n = (chunk - off % chunk).min(end - off);
            out.push((off, n));
            off += n;
        }
    }
    out
}

/// Read `[off, off+n)` of the source (zeros past its end) into a buffer of the thread's pool
/// (reused: a fresh zeroed megabyte per step cost a quarter of the copy in page faults).
async fn read_chunk(io: &IoCtx, source: &dyn BlockDev, off: u64, n: u64, src_size: u64) -> Result<SharedBuf> {
    let mut buf = io.pool().shared(n as usize);
    let src_n = n.min(src_size.saturating_sub(off));
    // Pool buffers hold old bytes: the part the source does not fill must be zeroed.
    buf.bytes_mut()[src_n as usize..].fill(0);
    if src_n > 0 {
        source.read(io, off, buf.io_range(0, src_n as usize), IoTag::DATA).await?;
    }
    Ok(buf)
}

/// Runs `(start, end)` of consecutive grains of `bytes` that are not all zeros.
fn data_runs(bytes: &[u8], grain: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let n = bytes.len() as u64;
    let mut g = 0;
    while g < n {
        let e = (g + grain).min(n);
        if !is_zero(&bytes[g as usize..e as usize]) {
            match runs.last_mut() {
                Some(last) if last.1 == g => last.1 = e,
                _ => runs.push((g, e)),
            }
        }
        g = e;
    }
    runs
}

/// Write the data runs of a chunk, all at once.
async fn write_runs(io: &IoCtx, dev: &dyn BlockDev, off: u64, buf: &mut SharedBuf, runs: &[(u64, u64)]) -> Result<()> {
    let futs = runs
        .iter()
        .map(|&(g, e)| dev.write(io, off + g, buf.io_range(g as usize, (e - g) as usize), false, IoTag::DATA));
    try_join_all(futs).await
}

/// True when `a` and `b` name the same file (hard links and symbolic links included).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Convert `src` into `dst`. `progress(done, total)` is called as the copy advances (bytes of
/// the virtual disk). Every option is checked and the source opened first; then an existing
/// `dst` is opened without truncation and its lock taken (a served destination is refused), the
/// copy is written under a temporary name beside it and renamed over it when complete: a failure
/// at any point leaves an existing `dst` byte for byte as it was. A `dst` that is the source is
/// refused.
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
    let create = |size| CreateOptions { size, cluster_size: opts.cluster_size, ..Default::default() };
    if opts.dst_format == Format::Qcow2 {
        create(0).header()?;
    }
    if same_file(src, dst) {
        return Err(err(dst, ErrorKind::InvalidInput, "is the source itself; refusing to overwrite it"));
    }
    let source: Arc<dyn BlockDev> = match opts.src_format {
        Format::Qcow2 => {
            let o =
                crate::Options { read_only: true, backing_policy: opts.backing_policy.clone(), ..Default::default() };
            Arc::new(io.block_on(crate::open_path(io, src, &o))?)
        }
        Format::Raw => {
            let o = OpenOptions { read_only: true, growable: true, ..Default::default() };
            Arc::new(RawFile::open(src, o)?)
        }
    };
    // A raw file of odd length becomes a disk rounded up to whole sectors (as qemu-img).
    let size = source.info().size.next_multiple_of(512);
    if opts.dst_format == Format::Qcow2 {
        create(size).header().map_err(|e| e.context(dst.display().to_string()))?;
    }
    let ranges = data_ranges(io, src, opts, source.info().size)?;
    let new = NewFile::begin(dst, Overwrite::Always)?;
    let replaced = new.replaces();
    let what = if replaced { "left as it was" } else { "not created" };
    let mut stats = copy(io, &source, new.tmp_path(), opts, size, &ranges, progress)
        .map_err(|e| e.context(format!("{}: {what}", dst.display())))?;
    new.commit()?;
    progress(size, size);
    stats.replaced = replaced;
    Ok(stats)
}

/// Copy `ranges` of `source` into a new `size`-byte disk in the empty file at `path`.
fn copy(
    io: &IoCtx,
    source: &Arc<dyn BlockDev>,
    path: &Path,
    opts: &ConvertOptions,
    size: u64,
    ranges: &[(u64, u64)],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    let (dev, qcow): (Arc<dyn BlockDev>, Option<Arc<Qcow2>>) = match opts.dst_format {
        Format::Qcow2 => {
            let file: Arc<dyn BlockDev> =
                Arc::new(RawFile::open(path, OpenOptions { growable: true, ..Default::default() })?);
            let c = CreateOptions { size, cluster_size: opts.cluster_size, ..Default::default() };
            io.block_on(crate::create(io, &file, &c))?;
            let q = Arc::new(io.block_on(crate::open_dev(io, file, None, &crate::Options::default()))?);
            (q.clone() as Arc<dyn BlockDev>, Some(q))
        }
        Format::Raw => {
            let o = OpenOptions { growable: true, ..Default::default() };
            (Arc::new(RawFile::create(path, size, o)?), None)
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
    let chunks = chunks(ranges, grain, CHUNK.max(grain), size);
    let src_size = source.info().size;
    let compress = cw.is_some();
    let mut stats = ConvertStats { size, ..Default::default() };
    progress(0, size);
    io.block_on(async {
        // Several chunks in flight (as qemu-img's 8 requests); results come back in order, so
        // progress moves forward and compressed clusters are written in disk order.
        let mut copies = stream::iter(chunks.into_iter().map(|(off, n)| {
            let (source, dev) = (&**source, &*dev);
            async move {
                let mut buf = read_chunk(io, source, off, n, src_size).await?;
                let runs = data_runs(buf.bytes(), grain);
                if compress {
                    return Ok((off, n, buf, runs));
                }
                write_runs(io, dev, off, &mut buf, &runs).await?;
                Ok::<_, Error>((off, n, buf, runs))
            }
        }))
        .buffered(IN_FLIGHT);
        while let Some(done) = copies.next().await {
            let (off, n, buf, runs) = done?;
            for &(g, e) in &runs {
                if let Some(w) = cw.as_mut() {
                    let mut c = g;
                    while c < e {
                        let cl = grain.min(e - c);
                        w.write_cluster(io, off + c, &buf.bytes()[c as usize..(c + cl) as usize]).await?;
                        c += cl;
                    }
                }
                stats.written += e - g;
            }
            progress(off + n, size);
        }
        Ok::<_, Error>(())
    })?;
    match &qcow {
        Some(q) => io.block_on(q.close(io))?,
        None => io.block_on(dev.flush(io, IoTag::DATA))?,
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_join_non_zero_grains_and_skip_zero_ones() {
        let mut b = vec![0u8; 10];
        b[0] = 1;
        b[3] = 1;
        b[9] = 1;
        // Grains of 2: [0,2) data, [2,4) data, [4,6) and [6,8) zero, [8,10) data.
        assert_eq!(data_runs(&b, 2), vec![(0, 4), (8, 10)]);
        assert_eq!(data_runs(&[0u8; 7], 4), vec![]);
        // A last partial grain counts.
        assert_eq!(data_runs(&[0, 0, 0, 0, 0, 5], 4), vec![(4, 6)]);
    }

    #[test]
    fn chunks_cover_whole_grains_up_to_the_disk_end() {
        // A range inside one grain grows to the grain; chunks stop at chunk boundaries and at `size`.
        assert_eq!(chunks(&[(5, 6)], 4, 8, 100), vec![(4, 4)]);
        assert_eq!(chunks(&[(0, 20)], 4, 8, 18), vec![(0, 8), (8, 8), (16, 2)]);
        assert_eq!(chunks(&[(6, 10), (12, 13)], 4, 8, 100), vec![(4, 4), (8, 4), (12, 4)]);
    }
}
