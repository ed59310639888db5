//! I/O limits measured from outside: a libblkio client at queue depth 32 against `format=mem`
//! exports (the device is never the bottleneck), the daemon in-process so the limits are changed
//! through its control requests. Each rate is measured over a window after a warm-up (the bucket
//! first lets a tenth of a second's worth through at once), long enough that one request either
//! way is well under the 3% the issue allows: 2 s windows (the issue's 10 s would make this file
//! take minutes; the error of a window is one request, 0.5% at 100 IOPS over 2 s). A point the
//! machine cannot reach unthrottled (a debug build on a busy machine) is skipped, loudly.
//!
//! For docs/bench.md: `STRATA_QOS_WINDOW=10 STRATA_QOS_ROUNDS=3
//! STRATA_QOS_REPORT=$PWD/docs/bench/80-qos-accuracy.json cargo test --release -p vhost-user-blk
//! --test server_qos -- iops_and_bandwidth` measures over 10 s windows, three rounds, and saves the
//! accuracy table as a timings run (`blkctl bench-report` renders it).

mod server_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use serde_json::{json, Value};
use server_common::timings::{TimingRow, Timings};
use server_common::{init_logs, tempdir, Client};
use vhost_user_blk::api::{handle, Request};
use vhost_user_blk::server::{Daemon, DiskSpec};

const DISK: u64 = 64 << 20;
const QD: usize = 32;
const WARM: Duration = Duration::from_millis(400);

/// Every test here measures rates: the comparison of two rates takes the machine to itself
/// (`write`), the rest share it (`read`).
fn machine() -> &'static std::sync::RwLock<()> {
    static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &MACHINE
}

