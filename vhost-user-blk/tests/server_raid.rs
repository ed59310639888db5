//! End to end: a RAID 5 over three files served by the `vhost-user-blk` daemon and written by
//! libblkio; one member file deleted; the daemon restarted degraded; the data verified; a
//! replacement added through the control socket (`blkctl raid replace --api-socket`) while writes
//! go on; the rebuild finishes; a scrub through the socket finds nothing; and the rebuilt member
//! serves reads when another member is failed.

mod server_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_common::{blkctl_bin, tempdir, Client, DaemonProcess};

const MIB: u64 = 1 << 20;

fn blkctl() -> PathBuf {
    blkctl_bin()
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(blkctl()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "blkctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn api(sock: &Path, req: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true, "{req} -> {v}");
    v["result"].clone()
}

struct Daemon {
    process: DaemonProcess,
    disk: PathBuf,
    api: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, members: &str) -> Daemon {
        let disk = dir.join("raid.sock");
        let api = dir.join("api.sock");
        let spec = format!("socket={},format=raid,members={members},name=r", disk.display());
        let process = DaemonProcess::start(&["--disk", &spec, "--api-socket", api.to_str().unwrap()], &[&disk, &api]);
        Daemon { process, disk, api }
    }

    fn stop(self) {
        self.process.stop();
    }
}

fn verify(c: &mut Client, model: &[u8], what: &str) {
    for (i, want) in model.chunks(MIB as usize).enumerate() {
        let (ret, got) = c.read(0, i as u64 * MIB, want.len());
        assert_eq!(ret, 0, "{what}: read of MiB {i} failed");
        assert!(got == want, "{what}: MiB {i} differs");
    }
}

/// One random write of 4 to 64 KiB, mirrored into `model`.
fn random_write(c: &mut Client, model: &mut [u8], rng: &mut SmallRng) {
    let len = rng.gen_range(1..=16usize) * 4096;
    let off = rng.gen_range(0..(model.len() - len) / 4096) * 4096;
    let fill: u8 = rng.gen();
    let data: Vec<u8> = (0..len).map(|i| fill ^ (i / 512) as u8).collect();
    assert_eq!(c.write(0, off as u64, &data), 0, "write at {off}");
    model[off..off + len].copy_from_slice(&data);
}

#[test]
fn raid5_served_degraded_rebuilt_live_and_scrubbed() {
    let t0 = Instant::now();
    let dir = tempdir();
    let file = |n: &str| {
        let p = dir.path().join(n);
        std::fs::File::create(&p).unwrap().set_len(24 * MIB).unwrap();
        p.display().to_string()
    };
    let (a, b, c3) = (file("a.img"), file("b.img"), file("c.img"));
    run(&["raid", "create", "--level", "5", "--chunk", "64K", &a, &b, &c3]);
    let members = format!("{a}:{b}:{c3}");

    // Serve it and fill it through libblkio.
    let d = Daemon::start(dir.path(), &members);
    let mut c = Client::connect(&d.disk, 1, MIB as usize);
    let size = c.blkio.get_u64("capacity").unwrap() as usize;
    assert!(size >= 30 * MIB as usize, "array of {size} bytes");
    let mut rng = SmallRng::seed_from_u64(0x5a1d);
    let mut model = vec![0u8; size];
    rng.fill(&mut model[..]);
    for (i, chunk) in model.chunks(MIB as usize).enumerate() {
        assert_eq!(c.write(0, i as u64 * MIB, chunk), 0);
    }
    assert_eq!(c.flush(0), 0);
    // The members are the daemon's: blkctl without the socket says where to go.
    let out = Command::new(blkctl()).args(["raid", "status", &members]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-socket"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(c);
    d.stop();

    // Lose a member; the daemon starts degraded and serves the same data.
    std::fs::remove_file(&b).unwrap();
    let d = Daemon::start(dir.path(), &members);
    let st = api(&d.api, serde_json::json!({"cmd": "raid-status", "members": members}));
    assert_eq!((st["state"].as_str(), st["degraded"].as_bool()), (Some("degraded"), Some(true)), "{st}");
    let mut c = Client::connect(&d.disk, 1, MIB as usize);
    verify(&mut c, &model, "degraded");

    // Replace it through the control socket while writes go on.
    let new = file("d.img");
    let (api_sock, list, new2) = (d.api.display().to_string(), members.clone(), new.clone());
    let b2 = b.clone();
    let replacer = std::thread::spawn(move || {
        Command::new(blkctl())
            .args(["raid", "replace", &list, &b2, &new2, "--rate-limit", "40M", "--api-socket", &api_sock])
            .output()
            .unwrap()
    });
    let mut during = 0;
    while !replacer.is_finished() {
        random_write(&mut c, &mut model, &mut rng);
        during += 1;
    }
    let out = replacer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replace failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("rebuilt role 1"), "{text}");
    assert!(during > 10, "only {during} writes overlapped the rebuild");
    assert_eq!(c.flush(0), 0);
    let rebuilt = format!("{a}:{new}:{c3}");
    let st = api(&d.api, serde_json::json!({"cmd": "raid-status", "members": rebuilt}));
    assert_eq!(st["degraded"], false, "{st}");
    assert!(st["rebuild"]["mb_s"].as_f64().unwrap() > 0.0, "{st}");
    verify(&mut c, &model, "after the rebuild");

    // A scrub through the socket finds nothing, also through blkctl's JSON.
    let out = run(&["raid", "scrub", &rebuilt, "--json", "--api-socket", &d.api.display().to_string()]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["mismatches"], 0, "{rep}");
    assert!(rep["rows"].as_u64().unwrap() > 0);

    // The new member holds real data: fail another one and read everything back.
    let f = api(&d.api, serde_json::json!({"cmd": "raid-fail", "members": rebuilt, "member": c3}));
    assert_eq!(f["role"], 2);
    verify(&mut c, &model, "with the rebuilt member and role 0 only");
    drop(c);
    d.stop();
    eprintln!("raid5 end to end: {during} writes during the rebuild, {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn sigterm_leaves_a_served_array_clean() {
    let dir = tempdir();
    let file = |n: &str| {
        let p = dir.path().join(n);
        std::fs::File::create(&p).unwrap().set_len(8 * MIB).unwrap();
        p.display().to_string()
    };
    let (a, b, c3) = (file("a.img"), file("b.img"), file("c.img"));
    run(&["raid", "create", "--level", "5", "--chunk", "64K", &a, &b, &c3]);
    let members = format!("{a}:{b}:{c3}");
    let status = || {
        let out = run(&["raid", "status", &members, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let before = status();

    // Written through the daemon, the array is dirty while served.
    let d = Daemon::start(dir.path(), &members);
    let mut c = Client::connect(&d.disk, 1, MIB as usize);
    assert_eq!(c.write(0, 0, &vec![0x5a; MIB as usize]), 0);
    let live = api(&d.api, serde_json::json!({"cmd": "raid-status", "members": members}));
    assert_eq!(live["state"], "active", "{live}");
    drop(c);
    d.stop();

    // After SIGTERM the superblocks say clean, with a newer events count.
    let after = status();
    assert_eq!(after["state"], "clean", "{after}");
    assert!(after["events"].as_u64() > live["events"].as_u64(), "{before} {live} {after}");
}
