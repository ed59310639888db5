//! One writer per thin volume in a daemon: a second export of a served volume, given at start
//! (two --disk) or added through the control socket, is refused naming the export and socket
//! that hold it, and the first export's I/O goes on untouched; once that export is removed the
//! volume can be served again. And a shrink through the control socket follows the offline rules:
//! `--shrink` needed, refused while served, refused over mapped data (saying how much) unless
//! `--discard-data`.

mod server_common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{blkctl_bin, daemon_bin, tempdir, Client, DaemonProcess};
use vhost_user_blk::api::thin::call;

const MIB: u64 = 1 << 20;

fn blkctl(args: &[&str]) -> Output {
    Command::new(blkctl_bin()).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "blkctl failed ({}): {}", o.status, text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A 32 MiB pool with volumes v (8 MiB) and w (4 MiB), made by blkctl.
fn pool(dir: &Path) -> String {
    let p = dir.join("pool.img");
    std::fs::File::create(&p).unwrap().set_len(32 * MIB).unwrap();
    let p = p.display().to_string();
    ok(&blkctl(&["thin", "pool-create", &p]));
    ok(&blkctl(&["thin", "create", &p, "v", "8M"]));
    ok(&blkctl(&["thin", "create", &p, "w", "4M"]));
    p
}

fn spec(dir: &Path, name: &str, pool: &str, vol: &str) -> String {
    format!("socket={},format=thin,pool={pool},volume={vol},name={name}", dir.join(format!("{name}.sock")).display())
}

#[test]
fn two_disks_of_one_volume_are_refused_at_start_naming_the_first_and_change_nothing() {
    let dir = tempdir();
    let pool = pool(dir.path());
    let before = std::fs::read(&pool).unwrap();
    // Before one writer per volume the daemon served both: bounded, so that fails, not hangs.
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(daemon_bin())
        .args(["--disk", &spec(dir.path(), "a", &pool, "v"), "--disk", &spec(dir.path(), "b", &pool, "v")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon still runs after 20 s, serving volume v twice: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let msg = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{msg}");
    assert!(msg.contains("thin volume 'v'") && msg.contains("already served writable"), "{msg}");
    assert!(msg.contains("export a (socket ") && msg.contains("a.sock"), "{msg}");
    assert!(std::fs::read(&pool).unwrap() == before, "the refused start changed the pool");
    // A snapshot is a volume of its own: served alongside its origin.
    ok(&blkctl(&["thin", "snapshot", &pool, "v", "v-snap"]));
    let api = dir.path().join("api.sock");
    let args: Vec<String> = vec![
        "--disk".into(),
        spec(dir.path(), "a", &pool, "v"),
        "--disk".into(),
        spec(dir.path(), "s", &pool, "v-snap"),
        "--api-socket".into(),
        api.display().to_string(),
    ];
    DaemonProcess::start(&args, &[&api]).stop();
}

#[test]
fn a_control_socket_add_of_a_served_volume_is_refused_until_its_export_is_removed() {
    let dir = tempdir();
    let pool = pool(dir.path());
    let api = dir.path().join("api.sock");
    let api_s = api.to_str().unwrap();
    let args: Vec<String> =
        vec!["--disk".into(), spec(dir.path(), "a", &pool, "v"), "--api-socket".into(), api_s.to_string()];
    let daemon = DaemonProcess::start(&args, &[&api]);

    let mut a = Client::connect(&dir.path().join("a.sock"), 1, MIB as usize);
    let pattern: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(a.write(0, MIB, &pattern), 0);
    let add = |name: &str, vol: &str| call(&api, &json!({"cmd": "add", "disk": spec(dir.path(), name, &pool, vol)}));
    let e = add("b", "v").unwrap_err();
    assert!(e.contains("thin volume 'v'") && e.contains("already served writable"), "{e}");
    assert!(e.contains("export a (socket ") && e.contains("a.sock"), "{e}");
    assert!(!dir.path().join("b.sock").exists(), "the refused export left a socket");
    // The first export is untouched: its data reads back and it takes more writes.
    let (ret, got) = a.read(0, MIB, pattern.len());
    assert!(ret == 0 && got == pattern, "export a's data changed");
    assert_eq!(a.write(0, 7 * MIB, &[0xa5; 4096]), 0);
    assert_eq!(a.flush(0), 0);
    // Shrinking the served volume through the daemon: refused, the export named.
    let out = blkctl(&["thin", "resize", &pool, "v", "1M", "--shrink", "--discard-data", "--api-socket", api_s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("open (served)") && text(&out).contains("export a"), "{}", text(&out));
    // Making a new pool over the served one is refused before a byte changes, --force or not.
    let out = blkctl(&["thin", "pool-create", &pool, "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("in use") && text(&out).contains("nothing was written"), "{}", text(&out));
    let (ret, got) = a.read(0, MIB, pattern.len());
    assert!(ret == 0 && got == pattern, "export a's data changed");
    drop(a);

    // Once export a is gone, b serves the volume, with a's data.
    call(&api, &json!({"cmd": "remove", "name": "a"})).unwrap();
    add("b", "v").unwrap();
    let mut b = Client::connect(&dir.path().join("b.sock"), 1, MIB as usize);
    let (ret, got) = b.read(0, MIB, pattern.len());
    assert!(ret == 0 && got == pattern, "volume v lost a's data");
    let (ret, got) = b.read(0, 7 * MIB, 4096);
    assert!(ret == 0 && got == vec![0xa5; 4096]);
    drop(b);
    daemon.stop();
    assert!(ok(&blkctl(&["thin", "check", &pool])).contains("No errors"));
}

#[test]
fn a_shrink_through_the_control_socket_follows_the_offline_rules() {
    let dir = tempdir();
    let pool = pool(dir.path());
    let api = dir.path().join("api.sock");
    let api_s = api.to_str().unwrap();
    let args: Vec<String> =
        vec!["--disk".into(), spec(dir.path(), "a", &pool, "v"), "--api-socket".into(), api_s.to_string()];
    let daemon = DaemonProcess::start(&args, &[&api]);
    // Put data at the end of w through an export, then stop serving w.
    call(&api, &json!({"cmd": "add", "disk": spec(dir.path(), "w", &pool, "w")})).unwrap();
    let mut w = Client::connect(&dir.path().join("w.sock"), 1, MIB as usize);
    assert_eq!(w.write(0, 4 * MIB - 8192, &[7; 8192]), 0);
    assert_eq!(w.flush(0), 0);
    drop(w);
    call(&api, &json!({"cmd": "remove", "name": "w"})).unwrap();

    let resize = |extra: &[&str]| {
        let mut args = vec!["thin", "resize", pool.as_str(), "w", "--api-socket", api_s];
        args.extend(extra);
        blkctl(&args)
    };
    let out = resize(&["-1M"]);
    assert!(!out.status.success() && text(&out).contains("--shrink"), "{}", text(&out));
    let out = resize(&["-1M", "--shrink"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("64 KiB (65536 bytes) of mapped data") && text(&out).contains("--discard-data"),
        "{}",
        text(&out)
    );
    let v: Value = serde_json::from_str(&ok(&resize(&["+1M", "--json"]))).unwrap();
    assert_eq!((v["old-size"].as_u64(), v["size"].as_u64()), (Some(4 * MIB), Some(5 * MIB)));
    assert!(v["pool"].as_str().unwrap().ends_with("pool.img"), "{v}");
    let line = ok(&resize(&["--size", "1M", "--shrink", "--discard-data"]));
    assert!(line.contains("from 5 MiB to 1 MiB, dropping 64 KiB (65536 bytes) of mapped data"), "{line}");
    assert!(ok(&blkctl(&["thin", "check", &pool, "--api-socket", api_s])).contains("No errors"));
    let v: Value =
        serde_json::from_str(&ok(&blkctl(&["thin", "create", &pool, "x", "1G", "--json", "--api-socket", api_s])))
            .unwrap();
    assert_eq!(v["volume"], "x");
    assert!(v["overcommit-ratio"].as_f64().unwrap() > 1.0, "{v}");
    daemon.stop();
    assert!(ok(&blkctl(&["thin", "check", &pool])).contains("No errors"));
}
