//! A test-only trigger: with `STRATA_TEST_FORBIDDEN_SYSCALL=1` in the environment, a debug build
//! makes each queue worker issue a system call no filter allows (getppid) once its filter is
//! on, so the tests can see what `--seccomp on` and `log` do. Release builds ignore it.

use std::sync::atomic::{AtomicBool, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);

/// Read the environment (at prepare).
pub fn arm() {
    if cfg!(debug_assertions) && std::env::var_os("STRATA_TEST_FORBIDDEN_SYSCALL").is_some_and(|v| v == "1") {
        tracing::warn!("STRATA_TEST_FORBIDDEN_SYSCALL=1: queue workers will make a forbidden system call (test only)");
        ARMED.store(true, Ordering::Relaxed);
    }
}

/// On a queue worker, after its filter: the forbidden call when armed.
pub fn fire() {
    if ARMED.load(Ordering::Relaxed) {
        // SAFETY: getppid takes no arguments and changes nothing.
        let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
        tracing::warn!("test trigger: the forbidden getppid returned {ppid}");
    }
}
