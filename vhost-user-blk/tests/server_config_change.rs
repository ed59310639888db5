//! The backend channel: a frontend that set one up (BACKEND_REQ, SET_BACKEND_REQ_FD) gets
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG from `BlkBackend::notify_config_change`, acknowledged
//! under REPLY_ACK, and then reads the export's configuration with GET_CONFIG; one that never
//! answers, or set up no channel, is reported as not told, without holding the caller.

mod server_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use server_common::ring::TestFrontend;
use server_common::{mem_disk, serve, tempdir};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

const CONFIG_CHANGE_MSG: u32 = 2;

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap())
}

#[test]
fn config_change_reaches_a_frontend_with_a_backend_channel() {
    let dir = tempdir();
    let exp = serve(dir.path(), "cc", mem_disk(8 << 20), |_| {});
    let sock = dir.path().join("cc.sock");
    assert!(!exp.backend().notify_config_change(), "no frontend: nobody told");

    let mut fe = TestFrontend::connect_protocol(&sock, 1, 64, VhostUserProtocolFeatures::BACKEND_REQ);
    assert!(!exp.backend().notify_config_change(), "no backend channel yet: nobody told");
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    fe.fe.set_backend_request_fd(&theirs).expect("SET_BACKEND_REQ_FD");
    // The vhost crate's frontend does not wait for an answer to that: a round trip makes sure
    // the daemon has it.
    fe.config();

    let backend = exp.backend().clone();
    let notifier = std::thread::spawn(move || backend.notify_config_change());
    let mut hdr = [0u8; 12];
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ours.read_exact(&mut hdr).expect("CONFIG_CHANGE_MSG on the backend channel");
    assert_eq!(le32(&hdr[0..4]), CONFIG_CHANGE_MSG);
    assert_eq!(le32(&hdr[4..8]), 0x1 | 0x8, "version 1 with NEED_REPLY (REPLY_ACK negotiated)");
    assert_eq!(le32(&hdr[8..12]), 0, "no payload");
    let mut reply = Vec::new();
    for v in [CONFIG_CHANGE_MSG, 0x1 | 0x4, 8] {
        reply.extend_from_slice(&v.to_le_bytes());
    }
    reply.extend_from_slice(&0u64.to_le_bytes());
    ours.write_all(&reply).unwrap();
    assert!(notifier.join().unwrap(), "the frontend acknowledged: told");

    // What the frontend reads next is the export's current configuration.
    let cfg = fe.config();
    let capacity = u64::from_le_bytes(cfg[0..8].try_into().unwrap());
    assert_eq!(capacity, exp.export.geometry.config_space(true).capacity.get());

    // A frontend that never answers: not told, and the caller is not held for long.
    let start = Instant::now();
    assert!(!exp.backend().notify_config_change());
    assert!(start.elapsed() < Duration::from_secs(5), "waited {:?}", start.elapsed());
    // Its channel is dropped: the next notification says so at once.
    assert!(!exp.backend().notify_config_change());
    drop(fe);
    exp.stop();
}

#[test]
fn set_backend_req_fd_without_a_socket_is_refused_and_the_connection_goes_on() {
    let dir = tempdir();
    let exp = serve(dir.path(), "cc2", mem_disk(1 << 20), |_| {});
    let sock = dir.path().join("cc2.sock");
    let mut fe = TestFrontend::connect_protocol(&sock, 1, 64, VhostUserProtocolFeatures::BACKEND_REQ);
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // The vhost crate's frontend does not ask for a reply to this message: the refusal is logged.
    let _ = fe.fe.set_backend_request_fd(&devnull);
    assert_eq!(fe.write(0, 0, &[7u8; 512]), server_common::ring::S_OK, "the connection still serves");
    assert!(!exp.backend().notify_config_change(), "no channel was kept");
    assert!(!server_common::logged(&["cc2", "SET_BACKEND_REQ_FD without a Unix stream socket"]).is_empty());
    assert_eq!(fe.write(0, 0, &[7u8; 512]), server_common::ring::S_OK, "the connection still serves");
    drop(fe);
    exp.stop();
}
