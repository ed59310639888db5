//! Fuzz the daemon's vhost-user message handling (`server::protocol::dispatch::Connection`):
//! the input is written, as it is, to a frontend connection of a RAM-disk export, then the
//! frontend hangs up. Every message (valid or not, in any order, with any sizes) must be
//! answered, refused or end the connection, never panic, hang or allocate without bound; the
//! connection's worker threads must stop. No fds travel with the input, so messages that need
//! one are refused. As in the daemon, the connection runs on a thread of the vhost-user protocol
//! kind and its queue workers on theirs, each under its seccomp filter (`--seccomp on`): a call
//! the filters do not allow kills the target with SIGSYS, naming the thread and the call.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blockdev::thread::ThreadKind;
use blockdev::MemDisk;
use libfuzzer_sys::fuzz_target;
use vhost_user_blk::server::backend::BlkBackend;
use vhost_user_blk::server::protocol::dispatch::Connection;
use vhost_user_blk::sandbox::SeccompMode;
use vhost_user_blk::server::{Export, ExportSettings};

fn backend() -> &'static Arc<BlkBackend> {
    static BACKEND: OnceLock<Arc<BlkBackend>> = OnceLock::new();
    BACKEND.get_or_init(|| {
        vhost_user_blk::sandbox::confine_spawned_threads(SeccompMode::On).expect("seccomp filters");
        let mut s = ExportSettings::new("/nonexistent/fuzz.sock");
        s.num_queues = 2;
        s.queue_size = 64;
        let dev = Arc::new(MemDisk::new(1 << 20).expect("mem disk"));
        BlkBackend::new(Arc::new(Export::new("fuzz".into(), s, dev, "fuzz".into()).expect("export")))
    })
}

fuzz_target!(|data: &[u8]| {
    let (mut frontend, daemon_side) = UnixStream::pair().expect("socketpair");
    let mut conn = Connection::new(backend().clone(), daemon_side).expect("connection");
    // Read the daemon's answers so it never blocks on a full socket.
    let mut reader = frontend.try_clone().expect("clone");
    reader.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = frontend.write_all(&input);
        let _ = frontend.shutdown(std::net::Shutdown::Write);
        frontend
    });
    let protocol = blockdev::thread::spawn(ThreadKind::Protocol, "fuzz protocol", move || {
        let _ = conn.run();
        conn
    });
    let conn = protocol.expect("protocol thread").join().expect("the protocol thread panicked");
    conn.shutdown_handle().shutdown();
    backend().drain_all(Duration::from_secs(5));
    conn.finish();
    drop(writer.join());
    let _ = drain.join();
});
