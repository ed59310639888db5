//! Which files an image may name as its backing file (the class of CVE-2024-32498: an image
//! whose header names `/etc/passwd` must not hand the host's file to a guest).
//!
//! A backing file is opened only if, with symlinks and `..` resolved on both sides, it lies
//! under the directory of the image that was asked for (the top of the chain), under a directory
//! allowed with [`BackingPolicy::allow_dir`], or is exactly a file allowed with
//! [`BackingPolicy::allow_file`]. The same rule holds for every image of the chain, so a base
//! two levels down is checked against what the user allowed, never against a directory an
//! image's header chose. Anything else is refused with an error naming the image, the path it
//! asked for and the key that would allow it.

use std::path::{Path, PathBuf};

use blockdev::{Error, ErrorKind, Result};

/// The spelling of the settings that widen the rule, for error messages: the daemon's spec keys
/// or blkctl's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowKeys {
    /// `backing-dir=DIR`, `backing-file=PATH` (disk specs and the config file).
    Spec,
    /// `--backing-dir DIR`, `--backing-file PATH` (blkctl).
    Flags,
}

impl AllowKeys {
    fn dir(self, d: &Path) -> String {
        match self {
            AllowKeys::Spec => format!("backing-dir={}", d.display()),
            AllowKeys::Flags => format!("--backing-dir {}", d.display()),
        }
    }

    fn file(self, f: &Path) -> String {
        match self {
            AllowKeys::Spec => format!("backing-file={}", f.display()),
            AllowKeys::Flags => format!("--backing-file {}", f.display()),
        }
    }
}

/// Where backing files may come from. The default allows the image's own directory only.
#[derive(Debug, Clone)]
pub struct BackingPolicy {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    keys: AllowKeys,
}

impl Default for BackingPolicy {
    fn default() -> Self {
        BackingPolicy { dirs: Vec::new(), files: Vec::new(), keys: AllowKeys::Spec }
    }
}

/// The image's directory and the allowed places, resolved once for a whole chain.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    image_dir: PathBuf,
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    keys: AllowKeys,
}

/// `p` with symlinks and `..` resolved; an error is labelled `what`.
fn canonical(p: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::from_io(e, what))
}

impl BackingPolicy {
    /// The default rule with errors that name blkctl's flags instead of spec keys.
    pub fn for_flags() -> Self {
        BackingPolicy { keys: AllowKeys::Flags, ..Default::default() }
    }

    /// Also allow every file under `dir` (which must exist when an image is opened).
    pub fn allow_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dirs.push(dir.into());
        self
    }

    /// Also allow exactly the file `path`.
    pub fn allow_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Resolve the allowed places for a chain whose top image is `image`.
    pub(crate) fn resolve(&self, image: &Path) -> Result<Resolved> {
        let parent = match image.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(Resolved {
            image_dir: canonical(parent, &format!("directory {} of the image", parent.display()))?,
            dirs: self.dirs.iter().map(|d| canonical(d, &self.keys.dir(d))).collect::<Result<_>>()?,
            files: self.files.iter().map(|f| canonical(f, &self.keys.file(f))).collect::<Result<_>>()?,
            keys: self.keys,
        })
    }
}

impl Resolved {
    /// Check the backing file `name` that `image` asks for (resolved to `path`); on success the
    /// canonical path to open, so a symlink swapped after the check is not followed.
    pub(crate) fn check(&self, image: &str, name: &str, path: &Path) -> Result<PathBuf> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| Error::from_io(e, format!("{image}: backing file {name} ({})", path.display())))?;
        let allowed = real.starts_with(&self.image_dir)
            || self.dirs.iter().any(|d| real.starts_with(d))
            || self.files.iter().any(|f| &real == f);
        if allowed {
            return Ok(real);
        }
        let dir = real.parent().unwrap_or(Path::new("/"));
        let shown = if real == path { format!("'{name}'") } else { format!("'{name}' (which is {})", real.display()) };
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{image}: backing file {shown} is outside the image's directory {} and not allowed; \
                 allow it with {} or {}",
                self.image_dir.display(),
                self.keys.dir(dir),
                self.keys.file(&real),
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_directory_only_by_default() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.qcow2");
        std::fs::write(&img, b"").unwrap();
        std::fs::write(d.path().join("b.raw"), b"").unwrap();
        let r = BackingPolicy::default().resolve(&img).unwrap();
        assert!(r.check("a", "b.raw", &d.path().join("b.raw")).is_ok());
        let e = r.check("a", "/etc/passwd", Path::new("/etc/passwd")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("a: backing file '/etc/passwd'") && m.contains("backing-dir=/etc"), "{m}");
        assert!(m.contains("backing-file=/etc/passwd"), "{m}");
        let dotdot = d.path().join("../../../../../../../etc/passwd");
        assert!(r.check("a", "x", &dotdot).is_err());
    }

    #[test]
    fn allowed_dirs_and_files() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.qcow2");
        let r = BackingPolicy::for_flags().allow_file("/etc/hostname").resolve(&img).unwrap();
        assert!(r.check("a", "/etc/hostname", Path::new("/etc/hostname")).is_ok());
        let e = r.check("a", "/etc/passwd", Path::new("/etc/passwd")).unwrap_err();
        assert!(e.to_string().contains("--backing-dir /etc"), "{e}");
        let r = BackingPolicy::default().allow_dir("/etc").resolve(&img).unwrap();
        assert!(r.check("a", "/etc/passwd", Path::new("/etc/passwd")).is_ok());
    }
}
