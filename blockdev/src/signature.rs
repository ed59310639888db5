//! What a file or device already holds, looked at before a tool formats it: a known header
//! (qcow2, a strata thin pool or RAID member, LUKS, a file system, a partition table) or any
//! non-zero byte in its first MiB. `qcow2 create`, `thin pool-create` and `raid create` refuse
//! to overwrite what this finds unless told `--force`.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{Error, ErrorKind, Result};

/// How much of the start of a target is looked at.
pub const PROBE_LEN: usize = 1 << 20;

/// One well-known header: its name, where its magic lies and what the magic is.
struct Magic {
    name: &'static str,
    offset: usize,
    bytes: &'static [u8],
}

/// The headers recognised, most specific first (a strata pool also has non-zero bytes, and a
/// file system may also carry a partition table's boot signature).
const MAGICS: &[Magic] = &[
    Magic { name: "a qcow2 image", offset: 0, bytes: b"QFI\xfb" },
    Magic { name: "a strata thin pool", offset: 0, bytes: b"STRTHIN1" },
    // A pool keeps two superblock copies, a page apart; a new pool's first commit is in the second.
    Magic { name: "a strata thin pool", offset: 4096, bytes: b"STRTHIN1" },
    Magic { name: "a strata RAID member", offset: 0, bytes: b"STRRAID1" },
    Magic { name: "a LUKS encrypted volume", offset: 0, bytes: b"LUKS\xba\xbe" },
    Magic { name: "a LUKS2 encrypted volume", offset: 0, bytes: b"SKUL\xba\xbe" },
    Magic { name: "an XFS file system", offset: 0, bytes: b"XFSB" },
    Magic { name: "a VMDK image", offset: 0, bytes: b"KDMV" },
    Magic { name: "a VHDX image", offset: 0, bytes: b"vhdxfile" },
    Magic { name: "a VDI image", offset: 64, bytes: b"\x7f\x10\xda\xbe" },
    Magic { name: "an LVM physical volume", offset: 512 + 24, bytes: b"LVM2 001" },
    Magic { name: "a GPT partition table", offset: 512, bytes: b"EFI PART" },
    Magic { name: "an ext2/3/4 file system", offset: 1024 + 56, bytes: &[0x53, 0xef] },
    Magic { name: "a swap area", offset: 4096 - 10, bytes: b"SWAPSPACE2" },
    Magic { name: "a Btrfs file system", offset: 0x10040, bytes: b"_BHRfS_M" },
    Magic { name: "an ISO 9660 file system", offset: 0x8001, bytes: b"CD001" },
    Magic { name: "an MBR partition table or boot sector", offset: 510, bytes: &[0x55, 0xaa] },
];

/// What was found at the start of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A well-known header (its name, e.g. "a qcow2 image").
    Header(&'static str),
    /// No known header, but data: the first non-zero byte's offset.
    Data {
        /// Offset of the first non-zero byte.
        offset: u64,
    },
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Header(name) => f.write_str(name),
            Signature::Data { offset } => write!(f, "data (a non-zero byte at offset {offset})"),
        }
    }
}

/// Look at the first bytes of a target (`head`, at most [`PROBE_LEN`] of them).
pub fn identify(head: &[u8]) -> Option<Signature> {
    let head = &head[..head.len().min(PROBE_LEN)];
    for m in MAGICS {
        if head.get(m.offset..m.offset + m.bytes.len()) == Some(m.bytes) {
            return Some(Signature::Header(m.name));
        }
    }
    head.iter().position(|&b| b != 0).map(|i| Signature::Data { offset: i as u64 })
}

/// Read the start of `file` (named `path` in errors) and say what it holds, if anything.
pub fn probe(file: &File, path: &Path) -> Result<Option<Signature>> {
    let mut head = vec![0u8; PROBE_LEN];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io(e, format!("{}: read its first MiB", path.display()))),
        }
    }
    Ok(identify(&head[..got]))
}

/// Refuse to format `path` when it holds something, unless `force`: the error names the file,
/// what it holds, and the flag that would overwrite it.
pub fn refuse_overwrite(file: &File, path: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    match probe(file, path)? {
        None => Ok(()),
        Some(sig) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{}: holds {sig}; refusing to overwrite it (--force overwrites)", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 128 << 10];
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn zeros_and_empty_hold_nothing() {
        assert_eq!(identify(&[]), None);
        assert_eq!(identify(&vec![0u8; PROBE_LEN]), None);
    }

    #[test]
    fn known_headers_are_named() {
        assert_eq!(identify(&with(0, b"QFI\xfb\0\0\0\x03")), Some(Signature::Header("a qcow2 image")));
        assert_eq!(identify(&with(0, b"STRTHIN1")), Some(Signature::Header("a strata thin pool")));
        assert_eq!(identify(&with(4096, b"STRTHIN1")), Some(Signature::Header("a strata thin pool")));
        assert_eq!(identify(&with(0, b"STRRAID1")), Some(Signature::Header("a strata RAID member")));
        assert_eq!(identify(&with(0, b"LUKS\xba\xbe")), Some(Signature::Header("a LUKS encrypted volume")));
        assert_eq!(identify(&with(1080, &[0x53, 0xef])), Some(Signature::Header("an ext2/3/4 file system")));
        assert_eq!(identify(&with(510, &[0x55, 0xaa])).unwrap().to_string(), "an MBR partition table or boot sector");
    }

    #[test]
    fn any_other_byte_is_data_with_its_offset() {
        assert_eq!(identify(&with(70_000, b"x")), Some(Signature::Data { offset: 70_000 }));
    }

    #[test]
    fn a_short_file_is_looked_at_safely() {
        assert_eq!(identify(b"QF"), Some(Signature::Data { offset: 0 }));
        assert_eq!(identify(&[0u8; 3]), None);
    }
}
