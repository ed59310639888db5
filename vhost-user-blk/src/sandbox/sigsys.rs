//! What a forbidden system call does under `--seccomp on`: the filter traps (SIGSYS), this
//! handler writes the thread's name and kind and the call's number and name to stderr, and the
//! process dies of SIGSYS. Async-signal-safe: no allocation, no lock, raw write(2) only.

use std::cell::Cell;

use blockdev::thread::ThreadKind;

/// Longest thread name kept (the kernel's limit is 15 bytes; std's names may be longer).
const NAME_MAX: usize = 32;

thread_local! {
    /// The calling thread's name and kind, recorded when its filter goes on (read by the handler
    /// without allocating).
    static WHO: Cell<([u8; NAME_MAX], usize, &'static str)> = const { Cell::new(([0; NAME_MAX], 0, "inherited filter")) };
}

/// Record the calling thread's name and kind for the handler.
pub fn record_thread(kind: ThreadKind) {
    let mut buf = [0u8; NAME_MAX];
    let me = std::thread::current();
    let name = me.name().unwrap_or("unnamed").as_bytes();
    let n = name.len().min(NAME_MAX);
    buf[..n].copy_from_slice(&name[..n]);
    WHO.with(|w| w.set((buf, n, kind.name())));
}

/// Install the handler for the whole process (before any filter).
pub fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature and stays
    // alive for the life of the process; sigaction only reads the struct.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The system call number in a SIGSYS siginfo (the kernel's `_sigsys._syscall`: after the
/// three header ints and the call address).
///
/// # Safety
/// `info` points to a siginfo the kernel filled for SIGSYS.
unsafe fn syscall_of(info: *const libc::siginfo_t) -> i64 {
    const SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();
    // SAFETY: siginfo_t is 128 bytes; the offset lies inside it (caller's promise on `info`).
    i64::from(unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SYSCALL_OFFSET).cast::<i32>()) })
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, nr) = unsafe { ((*info).si_code, syscall_of(info)) };
    const SYS_SECCOMP: i32 = 1;
    let mut line = Line { buf: [0; 256], len: 0 };
    line.push(b"vhost-user-blk: seccomp: thread '");
    // try_with: never panics, also while the thread's locals are being torn down.
    let mut who = WHO.try_with(|w| w.get()).unwrap_or(([0; NAME_MAX], 0, "exiting"));
    if who.1 == 0 {
        // A thread started by another crate (vhost-user-backend's handler, librbd's threads):
        // its kernel name, which every filter lets a thread read.
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the 32-byte buffer.
        if unsafe { libc::prctl(libc::PR_GET_NAME, who.0.as_mut_ptr()) } == 0 {
            who.1 = who.0.iter().position(|&b| b == 0).unwrap_or(16);
        }
    }
    line.push(&who.0[..who.1]);
    line.push(b"' (");
    line.push(who.2.as_bytes());
    if code == SYS_SECCOMP {
        line.push(b") made a forbidden system call ");
        line.push(super::names::name(nr).as_bytes());
        line.push(b" (");
        line.push_num(nr as u64);
        line.push(b"); killing the process with SIGSYS (docs/sandbox.md)\n");
    } else {
        line.push(b") received SIGSYS from outside; dying of it\n");
    }
    // SAFETY: write(2) of a live buffer; async-signal-safe.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    // Die of SIGSYS: a call no filter allows traps again while SIGSYS is blocked in this handler,
    // and the kernel then resets it to the default action (end the process, dump core). Without
    // a filter (SIGSYS sent from outside) the number does not exist (ENOSYS) and we exit.
    const NO_SUCH_SYSCALL: libc::c_long = 1 << 20;
    // SAFETY: a system call number no kernel defines takes no arguments and touches nothing.
    unsafe { libc::syscall(NO_SUCH_SYSCALL) };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}
