//! `blkctl raid` as a user runs it, offline: every refusal leaves every file byte-identical.
//!
//! - `create` over a thin pool, a qcow2 image, another array's member or plain data is refused
//!   naming the file and what it holds; `--force` overwrites; bad levels, chunks and sizes are
//!   refused before anything is opened; `--size` makes missing member files.
//! - One file listed twice (same path, a hard link, a symlink) is refused naming both names, by
//!   every subcommand.
//! - `replace` with an OLD that is not a member is refused listing the members; an active OLD is
//!   named active (not "another process"); the member list printed after a replace is right.
//! - `scrub` exits 2 with mismatches left, 0 once repaired, 3 when degraded rows went unchecked.
//! - `--json` parses; without it a changing command prints one line.
//! - A seeded run of random, mostly invalid argument lists: whatever fails changed nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn blkctl_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blkctl")).current_dir(dir).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Run and require success.
fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = blkctl_in(dir, args);
    assert!(o.status.success(), "blkctl {args:?}: {}", text(&o));
    o
}

/// Run and require exit status 1 with every needle in the output.
fn refused(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let o = blkctl_in(dir, args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "blkctl {args:?} should be refused with 1: {t}");
    for n in needles {
        assert!(t.contains(n), "blkctl {args:?}: no {n:?} in: {t}");
    }
    t
}

fn sparse(dir: &Path, name: &str, size: u64) {
    std::fs::File::create(dir.join(name)).unwrap().set_len(size).unwrap();
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn assert_same(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let after = snapshot(dir);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "{what}: files came or went");
    for (p, b) in before {
        assert!(after[p] == *b, "{what}: {} changed", p.display());
    }
}

fn one_line(o: &Output) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "one line saying what it did: {out:?}");
}

#[test]
fn create_refuses_what_members_hold_and_force_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "pool.img", "data.img", "m1.img", "m2.img"] {
        sparse(dir, n, 8 * MIB);
    }
    ok(dir, &["thin", "pool-create", "pool.img"]);
    ok(dir, &["qcow2", "create", "disk.qcow2", "1G"]);
    std::fs::OpenOptions::new().write(true).open(dir.join("disk.qcow2")).unwrap().set_len(8 * MIB).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("data.img"))
        .unwrap()
        .write_all_at(b"hello", 300_000)
        .unwrap();
    ok(dir, &["raid", "create", "--level", "1", "m1.img", "m2.img"]);
    let before = snapshot(dir);
    for (bad, holds) in [
        // A new pool's first commit lands in its second superblock slot (offset 4096), which
        // the signature probe reads as data: refused all the same.
        ("pool.img", "pool.img: holds "),
        ("disk.qcow2", "holds a qcow2 image"),
        ("m2.img", "holds a strata RAID member"),
        ("data.img", "holds data (a non-zero byte at offset 300000)"),
    ] {
        refused(dir, &["raid", "create", "--level", "5", "a.img", "b.img", bad], &[bad, holds, "--force"]);
        assert_same(dir, &before, bad);
    }
    let o = ok(dir, &["raid", "create", "--level", "5", "--force", "a.img", "b.img", "data.img"]);
    one_line(&o);
    assert!(text(&o).contains("created RAID 5 array") && text(&o).contains("members=a.img:b.img:data.img"));
    let st = ok(dir, &["raid", "status", "a.img:b.img:data.img", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["state"], "clean", "{v}");
}

#[test]
fn bad_arguments_are_refused_before_anything_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img"] {
        sparse(dir, n, 8 * MIB);
    }
    std::fs::OpenOptions::new().write(true).open(dir.join("c.img")).unwrap().write_all_at(b"keep", 0).unwrap();
    let before = snapshot(dir);
    let cases: &[(&[&str], &str)] = &[
        (&["--level", "4", "a.img", "b.img", "c.img"], "--level 4: one of 0, 1, 5"),
        (&["--level", "5", "a.img", "b.img"], "RAID 5 needs 3 to 32 members, got 2"),
        (&["--level", "0", "--chunk", "3K", "a.img", "b.img"], "chunk size 3072"),
        (&["--level", "1", "--size", "100K", "a.img", "b.img"], "leaves no room for data"),
        (&["--level", "1", "--size", "1X", "a.img", "b.img"], "1X"),
        (&["--level", "1", "--size", "16M", "a.img", "b.img"], "less than --size 16 MiB"),
        (&["--level", "1", "a.img", "new.img"], "new.img does not exist (give --size"),
        (&["--level", "1", "--size", "4M", "new.img", "c.img"], "c.img: holds data"),
        (&["--level", "1", "--bogus", "a.img", "b.img"], "--bogus"),
    ];
    for (args, needle) in cases {
        let all: Vec<&str> = ["raid", "create"].iter().chain(args.iter()).copied().collect();
        refused(dir, &all, &[needle]);
        assert_same(dir, &before, &format!("{args:?}"));
    }
    // --size makes the missing members, and a create that fails after making one removes it.
    let o = ok(dir, &["raid", "create", "--level", "1", "--size", "4M", "--json", "n1.img", "n2.img"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["created_files"], serde_json::json!(["n1.img", "n2.img"]), "{v}");
    assert_eq!(v["array"], "n1.img:n2.img");
    assert_eq!(std::fs::metadata(dir.join("n1.img")).unwrap().len(), 4 * MIB);
}

