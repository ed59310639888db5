//! The daemon's `--metrics` endpoint and `blkctl top`, end to end: the page counts what a
//! libblkio client did and passes `promtool check metrics`; a real Prometheus server scrapes it
//! and answers a query with the count; series survive an export's removal and return; bad HTTP
//! input (garbage, huge heads, slow heads) leaves the daemon serving; `blkctl top --once --json`
//! reports a load's IOPS within 10%.
//!
//! promtool and prometheus come from Debian's `prometheus` package (scripts/setup.sh). Without
//! them the tests that need them are SKIPPED, and FAIL under STRATA_REQUIRE_QEMU=1 (as
//! scripts/test.sh runs them).

mod server_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use blkio::ReqFlags;
use blockdev::{IoCtx, OpenOptions, RawFile};
use serde_json::{json, Value};
use server_common::{blkctl_bin, tempdir, Client, DaemonProcess};
use thin::{Pool, PoolConfig};

const MIB: u64 = 1 << 20;

/// A TCP port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP request; the whole answer (status line, headers, body).
fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// GET `/metrics`, waiting up to 20 s for the endpoint to listen; the body.
fn scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n") {
            Ok(a) => {
                assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
                return a.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "metrics endpoint on port {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The value of the sample `series` (name and labels exactly as printed) on `page`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// True when `tool` runs; else SKIPPED (or a failure under STRATA_REQUIRE_QEMU).
fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_QEMU").is_none(),
            "{test}: {tool} is required (STRATA_REQUIRE_QEMU; apt-get install --no-install-recommends prometheus)"
        );
        eprintln!("SKIPPED: {test}: {tool} not installed (scripts/setup.sh installs Debian's prometheus)");
    }
    ok
}

/// `n` 4 KiB writes then `n / 2` reads on queue 0.
fn io(c: &mut Client, n: u64) {
    for i in 0..n {
        assert_eq!(c.write(0, i * 4096, &[i as u8; 4096]), 0);
    }
    for i in 0..n / 2 {
        assert_eq!(c.read(0, i * 4096, 4096).0, 0);
    }
}