/// The measuring window: 2 s, or `STRATA_QOS_WINDOW` seconds.
fn window() -> Duration {
    let secs = std::env::var("STRATA_QOS_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// A daemon serving `mem` exports named by `specs` (extra keys after `name=N,`).
fn daemon(dir: &Path, specs: &[&str]) -> Arc<Daemon> {
    init_logs();
    let d = Daemon::new();
    for extra in specs {
        let name = extra.split(',').next().unwrap().trim_start_matches("name=");
        let sock = dir.join(format!("{name}.sock"));
        let spec = format!("socket={},format=mem,size={DISK},{extra}", sock.display());
        d.add(&DiskSpec::parse(&spec).unwrap()).unwrap();
    }
    d
}

fn api(d: &Daemon, req: Value) -> Value {
    let r = handle(d, serde_json::from_value::<Request>(req.clone()).unwrap());
    assert_eq!(r["ok"], true, "{req} -> {r}");
    r["result"].clone()
}

fn set_limits(d: &Daemon, name: &str, limits: Value) {
    api(d, json!({"cmd": "set-limits", "name": name, "limits": limits}));
}

/// Remove every limit of `name` (so what is still in flight finishes at once).
fn clear_limits(d: &Daemon, name: &str) {
    let now = api(d, json!({"cmd": "limits", "name": name}));
    let zeros: serde_json::Map<String, Value> =
        now["limits"].as_object().unwrap().keys().map(|k| (k.clone(), json!(0))).collect();
    set_limits(d, name, Value::Object(zeros));
}

fn connect(dir: &Path, name: &str, bs: usize) -> Client {
    Client::connect(&dir.join(format!("{name}.sock")), 1, QD * bs)
}

/// Keep `QD` requests of `bs` bytes (reads, or writes) in flight for `dur`; the times their
/// completions were seen. Leaves `QD` in flight: [`drain`] takes them.
fn stream(c: &mut Client, bs: usize, write: bool, dur: Duration) -> Vec<Instant> {
    let blocks = DISK / bs as u64;
    let mut next = 0u64;
    let mut submit = |c: &mut Client, slot: usize| {
        let off = (next % blocks) * bs as u64;
        next += 1;
        let p = c.ptr(slot * bs);
        if write {
            c.queues[0].write(off, p, bs, slot, ReqFlags::empty());
        } else {
            c.queues[0].read(off, p, bs, slot, ReqFlags::empty());
        }
    };
    for slot in 0..QD {
        submit(c, slot);
    }
    let end = Instant::now() + dur;
    let mut times = Vec::new();
    while Instant::now() < end {
        let done = c.reap(0, 1);
        let now = Instant::now();
        for (slot, ret) in done {
            assert_eq!(ret, 0, "request failed");
            times.push(now);
            submit(c, slot);
        }
    }
    // What the last reap's completions resubmitted is only queued: hand it over, or the device
    // sees fewer than `QD` and nothing ever kicks it for the rest.
    c.submit(0);
    times
}

/// Take the `QD` requests a [`stream`] left in flight.
fn drain(c: &mut Client) {
    c.reap(0, QD);
}

/// Completions per second in `[from, from + len)`.
fn rate(times: &[Instant], from: Instant, len: Duration) -> f64 {
    times.iter().filter(|&&t| t >= from && t < from + len).count() as f64 / len.as_secs_f64()
}

/// The steady rate of a stream limited by the limits set: measured after [`WARM`], over [`WINDOW`].
fn limited_rate(c: &mut Client, bs: usize, write: bool) -> f64 {
    let start = Instant::now();
    let times = stream(c, bs, write, WARM + window());
    rate(&times, start + WARM, window())
}

/// A measurement that fell short of what a limit allows: retried by [`retrying`].
struct Short(String);

/// Check `got` is within `tolerance` of `want`. Over it panics at once (a limit must never let
/// more through); under it is [`Short`].
fn within(what: &str, got: f64, want: f64, tolerance: f64) -> Result<(), Short> {
    let err = (got - want).abs() / want;
    eprintln!("{what}: {got:.1} against {want:.1} ({:.2}%)", err * 100.0);
    assert!(got <= want * (1.0 + tolerance), "{what}: {got:.1} is over {want:.1} by more than {}%", tolerance * 100.0);
    if err > tolerance {
        return Err(Short(format!("{what}: {got:.1} is short of {want:.1} by more than {}%", tolerance * 100.0)));
    }
    Ok(())
}

/// Run `attempt` up to three times while it comes out [`Short`]: a busy machine that stalls the
/// client or the daemon for longer than a bucket's tenth of a second of slack loses that budget,
/// which says nothing about the limit. Too much is never retried.
fn retrying(attempt: impl FnMut() -> Result<(), Short>) {
    retrying_up_to(3, attempt)
}

/// [`retrying`] up to `attempts` times.
fn retrying_up_to(attempts: usize, mut attempt: impl FnMut() -> Result<(), Short>) {
    let mut last = String::new();
    for n in 1..=attempts {
        match attempt() {
            Ok(()) => return,
            Err(Short(msg)) => {
                eprintln!("attempt {n}: {msg}");
                last = msg;
            }
        }
    }
    panic!("{attempts} attempts fell short; the last: {last}");
}

#[test]
fn iops_and_bandwidth_limits_hold_within_3_percent() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let d = daemon(dir.path(), &["name=a"]);
    // (key, limit, request size, writes?): IOPS at 4 KiB; bandwidth at sizes that make it a
    // few hundred to a few thousand requests a second.
    let points: [(&str, u64, usize, bool); 6] = [
        ("iops-total", 100, 4096, false),
        ("iops-read", 5000, 4096, false),
        ("iops-write", 50_000, 4096, true),
        ("bps-total", 1_000_000, 4096, true),
        ("bps-read", 100_000_000, 65536, false),
        ("bps-write", 500_000_000, 131072, true),
    ];
    let mut c = connect(dir.path(), "a", 131072);
    let rounds: usize = std::env::var("STRATA_QOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut rows = Vec::new();
    for (key, limit, bs, write) in points {
        // What this machine does unthrottled, to skip a point it cannot reach.
        let start = Instant::now();
        let times = stream(&mut c, bs, write, Duration::from_millis(600));
        drain(&mut c);
        let ops = rate(&times, start + Duration::from_millis(100), Duration::from_millis(500));
        let want_ops = if key.starts_with("bps") { limit as f64 / bs as f64 } else { limit as f64 };
        if ops < want_ops * 1.2 {
            eprintln!("SKIPPED {key}={limit}: this machine does {ops:.0} requests/s of {bs} bytes unthrottled, too few to measure a limit of {want_ops:.0}/s (a release build on an idle machine reaches it)");
            continue;
        }
        let mut samples = Vec::new();
        for _ in 0..rounds {
            retrying(|| {
                set_limits(&d, "a", json!({ key: limit }));
                let got = limited_rate(&mut c, bs, write);
                clear_limits(&d, "a");
                drain(&mut c);
                let got = if key.starts_with("bps") { got * bs as f64 } else { got };
                within(&format!("{key}={limit}"), got, limit as f64, 0.03)?;
                samples.push(100.0 * (got - limit as f64) / limit as f64);
                Ok(())
            });
        }
        let what = format!("{key}={limit}, {} {} KiB at QD{QD}", if write { "writes" } else { "reads" }, bs / 1024);
        rows.push(TimingRow { what, backend: "strata".into(), samples });
    }
    if let Ok(path) = std::env::var("STRATA_QOS_REPORT") {
        save_report(&path, rows, rounds);
    }
    let snap = d.stats("a").unwrap();
    assert!(snap.throttled_seconds > 1.0, "time spent throttled is counted: {}", snap.throttled_seconds);
    d.shutdown();
}

#[test]
fn a_burst_after_idle_is_served_at_once_then_the_rate_falls_back() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    retrying(|| {
        let dir = tempdir();
        // Bursts of up to 1000 requests; 200 a second after.
        let d = daemon(dir.path(), &["name=b,iops-total=200,iops-total-max=1000"]);
        let mut c = connect(dir.path(), "b", 4096);
        let result = burst_then_rate(&d, &mut c);
        clear_limits(&d, "b");
        drain(&mut c);
        d.shutdown();
        result
    });
}

fn burst_then_rate(d: &Daemon, c: &mut Client) -> Result<(), Short> {
    // The buckets are empty (idle since the export started): the burst goes at once.
    let start = Instant::now();
    let times = stream(c, 4096, false, Duration::from_millis(2500));
    let burst = times.iter().filter(|&&t| t < start + Duration::from_millis(500)).count();
    assert!(burst <= 1000 + 100 + QD, "{burst} requests in the first 0.5 s: more than the burst and the rate");
    if burst < 1000 {
        return Err(Short(format!("only {burst} requests in the first 0.5 s after idle (burst 1000)")));
    }
    let after = rate(&times, start + Duration::from_millis(1000), Duration::from_millis(1500));
    within("rate after the burst", after, 200.0, 0.03)?;
    clear_limits(d, "b");
    drain(c);
    // After idle (set-limits starts empty buckets too): a burst again.
    set_limits(d, "b", json!({"iops-total": 200, "iops-total-max": 1000}));
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let times = stream(c, 4096, false, Duration::from_millis(1500));
    let burst = times.iter().filter(|&&t| t < start + Duration::from_millis(500)).count();
    if burst < 1000 {
        return Err(Short(format!("only {burst} requests in the first 0.5 s after idle the second time")));
    }
    let after = rate(&times, start + Duration::from_millis(800), Duration::from_millis(700));
    within("rate after the second burst", after, 200.0, 0.03)
}

#[test]
fn set_limits_takes_effect_within_a_second_on_a_running_stream() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    retrying(|| {
        let dir = tempdir();
        let d = daemon(dir.path(), &["name=s"]);
        let mut c = connect(dir.path(), "s", 4096);
        let result = live_change(&d, &mut c);
        clear_limits(&d, "s");
        drain(&mut c);
        d.shutdown();
        result
    });
}

