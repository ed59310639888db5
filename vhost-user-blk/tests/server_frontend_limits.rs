//! What a frontend may ask for (docs/server.md, "Frontend limits"), and bad in-flight regions:
//! beyond each cap a clear refusal (an error answer where the frontend asked for one, the
//! connection closed, a log line), never an allocation, and the next frontend is served.

mod server_common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use server_common::ring::{memfd, TestFrontend, S_OK};
use server_common::{logged, mem_disk, serve, tempdir};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

/// Tests here count log lines of their own export names; one at a time keeps them apart.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const QSIZE: u16 = 64;

/// The daemon hung up on `fe` (a refused request ends the connection).
fn assert_closed(fe: &mut TestFrontend) {
    assert!(fe.fe.get_features().is_err(), "the connection should have been closed");
}

/// A new frontend on `sock` is served.
fn next_is_served(sock: &std::path::Path, queues: usize) {
    let mut fe = TestFrontend::connect(sock, queues, QSIZE);
    assert_eq!(fe.write(queues - 1, 0, &[9u8; 512]), S_OK, "the next frontend is served");
}

/// Bytes of one queue's part of an in-flight region of `QSIZE` descriptors.
const PER_QUEUE: u64 = (16 + 16 * QSIZE as u64).div_ceil(64) * 64;

#[test]
fn queue_index_and_size_beyond_the_export_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "lq", mem_disk(1 << 20), |s| s.queue_size = QSIZE);
    let sock = dir.path().join("lq.sock");
    for (queue, size, why) in [
        (0u32, 4 * u32::from(QSIZE), "larger than the export's queue-size"),
        (0, 0, "empty"),
        (5, 64, "beyond num-queues"),
    ] {
        // SET_VRING_NUM (8) on the raw socket: the vhost crate's frontend checks some of this
        // itself and would never send it.
        let mut m = Vec::new();
        for v in [8u32, 1, 8, queue, size] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        assert_hangs_up(&sock, &m);
        assert!(
            !logged(&["frontend request refused", &format!("queue {queue}")]).is_empty(),
            "a queue {why} is refused with a log line"
        );
        next_is_served(&sock, 1);
    }
    exp.stop();
}

/// Send `bytes` on a new connection: the daemon hangs up (a clean close or a reset).
fn assert_hangs_up(sock: &std::path::Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the daemon should hang up, got {other:?}"),
    }
}

#[test]
fn an_oversized_message_closes_the_connection_before_its_body_is_read() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "lm", mem_disk(1 << 20), |_| {});
    let sock = dir.path().join("lm.sock");
    // GET_FEATURES announcing 1 GiB of payload.
    let mut hdr = Vec::new();
    for v in [1u32, 1, 1 << 30] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    assert_hangs_up(&sock, &hdr);
    assert!(!logged(&["lm", "announces 1073741824 bytes"]).is_empty());
    let mut fe = TestFrontend::connect(&sock, 1, 64);
    assert_eq!(fe.write(0, 0, &[2u8; 512]), S_OK, "the next frontend is served");
    drop(fe);
    exp.stop();
}

#[test]
fn memory_regions_beyond_the_cap_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "lr", mem_disk(1 << 20), |_| {});
    let mut fe = TestFrontend::connect_protocol(
        &dir.path().join("lr.sock"),
        1,
        64,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
    );
    let slots = fe.fe.get_max_mem_slots().expect("GET_MAX_MEM_SLOTS");
    assert_eq!(slots, 509);
    let page = memfd(4096);
    // The guest memory is one region; add small ones above it up to the cap.
    let region = |i: u64| VhostUserMemoryRegionInfo {
        guest_phys_addr: (1 << 32) + i * 4096,
        memory_size: 4096,
        userspace_addr: (1 << 40) + i * 4096,
        mmap_offset: 0,
        mmap_handle: page.as_raw_fd(),
    };
    for i in 0..slots - 1 {
        fe.fe.add_mem_region(&region(i)).unwrap_or_else(|e| panic!("region {i}: {e}"));
    }
    assert_eq!(fe.write(0, 0, &[3u8; 512]), S_OK, "509 regions are served");
    let _ = fe.fe.add_mem_region(&region(slots));
    assert_closed(&mut fe);
    assert!(!logged(&["beyond the limit of 509 regions"]).is_empty(), "region 510 is one too many");
    next_is_served(&dir.path().join("lr.sock"), 1);
    exp.stop();
}

