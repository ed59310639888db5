//! Benchmark (ignored by default; run on an idle machine, numbers go to docs/bench.md): the
//! guest-visible pause of a daemon restart under I/O. A QEMU guest (`reconnect-ms=100`) reads
//! 4 KiB blocks with O_DIRECT at QD1 without a break; the host replaces the daemon ten times
//! each way and measures, per round, from the moment the old daemon is signalled to the first
//! request the new daemon completes (polled on its control socket's `stats`):
//!
//! - crash: SIGKILL, then the new daemon is started at once;
//! - upgrade: SIGTERM (drain, flush, exit), then the new daemon is started.
//!
//! It prints the median, minimum and maximum of each:
//!
//!   cargo test --release -p strata-tests --test bench_restart -- --ignored --nocapture
//!
//! (STRATA_BENCH_ROUNDS changes the 10 rounds per way; STRATA_BENCH_REPORT=docs/bench/81-restart-pause.json
//! saves every round for docs/bench.md.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::bins::bin_path;
use strata_tests::guest::{qemu_escape, require_qemu, GuestArtifacts, Initramfs, QemuGuest};
use strata_tests::scratch::ScratchDir;
use strata_tests::timings::{TimingRow, Timings};

fn start_daemon(disk: &Path, socket: &Path, api: &Path) -> Child {
    let _ = std::fs::remove_file(api);
    let spec = format!("socket={},format=raw,path={},num-queues=1,name=d", socket.display(), disk.display());
    let bin = bin_path("vhost-user-blk").expect("build or find the vhost-user-blk binary");
    let child = Command::new(bin)
        .args(["--disk", &spec, "--api-socket"])
        .arg(api)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vhost-user-blk");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(api).is_err() {
        assert!(Instant::now() < deadline, "daemon did not listen within 20 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    child
}

/// Requests the daemon behind `api` has completed (0 while it cannot answer).
fn completed(api: &Path) -> u64 {
    let Ok(mut s) = UnixStream::connect(api) else { return 0 };
    if s.write_all(b"{\"cmd\":\"stats\",\"name\":\"d\"}\n").is_err() {
        return 0;
    }
    let mut line = String::new();
    if BufReader::new(s).read_line(&mut line).is_err() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    v["result"]["reads"].as_u64().unwrap_or(0) + v["result"]["writes"].as_u64().unwrap_or(0)
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let median = (ms[ms.len() / 2] + ms[(ms.len() - 1) / 2]) / 2.0;
    println!(
        "{name}: median {median:.1} ms, min {:.1} ms, max {:.1} ms over {} rounds",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

#[test]
#[ignore = "benchmark: run on an idle machine with --ignored --nocapture"]
fn bench_restart_pause_under_io() {
    if !require_qemu("bench_restart_pause_under_io") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts");
    let dir = ScratchDir::new("bench-restart").expect("scratch dir");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(64 << 20)).expect("create disk");
    let (socket, api) = (dir.join("vub.sock"), dir.join("api.sock"));
    let mut daemon = start_daemon(&disk, &socket, &api);
    let script = "wait_dev /dev/vda\necho io-started\nwhile true; do dd if=/dev/vda of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null; done\n";
    let initrd = dir.join("bench.cpio");
    Initramfs::builder().artifacts(&art).script(script).build(&initrd).expect("build initramfs");
    let mut guest = QemuGuest::new(&art.kernel, &initrd)
        .quiet(true)
        .args([
            "-chardev".to_string(),
            format!("socket,id=vubr,path={},reconnect-ms=100", qemu_escape(&socket)),
            "-device".to_string(),
            "vhost-user-blk-pci,chardev=vubr,num-queues=1".to_string(),
        ])
        .spawn()
        .expect("start qemu");
    guest.wait_for(Duration::from_secs(120), "the guest's I/O", |c| c.contains("io-started")).expect("guest I/O");

    let rounds = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10usize);
    let mut results = Vec::new();
    for (name, signal) in [("crash (SIGKILL)", libc::SIGKILL), ("upgrade (SIGTERM)", libc::SIGTERM)] {
        let mut ms = Vec::new();
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_millis(500));
            let t0 = Instant::now();
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(daemon.id() as i32, signal) };
            daemon.wait().expect("reap the old daemon");
            daemon = start_daemon(&disk, &socket, &api);
            let deadline = t0 + Duration::from_secs(30);
            while completed(&api) == 0 {
                assert!(Instant::now() < deadline, "the new daemon completed nothing within 30 s");
                std::thread::sleep(Duration::from_micros(500));
            }
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        results.push((name, ms));
    }
    if let Ok(path) = std::env::var("STRATA_BENCH_REPORT") {
        let rows = results
            .iter()
            .map(|(name, ms)| TimingRow { what: name.to_string(), backend: "strata".into(), samples: ms.clone() })
            .collect();
        Timings {
            section: "Daemon restart under a running guest: the pause",
            title: format!("a QEMU guest (TCG, `reconnect-ms=100`) reading 4 KiB blocks with O_DIRECT at QD1, {rounds} restarts each way"),
            command: format!("STRATA_BENCH_ROUNDS={rounds} STRATA_BENCH_REPORT=docs/bench/81-restart-pause.json cargo test --release -p strata-tests --test bench_restart -- --ignored --nocapture"),
            unit: "ms",
            reference: None,
            notes: "From the signal to the old daemon to the first request the new daemon completed (its control socket's stats, polled every 0.5 ms); the new daemon is started as soon as the old one is reaped. Crash: SIGKILL, the new daemon resubmits what the in-flight region holds. Upgrade: SIGTERM, the old daemon drains, flushes and exits first. The issue's goal: a median of at most 250 ms.".into(),
        }
        .save(&path, rows);
    }
    for (name, ms) in results {
        summary(name, ms);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(guest);
}
