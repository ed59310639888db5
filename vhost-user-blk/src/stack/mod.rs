//! The stack builder: a disk spec ([`Spec`]) becomes a device ([`BlockDev`]).
//!
//! The spec names its format (`format=raw`, `format=mem`, ...); formats are never probed. Each
//! format has one builder in its own file and one line in [`FORMATS`]: a builder takes the keys it
//! knows from the spec and calls [`Spec::finish`], which refuses the rest.
//!
//! Devices stack through [`OpenCtx::nodes`]: a config file builds named nodes first, and a later
//! spec refers to one as `path=node:NAME` (resolved by [`OpenCtx::resolve`]), so a qcow2 image can
//! sit on a RAID array without either knowing the other.

mod mem;
mod qcow2;
pub mod raid;
pub mod raid_registry;
mod raw;
mod rbd;
pub mod thin;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, OpenOptions, RawFile, Result};

use crate::spec::Spec;

/// Builds a device from the keys of a spec (with `format` already taken).
pub type BuildFn = fn(&mut Spec, &OpenCtx) -> Result<Arc<dyn BlockDev>>;

/// One entry of the format registry.
#[derive(Clone, Copy)]
pub struct Format {
    /// The value of `format=` that selects it.
    pub name: &'static str,
    /// The builder.
    pub build: BuildFn,
    /// One line of usage, e.g. `format=mem,size=SIZE — a RAM disk`.
    pub help: &'static str,
}

/// Every format the builder knows. To add one: a file in `stack/` defining a `FORMAT` constant,
/// its `mod` line above, and one line here.
/// (One line per format, kept so by `rustfmt::skip`, so parallel additions merge cleanly.)
#[rustfmt::skip]
pub static FORMATS: &[Format] = &[
    raw::FORMAT,
    mem::FORMAT,
    qcow2::FORMAT,
    thin::FORMAT,
    raid::FORMAT,
    rbd::FORMAT,
];

/// Prefix of a path-valued key that names an already-built node instead of a file.
pub const NODE_PREFIX: &str = "node:";

/// What a builder may need besides its own keys.
#[derive(Clone, Default)]
pub struct OpenCtx {
    /// Open everything read-only (whatever the spec says).
    pub read_only: bool,
    /// Devices already built, by name, for `path=node:NAME`.
    pub nodes: HashMap<String, Arc<dyn BlockDev>>,
}

/// Where a path-valued key points.
pub enum Backing {
    /// A file or block device to open.
    File(PathBuf),
    /// An already-built node.
    Node {
        /// Its name (after `node:`).
        name: String,
        /// The device.
        dev: Arc<dyn BlockDev>,
    },
}

impl OpenCtx {
    /// A context for opening writable devices with no named nodes.
    pub fn new() -> Self {
        OpenCtx::default()
    }

    /// Take the path-valued `key` from `spec` and resolve it: `node:NAME` is a node from
    /// [`OpenCtx::nodes`] (an error names the unknown node and lists the known ones), anything
    /// else a file path (a file whose name starts with `node:` is written `./node:...`).
    pub fn resolve(&self, spec: &mut Spec, key: &str) -> Result<Backing> {
        let value = spec.take_required(key, &format!("{key}=FILE or {key}={NODE_PREFIX}NAME"))?;
        let Some(name) = value.strip_prefix(NODE_PREFIX) else {
            return Ok(Backing::File(PathBuf::from(value)));
        };
        match self.nodes.get(name) {
            Some(dev) => Ok(Backing::Node { name: name.to_string(), dev: dev.clone() }),
            None => {
                let mut known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none are defined".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("disk spec '{}': {key}={value} names no node ({known})", spec.source()),
                ))
            }
        }
    }

    /// Take the path-valued `key` and open it as a device: a node as it is, a file as a
    /// [`RawFile`] with `opts` (read-only forced when the context is read-only). A writable
    /// request on a read-only node is refused.
    pub fn open_backing(&self, spec: &mut Spec, key: &str, mut opts: OpenOptions) -> Result<Arc<dyn BlockDev>> {
        opts.read_only |= self.read_only;
        match self.resolve(spec, key)? {
            Backing::File(path) => Ok(Arc::new(RawFile::open(&path, opts)?)),
            Backing::Node { name, dev } => {
                if !opts.read_only && dev.info().read_only {
                    return Err(Error::new(
                        ErrorKind::ReadOnly,
                        format!("disk spec '{}': node '{name}' is read-only but is opened for writing", spec.source()),
                    ));
                }
                Ok(dev)
            }
        }
    }
}

/// The registry entry for `name`, if any.
pub fn find_format(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name == name)
}

/// One line per format, for `--help` texts and errors.
pub fn formats_help() -> String {
    FORMATS.iter().map(|f| format!("  {}", f.help)).collect::<Vec<_>>().join("\n")
}

fn format_names() -> String {
    FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// Build the device `spec` describes. `format` is required; the builder consumes its keys and
/// refuses unknown ones. On success the spec is empty.
pub fn open_disk(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let Some(name) = spec.take("format") else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "disk spec '{}' lacks 'format=' (formats are never guessed; one of: {})",
                spec.source(),
                format_names()
            ),
        ));
    };
    let Some(format) = find_format(&name) else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("disk spec '{}': unknown format '{name}' (one of: {})", spec.source(), format_names()),
        ));
    };
    (format.build)(spec, ctx)
}

/// Parse `text` and build its device in one step.
pub fn open_spec(text: &str, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let mut spec = Spec::parse(text)?;
    open_disk(&mut spec, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::MemDisk;

    #[test]
    fn missing_format_lists_the_formats() {
        let e = open_spec("path=/tmp/x", &OpenCtx::new()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("format=") && e.to_string().contains("raw, mem"), "{e}");
    }

    #[test]
    fn unknown_format_is_named() {
        let e = open_spec("format=vmdk,path=/tmp/x", &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("unknown format 'vmdk'") && e.to_string().contains("raw, mem"), "{e}");
    }

    #[test]
    fn format_names_are_unique() {
        for (i, f) in FORMATS.iter().enumerate() {
            assert!(FORMATS[..i].iter().all(|g| g.name != f.name), "{} registered twice", f.name);
            assert!(f.help.starts_with(&format!("format={}", f.name)), "help of {} starts with its spec", f.name);
        }
    }

    #[test]
    fn node_reference_resolves_to_the_node() {
        let mut ctx = OpenCtx::new();
        let dev: Arc<dyn BlockDev> = Arc::new(MemDisk::new(1 << 20).unwrap());
        ctx.nodes.insert("base".into(), dev.clone());
        let mut spec = Spec::parse("path=node:base").unwrap();
        let got = ctx.open_backing(&mut spec, "path", OpenOptions::default()).unwrap();
        assert!(Arc::ptr_eq(&got, &dev));
        assert!(spec.is_empty());
    }

    #[test]
    fn unknown_node_is_named_with_the_known_ones() {
        let mut ctx = OpenCtx::new();
        ctx.nodes.insert("a".into(), Arc::new(MemDisk::new(1 << 20).unwrap()));
        let mut spec = Spec::parse("path=node:b").unwrap();
        let e = ctx.resolve(&mut spec, "path").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("path=node:b") && e.to_string().contains("known: a"), "{e}");
    }
}
