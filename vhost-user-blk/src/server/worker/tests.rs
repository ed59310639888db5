//! A worker's turn driven directly, on rings written in process memory: what one turn pops,
//! publishes and leaves for the next, with a RAM disk whose requests complete at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use blockdev::MemDisk;
use vhost_user_backend::VringT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, Le16};
use zerocopy::IntoBytes;

use super::queue::PIPELINE_BATCH;
use super::*;
use crate::server::export::{Export, ExportSettings};
use crate::server::virtio_blk::{req, RequestHeader};

const QSIZE: u16 = 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const USED_F_NO_NOTIFY: u16 = 1;
/// An indirect table of two descriptors: a FLUSH header and its status byte, shared by every
/// request (a flush writes nothing else).
const TABLE: u64 = 0x1000;
const HEADER: u64 = 0x2000;
const STATUS: u64 = 0x3000;

/// Where ring `r` lives: (descriptor table, avail ring, used ring).
fn ring_addrs(r: usize) -> (u64, u64, u64) {
    let base = 0x10000 + 0x10000 * r as u64;
    (base, base + 0x4000, base + 0x8000)
}

/// A worker serving two rings on one thread, set up as a frontend would leave them.
struct Rig {
    mem: GuestMemAtomic,
    backend: Arc<BlkBackend>,
    vrings: Vec<VringRwLock>,
    calls: Vec<OwnedFd>,
    worker: Worker,
    _epoll: OwnedFd,
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The eventfd's counter (0 when it was never written), reset.
fn take_count(fd: RawFd) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd; EAGAIN leaves it 0.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    v
}

