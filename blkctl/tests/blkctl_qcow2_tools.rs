//! `blkctl qcow2 create|info|check|resize|snapshot|map|convert` as a user runs them: output that
//! agrees with qemu-img's, images qemu-img accepts, errors that name the file and the problem,
//! documented exit codes (usage errors exit 1, never a check's 2 or 3).

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
    for cmd in ["create", "info", "check", "resize", "snapshot", "map", "convert"] {
        let out = ok(&blkctl(&[cmd, "--help"], &[]), cmd);
        assert!(out.contains("Exit status"), "{cmd} --help: {out}");
    }
    let check = ok(&blkctl(&["check", "--help"], &[]), "check --help");
    assert!(check.contains("2 corruptions") && check.contains("3 only leaked"), "{check}");
}

#[test]
fn usage_errors_exit_1_never_a_check_code() {
    for args in [
        &["check", "--bogus", "x.qcow2"][..],
        &["check"],
        &["check", "-r", "some", "x.qcow2"],
        &["info", "--bogus", "x.qcow2"],
        &["map", "-X", "x.qcow2"],
        &["create", "x.qcow2"],
        &["resize", "x.qcow2"],
        &["snapshot", "x.qcow2"],
        &["convert", "x.qcow2"],
    ] {
        let out = blkctl(args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn create_options_make_images_qemu_img_accepts() {
    if !have_qemu("create_options_make_images_qemu_img_accepts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // (options, size, virtual size, compat, lazy refcounts, refcount bits, extended L2)
    type Case = (&'static [&'static str], &'static str, u64, &'static str, bool, u64, bool);
    let cases: &[Case] = &[
        (&[], "1.5G", 3 << 29, "1.1", false, 16, false),
        (&["--compat", "0.10", "--cluster-size", "4K"], "10M", 10 << 20, "0.10", false, 16, false),
        (&["--lazy-refcounts", "--refcount-bits", "1"], "64M", 64 << 20, "1.1", true, 1, false),
        (&["--extended-l2", "--cluster-size", "128K", "--refcount-bits", "64"], "1G", 1 << 30, "1.1", false, 64, true),
        (&["--preallocation", "metadata", "--cluster-size", "512"], "2M", 2 << 20, "1.1", false, 16, false),
        (&["--preallocation", "full"], "1M", 1 << 20, "1.1", false, 16, false),
    ];
    for (i, (opts, size, vsize, compat, lazy, bits, ext)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("c{i}.qcow2"));
        let mut args = vec!["create", "--json"];
        args.extend_from_slice(opts);
        let out = ok(&blkctl(&args, &[&img, Path::new(size)]), &format!("create {opts:?}"));
        let ours: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(ours["virtual-size"], *vsize, "{opts:?}");
        assert_eq!(ours["replaced"], false, "{opts:?}");
        assert!(qemu(&["check"], &[&img]).contains("No errors"), "{opts:?}");
        let info: serde_json::Value = serde_json::from_str(&qemu(&["info", "--output=json"], &[&img])).unwrap();
        let data = &info["format-specific"]["data"];
        assert_eq!(info["virtual-size"], *vsize, "{opts:?}");
        assert_eq!(info["cluster-size"], ours["cluster-size"], "{opts:?}");
        assert_eq!(data["compat"], *compat, "{opts:?}");
        if *compat == "1.1" {
            assert_eq!(data["lazy-refcounts"], *lazy, "{opts:?}");
            assert_eq!(data["extended-l2"], *ext, "{opts:?}");
        }
        assert_eq!(data["refcount-bits"], *bits, "{opts:?}");
        // And our info says what qemu-img's says.
        let mine: serde_json::Value = serde_json::from_str(&ok(&blkctl(&["info", "--json"], &[&img]), "info")).unwrap();
        assert_eq!(mine["virtual-size"], info["virtual-size"]);
        assert_eq!(mine["format-specific"]["data"]["compat"], data["compat"]);
    }
    let human = ok(&blkctl(&["info"], &[&dir.path().join("c0.qcow2")]), "info");
    let qemu_line = |t: &str| t.lines().find(|l| l.starts_with("virtual size:")).map(str::to_string);
    assert_eq!(qemu_line(&human), qemu_line(&qemu(&["info"], &[&dir.path().join("c0.qcow2")])));
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
    let out = ok(&blkctl(&["resize"], &[&img, Path::new("+64M")]), "resize +64M");
    assert_eq!(out, format!("Image resized: {} from 64 MiB to 128 MiB.\n", img.display()));
    assert!(qemu(&["info"], &[&img]).contains("(134217728 bytes)"));
    let out = blkctl(&["resize"], &[&img, Path::new("32M")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("d.qcow2") && err.contains("--shrink"), "{err}");
    let out = ok(&blkctl(&["resize", "--shrink", "--json", "--size", "-32M"], &[&img]), "shrink by 32M");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["old-virtual-size"].as_u64(), v["virtual-size"].as_u64()), (Some(128 << 20), Some(96 << 20)));
    assert!(qemu(&["info"], &[&img]).contains("(100663296 bytes)"));

    // snapshot: create, list (as qemu-img), apply a missing one (exit 1, named), delete.
    let out = ok(&blkctl(&["snapshot", "-c", "one"], &[&img]), "snapshot -c");
    assert_eq!(out, format!("Snapshot 'one' (ID 1) created in {}.\n", img.display()));
    let ours = ok(&blkctl(&["snapshot", "-l"], &[&img]), "snapshot -l");
    assert_eq!(ours, qemu(&["snapshot", "-l"], &[&img]));
    let json = ok(&blkctl(&["snapshot", "-l", "--json"], &[&img]), "snapshot -l --json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], "one");
    let out = blkctl(&["snapshot", "-a", "missing"], &[&img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'missing'"));
    let out = ok(&blkctl(&["snapshot", "-a", "one", "--json"], &[&img]), "snapshot -a");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["action"].as_str(), v["id"].as_str(), v["name"].as_str()), (Some("apply"), Some("1"), Some("one")));
    let out = ok(&blkctl(&["snapshot", "-d", "1", "--json"], &[&img]), "snapshot -d");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["action"].as_str(), v["name"].as_str()), (Some("delete"), Some("one")));
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
