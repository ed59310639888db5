//! The gate exports and the control plane wait at until the main thread has locked down, so
//! nothing a frontend or control client sends is read with the start-up privileges.

use std::sync::{Condvar, Mutex};

static OPEN: Mutex<bool> = Mutex::new(true);
static CHANGED: Condvar = Condvar::new();

fn set(open: bool) {
    *OPEN.lock().unwrap_or_else(|p| p.into_inner()) = open;
    CHANGED.notify_all();
}

/// Close the gate (at prepare).
pub fn close() {
    set(false);
}

/// Open it for good.
pub fn open() {
    set(true);
}

/// Wait until it is open.
pub fn wait() {
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    while !*open {
        open = CHANGED.wait(open).unwrap_or_else(|p| p.into_inner());
    }
}
