//! The daemon serving Ceph RBD images (`format=rbd`) from a real one-node cluster
//! (scripts/ceph-dev.sh), written and read by libblkio: data matches `rbd export`; a RAID 1 of a
//! local file and an RBD image, a thin pool on an RBD image and a qcow2 image inside one survive
//! a daemon restart; a SIGKILLed daemon's flushed data reads back after a restart; a second
//! daemon is refused the image while the first serves it and takes it over (migration) once the
//! first stops; the OSD paused for 5 s under I/O stalls requests that then complete without
//! error; a worker asleep at QD1 takes each completion at once; bad specs exit 1 with an error
//! naming what is wrong.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, IoCtx, OpenOptions, RawFile};
use rand::{Rng, SeedableRng};
use rbd::testing::{cluster, ScratchImage};
use server_common::{daemon_bin, tempdir, Client, DaemonProcess};

const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn rbd_spec(img: &ScratchImage, more: &str) -> String {
    format!("format=rbd,pool=rbd,image={},conf={},timeout=20{more}", img.name, img.conf.display())
}

/// `vhost-user-blk ARGS`, expected to fail: its exit code and stderr.
fn refused(args: &[String]) -> (i32, String) {
    let out = Command::new(daemon_bin()).args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn disk_args(sock: &Path, spec: &str) -> Vec<String> {
    vec!["--disk".into(), format!("socket={},{spec},num-queues=2", sock.display())]
}

fn write_all(c: &mut Client, base: u64, seed: u64, n: u64) {
    for i in 0..n {
        let q = (i % 2) as usize;
        assert_eq!(c.write(q, base + i * 65536, &pattern(seed + i, 65536)), 0, "write {i}");
    }
    assert_eq!(c.flush(0), 0);
}

fn verify(c: &mut Client, base: u64, seed: u64, n: u64, what: &str) {
    for i in 0..n {
        let (r, got) = c.read((i % 2) as usize, base + i * 65536, 65536);
        assert_eq!(r, 0, "{what}: read {i}");
        assert!(got == pattern(seed + i, 65536), "{what}: block {i} differs");
    }
}

#[test]
fn served_image_matches_rbd_export_and_survives_a_sigkill() {
    let Some(conf) = cluster("served_image_matches_rbd_export_and_survives_a_sigkill") else { return };
    let img = ScratchImage::create(&conf, "strata-served", 16 * MIB);
    let dir = tempdir();
    let sock = dir.path().join("rbd.sock");
    let args = disk_args(&sock, &rbd_spec(&img, ""));
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, 3 * MIB, 100, 32);
    verify(&mut c, 3 * MIB, 100, 32, "while served");
    drop(c);
    d.stop();
    let exported = img.export();
    for i in 0..32u64 {
        let off = (3 * MIB + i * 65536) as usize;
        assert!(exported[off..off + 65536] == pattern(100 + i, 65536)[..], "rbd export: block {i} differs");
    }
    assert!(exported[..(3 * MIB) as usize].iter().all(|&b| b == 0), "bytes before the written range changed");

    // SIGKILL after a flush: the flushed data is there when a new daemon serves the image.
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, 8 * MIB, 200, 16);
    drop(c);
    // SAFETY: kill(2) on the pid of the daemon child.
    unsafe { libc::kill(d.pid(), libc::SIGKILL) };
    drop(d);
    let _ = std::fs::remove_file(&sock);
    let d = start_served(&args, &sock);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    verify(&mut c, 8 * MIB, 200, 16, "after SIGKILL and restart");
    verify(&mut c, 3 * MIB, 100, 32, "after SIGKILL and restart (older data)");
    drop(c);
    d.stop();
}

