//! A daemon serving two volumes of one thin pool (each on its own socket, written by libblkio)
//! while `blkctl thin ... --api-socket` creates a third volume and snapshots a served one through
//! the control socket; the snapshot is then served and holds each write wholly or not at all.
//! And a served pool that runs out of space, is grown live (`truncate -s`, then `blkctl thin
//! pool-grow --api-socket`) and takes the waiting and the refused writes.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use blockdev::{IoCtx, OpenOptions, RawFile};
use server_common::{blkctl_bin, tempdir, Client, DaemonProcess};
use thin::{Pool, PoolConfig};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The pool's block size; each write covers 64 KiB from the middle of one block to the middle
/// of the next (two provisioning steps), one write per 128 KiB region.
const BS: u64 = 64 * KIB;
const REGION: u64 = 2 * BS;
const VOL: u64 = 8 * MIB;
const REGIONS: u64 = VOL / REGION;
const QD: u64 = 8;

fn blkctl(args: &[&str]) -> Output {
    Command::new(blkctl_bin()).args(args).output().expect("run blkctl")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "blkctl failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().iter().copied().cycle().take(BS as usize).collect()
}

/// Per region: the highest sequence number completed and the highest started; and the writes
/// completed in all.
struct Progress {
    done: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
    writes: AtomicU64,
}

impl Progress {
    fn new() -> Arc<Progress> {
        let z = || (0..REGIONS).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Progress { done: z(), started: z(), writes: AtomicU64::new(0) })
    }
}

/// Write regions of the volume at `socket` at QD8 until `stop`, recording progress; returns the
/// number of writes.
fn writer(socket: PathBuf, stop: Arc<AtomicBool>, seq: Arc<AtomicU64>, p: Arc<Progress>) -> u64 {
    let mut c = Client::connect(&socket, 1, (QD * BS) as usize);
    let mut next = [0u64; QD as usize];
    let mut inflight = [0u64; QD as usize]; // region of each slot's write
    let submit = |c: &mut Client, slot: usize, next: &mut [u64], inflight: &mut [u64]| {
        let r = slot as u64 + (next[slot] % (REGIONS / QD)) * QD;
        next[slot] += 1;
        let s = seq.fetch_add(1, Ordering::SeqCst);
        p.started[r as usize].store(s, Ordering::SeqCst);
        let at = slot * BS as usize;
        c.buf()[at..at + BS as usize].copy_from_slice(&pattern(s));
        inflight[slot] = r;
        let ptr = c.ptr(at);
        c.queues[0].write(r * REGION + BS / 2, ptr, BS as usize, slot, ReqFlags::empty());
    };
    for slot in 0..QD as usize {
        submit(&mut c, slot, &mut next, &mut inflight);
    }
    let (mut writes, mut outstanding) = (0, QD);
    while outstanding > 0 {
        for (slot, ret) in c.reap(0, 1) {
            assert_eq!(ret, 0, "write failed");
            writes += 1;
            p.writes.fetch_add(1, Ordering::SeqCst);
            outstanding -= 1;
            let r = inflight[slot] as usize;
            // The pattern holds its own sequence number; read it back from the buffer.
            let at = slot * BS as usize;
            let s = u64::from_le_bytes(c.buf()[at..at + 8].try_into().unwrap());
            p.done[r].fetch_max(s, Ordering::SeqCst);
            if !stop.load(Ordering::SeqCst) {
                submit(&mut c, slot, &mut next, &mut inflight);
                outstanding += 1;
            }
        }
    }
    // Both writers end with a FLUSH, usually at nearly the same moment: two volumes' commits
    // grouped into one, the waiting worker woken from the other worker's thread.
    assert_eq!(c.flush(0), 0, "flush failed");
    writes
}