#[test]
fn one_file_listed_twice_is_refused_by_every_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img", "d.img"] {
        sparse(dir, n, 8 * MIB);
    }
    std::fs::hard_link(dir.join("a.img"), dir.join("hard.img")).unwrap();
    std::os::unix::fs::symlink(dir.join("b.img"), dir.join("sym.img")).unwrap();
    let before = snapshot(dir);
    refused(dir, &["raid", "create", "--level", "5", "a.img", "b.img", "a.img"], &["member a.img is listed twice"]);
    refused(
        dir,
        &["raid", "create", "--level", "5", "a.img", "b.img", "hard.img"],
        &["listed twice: a.img and hard.img are the same file"],
    );
    refused(
        dir,
        &["raid", "create", "--level", "5", "./b.img", "a.img", "sym.img"],
        &["listed twice: ./b.img and sym.img are the same file"],
    );
    assert_same(dir, &before, "create");
    ok(dir, &["raid", "create", "--level", "5", "a.img", "b.img", "c.img"]);
    let before = snapshot(dir);
    for args in [
        &["raid", "status", "a.img:b.img:hard.img"][..],
        &["raid", "scrub", "a.img:b.img:c.img:sym.img"],
        &["raid", "fail", "a.img:hard.img:c.img", "c.img"],
        &["raid", "replace", "a.img:b.img:c.img:sym.img", "c.img", "d.img"],
    ] {
        refused(dir, args, &["is listed twice", "are the same file"]);
    }
    assert_same(dir, &before, "status, scrub, fail, replace");
    // NEW is a member already, under another name.
    refused(dir, &["raid", "replace", "a.img:b.img:c.img", "b.img", "hard.img"], &["hard.img is already a member"]);
    assert_same(dir, &before, "replace onto a member");
}

