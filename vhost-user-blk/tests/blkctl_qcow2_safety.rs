//! `blkctl qcow2` never loses an image on a slip: a bad argument, a target that holds something,
//! a served image, or a copy that fails half way all leave the file byte for byte as it was (and
//! no temporary file behind); `-U` looks at a served image while its client's I/O goes on.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use server_common::{blkctl_bin, daemon_bin, tempdir, Client};

fn blkctl(args: &[&str]) -> Output {
    Command::new(blkctl_bin()).arg("qcow2").args(args).output().expect("run blkctl")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert the command failed with exit 1 and return its stderr.
fn refused(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: expected exit 1\n{}{err}", String::from_utf8_lossy(&out.stdout));
    err
}

/// The names in a directory (to see that no temporary file was left behind).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn have_qemu(test: &str) -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_QEMU").is_none(),
            "{test}: qemu-img is required (STRATA_REQUIRE_QEMU)"
        );
        eprintln!("SKIPPED: {test}: qemu-img/qemu-io not installed (apt-get install qemu-utils)");
    }
    ok
}

fn qemu(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run qemu tool");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image with data in it (made by blkctl, written by qemu-io).
fn image_with_data(path: &Path) {
    ok(&blkctl(&["create", s(path), "8M"]), "create");
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256k", "-c", "write -P 0xa5 4M 64k", s(path)]);
}

#[test]
fn bad_arguments_leave_an_existing_image_byte_identical() {
    if !have_qemu("bad_arguments_leave_an_existing_image_byte_identical") {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("keep.qcow2");
    image_with_data(&img);
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![1u8; 1 << 20]).unwrap();
    let before = std::fs::read(&img).unwrap();
    let listing = names(dir.path());
    let f = s(&img);
    let missing = dir.path().join("missing.raw");
    let cases: Vec<Vec<&str>> = vec![
        vec!["create", f, "1000"],
        vec!["create", f, "1000", "--force"],
        vec!["create", f, "1M", "--cluster-size", "3K", "--force"],
        vec!["create", f, "1M", "--cluster-size", "4M", "--force"],
        vec!["create", f, "1M", "--refcount-bits", "3", "--force"],
        vec!["create", f, "1M", "--compat", "0.9", "--force"],
        vec!["create", f, "1M", "--compat", "0.10", "--lazy-refcounts", "--force"],
        vec!["create", f, "1M", "--preallocation", "some", "--force"],
        vec!["create", f, "1M", "--extended-l2", "--cluster-size", "4K", "--force"],
        vec!["create", f, "12X", "--force"],
        vec!["create", f, "1M", "--size", "1M", "--force"],
        vec!["create", f, "--force"],
        vec!["create", f, "1M", "--backing", "keep.qcow2", "--backing-format", "qcow2", "--force"],
        vec!["create", f, "1M"],
        vec!["resize", f, "1000"],
        vec!["resize", f, "-9M"],
        vec!["resize", f, "4M"],
        vec!["resize", f, "--size", "+1X"],
        vec!["resize", f, "1M", "--size", "2M"],
        vec!["resize", "--shrink", f, "1M"],
        vec!["convert", "-f", "raw", "-O", "vmdk", s(&src), f],
        vec!["convert", "-f", "raw", "--cluster-size", "3K", s(&src), f],
        vec!["convert", "-f", "raw", "-O", "raw", "-c", s(&src), f],
        vec!["convert", f, f],
        vec!["convert", "-f", "raw", s(&missing), f],
        vec!["snapshot", "-a", "missing", f],
        vec!["snapshot", "-d", "missing", f],
        vec!["check", "--bogus", f],
        vec!["check", "-U", "-r", "all", f],
        vec!["create", f, "1M", "--bogus", "--force"],
    ];
    for args in &cases {
        let err = refused(&blkctl(args), &format!("{args:?}"));
        assert!(!err.trim().is_empty(), "{args:?}: no message");
        assert!(std::fs::read(&img).unwrap() == before, "{args:?} changed the image");
        assert_eq!(names(dir.path()), listing, "{args:?} left a file behind");
    }
    // The refusals say what and where.
    let err = refused(&blkctl(&["create", f, "1000", "--force"]), "size");
    assert!(err.contains("1000") && err.contains("512"), "{err}");
    let err = refused(&blkctl(&["create", f, "1M", "--cluster-size", "3K", "--force"]), "cluster size");
    assert!(err.contains("3072"), "{err}");
    let err = refused(
        &blkctl(&["create", f, "1M", "--backing", "keep.qcow2", "--backing-format", "qcow2", "--force"]),
        "self",
    );
    assert!(err.contains("own backing file"), "{err}");
    let err = refused(&blkctl(&["convert", f, f]), "same file");
    assert!(err.contains("source itself"), "{err}");
    let err = refused(&blkctl(&["resize", f, "4M"]), "shrink");
    assert!(err.contains("keep.qcow2") && err.contains("--shrink") && err.contains("8 MiB"), "{err}");
    assert!(qemu(&["qemu-img", "check", f]).contains("No errors"));
}

#[test]
fn create_refuses_what_a_file_holds_unless_forced() {
    if !have_qemu("create_refuses_what_a_file_holds_unless_forced") {
        return;
    }
    let dir = tempdir();
    // An existing qcow2 image: named, refused, kept.
    let img = dir.path().join("vm.qcow2");
    image_with_data(&img);
    let before = std::fs::read(&img).unwrap();
    let err = refused(&blkctl(&["create", s(&img), "16M"]), "create over an image");
    assert!(err.contains("vm.qcow2") && err.contains("a qcow2 image") && err.contains("--force"), "{err}");
    assert!(std::fs::read(&img).unwrap() == before);
    // Data without a known header, past the start: refused with its offset.
    let data = dir.path().join("data.bin");
    let mut bytes = vec![0u8; 512 << 10];
    bytes[300_000] = 7;
    std::fs::write(&data, &bytes).unwrap();
    let err = refused(&blkctl(&["create", s(&data), "16M"]), "create over data");
    assert!(err.contains("data.bin") && err.contains("300000"), "{err}");
    assert!(std::fs::read(&data).unwrap() == bytes);
    // Zeros and empty files hold nothing: no --force needed.
    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    ok(&blkctl(&["create", s(&zeros), "16M"]), "create over zeros");
    qemu(&["qemu-img", "check", s(&zeros)]);
    // --force replaces, keeping the file's permission bits, and says so.
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = ok(&blkctl(&["create", s(&img), "--size", "1.5G", "--force", "--json"]), "create --force");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replaced"], true);
    assert_eq!(v["virtual-size"], 3u64 << 29);
    assert_eq!(v["filename"], s(&img));
    let info: serde_json::Value = serde_json::from_str(&qemu(&["qemu-img", "info", "--output=json", s(&img)])).unwrap();
    assert_eq!(info["virtual-size"], 3u64 << 29);
    assert!(qemu(&["qemu-img", "check", s(&img)]).contains("No errors"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&img).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640);
    // The human line is qemu-img's.
    let out = ok(&blkctl(&["create", s(&data), "1M", "--force"]), "create --force over data");
    assert_eq!(
        out,
        format!(
            "Formatting '{}', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 \
             lazy_refcounts=off refcount_bits=16\n",
            s(&data)
        )
    );
    assert_eq!(names(dir.path()), ["data.bin", "vm.qcow2", "zeros.img"]);
}

/// Overwrite the first bytes of the compressed stream of guest cluster 0 (64 KiB clusters), so
/// reading that cluster fails half way through a copy.
fn break_compressed_cluster_0(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let u64_at = |off: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, off).unwrap();
        u64::from_be_bytes(b)
    };
    let l1 = u64_at(40);
    let l2 = u64_at(l1) & 0x00ff_ffff_ffff_fe00;
    let entry = u64_at(l2);
    assert!(entry & (1 << 62) != 0, "cluster 0 is not compressed: {entry:#x}");
    let host = entry & ((1u64 << 54) - 1);
    f.write_all_at(&[0xff; 64], host).unwrap();
}

