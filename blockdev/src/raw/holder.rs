//! Who holds the lock a file could not get: this process, or another one, named by pid.
//!
//! - This process keeps a record of the files it has locked (device and inode, with the path
//!   each was opened as), so a second open of one file by one process (a member listed twice,
//!   under two names even) says so instead of blaming "another process".
//! - For another process the kernel is asked. F_OFD_GETLK gives the pid of a POSIX lock's owner,
//!   but -1 for an OFD lock (so does /proc/locks), as OFD locks belong to an open file
//!   description, not a process. The lock lines in `/proc/PID/fdinfo/FD` list the locks each
//!   open file description holds, so those are searched for the file's inode, within a bound
//!   ([`MAX_SCAN`] entries, [`SCAN_TIME`]): a machine with more open files than that gets
//!   "another process" rather than a long wait.

use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most `/proc/PID/fdinfo/FD` entries read while looking for a lock's holder.
pub const MAX_SCAN: usize = 200_000;

/// Longest time spent looking for a lock's holder in `/proc`.
pub const SCAN_TIME: Duration = Duration::from_millis(500);

/// The words that start the description of a lock this process holds itself ([`Holder`]'s
/// text), for callers that add a hint only when another process holds it.
pub const THIS_PROCESS: &str = "this process already has it open";

/// Who holds a lock that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This process, through the file opened as `path` (None when it is not on record).
    ThisProcess {
        /// The path the earlier open used.
        path: Option<PathBuf>,
    },
    /// Other processes: (pid, command name) of each that holds it.
    Processes(Vec<(u32, String)>),
    /// Nothing better is known than that someone else holds it.
    Unknown,
}

impl Holder {
    /// "HOLDER has it open" for a refused lock on `path`; `for_writing` when the holder's lock is
    /// a write lock (a read lock was refused).
    pub fn describe(&self, path: &Path, for_writing: bool) -> String {
        let how = if for_writing { " for writing" } else { "" };
        match self {
            Holder::ThisProcess { path: Some(p) } if p != path => format!("{THIS_PROCESS}{how} (as {})", p.display()),
            Holder::ThisProcess { .. } => format!("{THIS_PROCESS}{how}"),
            Holder::Processes(list) if !list.is_empty() => {
                let mut s = String::from(if list.len() == 1 { "process " } else { "processes " });
                for (i, (pid, name)) in list.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let _ = write!(s, "{pid}");
                    if !name.is_empty() {
                        let _ = write!(s, " ({name})");
                    }
                }
                let verb = if list.len() == 1 { "has" } else { "have" };
                format!("{s} {verb} it open{how}")
            }
            _ => format!("another process has it open{how}"),
        }
    }

    /// True when this process holds it.
    pub fn is_this_process(&self) -> bool {
        matches!(self, Holder::ThisProcess { .. })
    }
}

/// A file's identity: (device, inode) as fstat reports them.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data; zeroed is a valid value for fstat to fill in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `st`, which outlives the call; a bad fd is an error return.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// One lock this process took.
struct Held {
    id: (u64, u64),
    fd: RawFd,
    path: PathBuf,
}

fn held() -> &'static Mutex<Vec<Held>> {
    static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());
    &HELD
}

/// Note that this process locked the file open as `fd` (opened from `path`).
pub(crate) fn record(fd: RawFd, path: &Path) {
    let Some(id) = identity(fd) else { return };
    let mut h = held().lock().unwrap_or_else(|p| p.into_inner());
    h.retain(|e| e.fd != fd);
    h.push(Held { id, fd, path: path.to_path_buf() });
}

/// Forget the lock taken on `fd` (it is being released).
pub(crate) fn forget(fd: RawFd) {
    held().lock().unwrap_or_else(|p| p.into_inner()).retain(|e| e.fd != fd);
}

/// The path this process locked the file open as `fd` under, if it holds a lock on it through
/// another descriptor. Entries whose descriptor no longer names their file are dropped.
fn held_here(fd: RawFd) -> Option<PathBuf> {
    let id = identity(fd)?;
    let mut h = held().lock().unwrap_or_else(|p| p.into_inner());
    h.retain(|e| e.fd == fd || identity(e.fd) == Some(e.id));
    h.iter().find(|e| e.fd != fd && e.id == id).map(|e| e.path.clone())
}

