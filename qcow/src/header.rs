//! The qcow2 header and its extensions: parsing with every field checked against the file size
//! and QEMU's caps, and serialising back (unknown extensions and bitmaps are kept byte for byte).

use blockdev::{Error, ErrorKind, Result};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{ExtensionHeader, FeatureNameEntry, HeaderV2, HeaderV3, COMPRESSION_TYPE_OFFSET};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header (and of the fixed part every version has).
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header this crate writes (with the compression type byte, padded).
pub const V3_HEADER_LEN: u32 = 112;
/// Largest L1 table QEMU opens (32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU opens (8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Smallest and largest cluster_bits QEMU accepts.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest virtual disk size accepted (the 56-bit host offset range of an L2 entry).
pub const MAX_DISK_SIZE: u64 = 1 << 56;
/// Most internal snapshots QEMU accepts.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits (spec: "incompatible_features").
pub mod incompat {
    /// Bit 0: the image was not closed cleanly (refcounts may be stale; lazy refcounts).
    pub const DIRTY: u64 = 1 << 0;
    /// Bit 1: the image is corrupt; open read-only only.
    pub const CORRUPT: u64 = 1 << 1;
    /// Bit 2: guest data lives in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// Bit 3: the compression type field is not zlib.
    pub const COMPRESSION: u64 = 1 << 3;
    /// Bit 4: L2 entries are 128 bits with subcluster bitmaps.
    pub const EXTL2: u64 = 1 << 4;
    /// Every bit this crate understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTL2;
}

/// Compatible feature bits.
pub mod compat {
    /// Bit 0: lazy refcounts (refcount updates may be skipped while the dirty bit is set).
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits.
pub mod autoclear {
    /// Bit 0: the bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// Bit 1: the external data file is raw.
    pub const RAW_DATA: u64 = 1 << 1;
    /// Every bit this crate understands (and keeps).
    pub const KNOWN: u64 = BITMAPS | RAW_DATA;
}

/// Header extension types.
pub mod ext {
    /// End of the extension area.
    pub const END: u32 = 0;
    /// Backing file format name.
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    /// Feature name table.
    pub const FEATURE_NAMES: u32 = 0x6803_f857;
    /// Bitmaps (kept intact).
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Full disk encryption header.
    pub const CRYPTO: u32 = 0x0537_be77;
    /// External data file name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// The compression method of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (type 0, the default).
    Zlib,
    /// Zstandard (type 1).
    Zstd,
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name (up to 46 bytes).
    pub name: String,
}

/// A header extension this crate does not interpret, kept to be written back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExtension {
    /// Extension type.
    pub kind: u32,
    /// Data (without padding).
    pub data: Vec<u8>,
}

/// A parsed qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name in the image (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Encryption method (0: none; anything else is refused).
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3).
    pub compatible_features: u64,
    /// Autoclear feature bits (v3).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the header before the extensions.
    pub header_length: u32,
    /// Compression type of compressed clusters.
    pub compression: Compression,
    /// The backing file name, if any.
    pub backing_file: Option<String>,
    /// The backing format from its header extension, if any.
    pub backing_format: Option<String>,
    /// The feature name table, if present.
    pub feature_names: Vec<FeatureName>,
    /// Extensions kept as they are (bitmaps and unknown types).
    pub other_extensions: Vec<RawExtension>,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("qcow2 header field {field}: {msg}"))
}

