//! `format=mem,size=SIZE`: a RAM disk ([`MemDisk`]), allocated as it is written.

use std::sync::Arc;

use blockdev::{BlockDev, MemDisk, Result};

use super::{Format, OpenCtx};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format =
    Format { name: "mem", build, help: "format=mem,size=SIZE — a RAM disk (contents lost on exit)" };

const KEYS: &[&str] = &["size"];

fn build(spec: &mut Spec, _ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let size = spec.take_size("size")?.ok_or_else(|| spec.missing("size", "e.g. format=mem,size=1G"))?;
    spec.finish(KEYS)?;
    let disk = MemDisk::new(size).map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?;
    Ok(Arc::new(disk))
}

#[cfg(test)]
mod tests {
    use crate::stack::{open_spec, OpenCtx};
    use blockdev::ErrorKind;

    #[test]
    fn builds_a_disk_of_the_given_size() {
        let dev = open_spec("format=mem,size=4M", &OpenCtx::new()).unwrap();
        assert_eq!(dev.info().size, 4 << 20);
        assert!(!dev.info().read_only);
    }

    #[test]
    fn missing_size_is_refused() {
        let e = open_spec("format=mem", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'size'"), "{e}");
    }

    #[test]
    fn bad_size_is_refused_naming_it() {
        let e = open_spec("format=mem,size=lots", &OpenCtx::new()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("'size'") && e.to_string().contains("'lots'"), "{e}");
        let e = open_spec("format=mem,size=100", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("multiple of 512"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = open_spec("format=mem,size=1M,path=/x", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("unknown key 'path'") && e.to_string().contains("accepted here: size"), "{e}");
    }
}