fn blkctl(args: &[&str]) {
    let out = Command::new(blkctl_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "blkctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn api(sock: &Path, req: Value) -> Value {
    vhost_user_blk::api::raid::call(sock, &req).unwrap_or_else(|e| panic!("{req}: {e}"))
}

#[test]
fn the_page_counts_requests_shows_every_layer_and_passes_promtool() {
    let dir = tempdir();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // A thin pool whose low-water mark (100%) is always crossed, a qcow2 image, a RAID 1.
    let pool = d.join("pool.img");
    {
        let io = IoCtx::new().unwrap();
        let f = RawFile::create(&pool, 32 * MIB, OpenOptions::default()).unwrap();
        let p = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(p.create_volume(&io, "v", 8 * MIB)).unwrap();
    }
    let img = d.join("a.qcow2");
    blkctl(&["qcow2", "create", &s(&img), "8M"]);
    let (m0, m1) = (d.join("m0.img"), d.join("m1.img"));
    for m in [&m0, &m1] {
        std::fs::File::create(m).unwrap().set_len(8 * MIB).unwrap();
    }
    blkctl(&["raid", "create", "--level", "1", &s(&m0), &s(&m1)]);
    let sock = |n: &str| d.join(format!("{n}.sock"));
    let port = free_port();
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            format!("socket={},format=mem,size=16M,name=m", s(&sock("m"))),
            "--disk".into(),
            format!("socket={},format=thin,pool={},volume=v,low-water=100,name=t", s(&sock("t")), s(&pool)),
            "--disk".into(),
            format!("socket={},format=qcow2,path={},name=q", s(&sock("q")), s(&img)),
            "--disk".into(),
            format!("socket={},format=raid,members={}:{},name=r", s(&sock("r")), s(&m0), s(&m1)),
            "--metrics".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[&sock("m"), &sock("t"), &sock("q"), &sock("r")],
    );
    let mut c = Client::connect(&sock("m"), 1, 1 << 20);
    io(&mut c, 40);
    let mut q = Client::connect(&sock("q"), 1, 1 << 20);
    io(&mut q, 4);
    // One block used: under the 100% mark.
    let mut t = Client::connect(&sock("t"), 1, 1 << 20);
    assert_eq!(t.write(0, 0, &[7; 4096]), 0);
    assert_eq!(t.flush(0), 0);
    let page = scrape(port);
    let m = |op: &str| format!("{{export=\"m\",op=\"{op}\"}}");
    assert_eq!(value(&page, &format!("strata_requests_total{}", m("write"))), Some(40.0), "{page}");
    assert_eq!(value(&page, &format!("strata_requests_total{}", m("read"))), Some(20.0));
    assert_eq!(value(&page, &format!("strata_bytes_total{}", m("write"))), Some(40.0 * 4096.0));
    assert_eq!(value(&page, &format!("strata_request_errors_total{}", m("write"))), Some(0.0));
    assert_eq!(value(&page, &format!("strata_request_duration_seconds_count{}", m("write"))), Some(40.0));
    assert_eq!(
        value(&page, "strata_request_duration_seconds_bucket{export=\"m\",op=\"write\",le=\"+Inf\"}"),
        Some(40.0)
    );
    assert!(value(&page, &format!("strata_request_duration_seconds_sum{}", m("write"))).unwrap() > 0.0);
    assert_eq!(value(&page, "strata_disk_size_bytes{export=\"m\"}"), Some(16.0 * MIB as f64));
    assert_eq!(value(&page, "strata_inflight_requests{export=\"m\"}"), Some(0.0));
    assert_eq!(value(&page, "strata_throttled_seconds_total{export=\"m\"}"), Some(0.0));
    for layer in [
        "strata_thin_data_bytes{pool=",
        "strata_thin_metadata_used_bytes{pool=",
        "strata_qcow2_allocated_bytes{image=",
        "strata_raid_degraded_members{array=",
        "strata_raid_rebuild_progress_ratio{array=",
        "strata_raid_read_errors_repaired_total{array=",
    ] {
        assert!(page.lines().any(|l| l.starts_with(layer)), "no {layer}... on the page:\n{page}");
    }
    let low = page.lines().find(|l| l.starts_with("strata_thin_low_water{")).unwrap();
    assert_eq!(low.rsplit(' ').next().unwrap().parse::<f64>().unwrap(), 1.0, "the 100% mark is crossed: {low}");
    let qcow = page.lines().find(|l| l.starts_with("strata_qcow2_allocated_bytes{")).unwrap();
    assert!(qcow.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 4.0 * 4096.0, "{qcow}");
    if have("promtool", "the_page_counts_requests_shows_every_layer_and_passes_promtool") {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{page}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop((c, q, t));
    daemon.stop();
}

#[test]
fn counters_survive_an_export_removed_and_added_again() {
    let dir = tempdir();
    let (api_sock, sock_a, sock_b) =
        (dir.path().join("api.sock"), dir.path().join("a.sock"), dir.path().join("b.sock"));
    let spec = |n: &str, p: &Path| format!("socket={},format=mem,size=8M,name={n}", p.display());
    let port = free_port();
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            spec("a", &sock_a),
            "--disk".into(),
            spec("b", &sock_b),
            "--api-socket".into(),
            api_sock.display().to_string(),
            "--metrics".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[&api_sock, &sock_a, &sock_b],
    );
    let writes = |page: &str, n: &str| value(page, &format!("strata_requests_total{{export=\"{n}\",op=\"write\"}}"));
    {
        let mut a = Client::connect(&sock_a, 1, 1 << 20);
        let mut b = Client::connect(&sock_b, 1, 1 << 20);
        io(&mut a, 10);
        io(&mut b, 6);
    }
    let page = scrape(port);
    assert_eq!((writes(&page, "a"), writes(&page, "b")), (Some(10.0), Some(6.0)));
    api(&api_sock, json!({"cmd": "remove", "name": "a"}));
    let page = scrape(port);
    assert_eq!((writes(&page, "a"), writes(&page, "b")), (Some(10.0), Some(6.0)), "kept after removal");
    assert_eq!(value(&page, "strata_inflight_requests{export=\"a\"}"), None, "no gauges of a removed export");
    api(&api_sock, json!({"cmd": "add", "disk": spec("a", &sock_a)}));
    {
        let mut a = Client::connect(&sock_a, 1, 1 << 20);
        io(&mut a, 3);
    }
    let page = scrape(port);
    assert_eq!((writes(&page, "a"), writes(&page, "b")), (Some(13.0), Some(6.0)), "continued, never back");
    assert_eq!(value(&page, "strata_inflight_requests{export=\"a\"}"), Some(0.0));
    daemon.stop();
}

#[test]
fn bad_http_input_leaves_the_daemon_serving() {
    let dir = tempdir();
    let sock = dir.path().join("m.sock");
    let port = free_port();
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            format!("socket={},format=mem,size=8M", sock.display()),
            "--metrics".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[&sock],
    );
    scrape(port);
    // Slow heads hold connections; they are cut off, and a scrape meanwhile is served.
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let answers = [
        http(port, &String::from_utf8_lossy(&garbage)).unwrap(),
        http(port, &format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 << 10))).unwrap_or_default(),
        http(port, "GET /other HTTP/1.1\r\n\r\n").unwrap(),
        http(port, "DELETE /metrics HTTP/1.1\r\n\r\n").unwrap(),
        http(port, "GET /metrics HTTP/9.9\r\n\r\n").unwrap(),
    ];
    assert!(answers[0].starts_with("HTTP/1.1 400"), "{}", answers[0]);
    // A huge head is refused (431), or the connection is reset while it is still being sent.
    assert!(answers[1].is_empty() || answers[1].starts_with("HTTP/1.1 431"), "{}", answers[1]);
    assert!(answers[2].starts_with("HTTP/1.1 404"), "{}", answers[2]);
    assert!(answers[3].starts_with("HTTP/1.1 405"), "{}", answers[3]);
    assert!(answers[4].starts_with("HTTP/1.1 400"), "{}", answers[4]);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    io(&mut c, 8);
    assert!(scrape(port).contains("op=\"write\"} 8"));
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408"), "a slow head is cut off: {out:?}");
    }
    drop(c);
    daemon.stop();
}