/// Start the daemon, waiting out the exclusive lock a killed predecessor left (it is broken once
/// the dead client's watch expires: `osd client watch timeout`, 5 s in ceph-dev's conf).
fn start_served(args: &[String], sock: &Path) -> DaemonProcess {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (code, err) = {
            let mut child =
                Command::new(daemon_bin()).args(args).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
            let t = Instant::now();
            loop {
                if sock.exists() {
                    // Serving: kill this probe and start the real (tracked) one. The probe held the
                    // lock only briefly; its exit releases it.
                    // SAFETY: kill(2) on our child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    let st = child.wait().unwrap();
                    assert!(st.success(), "probe daemon exited with {st}");
                    let _ = std::fs::remove_file(sock);
                    return DaemonProcess::start(args, &[sock]);
                }
                if let Some(st) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    use std::io::Read;
                    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                    break (st.code().unwrap_or(-1), err);
                }
                assert!(t.elapsed() < Duration::from_secs(60), "daemon neither served nor exited");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        assert!(err.contains("held for writing"), "daemon exited ({code}) for another reason: {err}");
        assert!(Instant::now() < deadline, "the image stayed locked for 45 s after its holder died: {err}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_second_daemon_is_refused_until_the_first_stops_then_takes_over() {
    let Some(conf) = cluster("a_second_daemon_is_refused_until_the_first_stops_then_takes_over") else { return };
    let img = ScratchImage::create(&conf, "strata-migrate", 8 * MIB);
    let dir = tempdir();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let a = DaemonProcess::start(&disk_args(&sa, &rbd_spec(&img, "")), &[&sa]);
    let mut c = Client::connect(&sa, 2, 1 << 20);
    write_all(&mut c, 0, 300, 16);
    // Host B asks to write-serve the image while A serves it: refused, naming the image.
    let t = Instant::now();
    let (code, err) = refused(&disk_args(&sb, &rbd_spec(&img, "")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&img.spec()) && err.contains("held for writing"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(25), "refusal took {:?}", t.elapsed());
    // A read-only view is allowed meanwhile.
    let b_ro = DaemonProcess::start(&disk_args(&sb, &rbd_spec(&img, ",read-only=on")), &[&sb]);
    let mut r = Client::connect_with(&sb, 2, 1 << 20, true).unwrap();
    verify(&mut r, 0, 300, 16, "read-only view while A serves");
    drop(r);
    b_ro.stop();
    let _ = std::fs::remove_file(&sb);
    // A stops (lets go); B serves it and reads A's data, then writes.
    drop(c);
    a.stop();
    let b = DaemonProcess::start(&disk_args(&sb, &rbd_spec(&img, "")), &[&sb]);
    let mut c = Client::connect(&sb, 2, 1 << 20);
    verify(&mut c, 0, 300, 16, "on B after A stopped");
    write_all(&mut c, 4 * MIB, 400, 4);
    drop(c);
    b.stop();
}

fn config_file(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("strata.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn raid1_of_a_file_and_an_rbd_image_survives_a_restart() {
    let Some(conf) = cluster("raid1_of_a_file_and_an_rbd_image_survives_a_restart") else { return };
    let img = ScratchImage::create(&conf, "strata-raid1", 32 * MIB);
    let dir = tempdir();
    let file = dir.path().join("local.img");
    // Create the mirror in-process over the same two devices the daemon will open.
    {
        let io = IoCtx::new().unwrap();
        let local: Arc<dyn BlockDev> = Arc::new(RawFile::create(&file, 32 * MIB, OpenOptions::default()).unwrap());
        let mut cfg = rbd::RbdConfig::new("rbd", img.name.clone());
        cfg.conf = Some(conf.clone());
        let remote: Arc<dyn BlockDev> = Arc::new(rbd::RbdDev::open(&cfg).unwrap());
        let members = vec![(file.display().to_string(), local), ("node:remote".to_string(), remote)];
        let array = io.block_on(raid::create(&io, members, raid::CreateOptions::new(raid::Level::Raid1))).unwrap();
        drop(array);
    }
    let sock = dir.path().join("raid.sock");
    let cfg = config_file(
        dir.path(),
        &format!(
            "[[node]]\nname = \"remote\"\nformat = \"rbd\"\npool = \"rbd\"\nimage = \"{}\"\nconf = \"{}\"\n\n\
             [[export]]\nsocket = \"{}\"\nformat = \"raid\"\nmembers = \"{}:node:remote\"\nnum-queues = 2\n",
            img.name,
            conf.display(),
            sock.display(),
            file.display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, MIB, 500, 24);
    verify(&mut c, MIB, 500, 24, "RAID 1 served");
    drop(c);
    d.stop();
    let _ = std::fs::remove_file(&sock);
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    verify(&mut c, MIB, 500, 24, "RAID 1 after a restart");
    drop(c);
    d.stop();
    // The RBD member holds the mirror's data too: with the local file gone, the array still reads.
    std::fs::remove_file(&file).unwrap();
    let _ = std::fs::remove_file(&sock);
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    verify(&mut c, MIB, 500, 24, "RAID 1 from its RBD member alone");
    drop(c);
    d.stop();
}

#[test]
fn a_thin_pool_on_an_rbd_image_survives_a_restart() {
    let Some(conf) = cluster("a_thin_pool_on_an_rbd_image_survives_a_restart") else { return };
    let img = ScratchImage::create(&conf, "strata-thin", 64 * MIB);
    {
        let io = IoCtx::new().unwrap();
        let mut cfg = rbd::RbdConfig::new("rbd", img.name.clone());
        cfg.conf = Some(conf.clone());
        let dev: Arc<dyn BlockDev> = Arc::new(rbd::RbdDev::open(&cfg).unwrap());
        let pool = io.block_on(thin::Pool::create(&io, dev, None, thin::PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "vm", 16 * MIB)).unwrap();
    }
    let dir = tempdir();
    let sock = dir.path().join("thin.sock");
    let cfg = config_file(
        dir.path(),
        &format!(
            "[[node]]\nname = \"p\"\nformat = \"rbd\"\npool = \"rbd\"\nimage = \"{}\"\nconf = \"{}\"\n\n\
             [[export]]\nsocket = \"{}\"\nformat = \"thin\"\npool = \"node:p\"\nvolume = \"vm\"\nnum-queues = 2\n",
            img.name,
            conf.display(),
            sock.display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, 2 * MIB, 600, 24);
    verify(&mut c, 2 * MIB, 600, 24, "thin volume served");
    drop(c);
    d.stop();
    let _ = std::fs::remove_file(&sock);
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    verify(&mut c, 2 * MIB, 600, 24, "thin volume after a restart");
    drop(c);
    d.stop();
}

#[test]
fn requests_stall_while_the_osd_is_paused_and_complete_after() {
    let Some(conf) = cluster("requests_stall_while_the_osd_is_paused_and_complete_after") else { return };
    let pid_file = conf.parent().unwrap().join("run/osd.0.pid");
    let Some(osd) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        eprintln!("SKIPPED requests_stall_while_the_osd_is_paused_and_complete_after: {pid_file:?} not found (not a ceph-dev.sh cluster)");
        return;
    };
    let img = ScratchImage::create(&conf, "strata-pause", 8 * MIB);
    let dir = tempdir();
    let sock = dir.path().join("p.sock");
    let d = DaemonProcess::start(&disk_args(&sock, &rbd_spec(&img, "")), &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, 0, 700, 4);
    // Pause the OSD; requests issued now wait; it resumes after 5 s (SIGCONT even if we fail).
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: kill(2) with SIGCONT on the OSD's pid.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: kill(2) with SIGSTOP on the OSD's pid, resumed by `Resume`.
    assert_eq!(unsafe { libc::kill(osd, libc::SIGSTOP) }, 0);
    let resume = Resume(osd);
    let resumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        drop(resume);
    });
    let t = Instant::now();
    write_all(&mut c, 4 * MIB, 800, 8);
    verify(&mut c, 0, 700, 4, "after the pause");
    let took = t.elapsed();
    resumer.join().unwrap();
    assert!(took >= Duration::from_secs(4), "requests did not wait for the paused OSD ({took:?})");
    verify(&mut c, 4 * MIB, 800, 8, "written during the pause");
    drop(c);
    d.stop();
}

#[test]
fn bad_rbd_specs_exit_1_naming_what_is_wrong() {
    let dir = tempdir();
    let sock = dir.path().join("bad.sock");
    let cases: Vec<(String, &str)> = vec![
        ("format=rbd,pool=rbd,image=a/b".into(), "image='a/b'"),
        ("format=rbd,pool=rbd,image=a@b".into(), "image='a@b'"),
        ("format=rbd,pool=rbd,image=x,conf=/nonexistent/ceph.conf".into(), "conf=/nonexistent/ceph.conf"),
        ("format=rbd,pool=rbd,image=x,keyring=/nonexistent/keyring".into(), "keyring=/nonexistent/keyring"),
        ("format=rbd,image=x".into(), "pool"),
    ];
    for (spec, needle) in cases {
        let (code, err) = refused(&disk_args(&sock, &spec));
        assert_eq!(code, 1, "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {err}");
        assert!(!err.contains("panicked"), "{spec}: {err}");
    }
    let Some(conf) = cluster("bad_rbd_specs_exit_1_naming_what_is_wrong") else { return };
    let c = conf.display();
    for (spec, needle) in [
        (format!("format=rbd,pool=nosuchpool,image=x,conf={c}"), "pool 'nosuchpool' does not exist"),
        (format!("format=rbd,pool=rbd,image=nosuchimage,conf={c}"), "no such image"),
    ] {
        let (code, err) = refused(&disk_args(&sock, &spec));
        assert_eq!(code, 1, "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {err}");
    }
}

#[test]
fn a_sleeping_worker_takes_each_completion_at_once() {
    // At QD1 the worker sleeps in epoll between requests: librbd's completion must wake it at
    // once, not when something else does (a delivery through a poll on the worker's ring left
    // each request waiting ~20 ms for that).
    let Some(conf) = cluster("a_sleeping_worker_takes_each_completion_at_once") else { return };
    let img = ScratchImage::create(&conf, "strata-qd1", 4 * MIB);
    let dir = tempdir();
    let sock = dir.path().join("q.sock");
    let d = DaemonProcess::start(&disk_args(&sock, &rbd_spec(&img, ",poll-us=0")), &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    assert_eq!(c.write(0, 0, &pattern(900, 65536)), 0);
    let (r, _) = c.read(0, 0, 4096);
    assert_eq!(r, 0);
    let n = 200u64;
    let t = Instant::now();
    for i in 0..n {
        let (r, _) = c.read(0, (i % 16) * 4096, 4096);
        assert_eq!(r, 0, "read {i}");
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "{n} QD1 reads took {took:?}: completions wait for the worker to wake");
    drop(c);
    d.stop();
}

#[test]
fn a_qcow2_image_inside_an_rbd_image_is_served() {
    let Some(conf) = cluster("a_qcow2_image_inside_an_rbd_image_is_served") else { return };
    let dir = tempdir();
    // A qcow2 image with its room already there (a node does not grow), imported into Ceph.
    let file = dir.path().join("vm.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata"])
        .arg(&file)
        .arg("16M")
        .output();
    let Ok(out) = out else {
        eprintln!("SKIPPED a_qcow2_image_inside_an_rbd_image_is_served: qemu-img is not installed");
        return;
    };
    assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
    let img = ScratchImage { conf: conf.clone(), name: format!("strata-qcow2-{}", std::process::id()) };
    rbd::testing::rbd(&conf, &["import", "--no-progress", file.to_str().unwrap(), &img.spec()]);
    let sock = dir.path().join("qcow2.sock");
    let cfg = config_file(
        dir.path(),
        &format!(
            "[[node]]\nname = \"remote\"\nformat = \"rbd\"\npool = \"rbd\"\nimage = \"{}\"\nconf = \"{}\"\n\n\
             [[export]]\nsocket = \"{}\"\nformat = \"qcow2\"\npath = \"node:remote\"\nnum-queues = 2\n",
            img.name,
            conf.display(),
            sock.display()
        ),
    );
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    write_all(&mut c, MIB, 1000, 16);
    verify(&mut c, MIB, 1000, 16, "qcow2 on RBD");
    drop(c);
    d.stop();
    let _ = std::fs::remove_file(&sock);
    let d = DaemonProcess::start(&args, &[&sock]);
    let mut c = Client::connect(&sock, 2, 1 << 20);
    verify(&mut c, MIB, 1000, 16, "qcow2 on RBD after a restart");
    drop(c);
    d.stop();
    // Ceph's copy is a consistent qcow2 image holding the data (qemu-img's view).
    let exported = dir.path().join("exported.qcow2");
    std::fs::write(&exported, img.export()).unwrap();
    let check = Command::new("qemu-img").args(["check", "-q"]).arg(&exported).output().unwrap();
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));
    let raw = dir.path().join("exported.raw");
    let conv = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&exported).arg(&raw).output().unwrap();
    assert!(conv.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&conv.stderr));
    let data = std::fs::read(&raw).unwrap();
    for i in 0..16u64 {
        let off = (MIB + i * 65536) as usize;
        assert!(data[off..off + 65536] == pattern(1000 + i, 65536)[..], "qemu-img's view: block {i} differs");
    }
}

