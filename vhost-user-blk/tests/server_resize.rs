//! Live resize of served disks: one daemon serves a raw file, a qcow2 image, a thin volume, a
//! mem disk and a RAID 1 array; each is grown through the control socket or `blkctl resize`
//! while a raw vhost-user frontend is connected. GET_CONFIG then shows the new capacity, and a
//! request past the old end (refused before) succeeds. Shrinks without `shrink`, a qcow2 shrink
//! over data, the array, an unknown export and absurd sizes are refused with clear errors and
//! change nothing; `qemu-img check` is clean after the qcow2 case. And a disk grown again and
//! again under QD8 I/O that follows each new end at once fails no request.

mod server_common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blkio::ReqFlags;

use blockdev::{IoCtx, OpenOptions, RawFile};
use serde_json::{json, Value};
use server_common::ring::{TestFrontend, S_IOERR, S_OK};
use server_common::{blkctl_bin, tempdir, Client, DaemonProcess};
use thin::{Pool, PoolConfig};
use vhost_user_blk::api::thin::call;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;

fn blkctl(args: &[&str]) -> Output {
    Command::new(blkctl_bin()).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The capacity in the config space, in bytes.
fn capacity(fe: &mut TestFrontend) -> u64 {
    let c = fe.config();
    u64::from_le_bytes(c[..8].try_into().unwrap()) * 512
}

/// A 4 KiB write then read back of the last 4 KiB below `end`; returns the two statuses.
fn write_read_at(fe: &mut TestFrontend, end: u64, fill: u8) -> (u8, u8) {
    let sector = (end - 4096) / 512;
    let w = fe.write(0, sector, &[fill; 4096]);
    let (r, data) = fe.read_sectors(0, sector, 4096);
    if w == S_OK && r == S_OK {
        assert!(data.iter().all(|&b| b == fill), "read back something else at {end}");
    }
    (w, r)
}

/// Grow `name` (served at `sock`) by 8 MiB with `grow`, and check the frontend sees it.
fn grows(fe: &mut TestFrontend, name: &str, grow: impl FnOnce() -> Value) {
    assert_eq!(capacity(fe), SIZE, "{name}: capacity before");
    assert_eq!(fe.read_sectors(0, SIZE / 512, 4096).0, S_IOERR, "{name}: a read past the end was served");
    assert_eq!(write_read_at(fe, SIZE, 0x11), (S_OK, S_OK), "{name}: the old last block");
    let v = grow();
    assert_eq!(capacity(fe), 2 * SIZE, "{name}: GET_CONFIG after the resize ({v})");
    assert_eq!(write_read_at(fe, 2 * SIZE, 0x22), (S_OK, S_OK), "{name}: the new last block");
    assert_eq!(write_read_at(fe, SIZE + 4096, 0x33), (S_OK, S_OK), "{name}: just past the old end");
    let (st, data) = fe.read_sectors(0, (SIZE - 4096) / 512, 4096);
    assert!(st == S_OK && data.iter().all(|&b| b == 0x11), "{name}: data below the old end changed");
}

fn resize_json(api: &Path, name: &str, size: &str, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec!["resize", "--api-socket", api.to_str().unwrap(), "--json", name, size];
    args.extend_from_slice(extra);
    let o = blkctl(&args);
    if o.status.success() {
        Ok(serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("blkctl resize --json: {e}: {}", text(&o))))
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        Err(text(&o))
    }
}

fn qemu_img() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: qemu-img check of the resized image: qemu-img not installed (apt-get install qemu-utils)");
    }
    ok
}

