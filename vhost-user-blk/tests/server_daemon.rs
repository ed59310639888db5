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
