//! `format=rbd,pool=POOL,image=IMAGE[,namespace=NS][,snapshot=SNAP][,conf=FILE][,id=USER]
//! [,keyring=FILE][,timeout=SECONDS][,read-only=on]`: a Ceph RBD image ([`rbd::RbdDev`]).
//!
//! Opening connects to the cluster (on a Ceph client thread, bounded by `timeout=`, default 30)
//! and, unless read-only or a snapshot, takes the image's exclusive lock: a second daemon that
//! asks to write-serve the image is refused, naming it, until the first lets go.

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDev, Result};
use rbd::{RbdConfig, RbdDev};

use super::{Format, OpenCtx};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "rbd",
    build,
    help: "format=rbd,pool=POOL,image=IMAGE[,namespace=NS][,snapshot=SNAP][,conf=FILE][,id=USER]\
           [,keyring=FILE][,timeout=SECONDS][,read-only=on] — a Ceph RBD image (needs librbd1)",
};

const KEYS: &[&str] = &["pool", "image", "namespace", "snapshot", "conf", "id", "keyring", "timeout", "read-only"];

fn build(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let pool = spec.take_required("pool", "pool=POOL (the RADOS pool holding the image)")?;
    let image = spec.take_required("image", "image=IMAGE (the RBD image's name)")?;
    let mut cfg = RbdConfig::new(pool, image);
    cfg.namespace = spec.take("namespace").unwrap_or_default();
    cfg.snapshot = spec.take("snapshot");
    cfg.conf = spec.take("conf").map(Into::into);
    cfg.id = spec.take("id");
    cfg.keyring = spec.take("keyring").map(Into::into);
    if let Some(secs) = spec.take_u32("timeout")? {
        cfg.timeout = Duration::from_secs(u64::from(secs));
    }
    cfg.read_only = spec.take_bool("read-only")?.unwrap_or(false) || ctx.read_only;
    spec.finish(KEYS)?;
    let dev = RbdDev::open(&cfg).map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?;
    Ok(Arc::new(dev))
}

#[cfg(test)]
mod tests {
    use crate::stack::{open_spec, OpenCtx};

    #[test]
    fn bad_keys_are_refused_before_any_cluster_is_asked() {
        let e = open_spec("format=rbd,image=x", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'pool'"), "{e}");
        let e = open_spec("format=rbd,pool=rbd", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'image'"), "{e}");
        let e = open_spec("format=rbd,pool=rbd,image=x,cache=none", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("unknown key 'cache'"), "{e}");
        let e = open_spec("format=rbd,pool=rbd,image=x,timeout=soon", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'timeout'") && e.to_string().contains("'soon'"), "{e}");
    }

    #[test]
    fn a_slash_or_at_in_the_image_name_is_named() {
        for bad in ["a/b", "a@b"] {
            let e = open_spec(&format!("format=rbd,pool=rbd,image={bad}"), &OpenCtx::new()).err().unwrap();
            let msg = e.to_string();
            assert!(msg.contains(&format!("image='{bad}'")) && msg.contains("disk spec"), "{msg}");
        }
    }

    #[test]
    fn a_missing_conf_is_named() {
        let e = open_spec("format=rbd,pool=rbd,image=x,conf=/nonexistent/ceph.conf", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("conf=/nonexistent/ceph.conf"), "{e}");
    }
}