fn unsupported(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unsupported, msg.into())
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// True when L2 entries carry subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & incompat::EXTL2 != 0
    }

    /// True when the image has the corrupt bit set.
    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & incompat::CORRUPT != 0
    }

    /// True when the image has the dirty bit set.
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & incompat::DIRTY != 0
    }

    /// True when lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & compat::LAZY_REFCOUNTS != 0
    }

    /// Parse a header from `buf` (the first cluster of the image, or at least the first 64 KiB
    /// of it, or the whole file if it is shorter) and validate it against `file_size`.
    pub fn parse(buf: &[u8], file_size: u64) -> Result<Header> {
        let Ok((v2, rest)) = HeaderV2::read_from_prefix(buf) else {
            return Err(bad("magic", format!("file too short for a qcow2 header ({} bytes)", buf.len())));
        };
        if v2.magic.get() != MAGIC {
            return Err(bad("magic", format!("{:#010x} is not QFI\\xfb (not a qcow2 image)", v2.magic.get())));
        }
        let version = v2.version.get();
        if version != 2 && version != 3 {
            return Err(unsupported(format!("qcow2 header field version: {version} is not supported (2 or 3)")));
        }
        let cluster_bits = v2.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(
                "cluster_bits",
                format!("{cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"),
            ));
        }
        let mut h = Header {
            version,
            backing_file_offset: v2.backing_file_offset.get(),
            backing_file_size: v2.backing_file_size.get(),
            cluster_bits,
            size: v2.size.get(),
            crypt_method: v2.crypt_method.get(),
            l1_size: v2.l1_size.get(),
            l1_table_offset: v2.l1_table_offset.get(),
            refcount_table_offset: v2.refcount_table_offset.get(),
            refcount_table_clusters: v2.refcount_table_clusters.get(),
            nb_snapshots: v2.nb_snapshots.get(),
            snapshots_offset: v2.snapshots_offset.get(),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            other_extensions: Vec::new(),
        };
        let cs = h.cluster_size();
        if version == 3 {
            let Ok((v3, _)) = HeaderV3::read_from_prefix(rest) else {
                return Err(bad("header_length", "file too short for a version 3 header"));
            };
            h.incompatible_features = v3.incompatible_features.get();
            h.compatible_features = v3.compatible_features.get();
            h.autoclear_features = v3.autoclear_features.get();
            h.refcount_order = v3.refcount_order.get();
            h.header_length = v3.header_length.get();
            if h.header_length < 104 || !h.header_length.is_multiple_of(8) || u64::from(h.header_length) > cs {
                return Err(bad(
                    "header_length",
                    format!("{} must be a multiple of 8 in 104..=cluster size", h.header_length),
                ));
            }
            if h.header_length as usize > buf.len() {
                return Err(bad("header_length", format!("{} reaches past the end of the file", h.header_length)));
            }
            if h.header_length as usize > COMPRESSION_TYPE_OFFSET {
                h.compression = match buf[COMPRESSION_TYPE_OFFSET] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => return Err(unsupported(format!("qcow2 header field compression_type: unknown type {t}"))),
                };
            }
        }
        // Features: extension parsing first, so the feature name table can name unknown bits.
        h.parse_extensions(buf)?;
        let unknown = h.incompatible_features & !incompat::KNOWN;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let name = h
                .feature_names
                .iter()
                .find(|f| f.kind == 0 && u32::from(f.bit) == bit)
                .map(|f| format!(" ({})", f.name))
                .unwrap_or_default();
            return Err(unsupported(format!(
                "qcow2 header field incompatible_features: unknown incompatible feature bit {bit}{name}; refusing to open"
            )));
        }
        if h.incompatible_features & incompat::DATA_FILE != 0 {
            return Err(unsupported(
                "qcow2 header field incompatible_features: external data file (bit 2) is not supported",
            ));
        }
        let compression_bit = h.incompatible_features & incompat::COMPRESSION != 0;
        if compression_bit != (h.compression != Compression::Zlib) {
            return Err(bad("compression_type", "does not agree with incompatible feature bit 3"));
        }
        if h.crypt_method != 0 {
            return Err(unsupported(format!(
                "qcow2 header field crypt_method: encryption ({}) is not supported",
                h.crypt_method
            )));
        }
        if h.refcount_order > 6 {
            return Err(bad("refcount_order", format!("{} is above 6 (64-bit refcounts)", h.refcount_order)));
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(bad("cluster_bits", "extended L2 entries need clusters of at least 16 KiB"));
        }
        h.validate(file_size)?;
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let end = if self.backing_file_offset != 0 { (self.backing_file_offset as usize).min(cs) } else { cs };
        let end = end.min(buf.len());
        let mut pos = self.header_length as usize;
        while let Some(Ok((eh, _))) = buf.get(pos..end).map(ExtensionHeader::read_from_prefix) {
            let (kind, len) = (eh.kind.get(), eh.len.get() as usize);
            pos += size_of::<ExtensionHeader>();
            if kind == ext::END {
                break;
            }
            if len > end - pos {
                return Err(bad(
                    "extensions",
                    format!("extension {kind:#010x} of {len} bytes reaches past the header area"),
                ));
            }
            let data = &buf[pos..pos + len];
            match kind {
                ext::BACKING_FORMAT => {
                    let s = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
                    self.backing_format = Some(s);
                }
                ext::FEATURE_NAMES => {
                    for raw in data.chunks_exact(size_of::<FeatureNameEntry>()) {
                        let Ok(e) = FeatureNameEntry::read_from_bytes(raw) else { continue };
                        let name_end = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
                        let name = String::from_utf8_lossy(&e.name[..name_end]).to_string();
                        self.feature_names.push(FeatureName { kind: e.kind, bit: e.bit, name });
                    }
                }
                ext::CRYPTO => {
                    return Err(unsupported("qcow2 header extension: full disk encryption is not supported"))
                }
                ext::DATA_FILE => {
                    return Err(unsupported("qcow2 header extension: external data file is not supported"));
                }
                _ => self.other_extensions.push(RawExtension { kind, data: data.to_vec() }),
            }
            pos += len.next_multiple_of(8);
        }
        if self.backing_file_offset != 0 {
            if self.backing_file_size == 0 || self.backing_file_size > MAX_BACKING_NAME {
                return Err(bad(
                    "backing_file_size",
                    format!("{} is outside 1..={MAX_BACKING_NAME}", self.backing_file_size),
                ));
            }
            let start = self.backing_file_offset;
            let stop = start + u64::from(self.backing_file_size);
            if stop > self.cluster_size() || stop as usize > buf.len() {
                return Err(bad(
                    "backing_file_offset",
                    format!("name at {start}..{stop} lies outside the first cluster"),
                ));
            }
            let name = &buf[start as usize..stop as usize];
            let name =
                std::str::from_utf8(name).map_err(|_| bad("backing_file_offset", "backing file name is not UTF-8"))?;
            self.backing_file = Some(name.to_string());
        }
        Ok(())
    }

    /// Check every offset and size against the file size and QEMU's caps.
    pub fn validate(&self, file_size: u64) -> Result<()> {
        let cs = self.cluster_size();
        if self.size > MAX_DISK_SIZE {
            return Err(bad("size", format!("{} is larger than {MAX_DISK_SIZE}", self.size)));
        }
        if !self.size.is_multiple_of(512) {
            return Err(bad("size", format!("{} is not a multiple of 512", self.size)));
        }
        let l2_entries = cs / self.l2_entry_size();
        let need_l1 = self.size.div_ceil(cs).div_ceil(l2_entries);
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad("l1_size", format!("{} entries exceed the 32 MiB cap", self.l1_size)));
        }
        if u64::from(self.l1_size) < need_l1 {
            return Err(bad(
                "l1_size",
                format!("{} entries are too few for a {}-byte disk (need {need_l1})", self.l1_size, self.size),
            ));
        }
        check_table(
            "l1_table_offset",
            self.l1_table_offset,
            u64::from(self.l1_size) * 8,
            cs,
            file_size,
            self.l1_size > 0,
        )?;
        if self.refcount_table_clusters == 0 {
            return Err(bad("refcount_table_clusters", "is 0"));
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(bad(
                "refcount_table_clusters",
                format!("{} clusters exceed the 8 MiB cap", self.refcount_table_clusters),
            ));
        }
        check_table("refcount_table_offset", self.refcount_table_offset, rt_bytes, cs, file_size, true)?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(bad("nb_snapshots", format!("{} exceeds {MAX_SNAPSHOTS}", self.nb_snapshots)));
        }
        // Each snapshot header is at least 40 bytes.
        check_table(
            "snapshots_offset",
            self.snapshots_offset,
            u64::from(self.nb_snapshots) * 40,
            cs,
            file_size,
            self.nb_snapshots > 0,
        )?;
        Ok(())
    }

    /// Size of one L2 entry in bytes (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// Serialise the header and its extensions into one cluster-sized buffer (at most `cluster_size`).
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        // The backing file name goes after the extensions; its offset is set once that is known.
        let mut v2 = HeaderV2 {
            magic: MAGIC.into(),
            version: self.version.into(),
            backing_file_offset: 0.into(),
            backing_file_size: 0.into(),
            cluster_bits: self.cluster_bits.into(),
            size: self.size.into(),
            crypt_method: self.crypt_method.into(),
            l1_size: self.l1_size.into(),
            l1_table_offset: self.l1_table_offset.into(),
            refcount_table_offset: self.refcount_table_offset.into(),
            refcount_table_clusters: self.refcount_table_clusters.into(),
            nb_snapshots: self.nb_snapshots.into(),
            snapshots_offset: self.snapshots_offset.into(),
        };
        let mut b = v2.as_bytes().to_vec();
        if self.version == 3 {
            let len = self.header_length.max(COMPRESSION_TYPE_OFFSET as u32);
            let v3 = HeaderV3 {
                incompatible_features: self.incompatible_features.into(),
                compatible_features: self.compatible_features.into(),
                autoclear_features: self.autoclear_features.into(),
                refcount_order: self.refcount_order.into(),
                header_length: len.into(),
            };
            b.extend_from_slice(v3.as_bytes());
            b.resize(len as usize, 0);
            if b.len() > COMPRESSION_TYPE_OFFSET {
                b[COMPRESSION_TYPE_OFFSET] = match self.compression {
                    Compression::Zlib => 0,
                    Compression::Zstd => 1,
                };
            }
        }
        let push_ext = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
            b.extend_from_slice(ExtensionHeader { kind: kind.into(), len: (data.len() as u32).into() }.as_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        };
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut b, ext::BACKING_FORMAT, fmt.as_bytes());
        }
        if self.version == 3 {
            let mut names = Vec::new();
            for f in &self.feature_names {
                let mut e = FeatureNameEntry { kind: f.kind, bit: f.bit, name: [0; 46] };
                let n = f.name.len().min(e.name.len());
                e.name[..n].copy_from_slice(&f.name.as_bytes()[..n]);
                names.extend_from_slice(e.as_bytes());
            }
            if !names.is_empty() {
                push_ext(&mut b, ext::FEATURE_NAMES, &names);
            }
        }
        for e in &self.other_extensions {
            push_ext(&mut b, e.kind, &e.data);
        }
        push_ext(&mut b, ext::END, &[]);
        let mut out = b;
        if let Some(name) = &self.backing_file {
            v2.backing_file_offset = (out.len() as u64).into();
            v2.backing_file_size = (name.len() as u32).into();
            out.extend_from_slice(name.as_bytes());
            out[..size_of::<HeaderV2>()].copy_from_slice(v2.as_bytes());
        }
        if out.len() > cs {
            return Err(Error::new(ErrorKind::InvalidInput, "qcow2 header and extensions do not fit in one cluster"));
        }
        Ok(out)
    }

    /// The feature name table QEMU writes for version 3 images.
    pub fn default_feature_names() -> Vec<FeatureName> {
        let n = |kind: u8, bit: u8, name: &str| FeatureName { kind, bit, name: name.to_string() };
        vec![
            n(0, 0, "dirty bit"),
            n(0, 1, "corrupt bit"),
            n(0, 2, "external data file"),
            n(0, 3, "compression type"),
            n(0, 4, "extended L2 entries"),
            n(1, 0, "lazy refcounts"),
            n(2, 0, "bitmaps"),
            n(2, 1, "raw external data"),
        ]
    }
}

