//! The system calls each kind of thread may make: one table per kind, each group with the
//! reason it is there. Found by running the daemon's tests under `--seccomp log` (docs/sandbox.md).
//!
//! Filters stack: a thread inherits its creator's filter and adds its own, and a call passes
//! only if every filter on the thread allows it. So a kind that starts threads of another kind
//! allows everything that kind does: the protocol threads start the queue workers, the control
//! plane starts exports (protocol threads), thin commit and RAID rebuild threads.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use blockdev::thread::ThreadKind;

/// A syscall's rules: empty = allowed with any arguments; otherwise allowed when one rule
/// matches.
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A table under construction.
#[derive(Default)]
struct Table(Rules);

impl Table {
    /// Allow `nrs` with any arguments.
    fn any(&mut self, nrs: &[i64]) -> &mut Self {
        for &nr in nrs {
            self.0.insert(nr, Vec::new());
        }
        self
    }

    /// Allow `nr` when argument `arg` (32 bits) is one of `values`, unless it is already allowed
    /// with any arguments.
    fn arg_in(&mut self, nr: i64, arg: u8, values: &[u64]) -> &mut Self {
        if self.0.get(&nr).is_some_and(|r| r.is_empty()) {
            return self;
        }
        let rules = self.0.entry(nr).or_default();
        for &v in values {
            let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .expect("argument index below 6");
            rules.push(SeccompRule::new(vec![cond]).expect("one condition"));
        }
        // Duplicated rules cost filter length only; kept as they are.
        self
    }
}

/// The calls that fail with EACCES (a second filter, [`refused`]) rather than being allowed on
/// the kinds that never open files: glibc's malloc opens /proc/sys/vm/overcommit_memory and
/// /sys/devices/system/cpu/online once, lazily, on whichever thread gets there first, and copes
/// with a refusal; a trap there would kill the daemon for nothing.
pub fn refused(kind: ThreadKind) -> Rules {
    let mut t = Table::default();
    if matches!(kind, ThreadKind::QueueWorker | ThreadKind::Protocol | ThreadKind::Background | ThreadKind::Timer) {
        t.any(&[libc::SYS_openat]);
        #[cfg(target_arch = "x86_64")]
        t.any(&[libc::SYS_open]);
    }
    t.0
}

/// The rules of `kind`.
pub fn rules(kind: ThreadKind) -> Rules {
    let mut t = Table::default();
    match kind {
        ThreadKind::Timer => base(&mut t),
        ThreadKind::QueueWorker => worker(&mut t),
        ThreadKind::Background => background(&mut t),
        ThreadKind::Protocol => protocol(&mut t),
        ThreadKind::ControlPlane => control(&mut t),
        ThreadKind::Main => main_thread(&mut t),
        ThreadKind::Rbd => rbd(&mut t),
    }
    t.0
}

