//! A writer for the "newc" cpio format that the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes; the archive ends
//! with an entry named `TRAILER!!!` (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).

use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams newc entries to `W`. Call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer that starts a new archive on `out`.
    pub fn new(out: W) -> Self {
        Self { out, ino: 1, written: 0 }
    }

    /// A directory (`perm` like `0o755`). Parents must be written first.
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: larger than 4 GiB")))?;
        let namesize = name.len() as u32 + 1;
        let ino = self.ino;
        self.ino += 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, // uid
            0, // gid
            0, // mtime: fixed, so the archive is reproducible
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            0, // check
        );
        debug_assert_eq!(header.len(), 110);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_trailer_ends_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).expect("write to Vec");
        w.file("bin/hello", 0o755, b"hi!").expect("write to Vec");
        let buf = w.finish().expect("write to Vec");
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let trailer = buf.windows(10).position(|w| w == b"TRAILER!!!").expect("trailer present");
        assert!(trailer > 110 * 2);
        // The file header's size field (7th field) says 3 bytes.
        let file_hdr = buf.windows(9).position(|w| w == b"bin/hello").expect("name present") - 110;
        assert_eq!(&buf[file_hdr + 6 + 6 * 8..file_hdr + 6 + 7 * 8], b"00000003");
    }

    #[test]
    fn host_cpio_lists_our_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).expect("write to Vec");
        w.file("etc/motd", 0o644, b"hello\n").expect("write to Vec");
        w.symlink("motd", "etc/motd").expect("write to Vec");
        w.char_dev("console", 0o600, 5, 1).expect("write to Vec");
        let buf = w.finish().expect("write to Vec");
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIPPED: host_cpio_lists_our_archive because the cpio tool is not installed");
            return;
        };
        child.stdin.take().expect("piped stdin").write_all(&buf).expect("feed cpio");
        let out = child.wait_with_output().expect("cpio runs");
        assert!(out.status.success(), "cpio -t failed: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "etc\netc/motd\nmotd\nconsole\n");
    }
}
