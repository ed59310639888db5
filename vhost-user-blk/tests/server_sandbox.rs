//! The daemon's sandbox (docs/sandbox.md) seen from outside: every thread of a daemon that
//! serves I/O, commits a thin pool, rebuilds a RAID array and answers its control socket runs
//! under a seccomp filter with no_new_privs and no capability; a forbidden system call kills
//! the daemon with SIGSYS naming the thread and the call (`--seccomp on`) or is only logged
//! (`--seccomp log`); `--user nobody` serves an image only root could open.

mod server_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{IoCtx, OpenOptions, RawFile};
use server_common::{blkctl_bin, daemon_bin, tempdir, Client, DaemonProcess};
use thin::{Pool, PoolConfig};

const MIB: u64 = 1 << 20;

fn api(sock: &Path, req: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true, "{req} -> {v}");
    v["result"].clone()
}

/// (thread name, the status lines we check) of every thread of `pid`.
fn threads(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) =
            (std::fs::read_to_string(t.join("comm")), std::fs::read_to_string(t.join("status")))
        else {
            continue; // the thread ended meanwhile
        };
        out.push((comm.trim().to_string(), status));
    }
    out
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(key)).map_or("", str::trim)
}

/// Write a pattern through the client and read it back.
fn verified_io(c: &mut Client, seed: u8) {
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
    assert_eq!(c.write(0, MIB, &data), 0);
    assert_eq!(c.flush(0), 0);
    let (ret, back) = c.read(0, MIB, data.len());
    assert_eq!(ret, 0);
    assert!(back == data, "read back differs");
}

#[test]
fn every_thread_of_a_busy_daemon_has_a_filter_no_new_privs_and_no_capability() {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    // A thin pool (periodic commit thread) ...
    let pool = p("pool.img");
    {
        let io = IoCtx::new().unwrap();
        let f = RawFile::create(&pool, 32 * MIB, OpenOptions::default()).unwrap();
        let pool = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "v", 16 * MIB)).unwrap();
    }
    // ... a degraded RAID 1 to rebuild (a rebuild thread) ...
    let file = |n: &str| {
        std::fs::File::create(p(n)).unwrap().set_len(8 * MIB).unwrap();
        p(n).display().to_string()
    };
    let (a, b) = (file("a.img"), file("b.img"));
    let out = Command::new(blkctl_bin()).args(["raid", "create", "--level", "1", &a, &b]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&b).unwrap();
    let members = format!("{a}:{b}");
    // ... and a RAM disk, all served with the control socket.
    let (thin_s, raid_s, mem_s, api_s) = (p("thin.sock"), p("raid.sock"), p("mem.sock"), p("api.sock"));
    let specs = [
        format!(
            "socket={},format=thin,pool={},volume=v,commit-interval-ms=50,sqpoll=on",
            thin_s.display(),
            pool.display()
        ),
        format!("socket={},format=raid,members={members}", raid_s.display()),
        format!("socket={},format=mem,size=16M,num-queues=2", mem_s.display()),
    ];
    let d = DaemonProcess::start(
        &["--disk", &specs[0], "--disk", &specs[1], "--disk", &specs[2], "--api-socket", api_s.to_str().unwrap()],
        &[&thin_s, &raid_s, &mem_s, &api_s],
    );
    let mut clients: Vec<Client> =
        [&mem_s, &thin_s, &raid_s].iter().map(|s| Client::connect(s, 1, 2 * MIB as usize)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        verified_io(c, i as u8);
    }
    // Dirty the pool without a flush, so the periodic commit has work.
    assert_eq!(clients[1].write(0, 4 * MIB, &[0x5a; 4096]), 0);
    let new = file("c.img");
    let r = api(
        &api_s,
        serde_json::json!({"cmd": "raid-replace", "members": members, "old": b, "new": new, "rate_limit": 2 * MIB}),
    );
    assert_eq!(r["role"], 1, "{r}");
    assert!(api(&api_s, serde_json::json!({"cmd": "list"})).is_array());

    let seen = threads(d.pid());
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    // iou-sqp: the thin export's kernel submission thread (sqpoll=on), from a restricted ring.
    for want in
        ["vhost-user-blk", "strata-timer", "api", "thin-commit", "raid-rebuild", "vq-worker-", "export ", "iou-sqp"]
    {
        assert!(names.iter().any(|n| n.starts_with(want)), "no {want:?} thread among {names:?}");
    }
    for (name, status) in &seen {
        assert_eq!(field(status, "Seccomp:"), "2", "thread {name} has no seccomp filter");
        assert_eq!(field(status, "NoNewPrivs:"), "1", "thread {name} may gain privileges");
        assert_eq!(field(status, "CapEff:"), "0000000000000000", "thread {name} has capabilities");
        assert_eq!(field(status, "CapBnd:"), "0000000000000000", "thread {name} has a bounding set");
    }
    // Everything still works after the rebuild, and the daemon stops cleanly under its filters.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api(&api_s, serde_json::json!({"cmd": "raid-status", "members": format!("{a}:{new}")}))["degraded"] != false {
        assert!(Instant::now() < deadline, "rebuild never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        verified_io(c, 100 + i as u8);
    }
    drop(clients);
    d.stop();
}