#[test]
fn replace_takes_only_a_member_that_is_down_and_prints_the_array_it_made() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img", "d.img", "x.img", "e.img"] {
        sparse(dir, n, 8 * MIB);
    }
    ok(dir, &["raid", "create", "--level", "5", "a.img", "b.img", "c.img"]);
    let o = ok(dir, &["raid", "fail", "a.img:b.img:c.img", "./b.img"]);
    one_line(&o);
    assert!(text(&o).contains("role 1") && text(&o).contains("marked faulty"), "{}", text(&o));
    let before = snapshot(dir);
    // A stranger, existing or not: it used to rebuild role 1 onto d.img.
    for stranger in ["x.img", "gone.img", "7"] {
        refused(
            dir,
            &["raid", "replace", "a.img:b.img:c.img", stranger, "d.img"],
            &[stranger, "is not a member of the array a.img:b.img:c.img: its members are a.img, b.img, c.img"],
        );
    }
    // An active member: said so, and no lock is blamed on "another process".
    let t = refused(
        dir,
        &["raid", "replace", "a.img:b.img:c.img", "a.img", "d.img"],
        &["is an active member: fail it first"],
    );
    assert!(!t.contains("another process") && !t.contains("lock"), "{t}");
    refused(dir, &["raid", "replace", "a.img:b.img:c.img", "0", "d.img"], &["role 0, a.img) is an active member"]);
    // NEW must exist and hold nothing.
    refused(dir, &["raid", "replace", "a.img:b.img:c.img", "b.img", "nope.img"], &["nope.img: does not exist"]);
    std::fs::OpenOptions::new().write(true).open(dir.join("e.img")).unwrap().write_all_at(b"mine", 4096).unwrap();
    let before_e = snapshot(dir);
    refused(dir, &["raid", "replace", "a.img:b.img:c.img", "b.img", "e.img"], &["e.img: holds data", "--force"]);
    assert_same(dir, &before_e, "replace onto data");
    std::fs::OpenOptions::new().write(true).open(dir.join("e.img")).unwrap().write_all_at(&[0; 4], 4096).unwrap();
    assert_same(dir, &before, "refused replaces");

    let o = ok(dir, &["raid", "replace", "a.img:b.img:c.img", "./b.img", "d.img", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["role"], 1, "{v}");
    assert_eq!(v["array"], "a.img:d.img:c.img", "{v}");
    assert_eq!(v["rebuilt"], true, "{v}");
    let st = ok(dir, &["raid", "status", "a.img:d.img:c.img", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["degraded"], false, "{v}");
    assert_eq!(v["members"][1]["name"], "d.img", "{v}");

    // By role number, with the member file gone: the printed list puts NEW where it was.
    ok(dir, &["raid", "fail", "a.img:d.img:c.img", "2"]);
    std::fs::remove_file(dir.join("c.img")).unwrap();
    let o = ok(dir, &["raid", "replace", "a.img:d.img:c.img", "2", "e.img"]);
    one_line(&o);
    assert!(text(&o).contains("the array is now a.img:d.img:e.img"), "{}", text(&o));
    let o = ok(dir, &["raid", "scrub", "a.img:d.img:e.img"]);
    assert!(text(&o).contains("0 mismatches"), "{}", text(&o));
}

#[test]
fn fail_refuses_what_would_stop_the_array_without_writing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img"] {
        sparse(dir, n, 8 * MIB);
    }
    ok(dir, &["raid", "create", "--level", "1", "a.img", "b.img"]);
    ok(dir, &["raid", "fail", "a.img:b.img", "a.img"]);
    let before = snapshot(dir);
    refused(dir, &["raid", "fail", "a.img:b.img", "b.img"], &["would stop the array"]);
    refused(dir, &["raid", "fail", "a.img:b.img", "c.img"], &["c.img is not a member"]);
    assert_same(dir, &before, "refused fails");
    let o = ok(dir, &["raid", "fail", "a.img:b.img", "a.img", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["role"].as_u64(), v["changed"].as_bool()), (Some(0), Some(false)), "{v}");
}

#[test]
fn scrub_exit_codes_say_what_it_found() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img"] {
        sparse(dir, n, 8 * MIB);
    }
    ok(dir, &["raid", "create", "--level", "1", "a.img", "b.img", "c.img"]);
    let clean = blkctl_in(dir, &["raid", "scrub", "a.img:b.img:c.img"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    // A copy that disagrees, in the data area (past the 1 MiB of metadata).
    std::fs::OpenOptions::new().write(true).open(dir.join("b.img")).unwrap().write_all_at(b"rot", 3 * MIB).unwrap();
    let found = blkctl_in(dir, &["raid", "scrub", "a.img:b.img:c.img", "--json"]);
    assert_eq!(found.status.code(), Some(2), "{}", text(&found));
    let v: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!((v["mismatches"].as_u64(), v["repaired"].as_u64()), (Some(1), Some(0)), "{v}");
    let fixed = blkctl_in(dir, &["raid", "scrub", "a.img:b.img:c.img", "--repair"]);
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed));
    assert!(text(&fixed).contains("1 mismatches, 1 repaired"), "{}", text(&fixed));
    assert_eq!(blkctl_in(dir, &["raid", "scrub", "a.img:b.img:c.img"]).status.code(), Some(0));
    // Two of three members gone: nothing left to compare.
    std::fs::remove_file(dir.join("b.img")).unwrap();
    std::fs::remove_file(dir.join("c.img")).unwrap();
    let degraded = blkctl_in(dir, &["raid", "scrub", "a.img:b.img:c.img"]);
    assert_eq!(degraded.status.code(), Some(3), "{}", text(&degraded));
    assert!(text(&degraded).contains("could not be checked"), "{}", text(&degraded));
    let help = ok(dir, &["raid", "scrub", "--help"]);
    assert!(text(&help).contains("2 mismatches found") && text(&help).contains("3 none found"), "{}", text(&help));
}

/// One token of a random argument list.
fn pick<'a>(rng: &mut SmallRng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