/// What every thread needs: the allocator, locks, its own signals, logging, leaving.
fn base(t: &mut Table) {
    use libc::*;
    // Memory: the allocator and thread stacks (glibc malloc arenas, Rust's guard pages).
    t.any(&[SYS_brk, SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise]);
    // Locks, condition variables, parking; scheduling.
    t.any(&[SYS_futex, SYS_sched_yield, SYS_sched_getaffinity, SYS_rseq, SYS_set_robust_list]);
    // Time (usually the vDSO; the syscalls where it falls back) and sleeping.
    t.any(&[SYS_clock_gettime, SYS_clock_nanosleep, SYS_nanosleep, SYS_restart_syscall]);
    // Signals of its own: masks, return from a handler, the stack-overflow handler's stack.
    t.any(&[SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sigaltstack]);
    // Opening a file: allowed here for the kinds that open files; refused with EACCES by a
    // second filter for the others (see `refused`).
    t.any(&[SYS_openat]);
    #[cfg(target_arch = "x86_64")]
    t.any(&[SYS_open]);
    // Logging to stderr, reading and closing descriptors it holds.
    t.any(&[SYS_write, SYS_writev, SYS_read, SYS_close]);
    // Identity and randomness (std's HashMap keys), leaving.
    t.any(&[SYS_getpid, SYS_gettid, SYS_getrandom, SYS_exit, SYS_exit_group]);
    // Confining itself further (a thread started by this one adds its own filter, drops its
    // capabilities): these can only take rights away.
    t.arg_in(SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER as u64]);
    t.any(&[SYS_capget, SYS_capset, SYS_landlock_restrict_self]);
    t.arg_in(
        SYS_prctl,
        0,
        &[
            PR_SET_NO_NEW_PRIVS as u64,
            PR_GET_NAME as u64,
            PR_SET_NAME as u64,
            PR_CAPBSET_DROP as u64,
            PR_CAPBSET_READ as u64,
            PR_CAP_AMBIENT as u64,
        ],
    );
    // glibc runs setuid/setgid on every thread of the process (a signal to each) when the main
    // thread drops to --user: every thread must allow them (without CAP_SETUID they can only
    // keep the ids it has).
    t.any(&[SYS_setresuid, SYS_setresgid, SYS_setgroups]);
    // Descriptor flags: non-blocking and close-on-exec (std uses ioctl for both), terminal test.
    t.arg_in(SYS_ioctl, 1, &[FIONBIO, FIOCLEX, FIONCLEX, TCGETS]);
    t.arg_in(SYS_fcntl, 1, &[F_GETFL as u64, F_SETFL as u64, F_GETFD as u64, F_SETFD as u64, F_DUPFD_CLOEXEC as u64]);
}

/// Every thread that runs an io_uring engine (blockdev's `IoCtx`): the ring and its eventfds.
fn io_engine(t: &mut Table) {
    use libc::*;
    t.any(&[SYS_io_uring_setup, SYS_io_uring_register, SYS_io_uring_enter, SYS_eventfd2]);
    // Waiting on the engine's eventfds with other descriptors.
    t.any(&[SYS_epoll_ctl, SYS_epoll_pwait, SYS_ppoll]);
    #[cfg(target_arch = "x86_64")]
    t.any(&[SYS_epoll_wait, SYS_poll]);
}

/// The data path: vhost-user-backend's epoll loop, the queue's kick and call eventfds, the
/// engine (which creates its ring on this thread). No file is opened, no socket touched.
fn worker(t: &mut Table) {
    // Kick and call eventfds and vhost-user-backend's exit event are read and written with
    // read/write (common); the rest is the engine.
    base(t);
    io_engine(t);
}

/// Background layer work (RAID rebuild and scrub, thin periodic commit): the engine only.
fn background(t: &mut Table) {
    base(t);
    io_engine(t);
}

/// Thread creation, for the kinds that start threads.
fn spawner(t: &mut Table) {
    t.any(&[libc::SYS_clone, libc::SYS_clone3]);
}

/// Sockets of the given address families: create, bind, listen, accept, talk.
fn sockets(t: &mut Table, families: &[u64]) {
    use libc::*;
    t.arg_in(SYS_socket, 0, families);
    t.any(&[SYS_bind, SYS_listen, SYS_accept4, SYS_connect, SYS_getsockname, SYS_getpeername]);
    t.any(&[SYS_setsockopt, SYS_getsockopt, SYS_shutdown]);
    t.any(&[SYS_sendmsg, SYS_recvmsg, SYS_sendto, SYS_recvfrom]);
}

/// The vhost-user protocol threads: accept a frontend, read its messages (with descriptors),
/// map its memory, start the queue workers (which inherit this filter).
fn protocol(t: &mut Table) {
    use libc::*;
    worker(t);
    spawner(t);
    // The frontend's socket: accepted, messages with descriptors (SCM_RIGHTS) both ways (also
    // on the backend channel), replies without descriptors, the peer's credentials, shut down
    // at disconnect.
    t.any(&[SYS_accept4, SYS_sendmsg, SYS_recvmsg, SYS_sendto, SYS_recvfrom, SYS_getsockopt, SYS_shutdown]);
    // Guest memory regions: shared mappings (common mmap) of the frontend's fds, whose size
    // vm-memory may check; the in-flight region: a sealed memfd of the right size.
    t.any(&[SYS_fstat, SYS_newfstatat, SYS_statx, SYS_memfd_create, SYS_ftruncate]);
    t.arg_in(SYS_fcntl, 1, &[F_ADD_SEALS as u64, F_GET_SEALS as u64]);
    // vhost-user-backend's epoll set per worker.
    t.any(&[SYS_epoll_create1]);
}