/// Start the daemon serving a RAM disk at `dir/t.sock` with the test trigger armed, stderr
/// captured.
fn start_with_trigger(dir: &Path, mode: &str) -> (Child, std::path::PathBuf) {
    let sock = dir.join("t.sock");
    let child = Command::new(daemon_bin())
        .args(["--seccomp", mode, "--disk", &format!("socket={},format=mem,size=16M", sock.display())])
        .env("STRATA_TEST_FORBIDDEN_SYSCALL", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock)
}

#[test]
fn a_forbidden_call_under_on_kills_with_sigsys_and_names_thread_and_call() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the test trigger is honoured by debug builds only");
        return;
    }
    let dir = tempdir();
    let (mut child, sock) = start_with_trigger(dir.path(), "on");
    // The first request starts the queue worker, which makes the forbidden call. The client
    // may never see an answer: it runs on a thread of its own that is left behind.
    std::thread::spawn(move || {
        if let Ok(mut c) = Client::try_connect(&sock, 1, MIB as usize) {
            let _ = c.read(0, 0, 4096);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon survived a forbidden system call");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGSYS), "exit {status}; stderr:\n{err}");
    assert!(
        err.contains("seccomp: thread 'vq-worker-0' (queue-worker) made a forbidden system call getppid (110)"),
        "stderr:\n{err}"
    );
}

/// The kernel log's seccomp records (`audit: type=1326`) of process `pid`.
fn kernel_seccomp_records(pid: i32) -> Option<Vec<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]).to_string();
                if rec.contains("type=1326") && rec.contains(&format!(" pid={pid} ")) {
                    out.push(rec);
                }
            }
            // EPIPE: records overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

#[test]
fn a_forbidden_call_under_log_is_logged_and_the_daemon_goes_on() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the test trigger is honoured by debug builds only");
        return;
    }
    let dir = tempdir();
    let (mut child, sock) = start_with_trigger(dir.path(), "log");
    let mut c = Client::connect(&sock, 1, MIB as usize);
    verified_io(&mut c, 9);
    drop(c);
    assert!(child.try_wait().unwrap().is_none(), "the daemon died under --seccomp log");
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{err}");
    assert!(err.contains("test trigger: the forbidden getppid returned"), "the call did not go through:\n{err}");
    match kernel_seccomp_records(pid) {
        None => eprintln!("SKIPPED (in part): /dev/kmsg is not readable here; the kernel's record is not checked"),
        Some(recs) => {
            assert!(
                recs.iter().any(|r| r.contains("syscall=110") && r.contains("comm=\"vq-worker-0\"")),
                "no kernel record of getppid by vq-worker-0: {recs:?}"
            );
            // Nothing else the daemon did was outside its filters (but for glibc's lazy opens,
            // which `on` refuses with EACCES and `log` records).
            let other = |r: &&String| !r.contains("syscall=110") && !r.contains("syscall=257");
            assert!(!recs.iter().any(|r| other(&r)), "other calls were logged: {recs:?}");
        }
    }
}

#[test]
fn user_nobody_serves_an_image_only_root_could_open() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: --user needs the test to run as root");
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("secret.raw");
    std::fs::File::create(&img).unwrap().set_len(16 * MIB).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sock = dir.path().join("n.sock");
    let spec = format!("socket={},format=raw,path={}", sock.display(), img.display());
    let d = DaemonProcess::start(&["--user", "nobody", "--disk", &spec], &[&sock]);
    let mut c = Client::connect(&sock, 1, MIB as usize);
    verified_io(&mut c, 3);
    for (name, status) in threads(d.pid()) {
        assert_eq!(field(&status, "Uid:").split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "thread {name}");
        assert_eq!(field(&status, "Gid:").split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "thread {name}");
        assert_eq!(field(&status, "CapEff:"), "0000000000000000", "thread {name}");
        assert_eq!(field(&status, "CapPrm:"), "0000000000000000", "thread {name}");
    }
    // And nobody could not have opened it itself.
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Ok(st) = probe {
        assert!(!st.success(), "nobody can read the image: the test proves nothing");
    }
    drop(c);
    d.stop();
}

