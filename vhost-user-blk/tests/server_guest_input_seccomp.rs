//! Hostile descriptor chains against an export served in this process with its threads
//! confined as in the daemon (`sandbox::confine_spawned_threads`, the hook an in-process fuzz
//! harness uses): the export's protocol thread and queue worker run under their seccomp filters
//! (`Seccomp: 2` in /proc), every hostile chain is answered or dropped, and the export keeps
//! serving. A call outside the filters would kill this test process with SIGSYS.

mod server_common;

use server_common::ring::{Desc, TestFrontend};
use server_common::{mem_disk, serve, tempdir};
use vhost_user_blk::sandbox::{confine_spawned_threads, SeccompMode};

const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// (name, Seccomp field) of this process's threads.
fn threads() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let seccomp = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).unwrap_or("").trim().to_string();
        out.push((comm.trim().to_string(), seccomp));
    }
    out
}

#[test]
fn hostile_chains_against_confined_threads_in_process() {
    confine_spawned_threads(SeccompMode::On).unwrap();
    let dir = tempdir();
    let served = serve(dir.path(), "confined", mem_disk(4 << 20), |_| {});
    let mut fe = TestFrontend::connect(&served.export.settings.socket, 1, 16);
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
        assert_eq!(id, u32::from(head), "chain {i}");
    }
    let (status, _, data) = fe.request(0, 0, 0, &[], 512);
    assert_eq!((status, data), (0, vec![0x11; 512]), "the export stopped serving");
    let seen = threads();
    for want in ["export confined", "vq-worker-"] {
        let t =
            seen.iter().find(|(n, _)| n.starts_with(want)).unwrap_or_else(|| panic!("no {want} thread in {seen:?}"));
        assert_eq!(t.1, "2", "{want} runs without its filter");
    }
    drop(fe);
    assert!(served.stop());
}