fn check_regions(c: &mut Client, what: &str, lo: &[u64], hi: &[u64]) {
    for r in 0..REGIONS as usize {
        let (ret, got) = c.read(0, r as u64 * REGION + BS / 2, BS as usize);
        assert_eq!(ret, 0);
        let s = u64::from_le_bytes(got[..8].try_into().unwrap());
        let expect = if s == 0 { vec![0; BS as usize] } else { pattern(s) };
        assert!(got == expect, "{what} region {r}: torn write (starts with sequence {s})");
        assert!(lo[r] <= s && s <= hi[r], "{what} region {r}: holds write {s}, expected {}..={}", lo[r], hi[r]);
    }
}

#[test]
fn served_pool_gets_a_new_volume_and_a_consistent_snapshot_through_the_control_socket() {
    let dir = tempdir();
    let pool_path = dir.path().join("pool.img");
    {
        let io = IoCtx::new().unwrap();
        let f = RawFile::create(&pool_path, 64 * MIB, OpenOptions::default()).unwrap();
        let pool = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "a", VOL)).unwrap();
        io.block_on(pool.create_volume(&io, "b", VOL)).unwrap();
    }
    let pool = pool_path.to_str().unwrap();
    let api = dir.path().join("api.sock");
    let api_s = api.to_str().unwrap();
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let spec = |n: &str| format!("socket={},format=thin,pool={pool},volume={n},name={n}", sock(n).display());
    let daemon = DaemonProcess::start(&["--disk", &spec("a"), "--disk", &spec("b"), "--api-socket", api_s], &[&api]);
    let pid = daemon.pid();
    // A request that never completes would hang the test: fail it loudly instead.
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (finished, api) = (finished.clone(), api.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !finished.load(Ordering::SeqCst) {
                if t0.elapsed() > Duration::from_secs(120) {
                    let stats = |n: &str| {
                        vhost_user_blk::api::thin::call(&api, &serde_json::json!({"cmd": "stats", "name": n}))
                    };
                    eprintln!("server_thin: hung after 120 s; stats a {:?}, b {:?}", stats("a"), stats("b"));
                    // SAFETY: kill(2) on the daemon we spawned.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    // Without --api-socket the served pool is refused, and the message says what to do.
    let refused = blkctl(&["thin", "list", pool]);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("--api-socket") && msg.contains("pool.img"), "{msg}");

    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(1));
    let (pa, pb) = (Progress::new(), Progress::new());
    let wa = {
        let (s, st, sq, p) = (sock("a"), stop.clone(), seq.clone(), pa.clone());
        std::thread::spawn(move || writer(s, st, sq, p))
    };
    let wb = {
        let (s, st, sq, p) = (sock("b"), stop.clone(), seq.clone(), pb.clone());
        std::thread::spawn(move || writer(s, st, sq, p))
    };
    while seq.load(Ordering::SeqCst) < 300 {
        assert!(!wa.is_finished() && !wb.is_finished(), "a writer stopped early");
        std::thread::sleep(Duration::from_millis(2));
    }

    // While both volumes are written: a third volume, then a snapshot of the served volume a.
    ok(&blkctl(&["thin", "create", pool, "c", "--size", "4M", "--api-socket", api_s]));
    let before: Vec<u64> = pa.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    ok(&blkctl(&["thin", "snapshot", pool, "a", "a-snap", "--api-socket", api_s]));
    let after: Vec<u64> = pa.started.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    // A served volume cannot be removed; the error says why.
    let rm = blkctl(&["thin", "remove", pool, "a", "--api-socket", api_s]);
    assert!(!rm.status.success());
    let msg = String::from_utf8_lossy(&rm.stderr);
    assert!(msg.contains("'a'") && msg.contains("in use") && msg.contains("export a"), "{msg}");
    let live_check = blkctl(&["thin", "check", pool, "--api-socket", api_s]);
    assert!(ok(&live_check).contains("No errors"));
    // Let both writers get well past the snapshot (one may have been starved while the machine
    // is loaded) before stopping them.
    let enough = |p: &Progress| p.writes.load(Ordering::SeqCst) > 100;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(enough(&pa) && enough(&pb)) {
        assert!(Instant::now() < deadline, "writers made no progress in 60 s");
        assert!(!wa.is_finished() && !wb.is_finished(), "a writer stopped early");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let (na, nb) = (wa.join().unwrap(), wb.join().unwrap());
    assert!(na > 100 && nb > 100, "too few writes ({na}, {nb})");

    let list: serde_json::Value =
        serde_json::from_str(&ok(&blkctl(&["thin", "list", pool, "--json", "--api-socket", api_s]))).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "a-snap"]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&blkctl(&["thin", "pool-info", pool, "--json", "--api-socket", api_s]))).unwrap();
    assert_eq!(info["volumes"], 4);

    // Serve the snapshot and the new volume through the control socket and check them.
    for n in ["a-snap", "c"] {
        let add = serde_json::json!({"cmd": "add", "disk": spec(n)}).to_string();
        let v = vhost_user_blk::api::thin::call(&api, &serde_json::from_str(&add).unwrap());
        assert!(v.is_ok(), "add {n}: {v:?}");
    }
    let mut snap = Client::connect(&sock("a-snap"), 1, MIB as usize);
    check_regions(&mut snap, "snapshot", &before, &after);
    drop(snap);
    let mut c = Client::connect(&sock("c"), 1, MIB as usize);
    let (ret, zeros) = c.read(0, 0, MIB as usize);
    assert!(ret == 0 && zeros.iter().all(|&b| b == 0), "new volume is not zero");
    assert_eq!(c.write(0, 4 * MIB - 4096, &[9; 4096]), 0);
    assert!(c.write(0, 4 * MIB, &[9; 512]) < 0, "write past the new volume's end");
    drop(c);
    // The origins hold exactly their last writes.
    let last = |p: &Progress| p.done.iter().map(|d| d.load(Ordering::SeqCst)).collect::<Vec<_>>();
    let (la, lb) = (last(&pa), last(&pb));
    let mut a = Client::connect(&sock("a"), 1, MIB as usize);
    check_regions(&mut a, "volume a", &la, &la);
    drop(a);
    let mut b = Client::connect(&sock("b"), 1, MIB as usize);
    check_regions(&mut b, "volume b", &lb, &lb);
    drop(b);
    daemon.stop();
    finished.store(true, Ordering::SeqCst);

    // Offline now: the pool checks clean and blkctl opens it directly.
    assert!(ok(&blkctl(&["thin", "check", pool])).contains("No errors"));
    ok(&blkctl(&["thin", "remove", pool, "a-snap"]));
}