#[test]
fn served_disks_grow_live_and_bad_resizes_change_nothing() {
    let d = tempdir();
    let dir = d.path();
    let sock = |n: &str| dir.join(format!("{n}.sock"));
    let api = dir.join("api.sock");
    let io = IoCtx::new().unwrap();

    let raw = dir.join("raw.img");
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let qcow = dir.join("disk.qcow2");
    qcow::create_path(&io, &qcow, &qcow::CreateOptions { size: SIZE, ..Default::default() }).unwrap();
    let pool = dir.join("pool.img");
    {
        let f = RawFile::create(&pool, 64 * MIB, OpenOptions::default()).unwrap();
        let p = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(p.create_volume(&io, "v", SIZE)).unwrap();
        io.block_on(p.close(&io)).unwrap();
    }
    for n in ["m0.img", "m1.img"] {
        std::fs::File::create(dir.join(n)).unwrap().set_len(SIZE).unwrap();
    }
    let members = format!("{}:{}", dir.join("m0.img").display(), dir.join("m1.img").display());
    let (m0, m1) = (dir.join("m0.img"), dir.join("m1.img"));
    let o = blkctl(&["raid", "create", "--level", "1", m0.to_str().unwrap(), m1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let specs = [
        format!("socket={},name=raw,format=raw,path={}", sock("raw").display(), raw.display()),
        format!("socket={},name=qcow,format=qcow2,path={}", sock("qcow").display(), qcow.display()),
        format!("socket={},name=thin,format=thin,pool={},volume=v", sock("thin").display(), pool.display()),
        format!("socket={},name=mem,format=mem,size=8M", sock("mem").display()),
        format!("socket={},name=raid,format=raid,members={members}", sock("raid").display()),
    ];
    let mut args: Vec<&str> = specs.iter().flat_map(|s| ["--disk", s.as_str()]).collect();
    args.extend(["--api-socket", api.to_str().unwrap()]);
    let daemon = DaemonProcess::start(&args, &[&api]);

    // Raw, through blkctl with a relative size: the file is extended.
    let mut fe = TestFrontend::connect(&sock("raw"), 1, 64);
    grows(&mut fe, "raw", || {
        let v = resize_json(&api, "raw", "+8M", &[]).unwrap();
        assert_eq!((v["old-size"].as_u64(), v["size"].as_u64()), (Some(SIZE), Some(2 * SIZE)), "{v}");
        // The protocol layer is not there yet: the frontend is not told, and the answer says so.
        assert_eq!(v["notified"], json!(false), "{v}");
        v
    });
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 2 * SIZE);
    // A shrink without --shrink, a negative size past zero, an absurd size, a size that is no
    // multiple of the block size, an unknown export: refused, nothing changed.
    let e = resize_json(&api, "raw", "4M", &[]).unwrap_err();
    assert!(e.contains("raw: new size 4 MiB") && e.contains("shrink"), "{e}");
    let e = resize_json(&api, "raw", "-1T", &[]).unwrap_err();
    assert!(e.contains("more than the current size"), "{e}");
    let e = resize_json(&api, "raw", "99999999T", &[]).unwrap_err();
    assert!(e.contains("too large"), "{e}");
    let e = resize_json(&api, "raw", "1000000", &[]).unwrap_err();
    assert!(e.contains("multiple of the export's 512-byte blocks"), "{e}");
    let e = resize_json(&api, "nope", "+1M", &[]).unwrap_err();
    assert!(e.contains("nope: no such export"), "{e}");
    let e = call(&api, &json!({"cmd": "resize", "name": "raw", "size": -5})).unwrap_err();
    assert!(e.contains("bad request"), "{e}");
    let e = call(&api, &json!({"cmd": "resize", "name": "raw", "size": 1u64 << 62})).unwrap_err();
    assert!(e.contains("raw file") && e.contains(raw.to_str().unwrap()), "{e}");
    assert_eq!(capacity(&mut fe), 2 * SIZE, "a refused resize changed the capacity");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 2 * SIZE, "a refused resize changed the file");
    // With --shrink it goes; the part past the new end is refused again.
    let v = resize_json(&api, "raw", "12M", &["--shrink"]).unwrap();
    assert_eq!(v["size"].as_u64(), Some(12 * MIB), "{v}");
    assert_eq!(capacity(&mut fe), 12 * MIB);
    assert_eq!(fe.read_sectors(0, 12 * MIB / 512, 4096).0, S_IOERR, "read past the shrunk end");
    drop(fe);

    // qcow2, through the control socket with bytes.
    let mut fe = TestFrontend::connect(&sock("qcow"), 1, 64);
    grows(&mut fe, "qcow2", || call(&api, &json!({"cmd": "resize", "name": "qcow", "size": 2 * SIZE})).unwrap());
    let e = call(&api, &json!({"cmd": "resize", "name": "qcow", "size": "4M", "shrink": true})).unwrap_err();
    assert!(e.contains("qcow") && e.contains("data"), "a qcow2 shrink over data: {e}");
    assert_eq!(capacity(&mut fe), 2 * SIZE, "a refused qcow2 shrink changed the capacity");
    drop(fe);

    // Thin: the pool's own resize of the served volume reaches the export.
    let mut fe = TestFrontend::connect(&sock("thin"), 1, 64);
    grows(&mut fe, "thin", || {
        let o = blkctl(&["thin", "resize", "--api-socket", api.to_str().unwrap(), pool.to_str().unwrap(), "v", "+8M"]);
        assert!(o.status.success(), "{}", text(&o));
        Value::Null
    });
    let e = resize_json(&api, "thin", "4M", &["--shrink"]).unwrap_err();
    assert!(e.contains("open (served)"), "{e}");
    assert_eq!(capacity(&mut fe), 2 * SIZE);
    let v = resize_json(&api, "thin", "+1M", &[]).unwrap();
    assert_eq!(v["size"].as_u64(), Some(2 * SIZE + MIB), "{v}");
    assert_eq!(capacity(&mut fe), 2 * SIZE + MIB);
    drop(fe);

    // Mem.
    let mut fe = TestFrontend::connect(&sock("mem"), 1, 64);
    grows(&mut fe, "mem", || resize_json(&api, "mem", "16M", &[]).unwrap());
    drop(fe);

    // RAID refuses, saying why.
    let mut fe = TestFrontend::connect(&sock("raid"), 1, 64);
    let before = capacity(&mut fe);
    let e = resize_json(&api, "raid", "+8M", &[]).unwrap_err();
    assert!(e.contains("RAID array cannot change size"), "{e}");
    assert_eq!(capacity(&mut fe), before);
    drop(fe);

    daemon.stop();
    if qemu_img() {
        let o = Command::new("qemu-img").args(["check", qcow.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success() && text(&o).contains("No errors"), "{}", text(&o));
        let o = Command::new("qemu-img").args(["info", "--output=json", qcow.to_str().unwrap()]).output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["virtual-size"].as_u64(), Some(2 * SIZE), "{v}");
    }
}

