//! `format=raw,path=FILE[,direct=on][,read-only=on]`: a file or block device as it is
//! ([`RawFile`]), or an already-built node (`path=node:NAME`) passed through unchanged.

use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, OpenOptions, RawFile, Result};

use super::{Backing, Format, OpenCtx};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "raw",
    build,
    help: "format=raw,path=FILE[,direct=on][,read-only=on] — a file or block device as it is",
};

const KEYS: &[&str] = &["path", "direct", "read-only"];

fn build(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let backing = ctx.resolve(spec, "path")?;
    let direct = spec.take_bool("direct")?;
    let read_only = spec.take_bool("read-only")?.unwrap_or(false) || ctx.read_only;
    spec.finish(KEYS)?;
    match backing {
        Backing::File(path) => {
            let opts = OpenOptions { read_only, direct: direct.unwrap_or(false), ..OpenOptions::default() };
            Ok(Arc::new(RawFile::open(&path, opts)?))
        }
        Backing::Node { name, dev } => {
            let refuse = |why: &str| {
                Err(Error::new(ErrorKind::InvalidInput, format!("disk spec '{}': node '{name}' {why}", spec.source())))
            };
            if direct.is_some() {
                return refuse("is not a file: direct= applies only to files");
            }
            if !read_only && dev.info().read_only {
                return refuse("is read-only: add read-only=on");
            }
            if read_only && !dev.info().read_only {
                return refuse("is writable: a read-only view of a node is not supported yet");
            }
            Ok(dev)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::stack::{open_spec, OpenCtx};
    use blockdev::{BlockDev, ErrorKind, IoCtx, IoTag, SharedBuf};

    fn scratch_file(size: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        f
    }

    #[test]
    fn opens_a_file_and_reads_it() {
        let f = scratch_file(1 << 20);
        let dev = open_spec(&format!("format=raw,path={}", f.path().display()), &OpenCtx::new()).unwrap();
        assert_eq!(dev.info().size, 1 << 20);
        let io = IoCtx::new().unwrap();
        let mut buf = SharedBuf::new(4096);
        io.block_on(dev.read(&io, 0, buf.io(), IoTag::DATA)).unwrap();
        assert!(buf.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_key_and_context_make_it_read_only() {
        let f = scratch_file(1 << 20);
        let dev = open_spec(&format!("format=raw,path={},read-only=on", f.path().display()), &OpenCtx::new()).unwrap();
        assert!(dev.info().read_only);
        drop(dev);
        let ctx = OpenCtx { read_only: true, ..OpenCtx::new() };
        let dev = open_spec(&format!("format=raw,path={}", f.path().display()), &ctx).unwrap();
        assert!(dev.info().read_only);
    }

    #[test]
    fn missing_path_is_refused() {
        let e = open_spec("format=raw,direct=on", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("required key 'path'"), "{e}");
    }

    #[test]
    fn nonexistent_file_is_named() {
        let e = open_spec("format=raw,path=/nonexistent/strata.img", &OpenCtx::new()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("/nonexistent/strata.img"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let f = scratch_file(1 << 20);
        let e =
            open_spec(&format!("format=raw,path={},cache=none", f.path().display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("unknown key 'cache'"), "{e}");
    }

    #[test]
    fn bad_switch_value_is_refused() {
        let f = scratch_file(1 << 20);
        let e =
            open_spec(&format!("format=raw,path={},direct=yes", f.path().display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'direct'") && e.to_string().contains("'yes'"), "{e}");
    }

    #[test]
    fn node_path_passes_the_node_through() {
        let mut ctx = OpenCtx::new();
        let mem: std::sync::Arc<dyn BlockDev> = std::sync::Arc::new(blockdev::MemDisk::new(1 << 20).unwrap());
        ctx.nodes.insert("m".into(), mem.clone());
        let dev = open_spec("format=raw,path=node:m", &ctx).unwrap();
        assert!(std::sync::Arc::ptr_eq(&dev, &mem));
        let e = open_spec("format=raw,path=node:m,direct=on", &ctx).err().unwrap();
        assert!(e.to_string().contains("direct= applies only to files"), "{e}");
    }
}
