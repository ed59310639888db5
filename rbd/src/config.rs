//! What names an RBD image and how to reach its cluster, checked before anything is asked of
//! Ceph: an error here names the key and the value at fault.

use std::path::PathBuf;
use std::time::Duration;

use blockdev::{Error, ErrorKind, Result};

/// The default for `timeout=`: how long connecting and opening may take before the open fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which image to open, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdConfig {
    /// The RADOS pool holding the image.
    pub pool: String,
    /// The image's name.
    pub image: String,
    /// The RADOS namespace inside the pool (empty: the default one).
    pub namespace: String,
    /// A snapshot to serve (read-only) instead of the image's head.
    pub snapshot: Option<String>,
    /// The `ceph.conf` to read; `None` uses `$CEPH_CONF` or Ceph's default search path.
    pub conf: Option<PathBuf>,
    /// The client name without `client.` (`admin` when `None`).
    pub id: Option<String>,
    /// The keyring file; `None` uses what the conf file says.
    pub keyring: Option<PathBuf>,
    /// How long connecting and each cluster operation of the open may take.
    pub timeout: Duration,
    /// Serve read-only (no exclusive lock is taken).
    pub read_only: bool,
}

impl RbdConfig {
    /// The image `pool/image` with every option at its default.
    pub fn new(pool: impl Into<String>, image: impl Into<String>) -> Self {
        RbdConfig {
            pool: pool.into(),
            image: image.into(),
            namespace: String::new(),
            snapshot: None,
            conf: None,
            id: None,
            keyring: None,
            timeout: DEFAULT_TIMEOUT,
            read_only: false,
        }
    }

    /// `pool/[namespace/]image[@snapshot]`, as `rbd` writes it.
    pub fn spec(&self) -> String {
        let ns = if self.namespace.is_empty() { String::new() } else { format!("{}/", self.namespace) };
        let snap = self.snapshot.as_ref().map(|s| format!("@{s}")).unwrap_or_default();
        format!("{}/{ns}{}{snap}", self.pool, self.image)
    }

    /// True when the image is served read-only (asked for, or a snapshot).
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.snapshot.is_some()
    }

    /// Check every name and path before asking Ceph anything.
    pub fn validate(&self) -> Result<()> {
        name_ok("pool", &self.pool, &['/', '@'], false)?;
        name_ok("image", &self.image, &['/', '@'], false)?;
        name_ok("namespace", &self.namespace, &['/', '@'], true)?;
        if let Some(s) = &self.snapshot {
            name_ok("snapshot", s, &['/', '@'], false)?;
        }
        if let Some(id) = &self.id {
            name_ok("id", id, &[], false)?;
            if let Some(bare) = id.strip_prefix("client.") {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("rbd: id={id}: give the client name without 'client.' (id={bare})"),
                ));
            }
        }
        for (key, path) in [("conf", &self.conf), ("keyring", &self.keyring)] {
            if let Some(p) = path {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(Error::from_io(e, format!("rbd: {key}={}", p.display())));
                }
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("rbd: timeout={}: must be 1 to 3600 seconds", self.timeout.as_secs()),
            ));
        }
        Ok(())
    }
}

fn name_ok(key: &str, value: &str, forbidden: &[char], empty_ok: bool) -> Result<()> {
    let bad = |why: String| Err(Error::new(ErrorKind::InvalidInput, format!("rbd: {key}='{value}': {why}")));
    if value.is_empty() {
        return if empty_ok { Ok(()) } else { bad("must not be empty".into()) };
    }
    if let Some(c) = value.chars().find(|c| forbidden.contains(c)) {
        return bad(format!("'{c}' is not allowed in a {key} name (it separates pool, namespace, image and snapshot)"));
    }
    if value.chars().any(|c| c.is_control() || c == '\0') {
        return bad("control characters are not allowed".into());
    }
    if value.len() > 4096 {
        return bad("longer than 4096 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reads_like_rbds() {
        let mut c = RbdConfig::new("rbd", "vm1");
        assert_eq!(c.spec(), "rbd/vm1");
        c.namespace = "tenant".into();
        c.snapshot = Some("s1".into());
        assert_eq!(c.spec(), "rbd/tenant/vm1@s1");
        assert!(c.is_read_only());
    }

    #[test]
    fn separators_in_names_are_refused_by_key() {
        for (image, ch) in [("a/b", '/'), ("a@b", '@')] {
            let e = RbdConfig::new("rbd", image).validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&format!("image='{image}'")) && e.to_string().contains(ch), "{e}");
        }
        let e = RbdConfig::new("", "x").validate().unwrap_err();
        assert!(e.to_string().contains("pool=''"), "{e}");
    }

    #[test]
    fn missing_conf_and_keyring_are_named() {
        let mut c = RbdConfig::new("rbd", "x");
        c.conf = Some("/nonexistent/ceph.conf".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("conf=/nonexistent/ceph.conf"), "{e}");
        c.conf = None;
        c.keyring = Some("/nonexistent/keyring".into());
        assert!(c.validate().unwrap_err().to_string().contains("keyring=/nonexistent/keyring"));
    }

    #[test]
    fn client_prefix_and_bad_timeouts_are_refused() {
        let mut c = RbdConfig::new("rbd", "x");
        c.id = Some("client.admin".into());
        assert!(c.validate().unwrap_err().to_string().contains("id=admin"));
        c.id = None;
        c.timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("timeout=0"));
    }
}
