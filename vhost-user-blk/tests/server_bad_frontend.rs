//! A hostile vhost-user frontend: malformed messages on the raw socket, with any bytes and any
//! number of fds. Each case must end in an error or a closed connection, never a crash, and the
//! next frontend must be served normally with no fds leaked.

mod server_common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_common::{mem_disk, serve, tempdir, Client};

/// The fd count is process-wide: tests in this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const VERSION: u32 = 0x1;
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const GET_INFLIGHT_FD: u32 = 31;
const ADD_MEM_REG: u32 = 37;

fn header(req: u32, size: u32) -> Vec<u8> {
    [req, VERSION, size].iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn msg(req: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(req, payload.len() as u32);
    m.extend_from_slice(payload);
    m
}

/// Send `bytes` with `fds` attached (SCM_RIGHTS).
fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[i32]) {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain data; every pointer set below points to live buffers of the stated size.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    if !fds.is_empty() {
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(len) bytes, enough for one header plus the fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), fds.len());
        }
    }
    // SAFETY: sendmsg on a connected socket with the message built above.
    unsafe { libc::sendmsg(s.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
}

/// Play one hostile session: send each chunk, read whatever comes back, then hang up.
fn session(sock: &Path, chunks: &[(Vec<u8>, usize)]) {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    for (bytes, nfds) in chunks {
        let fds = vec![devnull.as_raw_fd(); *nfds];
        send_with_fds(&s, bytes, &fds);
        let mut buf = [0u8; 4096];
        let _ = (&s).read(&mut buf);
    }
    let _ = (&s).flush();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn assert_still_serves(sock: &Path, round: usize) {
    let mut c = Client::connect(sock, 1, 65536);
    let data = vec![round as u8; 4096];
    assert_eq!(c.write(0, 4096 * round as u64, &data), 0, "round {round}: write after a bad frontend");
    let (ret, got) = c.read(0, 4096 * round as u64, 4096);
    assert!(ret == 0 && got == data, "round {round}: read back after a bad frontend");
}

#[test]
fn malformed_messages_close_the_connection_and_the_next_frontend_is_served() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let served = serve(dir.path(), "hostile", mem_disk(1 << 20), |_| {});
    let sock = served.export.settings.socket.clone();
    let mut rng = SmallRng::seed_from_u64(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let u64le = |v: u64| v.to_le_bytes().to_vec();
    let state = |index: u32, num: u32| [index.to_le_bytes(), num.to_le_bytes()].concat();
    let owner = msg(SET_OWNER, &[]);
    let cases: Vec<Vec<(Vec<u8>, usize)>> = vec![
        // Random bytes.
        vec![(garbage.clone(), 0)],
        // A truncated header.
        vec![(header(GET_FEATURES, 0)[..5].to_vec(), 0)],
        // A header whose size lies (says 4 KiB, sends 8 bytes).
        vec![(header(SET_FEATURES, 4096), 0), (u64le(1), 0)],
        // A size larger than any message may be.
        vec![(header(SET_FEATURES, u32::MAX), 0)],
        // An unknown request code.
        vec![(msg(9999, &[]), 0)],
        // Too many fds on a message that takes none, then on one that takes one.
        vec![(owner.clone(), 8), (msg(SET_VRING_KICK, &u64le(0)), 5)],
        // Vring messages for queues that do not exist.
        vec![(owner.clone(), 0), (msg(SET_VRING_NUM, &state(1000, 256)), 0), (msg(GET_VRING_BASE, &state(77, 0)), 0)],
        vec![(owner.clone(), 0), (msg(SET_VRING_BASE, &state(u32::MAX, 0)), 0), (msg(SET_VRING_KICK, &u64le(500)), 1)],
        // SET_MEM_TABLE claiming 65535 regions without fds, and with bogus overlapping regions.
        vec![(owner.clone(), 0), (msg(SET_MEM_TABLE, &[u32::to_le_bytes(0xffff).to_vec(), vec![0; 4]].concat()), 0)],
        vec![
            (owner.clone(), 0),
            (
                msg(
                    SET_MEM_TABLE,
                    &[
                        u32::to_le_bytes(2).to_vec(),
                        vec![0; 4],
                        [0u64, 1 << 40, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                        [4096u64, 1 << 40, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ]
                    .concat(),
                ),
                2,
            ),
        ],
        // ADD_MEM_REG of a huge region backed by /dev/null.
        vec![
            (owner.clone(), 0),
            (msg(ADD_MEM_REG, &[u64le(0), u64le(0), u64le(1 << 50), u64le(0), u64le(0)].concat()), 1),
        ],
        // Inflight-fd messages (not offered).
        vec![(owner.clone(), 0), (msg(GET_INFLIGHT_FD, &[0u8; 24]), 0)],
        // Out of order: vring setup before SET_OWNER and features.
        vec![(msg(SET_VRING_NUM, &state(0, 256)), 0), (msg(SET_VRING_KICK, &u64le(0)), 1)],
    ];
    // Warm up (first connection creates the worker machinery) before counting fds.
    assert_still_serves(&sock, 0);
    let fds_before = open_fds();
    for (round, case) in cases.iter().enumerate() {
        session(&sock, case);
        assert_still_serves(&sock, round + 1);
    }
    // The last good frontend's connection is torn down by the daemon after the client has
    // gone (its queue threads, ring and eventfds): give it time, but a leak never comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut fds_after = open_fds();
    while fds_after > fds_before + 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds_after = open_fds();
    }
    assert!(fds_after <= fds_before + 4, "fds grew from {fds_before} to {fds_after}");
    assert!(served.stop());
}

#[test]
fn frontend_vanishing_mid_io_leaves_the_daemon_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let served = serve(dir.path(), "vanish", mem_disk(8 << 20), |_| {});
    let sock = served.export.settings.socket.clone();
    for round in 0..3 {
        let mut c = Client::connect(&sock, 1, 16 * 65536);
        for i in 0..16 {
            let p = c.ptr(i * 65536);
            c.queues[0].write((i * 65536) as u64, p, 65536, i, blkio::ReqFlags::empty());
        }
        // Kick without waiting for anything, then hang up with the requests in flight.
        let mut none: Vec<std::mem::MaybeUninit<blkio::Completion>> = Vec::new();
        let _ = c.queues[0].do_io(&mut none, 0, None, None);
        drop(c);
        assert_still_serves(&sock, round + 1);
    }
    assert_eq!(served.export.stats.in_flight(), 0);
    assert!(served.stop());
}
