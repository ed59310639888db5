//! Running under a service manager: the `--pidfile` (written once every socket listens, removed
//! at a clean exit only while it still holds our pid) and systemd's readiness notification
//! (`READY=1` on the datagram socket named by `NOTIFY_SOCKET`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A pidfile this process wrote; [`PidFile::remove`] deletes it if it still holds our pid.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Write this process's pid and a newline to `path`. The pid is written to a fresh temporary
    /// file beside `path` (created with O_EXCL, so nothing it names is followed), then renamed
    /// over `path`; a `path` that is a symlink or not a regular file is refused.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let shown = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("--pidfile {shown}: is a symbolic link; refusing to follow it"));
            }
            Ok(m) if !m.file_type().is_file() => {
                return Err(format!("--pidfile {shown}: exists and is not a regular file"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("--pidfile {shown}: {e}")),
        }
        let pid = std::process::id();
        let name = path.file_name().ok_or_else(|| format!("--pidfile {shown}: not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = path.with_file_name(tmp_name);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{pid}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("--pidfile {shown}: cannot write: {e}"));
        }
        Ok(PidFile { path: path.to_path_buf(), pid })
    }

    /// Delete the pidfile if it still holds our pid (another instance may have taken it over).
    pub fn remove(self) {
        let ours = format!("{}\n", self.pid);
        match std::fs::read_to_string(&self.path) {
            Ok(text) if text == ours => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("--pidfile {}: cannot remove: {e}", self.path.display());
                }
            }
            Ok(_) => tracing::warn!("--pidfile {}: holds another pid now; left in place", self.path.display()),
            Err(e) => tracing::warn!("--pidfile {}: {e}; left alone", self.path.display()),
        }
    }
}

/// Tell systemd the daemon is ready (`READY=1`) when `NOTIFY_SOCKET` is set; does nothing
/// otherwise. A failure is logged as a warning: the daemon serves either way.
pub fn notify_ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = sd_notify(&target, b"READY=1\n") {
        tracing::warn!("cannot notify the service manager at NOTIFY_SOCKET={}: {e}", target.to_string_lossy());
    }
}

/// Send `msg` as one datagram to the Unix socket `target`: a path, or an abstract name when it
/// starts with '@'.
pub fn sd_notify(target: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = target.as_bytes();
    let addr = match bytes.split_first() {
        None => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty socket name")),
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        Some((b'/', _)) => SocketAddr::from_pathname(Path::new(target))?,
        Some(_) => {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "neither an absolute path nor '@name'"))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(msg, &addr)?;
    if sent != msg.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_path_and_an_abstract_socket() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        sd_notify(path.as_os_str(), b"READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("strata-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1\n").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        assert!(sd_notify(std::ffi::OsStr::new("relative"), b"x").is_err());
        assert!(sd_notify(std::ffi::OsStr::new(""), b"x").is_err());
    }

    #[test]
    fn pidfile_holds_our_pid_refuses_symlinks_and_is_removed_only_while_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pid");
        let pf = PidFile::write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        pf.remove();
        assert!(!path.exists());

        let pf = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        pf.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n", "another's pidfile was removed");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = PidFile::write(&link).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
