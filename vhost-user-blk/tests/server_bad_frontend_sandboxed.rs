//! The hostile-frontend cases of server_bad_frontend.rs (malformed vhost-user messages with any
//! bytes and fds) and hostile descriptor chains, played against the daemon binary under
//! `--seccomp on`: every error path the protocol threads and queue workers take must stay
//! inside their filters (a call outside would kill the daemon with SIGSYS), the daemon keeps
//! serving, and it leaks no descriptor. The cases are copied rather than shared: the in-process
//! file checks the protocol layer itself, this one the filters around it.

mod server_common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_common::ring::{Desc, TestFrontend};
use server_common::{tempdir, Client, DaemonProcess};

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
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fn header(req: u32, size: u32) -> Vec<u8> {
    [req, VERSION, size].iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn msg(req: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(req, payload.len() as u32);
    m.extend_from_slice(payload);
    m
}

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

fn fds_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn assert_alive(d: &DaemonProcess, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap_or_default();
    assert!(!status.contains("State:\tZ") && !status.is_empty(), "the daemon died after {what}");
}

fn assert_still_serves(d: &DaemonProcess, sock: &Path, round: usize) {
    assert_alive(d, &format!("case {round}"));
    let mut c = Client::connect(sock, 1, 65536);
    let data = vec![round as u8; 4096];
    assert_eq!(c.write(0, 4096 * round as u64, &data), 0, "round {round}: write after a bad frontend");
    let (ret, got) = c.read(0, 4096 * round as u64, 4096);
    assert!(ret == 0 && got == data, "round {round}: read back after a bad frontend");
}

fn start(dir: &Path) -> (DaemonProcess, std::path::PathBuf) {
    let sock = dir.join("hostile.sock");
    let spec = format!("socket={},format=mem,size=8M", sock.display());
    (DaemonProcess::start(&["--seccomp", "on", "--disk", &spec], &[&sock]), sock)
}

#[test]
fn malformed_messages_under_seccomp_leave_the_daemon_serving_without_leaks() {
    let dir = tempdir();
    let (d, sock) = start(dir.path());
    let mut rng = SmallRng::seed_from_u64(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let u64le = |v: u64| v.to_le_bytes().to_vec();
    let state = |index: u32, num: u32| [index.to_le_bytes(), num.to_le_bytes()].concat();
    let owner = msg(SET_OWNER, &[]);
    let region = |gpa: u64, size: u64| [gpa, size, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let cases: Vec<Vec<(Vec<u8>, usize)>> = vec![
        vec![(garbage.clone(), 0)],
        vec![(header(GET_FEATURES, 0)[..5].to_vec(), 0)],
        vec![(header(SET_FEATURES, 4096), 0), (u64le(1), 0)],
        vec![(header(SET_FEATURES, u32::MAX), 0)],
        vec![(msg(9999, &[]), 0)],
        vec![(owner.clone(), 8), (msg(SET_VRING_KICK, &u64le(0)), 5)],
        vec![(owner.clone(), 0), (msg(SET_VRING_NUM, &state(1000, 256)), 0), (msg(GET_VRING_BASE, &state(77, 0)), 0)],
        vec![(owner.clone(), 0), (msg(SET_VRING_BASE, &state(u32::MAX, 0)), 0), (msg(SET_VRING_KICK, &u64le(500)), 1)],
        vec![(owner.clone(), 0), (msg(SET_MEM_TABLE, &[u32::to_le_bytes(0xffff).to_vec(), vec![0; 4]].concat()), 0)],
        vec![
            (owner.clone(), 0),
            (
                msg(
                    SET_MEM_TABLE,
                    &[u32::to_le_bytes(2).to_vec(), vec![0; 4], region(0, 1 << 40), region(4096, 1 << 40)].concat(),
                ),
                2,
            ),
        ],
        vec![
            (owner.clone(), 0),
            (msg(ADD_MEM_REG, &[u64le(0), u64le(0), u64le(1 << 50), u64le(0), u64le(0)].concat()), 1),
        ],
        vec![(owner.clone(), 0), (msg(GET_INFLIGHT_FD, &[0u8; 24]), 0)],
        vec![(msg(SET_VRING_NUM, &state(0, 256)), 0), (msg(SET_VRING_KICK, &u64le(0)), 1)],
    ];
    assert_still_serves(&d, &sock, 0);
    let fds_before = fds_of(d.pid());
    for (round, case) in cases.iter().enumerate() {
        session(&sock, case);
        assert_still_serves(&d, &sock, round + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = fds_of(d.pid());
    while fds_after > fds_before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds_after = fds_of(d.pid());
    }
    assert!(fds_after <= fds_before + 4, "fds grew from {fds_before} to {fds_after}");
    d.stop();
}

#[test]
fn hostile_descriptor_chains_under_seccomp_are_refused_and_the_daemon_serves_on() {
    let dir = tempdir();
    let (d, sock) = start(dir.path());
    let mut fe = TestFrontend::connect(&sock, 1, 16);
    assert_eq!(fe.write(0, 0, &[0x11; 512]), 0);
    for i in 0..4 {
        fe.reset_data();
        let hdr = fe.header(0, 0); // a read of sector 0
        let st = fe.status_buf();
        let mut chain = match i {
            // Data outside guest memory; a length of 4 GiB - 1.
            0 => vec![
                Desc { addr: hdr, len: 16, flags: 0, next: 0 },
                Desc { addr: 1 << 50, len: 512, flags: F_WRITE, next: 0 },
            ],
            1 => vec![
                Desc { addr: hdr, len: 16, flags: 0, next: 0 },
                Desc { addr: 0, len: u32::MAX, flags: F_WRITE, next: 0 },
            ],
            // A header outside guest memory; an indirect table of absurd length.
            2 => vec![Desc { addr: u64::MAX - 8, len: 16, flags: 0, next: 0 }],
            _ => vec![Desc { addr: hdr, len: !15, flags: F_INDIRECT, next: 0 }],
        };
        chain.push(Desc { addr: st, len: 1, flags: F_WRITE, next: 0 });
        let head = fe.put_chain(0, 0, &chain);
        let (id, _) = fe.submit(0, head);
        assert_eq!(id, u32::from(head), "hostile chain {i}");
        assert_alive(&d, &format!("hostile chain {i}"));
    }
    // The same queue serves on.
    let (status, _, data) = fe.request(0, 0, 0, &[], 512);
    assert_eq!((status, data), (0, vec![0x11; 512]), "the queue stopped serving");
    drop(fe);
    assert_still_serves(&d, &sock, 1);
    d.stop();
}
