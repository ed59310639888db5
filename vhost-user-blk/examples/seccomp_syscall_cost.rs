//! What the daemon's seccomp filters add to one system call, measured directly: the same calls
//! timed on a thread with no filter and on a thread carrying a queue worker's real filter chain
//! (the protocol thread's filter, then the queue worker's, each with its refusal filter, as a
//! daemon's worker has), in alternating rounds.
//!
//! The data path's calls (eventfd read and write, `sched_yield`, `epoll_pwait`) are allowed with
//! any arguments; a kernel of 5.11 or later then answers them from its per-filter action cache
//! without running any filter. `fcntl(F_GETFL)` is allowed by argument, so every filter of the
//! chain runs for it: it shows what a call costs when the cache cannot help.
//!
//!   cargo run --release -p vhost-user-blk --example seccomp_syscall_cost [ROUNDS] [CALLS]

use std::sync::Arc;
use std::time::Instant;

use blockdev::thread::ThreadKind;
use vhost_user_blk::sandbox::{Filters, SeccompMode};

/// One kind of call, made `n` times.
struct Call {
    name: &'static str,
    run: fn(&Fds, u64),
}

/// Descriptors the calls use, made before any filter is installed.
struct Fds {
    event: i32,
    epoll: i32,
}

fn eventfd_write_read(f: &Fds, n: u64) {
    let one: u64 = 1;
    let mut got: u64 = 0;
    for _ in 0..n {
        // SAFETY: an eventfd this program owns, with 8-byte buffers that live across the calls.
        unsafe {
            libc::write(f.event, (&one as *const u64).cast(), 8);
            libc::read(f.event, (&mut got as *mut u64).cast(), 8);
        }
    }
}

fn sched_yield(_: &Fds, n: u64) {
    for _ in 0..n {
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
    }
}

fn epoll_pwait(f: &Fds, n: u64) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    for _ in 0..n {
        // SAFETY: an epoll fd this program owns, one event slot, no wait, no signal mask.
        unsafe { libc::epoll_pwait(f.epoll, &mut ev, 1, 0, std::ptr::null()) };
    }
}

fn fcntl_getfl(f: &Fds, n: u64) {
    for _ in 0..n {
        // SAFETY: F_GETFL on a descriptor this program owns.
        unsafe { libc::fcntl(f.event, libc::F_GETFL) };
    }
}

const CALLS: &[Call] = &[
    Call { name: "eventfd write + read (2 calls)", run: eventfd_write_read },
    Call { name: "sched_yield", run: sched_yield },
    Call { name: "epoll_pwait, no wait", run: epoll_pwait },
    Call { name: "fcntl(F_GETFL), checked by argument", run: fcntl_getfl },
];

/// Nanoseconds per iteration of `call`, `n` iterations on a new thread that first installs
/// `chain` (outermost first).
fn time_on_thread(
    filters: &Arc<Filters>,
    chain: &'static [ThreadKind],
    call: fn(&Fds, u64),
    fds: &Arc<Fds>,
    n: u64,
) -> f64 {
    let (filters, fds) = (filters.clone(), fds.clone());
    std::thread::spawn(move || {
        for &kind in chain {
            filters.apply(kind).expect("install the filter");
        }
        call(&fds, n / 10); // warm up
        let t = Instant::now();
        call(&fds, n);
        t.elapsed().as_nanos() as f64 / n as f64
    })
    .join()
    .expect("the measuring thread")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(15), |a| a.parse()).map_err(|e| format!("ROUNDS: {e}"))?;
    let n: u64 = args.next().map_or(Ok(200_000), |a| a.parse()).map_err(|e| format!("CALLS: {e}"))?;
    if rounds == 0 || n == 0 {
        return Err("ROUNDS and CALLS must be at least 1".into());
    }
    // SAFETY: plain descriptor creation; checked below.
    let fds =
        unsafe { Fds { event: libc::eventfd(0, libc::EFD_CLOEXEC), epoll: libc::epoll_create1(libc::EPOLL_CLOEXEC) } };
    if fds.event < 0 || fds.epoll < 0 {
        return Err(format!("eventfd/epoll_create1: {}", std::io::Error::last_os_error()));
    }
    // The thread installing filters must be allowed to (no_new_privs, or CAP_SYS_ADMIN).
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
    }
    let filters = Arc::new(Filters::build(SeccompMode::On)?.ok_or("no seccomp filters for this architecture")?);
    let fds = Arc::new(fds);
    const NONE: &[ThreadKind] = &[];
    const WORKER: &[ThreadKind] = &[ThreadKind::Protocol, ThreadKind::QueueWorker];

    println!("{rounds} alternating rounds of {n} calls on fresh threads; median ns per iteration");
    println!("{:<38} {:>12} {:>12} {:>10}", "call", "no filter", "worker chain", "added");
    for call in CALLS {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            off.push(time_on_thread(&filters, NONE, call.run, &fds, n));
            on.push(time_on_thread(&filters, WORKER, call.run, &fds, n));
        }
        let (off, on) = (median(off), median(on));
        println!("{:<38} {off:>12.1} {on:>12.1} {:>+9.1}%", call.name, (on / off - 1.0) * 100.0);
    }
    Ok(())
}
