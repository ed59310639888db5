//! The crate-level error: a kind callers can match on, the OS error number when there is one,
//! a message that names the device, file or field involved, and the error it was caused by.
//!
//! Each layer adds its own words with [`Error::context`], which wraps the error below as its
//! [`source`](std::error::Error::source) instead of re-formatting its text, so the chain reaches
//! down to the kernel's errno (`std::io::Error`) and a caller can walk it. `Display` prints the
//! whole chain, outermost first, joined by `": "`.

use std::fmt;
use std::sync::Arc;

/// What went wrong, coarsely, so callers can decide what to do (retry, report UNSUPP, refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The device or the OS reported an I/O error.
    Io,
    /// The request reaches outside the device.
    OutOfRange,
    /// A write, discard or write-zeroes on a read-only device.
    ReadOnly,
    /// The operation is not supported by this device or kernel.
    Unsupported,
    /// A malformed argument: misaligned offset, bad spec key, zero-sized device.
    InvalidInput,
    /// No space left (ENOSPC from below, or a full pool).
    NoSpace,
    /// On-disk metadata is inconsistent.
    Corrupt,
    /// Another process holds the lock on the file.
    Locked,
    /// A named thing (file, volume, member) does not exist.
    NotFound,
}

impl ErrorKind {
    /// A short lowercase name, for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Locked => "locked",
            ErrorKind::NotFound => "not-found",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused an error: the layer below's error, or the OS error.
type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a block device or the io engine.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    errno: Option<i32>,
    msg: String,
    source: Option<Cause>,
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error { kind, errno: None, msg: msg.into(), source: None }
    }

    /// An error from a failed syscall or a negative io_uring result (`errno` is positive).
    pub fn from_errno(errno: i32, context: impl fmt::Display) -> Self {
        let kind = match errno {
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EOPNOTSUPP | libc::ENOSYS => ErrorKind::Unsupported,
            libc::EINVAL => ErrorKind::InvalidInput,
            libc::EROFS => ErrorKind::ReadOnly,
            libc::ENOENT => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        let os = std::io::Error::from_raw_os_error(errno);
        Error { kind, errno: Some(errno), msg: context.to_string(), source: Some(Arc::new(os)) }
    }

    /// Wrap a `std::io::Error` with context (the I/O error becomes the source).
    pub fn from_io(err: std::io::Error, context: impl fmt::Display) -> Self {
        match err.raw_os_error() {
            Some(errno) => Error::from_errno(errno, context),
            None => Error { kind: ErrorKind::Io, errno: None, msg: context.to_string(), source: Some(Arc::new(err)) },
        }
    }

    /// An error of `kind` whose cause is another library's error (kept as the source).
    pub fn caused_by(
        kind: ErrorKind,
        context: impl fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error { kind, errno: None, msg: context.to_string(), source: Some(Arc::new(cause)) }
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The OS error number, when the error came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// This error's own message, without its causes.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Wrap with more context (e.g. the layer or device name): the new error has the same kind
    /// and errno, says `ctx`, and has this error as its source.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        Error { kind: self.kind, errno: self.errno, msg: ctx.to_string(), source: Some(Arc::new(self)) }
    }

    /// Shorthand for an out-of-range request error.
    pub fn out_of_range(off: u64, len: u64, size: u64) -> Self {
        Error::new(
            ErrorKind::OutOfRange,
            format!("request [{off}, +{len}) reaches past the end of the device ({size} bytes)"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            // Our own errors print only their own words here; the loop prints their causes.
            match cause.downcast_ref::<Error>() {
                Some(ours) => write!(f, ": {}", ours.msg)?,
                None => write!(f, ": {cause}")?,
            }
            next = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::from_io(err, "i/o")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_no_space() {
        let e = Error::from_errno(libc::ENOSPC, "write disk.img");
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert_eq!(e.errno(), Some(libc::ENOSPC));
        assert!(e.to_string().starts_with("write disk.img: "));
    }

    #[test]
    fn context_prefixes_message() {
        let e = Error::new(ErrorKind::Corrupt, "bad magic").context("pool.img");
        assert_eq!(e.to_string(), "pool.img: bad magic");
        assert_eq!(e.message(), "pool.img");
    }

    #[test]
    fn every_cause_is_kept_down_to_the_errno() {
        use std::error::Error as _;
        let e = Error::from_errno(libc::EIO, "write at 65536").context("L2 table update").context("disk.qcow2");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.errno(), Some(libc::EIO));
        let mut chain = vec![e.message().to_string()];
        let mut next = e.source();
        while let Some(c) = next {
            chain.push(c.downcast_ref::<Error>().map_or_else(|| c.to_string(), |o| o.message().to_string()));
            next = c.source();
        }
        let os = std::io::Error::from_raw_os_error(libc::EIO).to_string();
        assert_eq!(chain, ["disk.qcow2", "L2 table update", "write at 65536", os.as_str()]);
        assert_eq!(e.to_string(), format!("disk.qcow2: L2 table update: write at 65536: {os}"));
    }
}