/// A non-blocking connect to `path`: Ok, or the error (EAGAIN once the backlog is full).
fn try_connect(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; the path is copied into it within its size.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: connect with a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[test]
fn connections_beyond_the_backlog_are_refused_while_one_frontend_is_served() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "lb", mem_disk(1 << 20), |_| {});
    let sock = dir.path().join("lb.sock");
    let mut fe = TestFrontend::connect(&sock, 1, 64);
    let mut waiting = Vec::new();
    let refused = loop {
        match try_connect(&sock) {
            Ok(fd) => waiting.push(fd),
            Err(e) => break e,
        }
        assert!(waiting.len() <= 64, "more than 64 connections waiting: no backlog cap");
    };
    assert_eq!(refused.raw_os_error(), Some(libc::EAGAIN), "refused with {refused}");
    // The kernel queues one more than the backlog.
    assert!(waiting.len() <= 9, "{} connections waiting (backlog 8)", waiting.len());
    assert_eq!(fe.write(0, 0, &[4u8; 512]), S_OK, "the frontend served is not disturbed");
    drop(waiting);
    drop(fe);
    exp.stop();
}

fn region_file(queues: u16) -> std::fs::File {
    memfd(u64::from(queues) * PER_QUEUE)
}

fn msg(size: u64, queues: u16) -> VhostUserInflight {
    VhostUserInflight { mmap_size: size, mmap_offset: 0, num_queues: queues, queue_size: QSIZE }
}

#[test]
fn an_in_flight_region_too_small_or_of_another_version_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "li", mem_disk(1 << 20), |s| {
        s.queue_size = QSIZE;
        s.num_queues = 2;
    });
    let sock = dir.path().join("li.sock");

    // Too small for the two queues it names.
    let answer = TestFrontend::connect_given_region(&sock, 2, QSIZE, msg(PER_QUEUE, 2), region_file(1));
    assert!(answer.is_err(), "a region too small for its queues");
    assert!(!logged(&["li", "too small for 2 queues"]).is_empty());
    next_is_served(&sock, 2);

    // More queues than the export has.
    let answer = TestFrontend::connect_given_region(&sock, 3, QSIZE, msg(3 * PER_QUEUE, 3), region_file(3));
    assert!(answer.is_err(), "a region for 3 queues of a 2-queue export");
    next_is_served(&sock, 2);

    // An unknown version.
    let file = region_file(2);
    file.write_all_at(&7u16.to_le_bytes(), PER_QUEUE + 8).unwrap();
    let answer = TestFrontend::connect_given_region(&sock, 2, QSIZE, msg(2 * PER_QUEUE, 2), file);
    assert!(answer.is_err(), "version 7");
    assert!(!logged(&["li", "queue 1: version 7"]).is_empty());
    next_is_served(&sock, 2);
    exp.stop();
}

#[test]
fn in_flight_flags_on_descriptors_never_made_available_are_ignored() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let exp = serve(dir.path(), "lg", mem_disk(1 << 20), |s| s.queue_size = QSIZE);
    let sock = dir.path().join("lg.sock");
    // Version 1, desc_num 64, ten descriptors "in flight" with wild counters, and a list that
    // loops: on a ring where nothing was ever made available.
    let file = region_file(1);
    let mut hdr = [0u8; 16];
    hdr[8..10].copy_from_slice(&1u16.to_le_bytes());
    hdr[10..12].copy_from_slice(&QSIZE.to_le_bytes());
    file.write_all_at(&hdr, 0).unwrap();
    for i in 0..10u64 {
        let mut d = [0u8; 16];
        d[0] = 1;
        d[6..8].copy_from_slice(&(i as u16).to_le_bytes());
        d[8..16].copy_from_slice(&(u64::MAX - i).to_le_bytes());
        file.write_all_at(&d, 16 + 16 * (i * 5)).unwrap();
    }
    let mut fe = TestFrontend::connect_given_region(&sock, 1, QSIZE, msg(PER_QUEUE, 1), file)
        .expect("the region itself is well formed");
    // Nothing is resubmitted: no used entry appears for the garbage.
    assert_eq!(fe.next_used(0, Duration::from_millis(300)), None, "a used entry for a request never made");
    assert!(!logged(&["lg", "in-flight region ignored for this queue", "made available"]).is_empty());
    // The queue is served, and tracked from here on.
    assert_eq!(fe.write(0, 8, &[8u8; 4096]), S_OK);
    assert_eq!(fe.read_sectors(0, 8, 4096), (S_OK, vec![8u8; 4096]));
    drop(fe);
    exp.stop();
}