fn live_change(d: &Arc<Daemon>, c: &mut Client) -> Result<(), Short> {
    let changer = {
        let d = d.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let at_500 = Instant::now();
            set_limits(&d, "s", json!({"iops-total": 500}));
            std::thread::sleep(Duration::from_millis(2000));
            let at_2000 = Instant::now();
            set_limits(&d, "s", json!({"iops-total": 2000}));
            (at_500, at_2000)
        })
    };
    let start = Instant::now();
    let times = stream(c, 4096, false, Duration::from_millis(4800));
    let (at_500, at_2000) = changer.join().unwrap();
    let before = rate(&times, start + Duration::from_millis(100), Duration::from_millis(350));
    if before < 600.0 {
        return Err(Short(format!("unthrottled the stream did {before:.0}/s, too few to see a limit of 500")));
    }
    let limited = rate(&times, at_500 + Duration::from_secs(1), Duration::from_secs(1));
    within("1 s after set-limits iops-total=500", limited, 500.0, 0.03)?;
    // Raised: the higher rate within a second too (when the machine reaches it).
    let after = rate(&times, at_2000 + Duration::from_secs(1), Duration::from_secs(1));
    if before > 2400.0 {
        within("1 s after set-limits iops-total=2000", after, 2000.0, 0.03)
    } else if after < 600.0 {
        Err(Short(format!("raising the limit did not take effect: {after:.0}/s")))
    } else {
        Ok(())
    }
}