/// Start the daemon serving `specs`, with its control socket at `api`.
fn start_daemon(specs: &[String], api: &Path) -> DaemonProcess {
    let mut args: Vec<&str> = specs.iter().flat_map(|s| ["--disk", s.as_str()]).collect();
    args.extend(["--api-socket", api.to_str().unwrap()]);
    DaemonProcess::start(&args, &[api])
}

fn grow_pattern(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8 + 1; BS as usize]
}

#[test]
fn served_pool_out_of_space_grows_live_and_takes_the_waiting_and_the_refused_writes() {
    let dir = tempdir();
    let pool_path = dir.path().join("pool.img");
    // 8 MiB: a 1 MiB metadata area and 112 data blocks.
    let blocks = {
        let io = IoCtx::new().unwrap();
        let f = RawFile::create(&pool_path, 8 * MIB, OpenOptions::default()).unwrap();
        let pool = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "a", 64 * MIB)).unwrap();
        io.block_on(pool.create_volume(&io, "b", 64 * MIB)).unwrap();
        pool.info().data_blocks
    };
    assert_eq!(blocks, 112);
    let pool = pool_path.to_str().unwrap();
    let api = dir.path().join("api.sock");
    let api_s = api.to_str().unwrap();
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    // a fails at once when the pool is full; b waits up to a minute for space.
    let spec =
        |n: &str, more: &str| format!("socket={},format=thin,pool={pool},volume={n},name={n}{more}", sock(n).display());
    let daemon = start_daemon(&[spec("a", ""), spec("b", ",no-space-wait=60s")], &api);

    // Fill the pool from a: the first write that needs a block beyond it gets IOERR.
    let mut a = Client::connect(&sock("a"), 1, MIB as usize);
    let mut filled = 0;
    let refused_at = loop {
        assert!(filled <= blocks, "the pool took more than its {blocks} blocks");
        if a.write(0, filled * BS, &grow_pattern(filled)) != 0 {
            break filled;
        }
        filled += 1;
    };
    assert_eq!(refused_at, blocks);
    assert_eq!(a.flush(0), 0);

    // b's first write waits for space.
    let (connected, is_connected) = std::sync::mpsc::channel();
    let waiter = {
        let s = sock("b");
        std::thread::spawn(move || {
            let mut b = Client::connect(&s, 1, MIB as usize);
            connected.send(()).unwrap();
            let ret = b.write(0, 3 * BS, &[0xbb; BS as usize]);
            (ret, Instant::now(), b)
        })
    };
    is_connected.recv_timeout(Duration::from_secs(20)).expect("b connects");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "b's write did not wait for space");

    // pool-grow before the file grew: refused, naming the pool and why.
    let early = blkctl(&["thin", "pool-grow", pool, "--api-socket", api_s]);
    assert!(!early.status.success());
    let msg = String::from_utf8_lossy(&early.stderr);
    assert!(msg.contains("pool.img") && msg.contains("has not grown"), "{msg}");

    // The user extends the file, then grows the served pool.
    let st = Command::new("truncate").args(["-s", "16M", pool]).status().expect("run truncate");
    assert!(st.success());
    let grown_at = Instant::now();
    let out = ok(&blkctl(&["thin", "pool-grow", pool, "--api-socket", api_s]));
    assert!(out.contains("grown from 7 MiB to 15 MiB") && out.contains("240 data blocks"), "{out}");

    // The waiting write goes on, the refused one now succeeds, and both read back.
    let (ret, done_at, mut b) = waiter.join().unwrap();
    assert_eq!(ret, 0, "b's waiting write failed");
    assert!(done_at >= grown_at, "b's write finished before the pool grew");
    assert_eq!(a.write(0, refused_at * BS, &grow_pattern(refused_at)), 0);
    for i in refused_at + 1..refused_at + 20 {
        assert_eq!(a.write(0, i * BS, &grow_pattern(i)), 0, "write {i} after the grow");
    }
    assert_eq!(a.flush(0), 0);
    assert_eq!(b.flush(0), 0);
    for i in [0, 57, refused_at - 1, refused_at, refused_at + 19] {
        let (ret, got) = a.read(0, i * BS, BS as usize);
        assert!(ret == 0 && got == grow_pattern(i), "volume a block {i} reads back wrong");
    }
    let (ret, got) = b.read(0, 3 * BS, BS as usize);
    assert!(ret == 0 && got == vec![0xbb; BS as usize], "volume b's waited write reads back wrong");
    drop((a, b));

    let info: serde_json::Value =
        serde_json::from_str(&ok(&blkctl(&["thin", "pool-info", pool, "--json", "--api-socket", api_s]))).unwrap();
    assert_eq!(info["data-blocks"], 240);
    assert_eq!(info["used-blocks"], refused_at + 21);
    assert!(ok(&blkctl(&["thin", "check", pool, "--api-socket", api_s])).contains("No errors"));
    daemon.stop();

    // Offline: the grown pool checks clean and keeps its size.
    assert!(ok(&blkctl(&["thin", "check", pool])).contains("No errors"));
    let info: serde_json::Value = serde_json::from_str(&ok(&blkctl(&["thin", "pool-info", pool, "--json"]))).unwrap();
    assert_eq!(info["data-blocks"], 240);
}
