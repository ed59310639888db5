//! The `vhost-user-blk` binary: command line, control socket, SIGTERM.

mod server_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use server_common::{daemon_bin, tempdir, Client};

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("daemon exited early: {st}");
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn api(sock: &Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill() with a pid we spawned and a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "daemon did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemon_serves_lists_adds_removes_and_exits_zero_on_sigterm() {
    let dir = tempdir();
    let disk = dir.path().join("a.sock");
    let api_sock = dir.path().join("api.sock");
    let mut child = Command::new(daemon_bin())
        .arg("--disk")
        .arg(format!("socket={},format=mem,size=4M,name=a,serial=s1", disk.display()))
        .arg("--api-socket")
        .arg(&api_sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&disk, &mut child);
    wait_for(&api_sock, &mut child);

    let mut c = Client::connect(&disk, 1, 1 << 20);
    assert_eq!(c.write(0, 4096, &[7u8; 8192]), 0);
    drop(c);

    let list = api(&api_sock, r#"{"cmd":"list"}"#);
    assert_eq!(list["ok"], true);
    assert_eq!(list["result"][0]["name"], "a");
    assert_eq!(list["result"][0]["size"], 4 << 20);
    let stats = api(&api_sock, r#"{"cmd":"stats","name":"a"}"#);
    assert_eq!(stats["result"]["writes"], 1);
    assert_eq!(stats["result"]["write_bytes"], 8192);

    let b = dir.path().join("b.sock");
    let add = api(&api_sock, &format!(r#"{{"cmd":"add","disk":"socket={},format=mem,size=1M,name=b"}}"#, b.display()));
    assert_eq!(add["ok"], true, "{add}");
    let mut cb = Client::connect(&b, 1, 65536);
    assert_eq!(cb.flush(0), 0);
    drop(cb);
    assert_eq!(api(&api_sock, r#"{"cmd":"remove","name":"b"}"#)["ok"], true);
    assert!(!b.exists());
    let bad = api(&api_sock, r#"{"cmd":"stats","name":"nope"}"#);
    assert_eq!(bad["ok"], false);
    assert_eq!(api(&api_sock, "not json")["ok"], false);

    let st = terminate(&mut child);
    assert!(st.success(), "exit status {st}");
}

#[test]
fn bad_disk_spec_exits_nonzero_with_message() {
    let out = Command::new(daemon_bin()).args(["--disk", "socket=/tmp/x.sock,format=qcow9"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qcow9"), "{err}");
}

#[test]
fn help_explains_the_keys() {
    let out = Command::new(daemon_bin()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--disk", "--config", "--demo", "--api-socket", "num-queues", "read-only", "SIGTERM"] {
        assert!(text.contains(word), "--help lacks {word}");
    }
}

#[test]
fn config_file_stacks_named_nodes_and_serves_one() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIPPED: config_file_stacks_named_nodes_and_serves_one needs qemu-img (qemu-utils)");
        return;
    }
    // Arrange: a qcow2 image in a file whose name has ',' and ':', opened as a raw node, with the
    // qcow2 format stacked on that node and the qcow2 node exported with two queues on one thread.
    // A raw node does not grow, so the image is preallocated (its clusters already in the file).
    let dir = tempdir();
    let image = dir.path().join("vm, 1:a.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata"])
        .arg(&image)
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    let sock = dir.path().join("vm.sock");
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[[node]]\nname = \"file\"\nformat = \"raw\"\npath = {:?}\n\n\
             [[node]]\nname = \"img\"\nformat = \"qcow2\"\npath = \"node:file\"\n\n\
             [[export]]\nsocket = {:?}\nnode = \"img\"\nnum-queues = 2\nqueues-per-thread = 2\n",
            image.display().to_string(),
            sock.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(daemon_bin()).arg("--config").arg(&config).stderr(Stdio::null()).spawn().unwrap();
    wait_for(&sock, &mut child);

    // Act: write through both queues, flush, stop the daemon.
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    {
        let mut c = Client::connect(&sock, 2, 1 << 20);
        assert_eq!(c.blkio.get_u64("capacity").unwrap(), 8 << 20);
        assert_eq!(c.write(0, 1 << 20, &data), 0);
        assert_eq!(c.write(1, 4 << 20, &data), 0);
        assert_eq!(c.flush(0), 0);
    }
    assert!(terminate(&mut child).success(), "daemon did not exit 0");

    // Assert: qemu-img finds a clean image holding the data at both offsets.
    let check = Command::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(&image).status().unwrap();
    assert!(check.success(), "qemu-img check failed");
    let raw = dir.path().join("out.raw");
    let conv = Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&image).arg(&raw).status();
    assert!(conv.unwrap().success());
    let out = std::fs::read(&raw).unwrap();
    assert_eq!(&out[1 << 20..(1 << 20) + data.len()], &data[..]);
    assert_eq!(&out[4 << 20..(4 << 20) + data.len()], &data[..]);
}

#[test]
fn config_export_naming_an_unknown_node_exits_nonzero_naming_it() {
    let dir = tempdir();
    let config = dir.path().join("strata.toml");
    let sock = dir.path().join("x.sock");
    std::fs::write(&config, format!("[[export]]\nsocket = {:?}\nnode = \"ghost\"\n", sock.display().to_string()))
        .unwrap();
    let out = Command::new(daemon_bin()).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ghost"), "{err}");
}

/// Runs the daemon with `disk` and returns its output if it exits within 15 s (None: it kept
/// running, and was killed).
fn run_bounded(disk: &str) -> Option<std::process::Output> {
    let mut child = Command::new(daemon_bin())
        .args(["--disk", disk])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn socket_path_naming_a_file_is_refused_and_the_file_kept() {
    // A disk image given as socket= by mistake.
    let dir = tempdir();
    let image = dir.path().join("vm.img");
    let bytes: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&image, &bytes).unwrap();

    let out = run_bounded(&format!("socket={},format=mem,size=1M", image.display()))
        .expect("the daemon started serving over a regular file");

    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vm.img") && err.contains("not a socket"), "{err}");
    assert!(std::fs::read(&image).unwrap() == bytes, "the file changed");
}

#[test]
fn socket_another_daemon_serves_is_refused_and_keeps_serving() {
    let dir = tempdir();
    let sock = dir.path().join("busy.sock");
    let mut first = Command::new(daemon_bin())
        .args(["--disk", &format!("socket={},format=mem,size=4M,serial=first", sock.display())])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock, &mut first);

    let second = run_bounded(&format!("socket={},format=mem,size=1M", sock.display()));

    let out = second.unwrap_or_else(|| {
        let _ = first.kill();
        panic!("a second daemon took over a live daemon's socket")
    });
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy.sock") && err.contains("another process is listening"), "{err}");
    let mut c = Client::connect(&sock, 1, 1 << 16);
    assert_eq!(c.blkio.get_u64("capacity").unwrap(), 4 << 20, "the first daemon still serves the socket");
    let data = [9u8; 4096];
    assert_eq!(c.write(0, 0, &data), 0);
    assert_eq!(c.read(0, 0, 4096), (0, data.to_vec()));
    drop(c);
    assert!(terminate(&mut first).success());
}

#[test]
fn stale_socket_of_a_dead_daemon_is_replaced() {
    let dir = tempdir();
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut child = Command::new(daemon_bin())
        .args(["--disk", &format!("socket={},format=mem,size=1M", sock.display())])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = false;
    while Instant::now() < deadline && !served {
        assert!(child.try_wait().unwrap().is_none(), "the daemon refused a stale socket");
        served = Client::try_connect(&sock, 1, 65536).is_ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served, "the daemon never served the stale socket's path");
    assert!(terminate(&mut child).success());
}