/// The pid F_OFD_GETLK reports for the lock that conflicts with a `kind` lock on `fd`: Some for
/// a POSIX lock's owner, None for an OFD lock (-1) or when nothing conflicts any more.
fn getlk_pid(fd: RawFd, kind: libc::c_int) -> Option<u32> {
    // SAFETY: flock is plain data; zeroed is a valid value that we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK reads and writes the flock struct we pass, which lives across the call.
    let rc = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    u32::try_from(fl.l_pid).ok().filter(|&p| p > 0)
}

/// A process's command name, from `/proc/PID/comm`.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// True when one of `fdinfo`'s lock lines is on inode `ino`.
fn locks_inode(fdinfo: &str, ino: u64) -> bool {
    // "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010921 0 EOF": the file is the MAJ:MIN:INO
    // field. A line with "->" is a waiter, not a holder.
    fdinfo.lines().filter(|l| l.starts_with("lock:") && !l.contains("->")).any(|l| {
        l.split_whitespace()
            .find(|f| f.matches(':').count() == 2)
            .and_then(|f| f.rsplit(':').next())
            .and_then(|i| i.parse::<u64>().ok())
            == Some(ino)
    })
}

/// The processes whose open files hold a lock on the file `id` (device, inode), from
/// `/proc/*/fdinfo`, within [`MAX_SCAN`] entries and [`SCAN_TIME`].
fn scan_proc(id: (u64, u64)) -> Vec<u32> {
    let start = Instant::now();
    let mut seen = 0usize;
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else { continue };
        for f in fds.flatten() {
            seen += 1;
            if seen > MAX_SCAN || start.elapsed() > SCAN_TIME {
                return pids;
            }
            let Ok(info) = std::fs::read_to_string(f.path()) else { continue };
            if !locks_inode(&info, id.1) {
                continue;
            }
            // The lock line's device is the superblock's; stat through the fd link gives the
            // same (device, inode) as ours for the very file.
            let same =
                std::fs::metadata(p.path().join("fd").join(f.file_name())).is_ok_and(|m| (m.dev(), m.ino()) == id);
            if same && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Who holds the lock that a `kind` (F_RDLCK or F_WRLCK) lock on `fd` conflicts with.
pub fn find(fd: RawFd, kind: libc::c_int) -> Holder {
    if let Some(path) = held_here(fd) {
        return Holder::ThisProcess { path: Some(path) };
    }
    let me = std::process::id();
    let pids = match getlk_pid(fd, kind) {
        Some(pid) => vec![pid],
        None => match identity(fd) {
            Some(id) => scan_proc(id),
            None => Vec::new(),
        },
    };
    if pids.contains(&me) {
        return Holder::ThisProcess { path: None };
    }
    if pids.is_empty() {
        return Holder::Unknown;
    }
    Holder::Processes(pids.into_iter().map(|p| (p, comm(p))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines_are_matched_by_inode() {
        let info = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t10010921\n\
                    lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010921 0 EOF\n";
        assert!(locks_inode(info, 10010921));
        assert!(!locks_inode(info, 1001092));
        assert!(!locks_inode("pos:\t0\nino:\t5\n", 5));
        assert!(!locks_inode("lock:\t1: -> OFDLCK ADVISORY  WRITE -1 fe:00:5 0 EOF\n", 5));
    }

    #[test]
    fn descriptions_name_the_holder() {
        let p = Path::new("/x/a.img");
        assert_eq!(Holder::Unknown.describe(p, false), "another process has it open");
        assert_eq!(
            Holder::Processes(vec![(42, "vhost-user-blk".into())]).describe(p, true),
            "process 42 (vhost-user-blk) has it open for writing"
        );
        assert_eq!(
            Holder::Processes(vec![(1, "a".into()), (2, String::new())]).describe(p, false),
            "processes 1 (a), 2 have it open"
        );
        assert_eq!(Holder::ThisProcess { path: Some(p.into()) }.describe(p, false), THIS_PROCESS);
        assert_eq!(
            Holder::ThisProcess { path: Some("/y/b.img".into()) }.describe(p, false),
            format!("{THIS_PROCESS} (as /y/b.img)")
        );
    }

    #[test]
    fn a_refused_open_leaves_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.img");
        std::fs::File::create(&empty).unwrap();
        assert!(crate::RawFile::open(&empty, crate::OpenOptions::default()).is_err());
        let h = held().lock().unwrap();
        assert!(h.iter().all(|e| e.path != empty), "the refused open is still on the record");
    }
}