#[test]
fn random_invalid_argument_lists_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img", "z.img", "pool.img", "data.img"] {
        sparse(dir, n, 8 * MIB);
    }
    ok(dir, &["raid", "create", "--level", "5", "a.img", "b.img", "c.img"]);
    ok(dir, &["thin", "pool-create", "pool.img"]);
    std::fs::OpenOptions::new().write(true).open(dir.join("data.img")).unwrap().write_all_at(b"x", 5).unwrap();
    std::fs::hard_link(dir.join("a.img"), dir.join("hard.img")).unwrap();
    let fixture = snapshot(dir);
    let files = ["a.img", "b.img", "c.img", "z.img", "pool.img", "data.img", "hard.img", "gone.img", "", "./a.img"];
    let lists =
        ["a.img:b.img:c.img", "a.img:b.img", "a.img:hard.img:c.img", "a.img::c.img", "x:y", "a.img:b.img:c.img:z.img"];
    let sizes = ["0", "-1", "1X", "4K", "100K", "1.5", "64M", "99999999999T", "+1M", ""];
    let mut rng = SmallRng::seed_from_u64(20);
    let mut refusals = 0;
    for round in 0..80 {
        let mut args: Vec<String> = vec!["raid".into()];
        match rng.gen_range(0..4) {
            0 => {
                args.push("create".into());
                for _ in 0..rng.gen_range(0..4) {
                    let opt = pick(&mut rng, &["--level", "--chunk", "--size", "--no-ppl", "--json", "--rate-limit"]);
                    args.push(opt.into());
                    if !opt.starts_with("--no") && opt != "--json" {
                        args.push(pick(&mut rng, &["0", "1", "5", "4", "7", "64K", "3K"]).into());
                        if opt == "--size" {
                            *args.last_mut().unwrap() = pick(&mut rng, &sizes).into();
                        }
                    }
                }
                for _ in 0..rng.gen_range(0..5) {
                    args.push(pick(&mut rng, &files).into());
                }
            }
            1 => {
                // Mostly the right shape (ARRAY OLD NEW), now and then a flag or a word short.
                args.push("replace".into());
                args.push(pick(&mut rng, &lists).into());
                let f = pick(&mut rng, &files);
                args.push(pick(&mut rng, &[f, f, f, "0", "1", "2", "9"]).into());
                if rng.gen_bool(0.8) {
                    args.push(pick(&mut rng, &files).into());
                }
                if rng.gen_bool(0.3) {
                    args.push(pick(&mut rng, &["--json", "--rate-limit", "--no-wait", "--force", "1M"]).into());
                }
            }
            2 => {
                args.push("fail".into());
                args.push(pick(&mut rng, &lists).into());
                if rng.gen_bool(0.9) {
                    let f = pick(&mut rng, &files);
                    args.push(pick(&mut rng, &[f, f, f, "0", "1", "2", "3"]).into());
                }
                if rng.gen_bool(0.2) {
                    args.push(pick(&mut rng, &["--json", "--bogus", "extra"]).into());
                }
            }
            _ => {
                args.push("scrub".into());
                for _ in 0..rng.gen_range(0..3) {
                    let l = pick(&mut rng, &lists);
                    args.push(pick(&mut rng, &[l, l, "--repair", "--json", "--bogus"]).into());
                }
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = blkctl_in(dir, &argv);
        // A scrub that ran exits 2 or 3 for what it found (and may have written its count).
        let scrubbed = args[1] == "scrub" && matches!(o.status.code(), Some(2 | 3));
        if o.status.success() || scrubbed {
            // A valid command did its job: put the fixture back for the next round.
            for p in snapshot(dir).keys() {
                if !fixture.contains_key(p) {
                    std::fs::remove_file(p).unwrap();
                }
            }
            for (p, b) in &fixture {
                if std::fs::read(p).ok().as_ref() != Some(b) {
                    let _ = std::fs::remove_file(p);
                    std::fs::write(p, b).unwrap();
                }
            }
            std::fs::remove_file(dir.join("hard.img")).unwrap();
            std::fs::hard_link(dir.join("a.img"), dir.join("hard.img")).unwrap();
            continue;
        }
        refusals += 1;
        assert_eq!(o.status.code(), Some(1), "round {round}: {argv:?}: a refusal exits 1: {}", text(&o));
        assert_same(dir, &fixture, &format!("round {round}: {argv:?} ({})", text(&o).trim()));
    }
    assert!(refusals >= 40, "most random lists are invalid: {refusals} of 80 refused");
}
