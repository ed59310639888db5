//! Not a timed test: a side-by-side measurement of this daemon and qemu-storage-daemon, both
//! driven by libblkio over vhost-user, serving copies of the same file. Ignored by default; run
//! with `cargo test --release -p vhost-user-blk --test server_bench_compare -- --ignored --nocapture`
//! (set STRATA_BENCH_DIR to a disk-backed directory to measure there instead of /dev/shm).

mod server_common;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Completion, ReqFlags};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_common::{daemon_bin, Client};

const FILE_SIZE: u64 = 256 << 20;
const RUN: Duration = Duration::from_secs(2);

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill() with a pid we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn wait_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Run one case for `RUN`; returns IOPS.
fn run_case(c: &mut Client, write: bool, bs: usize, qd: usize, random: bool) -> f64 {
    let mut rng = SmallRng::seed_from_u64(1);
    let blocks = FILE_SIZE / bs as u64;
    let mut next_seq = 0u64;
    let mut pick = |rng: &mut SmallRng| {
        if random {
            rng.gen_range(0..blocks) * bs as u64
        } else {
            next_seq = (next_seq + 1) % blocks;
            next_seq * bs as u64
        }
    };
    let submit = |c: &mut Client, slot: usize, off: u64| {
        let p = c.ptr(slot * bs);
        if write {
            c.queues[0].write(off, p, bs, slot, ReqFlags::empty());
        } else {
            c.queues[0].read(off, p, bs, slot, ReqFlags::empty());
        }
    };
    for slot in 0..qd {
        let off = pick(&mut rng);
        submit(c, slot, off);
    }
    let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
    let start = Instant::now();
    let mut done = 0u64;
    let mut outstanding = qd;
    while outstanding > 0 {
        let n = c.queues[0].do_io(&mut comps, 1, None, None).unwrap();
        for x in &comps[..n] {
            // SAFETY: do_io initialised the first n entries.
            let x = unsafe { x.assume_init_ref() };
            assert_eq!(x.ret, 0);
            done += 1;
            outstanding -= 1;
            if start.elapsed() < RUN {
                let off = pick(&mut rng);
                submit(c, x.user_data, off);
                outstanding += 1;
            }
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore]
fn compare_with_qemu_storage_daemon() {
    let base = std::env::var("STRATA_BENCH_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let ours_img = dir.path().join("ours.raw");
    let qsd_img = dir.path().join("qsd.raw");
    let data: Vec<u8> = (0..FILE_SIZE).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&ours_img, &data).unwrap();
    std::fs::write(&qsd_img, &data).unwrap();
    drop(data);
    let ours_sock = dir.path().join("ours.sock");
    let qsd_sock = dir.path().join("qsd.sock");
    let ours = Daemon {
        child: Command::new(daemon_bin())
            .arg("--disk")
            .arg(format!("socket={},format=raw,path={}", ours_sock.display(), ours_img.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        socket: ours_sock,
    };
    let Ok(qsd_child) = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=f,filename={},aio=io_uring,cache.direct=off", qsd_img.display()))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
            qsd_sock.display()
        ))
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("SKIPPED: qemu-storage-daemon is not installed");
        return;
    };
    let qsd = Daemon { child: qsd_child, socket: qsd_sock };
    wait_socket(&ours.socket);
    wait_socket(&qsd.socket);
    let mut clients = [Client::connect(&ours.socket, 1, 32 << 20), Client::connect(&qsd.socket, 1, 32 << 20)];
    let cases: [(&str, bool, usize, usize, bool); 5] = [
        ("4k randread qd1", false, 4096, 1, true),
        ("4k randread qd32", false, 4096, 32, true),
        ("4k randwrite qd1", true, 4096, 1, true),
        ("4k randwrite qd32", true, 4096, 32, true),
        ("1M seqread qd4", false, 1 << 20, 4, false),
    ];
    println!("dir {base}");
    println!("{:<20} {:>12} {:>12} {:>7}", "case", "strata IOPS", "qsd IOPS", "ratio");
    for (name, write, bs, qd, random) in cases {
        // Alternate the two daemons, twice each, and keep the better run of each.
        let mut best = [0f64; 2];
        for _ in 0..2 {
            for (i, c) in clients.iter_mut().enumerate() {
                best[i] = best[i].max(run_case(c, write, bs, qd, random));
            }
        }
        println!("{name:<20} {:>12.0} {:>12.0} {:>7.2}", best[0], best[1], best[0] / best[1]);
    }
    println!("RSS KiB: strata {} qsd {}", rss_kib(ours.child.id()), rss_kib(qsd.child.id()));
}