impl Rig {
    fn new() -> Rig {
        let guest = GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).expect("guest memory");
        let mem = GuestMemoryAtomic::new(guest);
        let mut settings = ExportSettings::new("/nonexistent/worker-test.sock");
        settings.num_queues = 2;
        settings.queues_per_thread = 2;
        settings.queue_size = QSIZE;
        let dev = Arc::new(MemDisk::new(1 << 20).expect("RAM disk"));
        let export = Export::new("worker-test".into(), settings, dev, "test".into()).expect("export");
        let backend = BlkBackend::new(Arc::new(export));
        backend.begin_connection(mem.clone());
        // SAFETY: epoll_create1 takes no pointers; the result is checked before it is owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        backend.set_epoll_fds(vec![epoll.as_raw_fd()]);
        let guest = mem.memory();
        let put_desc = |at: u64, addr: u64, len: u32, flags: u16, next: u16| {
            guest.write_obj(Descriptor::new(addr, len, flags, next), GuestAddress(at)).unwrap();
        };
        put_desc(TABLE, HEADER, 16, F_NEXT, 1);
        put_desc(TABLE + 16, STATUS, 1, F_WRITE, 0);
        let header = RequestHeader { kind: req::FLUSH.into(), reserved: 0.into(), sector: 0.into() };
        guest.write_slice(header.as_bytes(), GuestAddress(HEADER)).unwrap();
        let mut vrings = Vec::new();
        let mut calls = Vec::new();
        for r in 0..2 {
            let (desc, avail, used) = ring_addrs(r);
            for i in 0..u64::from(QSIZE) {
                put_desc(desc + 16 * i, TABLE, 32, F_INDIRECT, 0);
            }
            let vring = VringRwLock::new(mem.clone(), QSIZE).expect("vring");
            vring.set_queue_size(QSIZE);
            vring.set_queue_info(desc, avail, used).expect("ring addresses");
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let call = eventfd();
            // SAFETY: a duplicate of our own eventfd, handed over as a `File` the vring owns.
            let dup = unsafe { libc::fcntl(call.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            assert!(dup >= 0);
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            vring.set_call(Some(unsafe { std::fs::File::from_raw_fd(dup) }));
            vrings.push(vring);
            calls.push(call);
        }
        drop(guest);
        let worker = Worker::new(&backend, 2, 0).expect("worker");
        Rig { mem, backend, vrings, calls, worker, _epoll: epoll }
    }

    /// Publish `n` more requests on ring `r` (heads in order, wrapping), as a guest would.
    fn publish(&self, r: usize, n: u16) {
        let (_, avail, _) = ring_addrs(r);
        let guest = self.mem.memory();
        let idx = u16::from(guest.read_obj::<Le16>(GuestAddress(avail + 2)).unwrap());
        for k in 0..n {
            let slot = idx.wrapping_add(k) % QSIZE;
            guest.write_obj(Le16::from(slot), GuestAddress(avail + 4 + 2 * u64::from(slot))).unwrap();
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        guest.write_obj(Le16::from(idx.wrapping_add(n)), GuestAddress(avail + 2)).unwrap();
    }

    fn used_idx(&self, r: usize) -> u16 {
        self.mem.memory().read_obj::<Le16>(GuestAddress(ring_addrs(r).2 + 2)).unwrap().into()
    }

    /// Whether the device asks the guest not to kick ring `r` (no EVENT_IDX: NO_NOTIFY).
    fn kicks_off(&self, r: usize) -> bool {
        let flags = u16::from(self.mem.memory().read_obj::<Le16>(GuestAddress(ring_addrs(r).2)).unwrap());
        flags & USED_F_NO_NOTIFY != 0
    }

    fn turn(&self, wake: Wake) -> bool {
        self.worker.turn(&self.backend, &self.vrings, wake)
    }
}

#[test]
fn a_kicked_turn_serves_its_ring_in_published_batches_and_turns_kicks_back_on() {
    let rig = Rig::new();
    rig.publish(0, 100);
    rig.publish(1, 100);
    assert!(rig.turn(Wake::Kick(0)));
    assert_eq!(rig.used_idx(0), 100, "the kicked ring is served to the end in one turn");
    assert_eq!(rig.used_idx(1), 0, "a ring nobody kicked waits for its kick");
    let batches = 100usize.div_ceil(PIPELINE_BATCH) as u64;
    assert_eq!(take_count(rig.calls[0].as_raw_fd()), batches, "one signal per batch of {PIPELINE_BATCH}");
    assert!(!rig.kicks_off(0), "the ring ran dry: kicks are back on before the worker sleeps");
    assert_eq!(rig.mem.memory().read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status::OK);
    assert!(rig.turn(Wake::Kick(1)));
    assert_eq!(rig.used_idx(1), 100);
    assert_eq!(rig.backend.export.stats.snapshot().flushes, 200, "every request counted once");
    assert_eq!(rig.backend.export.stats.in_flight(), 0);
    assert!(!rig.turn(Wake::Kick(1)), "a kick with nothing on the ring is no work");
}

#[test]
fn one_turn_budget_is_shared_by_the_rings_and_the_rest_resumes_by_a_wake_up_of_its_own() {
    let rig = Rig::new();
    // Both rings full: more than one turn's budget between them.
    rig.publish(0, QSIZE);
    rig.publish(1, QSIZE);
    assert_eq!(take_count(rig.worker.io.wake_fd()), 0);
    assert!(rig.turn(Wake::Settle));
    let (a, b) = (usize::from(rig.used_idx(0)), usize::from(rig.used_idx(1)));
    assert!(
        (TURN_BUDGET..TURN_BUDGET + 2 * PIPELINE_BATCH).contains(&(a + b)),
        "one turn served {a} + {b} requests; its budget is {TURN_BUDGET}"
    );
    assert!(a.abs_diff(b) <= PIPELINE_BATCH, "the rings took turns: {a} against {b}");
    assert!(rig.kicks_off(0) && rig.kicks_off(1), "requests are left on both rings: kicks stay off");
    assert_eq!(take_count(rig.worker.io.wake_fd()), 1, "the turn woke the worker to come back");
    // The wake-ups' turns (the engine's eventfd) finish both rings without a kick: the rest is
    // exactly another budget, so a third turn finds the rings dry.
    let mut turns = 1;
    loop {
        assert!(turns < 4, "{turns} turns and the rings are not done");
        rig.turn(Wake::Engine);
        turns += 1;
        if take_count(rig.worker.io.wake_fd()) == 0 {
            break;
        }
    }
    assert_eq!((rig.used_idx(0), rig.used_idx(1)), (QSIZE, QSIZE));
    assert!(!rig.kicks_off(0) && !rig.kicks_off(1), "both rings ran dry: kicks back on");
    assert_eq!(turns, 3);
    assert_eq!(rig.backend.export.stats.snapshot().flushes, 2 * u64::from(QSIZE));
}

#[test]
fn a_polling_turn_leaves_kicks_off_and_the_settling_turn_turns_them_on() {
    let rig = Rig::new();
    rig.publish(0, 20);
    assert!(rig.turn(Wake::Poll));
    assert_eq!(rig.used_idx(0), 20, "polling finds requests nobody kicked");
    assert!(rig.kicks_off(0) && rig.kicks_off(1), "kicks stay off while the worker polls");
    assert!(!rig.turn(Wake::Poll), "an empty ring and an idle engine are no work");
    rig.publish(1, 3);
    assert!(rig.turn(Wake::Settle));
    assert_eq!(rig.used_idx(1), 3, "the last look before sleeping takes what slipped in");
    assert!(!rig.kicks_off(0) && !rig.kicks_off(1), "kicks are on before the worker sleeps");
}
