//! io_uring restrictions: every ring is created disabled, limited
//! (IORING_REGISTER_RESTRICTIONS) to the opcodes, SQE flags and late register operations the
//! engine uses, then enabled. A bug that corrupts an SQE (or an attacker who gets to write one)
//! cannot turn the ring into an open/connect/send engine that seccomp never sees.
//!
//! [`SQE_OPS`] is the one list of opcodes the engine issues: the start-up probe checks the
//! kernel has each, the restriction allows exactly them, and a debug assertion on every
//! submission ([`allowed`]) catches an opcode or flag added elsewhere and forgotten here.

use std::sync::Once;

use io_uring::{opcode, squeue, IoUring};

use crate::{Error, Result};

/// The opcodes the engine issues, what needs each, and the kernel that added it.
pub(crate) const SQE_OPS: &[(u8, &str, &str)] = &[
    (opcode::Read::CODE, "IORING_OP_READ (one-segment reads)", "5.6"),
    (opcode::Write::CODE, "IORING_OP_WRITE (one-segment writes)", "5.6"),
    (opcode::Readv::CODE, "IORING_OP_READV (reads)", "5.1"),
    (opcode::Writev::CODE, "IORING_OP_WRITEV (writes)", "5.1"),
    (opcode::Fsync::CODE, "IORING_OP_FSYNC (flush)", "5.1"),
    (opcode::Fallocate::CODE, "IORING_OP_FALLOCATE (discard, write-zeroes)", "5.6"),
    (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD (cross-thread wake-ups)", "5.1"),
];

/// The SQE flags the engine sets: registered files, and IOSQE_ASYNC for large copies.
pub(crate) const SQE_FLAGS: u8 = squeue::Flags::FIXED_FILE.bits() | squeue::Flags::ASYNC.bits();

/// io_uring_register operations made after the ring is enabled (the kernel ABI numbers):
/// registered-file slots filled and emptied on first use and at drop, the completion eventfd
/// registered on first use. Setup-time ones (probe, worker caps, the sparse file table) run
/// while the ring is still disabled, when restrictions do not apply yet.
const LATE_REGISTER_OPS: &[u8] = &[
    3, // IORING_UNREGISTER_FILES
    4, // IORING_REGISTER_EVENTFD
    6, // IORING_REGISTER_FILES_UPDATE
];

/// Restrict a ring created with IORING_SETUP_R_DISABLED to what the engine uses, then enable it.
/// Must run on the thread that will submit (a SINGLE_ISSUER ring takes the enabling task as its
/// submitter).
pub(crate) fn restrict_and_enable(ring: &IoUring) -> Result<()> {
    let mut res: Vec<io_uring::register::Restriction> = SQE_OPS
        .iter()
        .map(|&(code, _, _)| io_uring::register::Restriction::sqe_op(code))
        .chain(LATE_REGISTER_OPS.iter().map(|&op| io_uring::register::Restriction::register_op(op)))
        .collect();
    res.push(io_uring::register::Restriction::sqe_flags_allowed(SQE_FLAGS));
    ring.submitter()
        .register_restrictions(&mut res)
        .map_err(|e| Error::from_io(e, "io_uring: cannot register the ring's restrictions"))?;
    ring.submitter().register_enable_rings().map_err(|e| Error::from_io(e, "io_uring: cannot enable the ring"))
}

/// Say once per process that rings run unrestricted (a kernel before 5.10).
pub(crate) fn warn_unrestricted(why: &std::io::Error) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::warn!("io_uring: this kernel cannot create restricted rings ({why}; needs Linux 5.10): rings run without opcode restrictions");
    });
}

/// Whether `sqe` is one the restricted ring accepts (for a debug assertion at submission).
pub(crate) fn allowed(sqe: &squeue::Entry) -> bool {
    // SAFETY: `squeue::Entry` is `repr(C)` around the kernel's 64-byte `io_uring_sqe`, whose
    // second byte is `flags`; reading one byte of a live reference.
    let flags = unsafe { *(sqe as *const squeue::Entry).cast::<u8>().add(1) };
    let op = sqe.get_opcode();
    SQE_OPS.iter().any(|&(code, _, _)| u32::from(code) == op) && flags & !SQE_FLAGS == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::types;

    #[test]
    fn the_engines_own_sqes_are_allowed_and_others_are_not() {
        let poll = opcode::PollAdd::new(types::Fd(0), libc::POLLIN as u32).multi(true).build();
        assert!(allowed(&poll));
        assert!(allowed(&poll.clone().flags(squeue::Flags::ASYNC)));
        assert!(!allowed(&opcode::Nop::new().build()), "NOP is not one the engine issues");
        let openat = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c"/etc/passwd".as_ptr()).build();
        assert!(!allowed(&openat));
        assert!(!allowed(&poll.flags(squeue::Flags::IO_LINK)), "a flag the engine never sets");
    }

    /// The engine's own rings (plain and with a kernel submission thread) refuse a NOP.
    #[test]
    fn engine_rings_are_restricted() {
        for sq_poll_idle_ms in [0, 1] {
            let cfg = crate::EngineConfig { sq_poll_idle_ms, ..crate::EngineConfig::default() };
            let io = crate::IoCtx::with_config(cfg).unwrap();
            let mut ring = io.inner.ring.borrow_mut();
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(u64::MAX - 7)).unwrap() };
            ring.submit().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let res = loop {
                ring.submit_and_wait(1).unwrap();
                if let Some(c) = ring.completion().find(|c| c.user_data() == u64::MAX - 7) {
                    break c.result();
                }
                assert!(std::time::Instant::now() < deadline, "no completion for the NOP");
            };
            assert_eq!(res, -libc::EACCES, "sqpoll {sq_poll_idle_ms}: the engine's ring ran a NOP");
        }
    }

    #[test]
    fn a_restricted_ring_refuses_an_opcode_outside_the_list() {
        let ring = match IoUring::builder().setup_r_disabled().build(8) {
            Ok(r) => r,
            Err(e) => return eprintln!("SKIPPED: no disabled rings here ({e})"),
        };
        restrict_and_enable(&ring).unwrap();
        let mut ring = ring;
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(7)).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        assert_eq!((cqe.user_data(), cqe.result()), (7, -libc::EACCES));
        // A register operation outside the list is refused too.
        let mut probe = io_uring::Probe::new();
        let e = ring.submitter().register_probe(&mut probe).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    }
}
