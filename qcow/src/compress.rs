//! Compressed clusters: raw deflate (QEMU's zlib type, a 4 KiB window) and zstd.

use blockdev::{Error, ErrorKind, Result};

use crate::header::Compression;

fn corrupt(what: &str, at: u64, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("compressed cluster at {at:#x} ({what}): {msg}"))
}

/// Decompress the stream `input` (which may carry trailing bytes) into exactly `out.len()` bytes.
/// `at` names the cluster in errors.
pub fn decompress(kind: Compression, input: &[u8], out: &mut [u8], at: u64) -> Result<()> {
    match kind {
        Compression::Zlib => inflate(input, out, at),
        Compression::Zstd => unzstd(input, out, at),
    }
}

fn inflate(input: &[u8], out: &mut [u8], at: u64) -> Result<()> {
    let mut d = flate2::Decompress::new(false);
    let status = d.decompress(input, out, flate2::FlushDecompress::Finish).map_err(|e| corrupt("deflate", at, e))?;
    // As QEMU: the stream must end, or fill the whole cluster.
    if d.total_out() as usize != out.len() {
        return Err(corrupt("deflate", at, format!("{:?} after {} of {} bytes", status, d.total_out(), out.len())));
    }
    Ok(())
}

fn unzstd(input: &[u8], out: &mut [u8], at: u64) -> Result<()> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut d = Decoder::new().map_err(|e| corrupt("zstd", at, e))?;
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    // Each call makes progress or we stop: bounded by the input and output sizes.
    loop {
        let before = (inb.pos(), outb.pos());
        let hint = d.run(&mut inb, &mut outb).map_err(|e| corrupt("zstd", at, e))?;
        if outb.pos() == outb.capacity() {
            return Ok(());
        }
        if hint == 0 || inb.pos() == input.len() || (inb.pos(), outb.pos()) == before {
            return Err(corrupt("zstd", at, format!("stream ended after {} of {} bytes", outb.pos(), outb.capacity())));
        }
    }
}

/// Compress one cluster; `None` when it does not get smaller than `max` bytes.
pub fn compress(kind: Compression, input: &[u8], max: usize) -> Result<Option<Vec<u8>>> {
    match kind {
        Compression::Zstd => {
            let out = zstd::bulk::compress(input, 0).map_err(|e| Error::from_io(e, "zstd"))?;
            Ok((out.len() < max).then_some(out))
        }
        Compression::Zlib => Ok(deflate_small_window(input).filter(|o| o.len() < max)),
    }
}

/// Raw deflate that only refers back 4 KiB at most (QEMU inflates with a 4 KiB window):
/// the input is cut into 4 KiB pieces, each compressed as independent blocks of one stream.
fn deflate_small_window(input: &[u8]) -> Option<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::new();
    let n = input.chunks(4096).count();
    for (i, chunk) in input.chunks(4096).enumerate() {
        // A full flush between pieces resets the dictionary, so no match reaches further back.
        let last = i + 1 == n;
        let flush = if last { flate2::FlushCompress::Finish } else { flate2::FlushCompress::Full };
        // Room for the worst case (stored blocks) so one call consumes and flushes everything.
        out.reserve(chunk.len() + chunk.len() / 8 + 64);
        let before = c.total_in();
        let st = c.compress_vec(chunk, &mut out, flush).ok()?;
        if (c.total_in() - before) as usize != chunk.len() || (last && st != flate2::Status::StreamEnd) {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..65536u32).map(|i| ((i / 7) % 251) as u8).collect()
    }

    #[test]
    fn deflate_round_trips() {
        let data = sample();
        let c = compress(Compression::Zlib, &data, data.len()).unwrap().unwrap();
        let mut out = vec![0u8; data.len()];
        decompress(Compression::Zlib, &c, &mut out, 0).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_round_trips_with_trailing_garbage() {
        let data = sample();
        let mut c = compress(Compression::Zstd, &data, data.len()).unwrap().unwrap();
        c.extend_from_slice(&[0xAA; 300]);
        let mut out = vec![0u8; data.len()];
        decompress(Compression::Zstd, &c, &mut out, 0).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn garbage_is_corrupt_not_panic() {
        let mut out = vec![0u8; 4096];
        assert!(decompress(Compression::Zlib, &[0xff; 100], &mut out, 0).is_err());
        assert!(decompress(Compression::Zstd, &[0xff; 100], &mut out, 0).is_err());
    }
}