#[test]
fn two_exports_in_a_group_share_its_limit_fairly() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let d = daemon(dir.path(), &["name=g1,throttle-group=grp,iops-total=1000", "name=g2,throttle-group=grp"]);
    retrying(|| {
        let run = |name: &'static str| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut c = connect(&path, name, 4096);
                let start = Instant::now();
                let times = stream(&mut c, 4096, name == "g2", WARM + window());
                (c, rate(&times, start + WARM, window()))
            })
        };
        let (a, b) = (run("g1"), run("g2"));
        let ((mut ca, ra), (mut cb, rb)) = (a.join().unwrap(), b.join().unwrap());
        clear_limits(&d, "g2");
        drain(&mut ca);
        drain(&mut cb);
        set_limits(&d, "g1", json!({"iops-total": 1000}));
        eprintln!("shares: g1 {ra:.1}/s, g2 {rb:.1}/s");
        // Both streams ran the whole window at once (threads start within the warm-up).
        within("the group together", ra + rb, 1000.0, 0.03)?;
        assert!((ra - rb).abs() / ra.max(rb) <= 0.10, "shares differ by more than 10%: {ra:.1} and {rb:.1}");
        Ok(())
    });
    d.shutdown();
}

#[test]
fn an_unthrottled_export_keeps_its_iops_beside_a_throttled_one() {
    // A comparison of rates: nothing else in this file runs meanwhile.
    let _alone_on_the_machine = machine().write().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    // At 50/s the throttled export always has most of its 32 requests waiting: what is compared
    // is the cost of waiting requests, beside the small one of the few it serves.
    let d = daemon(dir.path(), &["name=free", "name=slow,iops-total=50"]);
    let mut free = connect(dir.path(), "free", 4096);
    let free_worker = wait_for_queue_workers(1)[0];
    // The throttled stream runs while `busy` is set, and drains and idles while it is not.
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (busy, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let slow = {
        let (path, busy, stop) = (dir.path().to_path_buf(), busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = connect(&path, "slow", 4096);
            let mut n = 0;
            while !stop.load(Relaxed) {
                if busy.load(Relaxed) {
                    n += stream(&mut c, 4096, true, Duration::from_millis(100)).len();
                    drain(&mut c);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            n
        })
    };
    let slow_worker = *wait_for_queue_workers(2).iter().find(|&&t| t != free_worker).unwrap();
    let measure = |c: &mut Client| {
        let start = Instant::now();
        let times = stream(c, 4096, false, Duration::from_millis(400));
        drain(c);
        rate(&times, start + Duration::from_millis(100), Duration::from_millis(300))
    };
    // One attempt's ratio spreads by about 3.5% around 97-100% in a debug build here (the
    // throttled stream's own requests cost its worker, its client and the timer thread about 1%
    // of a CPU, and every wake-up of theirs preempts the saturated pair): five attempts, as a
    // real interference (a worker that polls its budget, a lock the two share) fails them all.
    retrying_up_to(5, || {
        // Pairs of windows, alone and beside in turn (the order flipped every pair, so a drift of
        // the machine's speed counts against both), compared by their sums: one window's rate
        // swings by a fifth on a 2-CPU machine, the sum of twenty by a few percent.
        const PAIRS: usize = 20;
        let (mut alone, mut beside) = (0.0, 0.0);
        let (slow_cpu, wall) = (cpu_ticks(slow_worker), Instant::now());
        busy.store(true, Relaxed);
        for pair in 0..PAIRS {
            for with_slow in [pair % 2 == 1, pair % 2 == 0] {
                busy.store(with_slow, Relaxed);
                std::thread::sleep(Duration::from_millis(if with_slow { 150 } else { 80 }));
                *(if with_slow { &mut beside } else { &mut alone }) += measure(&mut free);
            }
        }
        busy.store(false, Relaxed);
        // Waiting requests cost their worker nothing: a worker that polled its budget would show
        // a CPU's worth here.
        let busy_share = (cpu_ticks(slow_worker) - slow_cpu) as f64 / ticks_per_second() / wall.elapsed().as_secs_f64();
        eprintln!(
            "unthrottled export: {:.0}/s alone, {:.0}/s beside a throttled one ({:.1}%); \
             the throttled export's worker busy {:.1}% of the time",
            alone / PAIRS as f64,
            beside / PAIRS as f64,
            beside / alone * 100.0,
            busy_share * 100.0
        );
        assert!(busy_share < 0.10, "the throttled export's worker was busy {:.0}% of the time", busy_share * 100.0);
        if beside < 0.95 * alone {
            return Err(Short(format!(
                "beside a throttled export the unthrottled one kept {:.1}% of its rate",
                beside / alone * 100.0
            )));
        }
        Ok(())
    });
    stop.store(true, Relaxed);
    assert!(slow.join().unwrap() > 100, "the throttled export served");
    d.shutdown();
}

/// The thread ids of this process' queue workers, once there are `n` (within 5 s).
fn wait_for_queue_workers(n: usize) -> Vec<libc::pid_t> {
    let start = Instant::now();
    loop {
        let workers: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?;
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                comm.starts_with("vq-worker").then(|| t.file_name().to_str()?.parse().ok()).flatten()
            })
            .collect();
        if workers.len() >= n {
            assert_eq!(workers.len(), n, "more queue workers than exports connected: {workers:?}");
            return workers;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{n} queue workers expected, found {workers:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// CPU time (user and system, in clock ticks) of this process' thread `tid`.
fn cpu_ticks(tid: libc::pid_t) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // The fields after the command (in parentheses, which may hold spaces): utime is the 14th
    // field of the line, stime the 15th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

#[test]
fn removing_a_throttled_export_does_not_wait_for_its_budget() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let d = daemon(dir.path(), &["name=r,iops-total=1"]);
    let mut c = connect(dir.path(), "r", 4096);
    // 32 requests at one a second: the last would start in half a minute.
    let answered = stream(&mut c, 4096, false, Duration::from_millis(300)).len() as u64;
    let export = d.export("r").unwrap();
    // Every request taken from the ring (and waiting), so the drain has them all to answer.
    let start = Instant::now();
    while export.stats.in_flight() < QD as u64 {
        assert!(start.elapsed() < Duration::from_secs(5), "the export never took all {QD} requests");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let remover = {
        let d = d.clone();
        std::thread::spawn(move || api(&d, json!({"cmd": "remove", "name": "r"})))
    };
    while !remover.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(5), "remove waits for the throttled requests' budget");
        std::thread::sleep(Duration::from_millis(20));
    }
    remover.join().unwrap();
    // Drained before the export went: the waiting requests were carried out, none dropped.
    let snap = export.stats.snapshot();
    assert_eq!((snap.reads, snap.in_flight), (answered + QD as u64, 0), "{snap:?}");
    d.shutdown();
    // The frontend is left with a closed connection (not reaped: libblkio may wait on it).
    std::mem::forget(c);
}

/// The daemon binary and `blkctl limits` as a user runs them.
#[test]
fn blkctl_limits_shows_and_changes_a_served_exports_limits() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let (sock, api_sock) = (dir.path().join("v.sock"), dir.path().join("api.sock"));
    let disk = format!("socket={},name=v,format=mem,size=1M,iops-total=5000", sock.display());
    let args = ["--disk", &disk, "--api-socket", api_sock.to_str().unwrap()];
    let _daemon = server_common::DaemonProcess::start(&args, &[&sock, &api_sock]);
    let blkctl = |args: &[&str]| {
        let out = std::process::Command::new(server_common::blkctl_bin())
            .arg("limits")
            .arg("--api-socket")
            .arg(&api_sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = blkctl(&["v"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("iops-total") && out.contains("5000"), "{out}");
    let (code, out, err) = blkctl(&["v", "iops-total=0", "bps-write=100M", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["limits"], json!({"bps-write": 104857600}), "{out}");
    // Bad input: a clear error, exit 1, nothing changed.
    for (args, needle) in [
        (&["v", "iops-total=-5"][..], "iops-total"),
        (&["v", "iops-totl=5"][..], "not a limit key"),
        (&["v", "bps-write-max=1K"][..], "lower than"),
        (&["nope", "iops-total=5"][..], "nope: no such export"),
        (&["nope"][..], "nope: no such export"),
    ] {
        let (code, _, err) = blkctl(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (_, out, _) = blkctl(&["v", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["limits"], json!({"bps-write": 104857600}), "unchanged: {out}");
}

#[test]
fn bad_limits_on_the_command_line_and_in_a_config_file_exit_1_naming_them() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(server_common::daemon_bin()).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let sock = dir.path().join("x.sock");
    let disk = |extra: &str| format!("socket={},format=mem,size=1M,{extra}", sock.display());
    for (extra, needle) in [
        ("iops-total=-1", "iops-total"),
        ("iops-total=0", "iops-total=0"),
        ("bps-read=18446744073709551616", "bps-read"),
        ("iops-total=100,iops-total-max=10", "lower than"),
        ("iops-totl=100", "iops-totl"),
    ] {
        let (code, err) = run(&["--disk", &disk(extra)]);
        assert_eq!(code, Some(1), "{extra}: {err}");
        assert!(err.contains(needle), "{extra}: {err}");
        assert!(!sock.exists(), "{extra}: nothing is served");
    }
    // A group whose members disagree.
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[export]]\nsocket = \"{0}/a.sock\"\nformat = \"mem\"\nsize = \"1M\"\nthrottle-group = \"g\"\niops-total = 100\n\
             [[export]]\nsocket = \"{0}/b.sock\"\nformat = \"mem\"\nsize = \"1M\"\nthrottle-group = \"g\"\niops-total = 200\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("throttle-group=g") && err.contains("iops-total=100"), "{err}");
}

/// Save the accuracy rows as a timings run for docs/bench.md (`"kind": "timings"`).
fn save_report(path: &str, rows: Vec<TimingRow>, rounds: usize) {
    let w = window().as_secs_f64();
    Timings {
        section: "I/O limits: the rate a limit lets through",
        title: format!("a libblkio client at QD{QD} against a `format=mem` export, {w} s windows, {rounds} rounds"),
        command: format!("STRATA_QOS_WINDOW={w} STRATA_QOS_ROUNDS={rounds} STRATA_QOS_REPORT=docs/bench/80-qos-accuracy.json cargo test --release -p vhost-user-blk --test server_qos -- iops_and_bandwidth"),
        unit: "% off the limit",
        reference: None,
        notes: format!("Each sample is the rate measured over one {w} s window after {} ms of warm-up (the bucket first lets a tenth of a second's worth through at once), as how far it is from the limit in percent (negative: under it); the issue asks for at most 3 either way.", WARM.as_millis()),
    }
    .save(path, rows);
}

#[test]
fn a_frontend_that_leaves_with_requests_waiting_does_not_hold_up_the_next() {
    let _machine = machine().read().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let d = daemon(dir.path(), &["name=l,iops-total=1"]);
    let export = d.export("l").unwrap();
    let mut c = connect(dir.path(), "l", 4096);
    drop(stream(&mut c, 4096, false, Duration::from_millis(300)));
    let start = Instant::now();
    while export.stats.in_flight() < QD as u64 {
        assert!(start.elapsed() < Duration::from_secs(5), "the export never took all {QD} requests");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Gone with 32 requests waiting for a budget of one a second: the daemon drains them before
    // it takes the next frontend, and that drain must not wait for the budget.
    drop(c);
    let start = Instant::now();
    let next = {
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || connect(&path, "l", 4096))
    };
    while !next.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(5), "the next frontend waits for the last one's budget");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = next.join().unwrap();
    assert_eq!(export.stats.in_flight(), 0);
    clear_limits(&d, "l");
    assert_eq!(c.read(0, 0, 4096).0, 0);
    d.shutdown();
}