/// One control-socket request on a connection of its own; the answer line, parsed.
fn control(sock: &Path, req: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn an_rbd_add_waiting_on_a_silent_cluster_holds_up_nothing_else_on_the_control_socket() {
    // No cluster needed: a conf whose monitor nobody serves. The add waits out its timeout on a
    // blocking thread of its own; other connections are answered and served meanwhile, and a
    // second add of the same name is refused rather than raced.
    if rbd::ffi::api().is_err() {
        eprintln!("SKIPPED an_rbd_add_waiting_on_a_silent_cluster_holds_up_nothing_else_on_the_control_socket: librbd is not installed");
        return;
    }
    let dir = tempdir();
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        "[global]\nfsid = 00000000-0000-0000-0000-000000000001\nmon host = v2:127.0.0.1:1\nauth cluster required = none\n\
         auth service required = none\nauth client required = none\n",
    )
    .unwrap();
    let api = dir.path().join("api.sock");
    let allow = dir.path().display().to_string();
    let d = DaemonProcess::start(&["--api-socket", &api.display().to_string(), "--allow-dir", &allow], &[&api]);
    let slow_sock = dir.path().join("vm1.sock");
    let add_rbd = format!(
        r#"{{"cmd":"add","disk":"socket={},name=vm1,format=rbd,pool=rbd,image=vm1,conf={},timeout=4"}}"#,
        slow_sock.display(),
        conf.display()
    );
    let slow = {
        let (api, add_rbd) = (api.clone(), add_rbd.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let answer = control(&api, &add_rbd);
            (t.elapsed(), answer)
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let list = control(&api, r#"{"cmd":"list"}"#);
    assert_eq!(list["ok"], true, "{list}");
    assert!(t.elapsed() < Duration::from_secs(2), "list waited {:?} behind the rbd add", t.elapsed());
    let again = control(&api, &add_rbd);
    assert_eq!(again["ok"], false, "{again}");
    assert!(again["error"].as_str().unwrap_or("").contains("being added"), "{again}");
    let mem_sock = dir.path().join("m.sock");
    let t = Instant::now();
    let add_mem =
        control(&api, &format!(r#"{{"cmd":"add","disk":"socket={},name=m,format=mem,size=1M"}}"#, mem_sock.display()));
    assert_eq!(add_mem["ok"], true, "{add_mem}");
    assert!(t.elapsed() < Duration::from_secs(2), "a mem add waited {:?} behind the rbd add", t.elapsed());
    let mut c = Client::connect(&mem_sock, 1, 65536);
    assert_eq!(c.write(0, 0, &pattern(9, 4096)), 0);
    drop(c);

    let (took, answer) = slow.join().unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    let err = answer["error"].as_str().unwrap_or("");
    assert!(err.contains("rbd/vm1") && err.contains(&conf.display().to_string()), "{err}");
    assert!(took < Duration::from_secs(12), "the add failed after {took:?}, timeout was 4 s");
    let list = control(&api, r#"{"cmd":"list"}"#);
    let names: Vec<&str> = list["result"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["m"], "{list}");
    assert!(!slow_sock.exists(), "the failed add left its socket behind");
    d.stop();
}

#[test]
fn an_rbd_image_added_on_the_control_socket_of_a_sandboxed_daemon_is_served() {
    // The daemon starts with no RBD disk, so librbd is loaded by the `add`, under the sandbox's
    // filters and Landlock (which the Ceph client threads that load it are outside of).
    let Some(conf) = cluster("an_rbd_image_added_on_the_control_socket_of_a_sandboxed_daemon_is_served") else {
        return;
    };
    let img = ScratchImage::create(&conf, "strata-added", 8 * MIB);
    let dir = tempdir();
    let api = dir.path().join("api.sock");
    let allow = dir.path().display().to_string();
    let d = DaemonProcess::start(&["--api-socket", &api.display().to_string(), "--allow-dir", &allow], &[&api]);
    let sock = dir.path().join("added.sock");
    let add = control(
        &api,
        &format!(r#"{{"cmd":"add","disk":"socket={},name=added,{}"}}"#, sock.display(), rbd_spec(&img, "")),
    );
    assert_eq!(add["ok"], true, "{add}");
    let mut c = Client::connect(&sock, 1, 1 << 20);
    for i in 0..8u64 {
        assert_eq!(c.write(0, i * 65536, &pattern(300 + i, 65536)), 0, "write {i}");
    }
    assert_eq!(c.flush(0), 0);
    drop(c);
    // Over an RBD image the workers do not poll unless told (docs/scale-out.md, "Polling").
    let list = control(&api, r#"{"cmd":"list"}"#);
    assert_eq!(list["result"][0]["settings"]["poll_us"], 0, "{list}");
    assert_eq!(control(&api, r#"{"cmd":"remove","name":"added"}"#)["ok"], true);
    d.stop();
    let exported = img.export();
    for i in 0..8u64 {
        let off = (i * 65536) as usize;
        assert!(exported[off..off + 65536] == pattern(300 + i, 65536)[..], "rbd export: block {i} differs");
    }
}