#[test]
fn a_convert_failing_half_way_leaves_the_destination_as_it_was() {
    if !have_qemu("a_convert_failing_half_way_leaves_the_destination_as_it_was") {
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("src.qcow2");
    ok(&blkctl(&["create", s(&src), "4M"]), "create src");
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 3 1M 1M", "-c", "write -c -P 9 0 64k", s(&src)]);
    break_compressed_cluster_0(&src);
    let dst = dir.path().join("dst.qcow2");
    image_with_data(&dst);
    let before = std::fs::read(&dst).unwrap();
    let listing = names(dir.path());
    let err = refused(&blkctl(&["convert", s(&src), s(&dst)]), "convert from a broken source");
    assert!(err.contains("dst.qcow2") && err.contains("left as it was"), "{err}");
    assert!(std::fs::read(&dst).unwrap() == before, "the failed convert changed the destination");
    assert_eq!(names(dir.path()), listing);
    // A good source replaces it (as qemu-img convert does), and qemu reads the same disk.
    let good = dir.path().join("good.raw");
    std::fs::write(&good, vec![0x42u8; 3 << 20]).unwrap();
    let out = ok(&blkctl(&["convert", "-f", "raw", s(&good), s(&dst)]), "convert over dst");
    assert!(out.contains("Converted") && out.contains("dst.qcow2") && out.contains("3 MiB"), "{out}");
    qemu(&["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", s(&good), s(&dst)]);
    let out = ok(&blkctl(&["convert", "-f", "raw", "-c", "--json", s(&good), s(&dst)]), "convert --json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["replaced"].as_bool(), v["compressed"].as_bool()), (Some(true), Some(true)));
    assert_eq!(v["virtual-size"], 3 << 20);
    qemu(&["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", s(&good), s(&dst)]);
    assert!(qemu(&["qemu-img", "check", s(&dst)]).contains("No errors"));
}

/// The daemon serving `image` at `sock`, stopped on drop.
struct Daemon(Child);

impl Daemon {
    fn serve(image: &Path, sock: &Path) -> Daemon {
        let child = Command::new(daemon_bin())
            .arg("--disk")
            .arg(format!("socket={},format=qcow2,path={}", s(sock), s(image)))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if let Ok(Some(st)) = d.0.try_wait() {
                panic!("daemon exited early: {st}");
            }
            assert!(Instant::now() < deadline, "{} never appeared", sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn stop(mut self) {
        // SAFETY: kill() with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "daemon did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..65536u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn a_served_image_survives_create_and_convert_onto_it_and_can_be_looked_at_with_u() {
    if !have_qemu("a_served_image_survives_create_and_convert_onto_it_and_can_be_looked_at_with_u") {
        return;
    }
    let dir = tempdir();
    let img: PathBuf = dir.path().join("srv.qcow2");
    ok(&blkctl(&["create", s(&img), "16M"]), "create");
    let sock = dir.path().join("srv.sock");
    let daemon = Daemon::serve(&img, &sock);
    let mut c = Client::connect(&sock, 1, 1 << 20);
    assert_eq!(c.write(0, 1 << 20, &pattern(1)), 0);
    assert_eq!(c.flush(0), 0);
    let before = std::fs::read(&img).unwrap();
    let raw = dir.path().join("big.raw");
    std::fs::write(&raw, vec![0x11u8; 2 << 20]).unwrap();
    let other = dir.path().join("other.qcow2");
    ok(&blkctl(&["create", s(&other), "1M"]), "create other");
    let listing = names(dir.path());
    let f = s(&img);
    for args in [
        vec!["create", f, "1G"],
        vec!["create", f, "1G", "--force"],
        vec!["convert", "-f", "raw", s(&raw), f],
        vec!["convert", "-O", "qcow2", s(&other), f],
        vec!["resize", f, "+1M"],
        vec!["snapshot", "-c", "s", f],
        vec!["check", "-r", "all", f],
    ] {
        let err = refused(&blkctl(&args), &format!("{args:?} on a served image"));
        assert!(err.contains("srv.qcow2") && err.contains("lock"), "{args:?}: {err}");
        assert!(!err.contains("control socket"), "{args:?}: {err}");
        assert!(std::fs::read(&img).unwrap() == before, "{args:?} changed the served image");
        assert_eq!(names(dir.path()), listing, "{args:?} left a file behind");
    }
    // The guest's I/O still verifies: what it wrote, and a new write.
    let (ret, got) = c.read(0, 1 << 20, 65536);
    assert_eq!(ret, 0);
    assert!(got == pattern(1), "served data changed");
    assert_eq!(c.write(0, 2 << 20, &pattern(2)), 0);
    assert_eq!(c.flush(0), 0);
    let (ret, got) = c.read(0, 2 << 20, 65536);
    assert!(ret == 0 && got == pattern(2));

    // Looking: refused with a hint naming -U, which then works without a lock.
    for args in [vec!["info", f], vec!["map", f], vec!["check", f], vec!["snapshot", "-l", f]] {
        let err = refused(&blkctl(&args), &format!("{args:?} without -U"));
        assert!(err.contains("-U/--force-share"), "{args:?}: {err}");
    }
    let info: serde_json::Value = serde_json::from_str(&ok(&blkctl(&["info", "-U", "--json", f]), "info -U")).unwrap();
    assert_eq!(info["virtual-size"], 16 << 20);
    let map: serde_json::Value = serde_json::from_str(&ok(&blkctl(&["map", "-U", "--json", f]), "map -U")).unwrap();
    assert!(map.as_array().unwrap().iter().any(|e| e["data"] == true && e["start"] == 1 << 20), "{map}");
    assert!(ok(&blkctl(&["check", "--force-share", f]), "check -U").contains("No errors"));
    ok(&blkctl(&["snapshot", "-l", "-U", f]), "snapshot -l -U");
    let err = refused(&blkctl(&["check", "-U", "-r", "all", f]), "check -U -r all");
    assert!(err.contains("--force-share") && err.contains("--repair"), "{err}");
    assert!(std::fs::read(&img).unwrap() != before, "the guest's second write did not reach the file");
    let (ret, got) = c.read(0, 1 << 20, 65536);
    assert!(ret == 0 && got == pattern(1));
    drop(c);
    daemon.stop();
    assert!(qemu(&["qemu-img", "check", f]).contains("No errors"));
}
