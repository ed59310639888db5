//! `format=qcow2,path=FILE[,read-only=on][,direct=on][,backing=on|off][,l2-cache-size=SIZE]
//! [,backing-dir=DIR]...[,backing-file=PATH]...`: a qcow2 image ([`qcow::Qcow2`]). The backing
//! chain is followed when the header names the backing format (relative names from the image's
//! directory); a backing file without a named format is refused, never probed. A backing file is
//! opened only under the image's own directory, under a `backing-dir` or when it is exactly a
//! `backing-file` (both repeatable; symlinks and `..` resolved first): an image naming
//! `/etc/passwd` is refused, not served. `path=node:NAME` puts the image on an already-built node (a RAID array,
//! a thin volume); such an image cannot have a backing file unless `backing=off`.

use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, Result};

use super::{Backing, Format, OpenCtx};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "qcow2",
    build,
    help: "format=qcow2,path=FILE[,read-only=on][,direct=on][,backing=on|off][,l2-cache-size=SIZE]\
           [,backing-dir=DIR]...[,backing-file=PATH]... — a qcow2 image (backing files only from its \
           own directory, a backing-dir or a backing-file)",
};

const KEYS: &[&str] = &["path", "read-only", "direct", "backing", "l2-cache-size", "backing-dir", "backing-file"];

fn build(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let target = ctx.resolve(spec, "path")?;
    let read_only = spec.take_bool("read-only")?.unwrap_or(false) || ctx.read_only;
    let direct = spec.take_bool("direct")?.unwrap_or(false);
    let follow = spec.take_bool("backing")?.unwrap_or(true);
    let l2 = spec.take_size("l2-cache-size")?;
    let mut policy = qcow::BackingPolicy::default();
    for d in spec.take_all("backing-dir") {
        policy = policy.allow_dir(d);
    }
    for f in spec.take_all("backing-file") {
        policy = policy.allow_file(f);
    }
    spec.finish(KEYS)?;
    let mut opts =
        qcow::Options { read_only, direct, ignore_backing: !follow, backing_policy: policy, ..Default::default() };
    if let Some(l2) = l2 {
        opts.l2_cache_bytes = usize::try_from(l2).unwrap_or(usize::MAX).clamp(64 << 10, 1 << 30);
    }
    // Opening reads the header and tables; a ring of our own does it (the device is then used
    // from whichever thread serves it).
    let io = IoCtx::new()?;
    let dev = match target {
        Backing::File(path) => io.block_on(qcow::open_path(&io, &path, &opts))?,
        Backing::Node { name, dev } => {
            if !read_only && dev.info().read_only {
                return Err(Error::new(
                    ErrorKind::ReadOnly,
                    format!("disk spec '{}': node '{name}' is read-only: add read-only=on", spec.source()),
                ));
            }
            io.block_on(qcow::open_dev(&io, dev, None, &opts))
                .map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?
        }
    };
    Ok(Arc::new(dev))
}

#[cfg(test)]
mod tests {
    use crate::stack::{open_spec, OpenCtx};
    use blockdev::{IoCtx, IoTag, SharedBuf};

    fn image(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("a.qcow2");
        let io = IoCtx::new().unwrap();
        qcow::create_path(&io, &path, &qcow::CreateOptions { size: 4 << 20, ..Default::default() }).unwrap();
        path
    }

    #[test]
    fn opens_an_image_and_writes_and_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path());
        let dev = open_spec(&format!("format=qcow2,path={}", path.display()), &OpenCtx::new()).unwrap();
        assert_eq!(dev.info().size, 4 << 20);
        let io = IoCtx::new().unwrap();
        let mut w = SharedBuf::from_slice(&[7u8; 4096]);
        io.block_on(dev.write(&io, 65536, w.io(), false, IoTag::DATA)).unwrap();
        io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
        let mut r = SharedBuf::new(4096);
        io.block_on(dev.read(&io, 65536, r.io(), IoTag::DATA)).unwrap();
        assert_eq!(r.bytes(), &[7u8; 4096][..]);
    }

    #[test]
    fn a_raw_file_is_not_accepted_as_qcow2() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let e = open_spec(&format!("format=qcow2,path={}", f.path().display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("magic"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path());
        let e = open_spec(&format!("format=qcow2,path={},cache=none", path.display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("unknown key 'cache'"), "{e}");
    }
}