/// Send one control request; the whole answer (`ok` true or false).
fn api_answer(sock: &Path, req: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn landlock_refuses_an_add_outside_the_allowed_directories() {
    if vhost_user_blk::sandbox::landlock::kernel_abi() == 0 {
        eprintln!("SKIPPED: this kernel has no Landlock");
        return;
    }
    let (run, allowed, elsewhere) = (tempdir(), tempdir(), tempdir());
    let api_s = run.path().join("api.sock");
    let image = |dir: &Path| {
        let p = dir.join("disk.raw");
        std::fs::File::create(&p).unwrap().set_len(4 * MIB).unwrap();
        p
    };
    let (inside, outside) = (image(allowed.path()), image(elsewhere.path()));
    let d = DaemonProcess::start(
        &["--api-socket", api_s.to_str().unwrap(), "--allow-dir", allowed.path().to_str().unwrap()],
        &[&api_s],
    );
    let add = |img: &Path, sock: &Path| {
        let disk = format!("socket={},format=raw,path={}", sock.display(), img.display());
        api_answer(&api_s, serde_json::json!({"cmd": "add", "disk": disk}))
    };
    // Outside: refused, and the error names the file.
    let refused = add(&outside, &run.path().join("out.sock"));
    assert_eq!(refused["ok"], false, "{refused}");
    let err = refused["error"].as_str().unwrap();
    assert!(err.contains(&outside.display().to_string()) && err.contains("denied"), "{err}");
    // Inside --allow-dir (its socket in the control socket's directory): served.
    let sock = run.path().join("in.sock");
    let ok = add(&inside, &sock);
    assert_eq!(ok["ok"], true, "{ok}");
    let mut c = Client::connect(&sock, 1, MIB as usize);
    verified_io(&mut c, 5);
    drop(c);
    d.stop();
}

#[test]
fn chroot_moves_the_root_once_started() {
    let (dir, jail) = (tempdir(), tempdir());
    let sock = dir.path().join("c.sock");
    let spec = format!("socket={},format=mem,size=16M", sock.display());
    let d = DaemonProcess::start(&["--chroot", jail.path().to_str().unwrap(), "--disk", &spec], &[&sock]);
    let mut c = Client::connect(&sock, 1, MIB as usize);
    verified_io(&mut c, 7);
    let root = std::fs::read_link(format!("/proc/{}/root", d.pid())).unwrap();
    assert_eq!(root, std::fs::canonicalize(jail.path()).unwrap());
    drop(c);
    d.stop();
}

#[test]
fn a_kept_capability_is_all_every_thread_keeps() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: capabilities are only dropped from a daemon that starts as root");
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("k.sock");
    let spec = format!("socket={},format=mem,size=16M", sock.display());
    let d = DaemonProcess::start(&["--keep-cap", "sys_rawio", "--disk", &spec], &[&sock]);
    let mut c = Client::connect(&sock, 1, MIB as usize);
    verified_io(&mut c, 11);
    let rawio = format!("{:016x}", 1u64 << 17);
    for (name, status) in threads(d.pid()) {
        assert_eq!(field(&status, "CapEff:"), rawio, "thread {name}");
        assert_eq!(field(&status, "CapBnd:"), rawio, "thread {name}");
    }
    drop(c);
    d.stop();
}

#[test]
fn bad_sandbox_arguments_are_usage_errors_that_say_what() {
    let dir = tempdir();
    let spec = format!("socket={},format=mem,size=1M", dir.path().join("u.sock").display());
    for (args, says) in [
        (vec!["--seccomp", "maybe"], "maybe"),
        (vec!["--user", "no-such-user-strata"], "no such user"),
        (vec!["--keep-cap", "cap_fly"], "cap_fly"),
        (vec!["--user", "nobody", "--keep-cap", "sys_rawio"], "--keep-cap"),
        (vec!["--chroot", "/no/such/dir/strata"], "/no/such/dir/strata"),
    ] {
        let out = Command::new(daemon_bin()).args(&args).args(["--disk", &spec]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
