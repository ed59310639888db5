//! `blkctl qcow2 resize|snapshot|map|convert` as a user runs them: output that agrees with
//! qemu-img's, errors that name the file and the problem, documented exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn blkctl(args: &[&str], file_args: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blkctl"));
    c.arg("qcow2").args(args).args(file_args);
    c.output().expect("run blkctl")
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

fn qemu(args: &[&str], file_args: &[&Path]) -> String {
    let out = Command::new("qemu-img").args(args).args(file_args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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

#[test]
fn every_tool_documents_its_exit_status() {
    for cmd in ["resize", "snapshot", "map", "convert"] {
        let out = ok(&blkctl(&[cmd, "--help"], &[]), cmd);
        assert!(out.contains("Exit status"), "{cmd} --help: {out}");
    }
}

#[test]
fn tools_agree_with_qemu_img() {
    if !have_qemu("tools_agree_with_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    ok(&blkctl(&["create"], &[&img, Path::new("64M")]), "create");
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "write -z 2M 64k", "-c", "write -c -P 8 4M 64k"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(io.status.success());

    // resize: grow, relative sizes, a refused shrink naming the file and the flag.
    ok(&blkctl(&["resize"], &[&img, Path::new("+64M")]), "resize +64M");
    assert!(qemu(&["info"], &[&img]).contains("(134217728 bytes)"));
    let out = blkctl(&["resize"], &[&img, Path::new("32M")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("d.qcow2") && err.contains("--shrink"), "{err}");
    ok(&blkctl(&["resize", "--shrink"], &[&img, Path::new("96M")]), "shrink to 96M");

    // snapshot: create, list (as qemu-img), apply a missing one (exit 1, named), delete.
    ok(&blkctl(&["snapshot", "-c", "one"], &[&img]), "snapshot -c");
    let ours = ok(&blkctl(&["snapshot", "-l"], &[&img]), "snapshot -l");
    assert_eq!(ours, qemu(&["snapshot", "-l"], &[&img]));
    let json = ok(&blkctl(&["snapshot", "-l", "--json"], &[&img]), "snapshot -l --json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], "one");
    let out = blkctl(&["snapshot", "-a", "missing"], &[&img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'missing'"));
    ok(&blkctl(&["snapshot", "-a", "one"], &[&img]), "snapshot -a");
    ok(&blkctl(&["snapshot", "-d", "1"], &[&img]), "snapshot -d");
    assert!(qemu(&["check"], &[&img]).contains("No errors"));

    // map: byte for byte qemu-img's JSON.
    let ours = ok(&blkctl(&["map", "--json"], &[&img]), "map --json");
    assert_eq!(ours, qemu(&["map", "--output=json"], &[&img]));

    // convert: compressed, with progress forced by -p.
    let out_img = dir.path().join("c.qcow2");
    let out = blkctl(&["convert", "-c", "-p"], &[&img, &out_img]);
    ok(&out, "convert -c -p");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(100.00/100%)"));
    qemu(&["compare", "-q"], &[&img, &out_img]);
    let raw = dir.path().join("c.raw");
    ok(&blkctl(&["convert", "-O", "raw"], &[&out_img, &raw]), "convert -O raw");
    qemu(&["compare", "-q", "-f", "qcow2", "-F", "raw"], &[&img, &raw]);
    let out = blkctl(&["convert", "-f", "vmdk"], &[&img, &raw]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vmdk"));
}
