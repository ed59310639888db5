//! The crate-level error: a kind callers can match on, the OS error number when there is one,
//! and a message that names the device, file or field involved.

use std::fmt;

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

/// An error from a block device or the io engine.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    kind: ErrorKind,
    errno: Option<i32>,
    msg: String,
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error { kind, errno: None, msg: msg.into() }
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
        Error { kind, errno: Some(errno), msg: format!("{context}: {os}") }
    }

    /// Wrap a `std::io::Error` with context.
    pub fn from_io(err: std::io::Error, context: impl fmt::Display) -> Self {
        match err.raw_os_error() {
            Some(errno) => Error::from_errno(errno, context),
            None => Error::new(ErrorKind::Io, format!("{context}: {err}")),
        }
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The OS error number, when the error came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Prefix the message with more context (e.g. the layer or device name).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// Shorthand for an out-of-range request error.
    pub fn out_of_range(off: u64, len: u64, size: u64) -> Self {
        Error::new(
            ErrorKind::OutOfRange,
            format!("request [{off}, +{len}) reaches past the end of the device ({size} bytes)"),
        )
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
    }
}