/// Files: opening images and sockets' paths, their metadata, directories, locks, sizes.
fn files(t: &mut Table) {
    use libc::*;
    t.any(&[SYS_openat, SYS_fstat, SYS_newfstatat, SYS_statx, SYS_lseek, SYS_readlinkat, SYS_getcwd]);
    t.any(&[SYS_getdents64, SYS_mkdirat, SYS_unlinkat, SYS_renameat, SYS_renameat2, SYS_fchmod, SYS_fchmodat]);
    t.any(&[SYS_pread64, SYS_pwrite64, SYS_preadv, SYS_pwritev, SYS_fsync, SYS_fdatasync, SYS_fadvise64]);
    t.any(&[SYS_fallocate, SYS_ftruncate, SYS_flock, SYS_umask, SYS_uname, SYS_fstatfs, SYS_statfs]);
    // Image locks (open file description locks), block device geometry and size.
    t.arg_in(SYS_fcntl, 1, &[F_OFD_SETLK as u64, F_OFD_GETLK as u64, F_OFD_SETLKW as u64, F_DUPFD as u64]);
    const BLKSSZGET: u64 = 0x1268;
    const BLKPBSZGET: u64 = 0x127b;
    const BLKGETSIZE64: u64 = 0x8008_1272;
    t.arg_in(SYS_ioctl, 1, &[BLKSSZGET, BLKPBSZGET, BLKGETSIZE64]);
    #[cfg(target_arch = "x86_64")]
    t.any(&[SYS_open, SYS_stat, SYS_lstat, SYS_readlink, SYS_mkdir, SYS_unlink, SYS_rename, SYS_chmod]);
}

/// The control plane (tokio): its Unix socket and the loopback metrics listener, `add` (opens
/// images, binds sockets, starts exports and layer threads: everything they need), resizing.
fn control(t: &mut Table) {
    protocol(t);
    background(t);
    files(t);
    sockets(t, &[libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64]);
    t.any(&[libc::SYS_epoll_create1, libc::SYS_pipe2, libc::SYS_socketpair]);
}

/// The main thread after start-up: waits for a stop signal, then stops exports (flushing each),
/// removes its socket files and pidfile.
fn main_thread(t: &mut Table) {
    use libc::*;
    base(t);
    io_engine(t);
    files(t);
    // Waiting for SIGTERM/SIGINT.
    t.any(&[SYS_rt_sigtimedwait, SYS_rt_sigaction]);
    // Wakes an accept loop through its eventfd; notifies systemd at stop.
    t.any(&[SYS_socket, SYS_sendto, SYS_sendmsg, SYS_connect]);
    // Disconnecting frontends at stop (vhost-user-backend shuts their sockets down).
    t.any(&[SYS_shutdown]);
}

/// A Ceph client thread: librbd starts threads of its own and talks to monitors and OSDs over
/// TCP, reads ceph.conf and keyrings. Kept wide on purpose (docs/sandbox.md).
fn rbd(t: &mut Table) {
    control(t);
    sockets(t, &[libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64, libc::AF_NETLINK as u64]);
    t.any(&[libc::SYS_timerfd_create, libc::SYS_timerfd_settime]);
    // Its event loops (the old epoll_create, not epoll_create1).
    #[cfg(target_arch = "x86_64")]
    t.any(&[libc::SYS_epoll_create]);
    t.any(&[libc::SYS_sched_setaffinity, libc::SYS_setpriority, libc::SYS_getpriority, libc::SYS_tgkill]);
    t.any(&[libc::SYS_sysinfo, libc::SYS_getrusage, libc::SYS_getuid, libc::SYS_geteuid]);
    // Loading librbd and its libraries (the first `format=rbd` open does, on this kind of
    // thread): the dynamic loader checks paths before opening them.
    t.any(&[libc::SYS_faccessat, libc::SYS_faccessat2]);
    #[cfg(target_arch = "x86_64")]
    t.any(&[libc::SYS_access]);
}