/// A table at `off` of `len` bytes must be cluster-aligned and lie inside the file.
fn check_table(field: &str, off: u64, len: u64, cs: u64, file_size: u64, present: bool) -> Result<()> {
    if !present {
        return Ok(());
    }
    if off == 0 || !off.is_multiple_of(cs) {
        return Err(bad(field, format!("{off} is not a non-zero multiple of the cluster size {cs}")));
    }
    if off.checked_add(len).is_none_or(|end| end > file_size.next_multiple_of(cs)) {
        return Err(bad(
            field,
            format!("table at {off} of {len} bytes reaches past the end of the file ({file_size} bytes)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression: Compression::Zlib,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            feature_names: Header::default_feature_names(),
            other_extensions: vec![RawExtension { kind: ext::BITMAPS, data: vec![1, 2, 3] }],
        }
    }

    #[test]
    fn serialize_then_parse_round_trips() {
        let h = sample();
        let mut buf = h.serialize().unwrap();
        buf.resize(1 << 16, 0);
        let mut back = Header::parse(&buf, 4 << 16).unwrap();
        back.backing_file_offset = 0;
        back.backing_file_size = 0;
        assert_eq!(back.backing_file.as_deref(), Some("base.qcow2"));
        let mut want = h.clone();
        want.backing_file_offset = 0;
        want.backing_file_size = 0;
        assert_eq!(back, want);
    }

    #[test]
    fn unknown_incompatible_bit_is_refused_naming_the_bit() {
        let mut h = sample();
        h.incompatible_features = 1 << 9;
        let mut buf = h.serialize().unwrap();
        buf.resize(1 << 16, 0);
        let e = Header::parse(&buf, 4 << 16).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("bit 9"), "{e}");
    }

    #[test]
    fn l1_table_past_end_of_file_is_refused_naming_the_field() {
        let mut h = sample();
        h.l1_table_offset = 100 << 16;
        let mut buf = h.serialize().unwrap();
        buf.resize(1 << 16, 0);
        let e = Header::parse(&buf, 4 << 16).unwrap_err();
        assert!(e.to_string().contains("l1_table_offset"), "{e}");
    }

    #[test]
    fn huge_cluster_bits_is_refused() {
        let h = sample();
        let mut buf = h.serialize().unwrap();
        let mut v2 = HeaderV2::read_from_prefix(&buf).unwrap().0;
        v2.cluster_bits = 22.into();
        buf[..72].copy_from_slice(v2.as_bytes());
        let e = Header::parse(&buf, 4 << 16).unwrap_err();
        assert!(e.to_string().contains("cluster_bits"), "{e}");
    }

    #[test]
    fn oversized_refcount_table_is_refused() {
        let mut h = sample();
        h.refcount_table_clusters = 129;
        let mut buf = h.serialize().unwrap();
        buf.resize(1 << 16, 0);
        let e = Header::parse(&buf, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("refcount_table_clusters"), "{e}");
    }
}