#[test]
fn metrics_on_a_unix_socket_answer_and_the_file_goes_at_exit() {
    let dir = tempdir();
    let (sock, msock) = (dir.path().join("m.sock"), dir.path().join("metrics.sock"));
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            format!("socket={},format=mem,size=8M,name=m", sock.display()),
            "--metrics".into(),
            format!("unix:{}", msock.display()),
        ],
        &[&sock, &msock],
    );
    let mut s = std::os::unix::net::UnixStream::connect(&msock).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.contains("strata_disk_size_bytes{export=\"m\"} 8388608"),
        "{out}"
    );
    daemon.stop();
    assert!(!msock.exists(), "the metrics socket file is removed at a clean exit");
}

#[test]
fn blkctl_top_once_json_reports_a_loads_iops_within_ten_percent() {
    let dir = tempdir();
    let (api_sock, sock) = (dir.path().join("api.sock"), dir.path().join("m.sock"));
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            format!("socket={},format=mem,size=16M,name=m", sock.display()),
            "--api-socket".into(),
            api_sock.display().to_string(),
        ],
        &[&api_sock, &sock],
    );
    // The load: QD4 reads, each completion's wall-clock time kept.
    let stop = Arc::new(AtomicBool::new(false));
    let times = Arc::new(Mutex::new(Vec::<SystemTime>::new()));
    let load = {
        let (stop, times, sock) = (stop.clone(), times.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(&sock, 1, 1 << 20);
            let submit = |c: &mut Client, i: usize| {
                let p = c.ptr(i * 4096);
                c.queues[0].read((i as u64 % 1024) * 4096, p, 4096, i, ReqFlags::empty());
            };
            for i in 0..4 {
                submit(&mut c, i);
            }
            while !stop.load(Ordering::SeqCst) {
                for (slot, ret) in c.reap(0, 1) {
                    assert_eq!(ret, 0);
                    times.lock().unwrap().push(SystemTime::now());
                    submit(&mut c, slot);
                }
            }
            c.reap(0, 4);
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(blkctl_bin())
        .args(["top", "--api-socket", api_sock.to_str().unwrap(), "--once", "--json", "--interval", "2s"])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert!(out.status.success(), "blkctl top: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "--once prints one line: {text}");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    let row = v["exports"].as_array().unwrap().iter().find(|e| e["name"] == "m").expect("a row for m").clone();
    let reported = row["read_iops"].as_f64().unwrap();
    let (end, interval) = (v["time"].as_f64().unwrap(), v["interval_s"].as_f64().unwrap());
    let epoch = |t: &SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    let done = times.lock().unwrap().iter().filter(|t| (end - interval..=end).contains(&epoch(t))).count();
    let measured = done as f64 / interval;
    assert!(measured > 50.0, "the load ran: {measured} IOPS");
    assert!(
        (reported - measured).abs() <= 0.1 * measured,
        "blkctl top reported {reported:.0} read IOPS, the load did {measured:.0} in the same window"
    );
    assert_eq!(row["write_iops"], 0.0);
    daemon.stop();
}

#[test]
fn prometheus_scrapes_the_daemon_and_its_query_api_returns_the_request_count() {
    let test = "prometheus_scrapes_the_daemon_and_its_query_api_returns_the_request_count";
    if !have("prometheus", test) {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("m.sock");
    let port = free_port();
    let daemon = DaemonProcess::start(
        &[
            "--disk".to_string(),
            format!("socket={},format=mem,size=8M,name=m", sock.display()),
            "--metrics".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[&sock],
    );
    let mut c = Client::connect(&sock, 1, 1 << 20);
    let n = 137;
    for i in 0..n {
        assert_eq!(c.write(0, i * 4096, &[1; 4096]), 0);
    }
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: strata\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = "/api/v1/query?query=strata_requests_total%7Bexport%3D%22m%22%2Cop%3D%22write%22%7D";
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let got = loop {
        if let Ok(a) = http(web, &format!("GET {query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")) {
            let body = a.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            // A chunked body is one chunk here; take the JSON object out of it.
            let json_part = body.find('{').and_then(|s| body.rfind('}').map(|e| &body[s..=e])).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(json_part) {
                if let Some(val) = v["data"]["result"][0]["value"][1].as_str() {
                    break val.parse::<f64>().unwrap();
                }
            }
            last = a;
        }
        if Instant::now() > deadline {
            let _ = prom.kill();
            let _ = prom.wait();
            panic!("Prometheus never returned strata_requests_total for export m; last answer:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(got, n as f64);
    drop(c);
    daemon.stop();
}