/// QD8 4 KiB writes and reads at random offsets below `cap` (which the test moves up after each
/// resize answer) until `stop`; returns (requests, failures).
fn io_until(socket: &Path, cap: &AtomicU64, stop: &AtomicBool) -> (u64, u64) {
    const QD: usize = 8;
    let mut c = Client::connect(socket, 1, QD * 4096);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |cap: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % (cap / 4096) * 4096
    };
    let submit = |c: &mut Client, slot: usize, off: u64| {
        let p = c.ptr(slot * 4096);
        if slot.is_multiple_of(2) {
            c.queues[0].write(off, p, 4096, slot, ReqFlags::empty());
        } else {
            c.queues[0].read(off, p, 4096, slot, ReqFlags::empty());
        }
    };
    for slot in 0..QD {
        submit(&mut c, slot, next(cap.load(Ordering::SeqCst)));
    }
    let (mut done, mut failed, mut outstanding) = (0u64, 0u64, QD);
    while outstanding > 0 {
        for (slot, ret) in c.reap(0, 1) {
            done += 1;
            if ret != 0 {
                failed += 1;
            }
            outstanding -= 1;
            if !stop.load(Ordering::SeqCst) {
                // The last 4 KiB of the newest end often: a request past the old end.
                let cap = cap.load(Ordering::SeqCst);
                let off = if done.is_multiple_of(4) { cap - 4096 } else { next(cap) };
                submit(&mut c, slot, off);
                outstanding += 1;
            }
        }
    }
    (done, failed)
}

#[test]
fn a_disk_grown_under_io_fails_no_request() {
    let d = tempdir();
    let dir = d.path();
    let (raw, sock, api) = (dir.join("raw.img"), dir.join("raw.sock"), dir.join("api.sock"));
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let spec = format!("socket={},name=raw,format=raw,path={}", sock.display(), raw.display());
    let daemon = DaemonProcess::start(&["--disk", &spec, "--api-socket", api.to_str().unwrap()], &[&api]);
    let cap = Arc::new(AtomicU64::new(SIZE));
    let stop = Arc::new(AtomicBool::new(false));
    let io = {
        let (sock, cap, stop) = (sock.clone(), cap.clone(), stop.clone());
        std::thread::spawn(move || io_until(&sock, &cap, &stop))
    };
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=12u64 {
        let v = call(&api, &json!({"cmd": "resize", "name": "raw", "size": "+1M"})).unwrap();
        assert_eq!(v["size"].as_u64(), Some(SIZE + i * MIB), "{v}");
        // From the answer on, the new end is used at once.
        cap.store(SIZE + i * MIB, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (done, failed) = io.join().unwrap();
    assert!(done > 100, "too little I/O ran ({done} requests) to say anything");
    assert_eq!(failed, 0, "{failed} of {done} requests failed while the disk grew");
    let stats = call(&api, &json!({"cmd": "stats", "name": "raw"})).unwrap();
    assert_eq!(stats["errors"].as_u64(), Some(0), "{stats}");
    daemon.stop();
}
