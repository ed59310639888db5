//! `blkctl thin` as a user runs it: exit codes of `check` (0 clean, 2 corruption, also with
//! `--repair`), and the errors that point at `--api-socket`. Every changing command checks its
//! arguments, locks and looks before it writes: `pool-create` refuses a device that holds
//! something unless `--force`, a shrink needs `--shrink` and keeps mapped data unless
//! `--discard-data`, and random invalid argument lists never change a byte of the pool. Sizes go
//! positionally or as `--size`; `create` and `pool-info` say how overcommitted the pool is; each
//! changing command prints one line, or its JSON with `--json`.

use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

fn blkctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blkctl")).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_exits_0_when_clean_and_2_on_corruption_even_with_repair() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img");
    std::fs::File::create(&pool).unwrap().set_len(32 << 20).unwrap();
    let p = pool.to_str().unwrap();
    assert!(blkctl(&["thin", "pool-create", p]).status.success());
    assert!(blkctl(&["thin", "create", p, "v", "--size", "1G"]).status.success());
    let clean = blkctl(&["thin", "check", p]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("No errors"));

    // Flip a byte in every metadata page past the superblocks that holds something: whatever
    // the commit wrote there fails its checksum.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&pool).unwrap();
    let mut page = vec![0u8; 4096];
    for n in 2..64u64 {
        f.read_exact_at(&mut page, n * 4096).unwrap();
        if page.iter().any(|&b| b != 0) {
            page[100] ^= 0x40;
            f.write_all_at(&page, n * 4096).unwrap();
        }
    }
    drop(f);
    for extra in [&[][..], &["--repair"][..]] {
        let args: Vec<&str> = ["thin", "check", p].iter().chain(extra).copied().collect();
        let out = blkctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("ERROR"), "{}", text(&out));
    }
    let json = blkctl(&["thin", "check", p, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["corruptions"].as_u64().unwrap() >= 1, "{v}");
    // Opening it for use is refused and says what to run.
    let list = blkctl(&["thin", "list", p]);
    assert!(!list.status.success());
    assert!(text(&list).contains("blkctl thin check"), "{}", text(&list));
}

#[test]
fn api_socket_errors_name_the_socket_and_creation_is_refused_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img");
    std::fs::File::create(&pool).unwrap().set_len(32 << 20).unwrap();
    let p = pool.to_str().unwrap();
    let sock = dir.path().join("no-daemon.sock");
    let s = sock.to_str().unwrap();
    let out = blkctl(&["thin", "list", p, "--api-socket", s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no-daemon.sock") && text(&out).contains("cannot connect"), "{}", text(&out));
    let out = blkctl(&["thin", "pool-create", p, "--api-socket", s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not available through the daemon"), "{}", text(&out));
}

// ---- Validate, lock, look, then write: pool-create, resize, create, --json ----

const MIB: u64 = 1 << 20;

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "blkctl failed ({}): {}", o.status, text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected a refusal: {}", text(o));
    text(o)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn sized(dir: &std::path::Path, name: &str, size: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p.display().to_string()
}

/// A 16 MiB pool with volumes vm1 (4 MiB) and vm2 (1 GiB).
fn pool_with_volumes(dir: &std::path::Path) -> String {
    let p = sized(dir, "pool.img", 16 * MIB);
    ok(&blkctl(&["thin", "pool-create", &p]));
    ok(&blkctl(&["thin", "create", &p, "vm1", "4M"]));
    ok(&blkctl(&["thin", "create", &p, "vm2", "--size", "1G"]));
    p
}

/// Write `byte` over `[off, off + len)` of volume `vol`, offline through the library.
fn fill(pool: &str, vol: &str, off: u64, len: usize, byte: u8) {
    use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile, SharedBuf};
    let io = IoCtx::new().unwrap();
    let f: std::sync::Arc<dyn BlockDev> = std::sync::Arc::new(RawFile::open(pool, OpenOptions::default()).unwrap());
    let p = io.block_on(thin::Pool::open(&io, f, None)).unwrap();
    let v = p.volume(vol).unwrap();
    let mut b = SharedBuf::from_slice(&vec![byte; len]);
    io.block_on(v.write(&io, off, b.io(), true, IoTag::DATA)).unwrap();
    drop(v);
    io.block_on(p.close(&io)).unwrap();
}

#[test]
fn pool_create_refuses_a_pool_an_image_or_data_unless_forced_and_leaves_them_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volumes(dir.path());
    let before = std::fs::read(&pool).unwrap();
    // An existing pool: named with its volumes, --force named, nothing written. Also with
    // arguments that are wrong besides (checked before anything is written, --force or not).
    let msg = refused(&blkctl(&["thin", "pool-create", &pool]));
    assert!(msg.contains("pool.img: holds a strata thin pool") && msg.contains("2 volumes: vm1, vm2"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    for bad in [
        &["--block-size", "3K", "--force"][..],
        &["--block-size", "2M", "--force"],
        &["--metadata-size", "16E", "--force"],
        &["--metadata-size", "64M", "--force"],
        &["--metadata-size", "lots", "--force"],
    ] {
        let args: Vec<&str> = ["thin", "pool-create", &pool].iter().copied().chain(bad.iter().copied()).collect();
        let msg = refused(&blkctl(&args));
        assert!(msg.contains("block-size") || msg.contains("metadata"), "{args:?}: {msg}");
        assert!(std::fs::read(&pool).unwrap() == before, "{args:?} changed the pool");
    }
    assert!(std::fs::read(&pool).unwrap() == before, "a refused pool-create changed the pool");
    assert!(ok(&blkctl(&["thin", "list", &pool])).contains("vm2"));

    // A qcow2 image and a file with data somewhere in its first MiB.
    let img = sized(dir.path(), "disk.qcow2", 16 * MIB);
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().write_all_at(b"QFI\xfb\0\0\0\x03", 0).unwrap();
    let data = sized(dir.path(), "data.img", 16 * MIB);
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().write_all_at(b"x", 300_000).unwrap();
    for (file, what) in [(&img, "a qcow2 image"), (&data, "a non-zero byte at offset 300000")] {
        let before = std::fs::read(file).unwrap();
        let msg = refused(&blkctl(&["thin", "pool-create", file]));
        assert!(msg.contains(what) && msg.contains("--force"), "{msg}");
        assert!(std::fs::read(file).unwrap() == before, "{file} changed");
    }

    // A separate metadata device is looked at too (the data device is empty here).
    let empty = sized(dir.path(), "empty.img", 16 * MIB);
    let msg = refused(&blkctl(&["thin", "pool-create", &empty, "--metadata", &data]));
    assert!(msg.contains("data.img") && msg.contains("300000"), "{msg}");
    let msg = refused(&blkctl(&["thin", "pool-create", &empty, "--metadata", &empty]));
    assert!(msg.contains("pool device itself"), "{msg}");
    let msg = refused(&blkctl(&["thin", "pool-create", &empty, "--metadata", &img, "--metadata-size", "1M"]));
    assert!(msg.contains("--metadata-size"), "{msg}");
    assert!(std::fs::read(&empty).unwrap().iter().all(|&b| b == 0), "the data device was written");

    // --force overwrites: the old volumes are gone, and --json says what was made.
    let v = json(&blkctl(&["thin", "pool-create", &pool, "--force", "--json"]));
    assert_eq!(v["pool"], pool.as_str());
    assert_eq!(v["volumes"], 0);
    assert_eq!(v["data-blocks"], 240);
    assert!(ok(&blkctl(&["thin", "list", &pool])).lines().count() == 1, "volumes survived --force");
    let line = ok(&blkctl(&["thin", "pool-create", &data, "--force"]));
    assert!(line.starts_with("created thin pool on ") && line.contains("KiB") && line.lines().count() == 1, "{line}");
}

#[test]
fn shrink_needs_shrink_refuses_mapped_data_with_the_amount_and_discard_data_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volumes(dir.path());
    fill(&pool, "vm1", 3 * MIB, 128 << 10, 7);
    fill(&pool, "vm1", 0, 4096, 9);
    let before = std::fs::read(&pool).unwrap();

    let msg = refused(&blkctl(&["thin", "resize", &pool, "vm1", "1M"]));
    assert!(msg.contains("'vm1'") && msg.contains("--shrink"), "{msg}");
    let msg = refused(&blkctl(&["thin", "resize", &pool, "vm1", "-3M"]));
    assert!(msg.contains("--shrink"), "{msg}");
    let msg = refused(&blkctl(&["thin", "resize", &pool, "vm1", "--size", "1M", "--shrink"]));
    assert!(msg.contains("128 KiB (131072 bytes) of mapped data") && msg.contains("--discard-data"), "{msg}");
    assert!(msg.contains("at least 3.12 MiB"), "{msg}");
    let msg = refused(&blkctl(&["thin", "resize", &pool, "vm1", "1M", "--discard-data"]));
    assert!(msg.contains("--shrink"), "{msg}");
    for bad in ["1X", "+", "0", "100", "-4M", "300T", ""] {
        let msg = refused(&blkctl(&["thin", "resize", &pool, "vm1", bad, "--shrink", "--discard-data"]));
        assert!(msg.contains(bad) || msg.contains("size"), "{bad}: {msg}");
    }
    refused(&blkctl(&["thin", "resize", &pool, "nosuch", "+1M"]));
    assert!(std::fs::read(&pool).unwrap() == before, "a refused resize changed the pool");

    // Relative sizes, positional or --size; --json says what was done.
    let v = json(&blkctl(&["thin", "resize", &pool, "vm1", "+2M", "--json"]));
    assert_eq!(
        (v["old-size"].as_u64(), v["size"].as_u64(), v["discarded"].as_u64()),
        (Some(4 * MIB), Some(6 * MIB), Some(0))
    );
    assert_eq!(v["volume"], "vm1");
    let line = ok(&blkctl(&["thin", "resize", &pool, "vm1", "--size=-2M", "--shrink"]));
    assert!(line.contains("from 6 MiB to 4 MiB") && line.lines().count() == 1, "{line}");
    // A shrink that cuts only unmapped space needs --shrink alone.
    fill(&pool, "vm2", 0, 4096, 1);
    ok(&blkctl(&["thin", "resize", &pool, "vm2", "-1023M", "--shrink"]));

    let line = ok(&blkctl(&["thin", "resize", &pool, "vm1", "1M", "--shrink", "--discard-data"]));
    assert!(line.contains("dropping 128 KiB (131072 bytes) of mapped data"), "{line}");
    assert!(ok(&blkctl(&["thin", "check", &pool])).contains("No errors"));
    let list: serde_json::Value = json(&blkctl(&["thin", "list", &pool, "--json"]));
    assert_eq!(list[0]["size"], MIB);
    assert_eq!(list[0]["mapped-blocks"], 1);
}

#[test]
fn create_takes_the_size_either_way_and_says_how_much_the_pool_is_overcommitted() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sized(dir.path(), "pool.img", 16 * MIB);
    ok(&blkctl(&["thin", "pool-create", &pool]));
    let line = ok(&blkctl(&["thin", "create", &pool, "a", "8M"]));
    assert!(line.contains("created thin volume 'a' of 8 MiB") && line.contains("not overcommitted"), "{line}");
    let line = ok(&blkctl(&["thin", "create", &pool, "b", "--size", "32M"]));
    assert!(line.contains("overcommitted 2.7x: 40 MiB provisioned on 15 MiB"), "{line}");
    let v = json(&blkctl(&["thin", "create", &pool, "c", "1.5G", "--json"]));
    assert_eq!(v["size"], 3 * (1u64 << 29));
    assert_eq!(v["provisioned"], 40 * MIB + 1536 * MIB);
    assert_eq!(v["pool-size"], 15 * MIB);
    assert!(v["overcommit-ratio"].as_f64().unwrap() > 100.0, "{v}");
    let info = ok(&blkctl(&["thin", "pool-info", &pool]));
    assert!(info.contains("provisioned: 1.54 GiB (overcommitted 105.1x)"), "{info}");
    let info = json(&blkctl(&["thin", "pool-info", &pool, "--json"]));
    assert_eq!(info["provisioned"], 40 * MIB + 1536 * MIB);
    // Both forms at once, neither, or a bad size: usage errors (exit 1), nothing created.
    let before = std::fs::read(&pool).unwrap();
    for args in
        [&["d", "1M", "--size", "2M"][..], &["d"], &["d", "1X"], &["d", "-1M"], &["a", "1M"], &["bad/name", "1M"]]
    {
        let all: Vec<&str> = ["thin", "create", &pool].iter().copied().chain(args.iter().copied()).collect();
        refused(&blkctl(&all));
    }
    assert!(std::fs::read(&pool).unwrap() == before, "a refused create changed the pool");
}

#[test]
fn every_changing_command_prints_one_line_or_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sized(dir.path(), "pool.img", 8 * MIB);
    let p = pool.as_str();
    let v = json(&blkctl(&["thin", "pool-create", p, "--json"]));
    assert_eq!(v["data-blocks"], 112);
    let v = json(&blkctl(&["thin", "create", p, "a", "4M", "--json"]));
    assert_eq!(v["volume"], "a");
    let v = json(&blkctl(&["thin", "snapshot", p, "a", "s", "--json"]));
    assert_eq!(
        (v["snapshot"].as_str(), v["origin"].as_str(), v["size"].as_u64()),
        (Some("s"), Some("a"), Some(4 * MIB))
    );
    let v = json(&blkctl(&["thin", "resize", p, "s", "8M", "--json"]));
    assert_eq!(v["size"], 8 * MIB);
    fill(p, "s", 0, 64 << 10, 3);
    let v = json(&blkctl(&["thin", "remove", p, "s", "--json"]));
    assert_eq!((v["removed"].as_str(), v["freed"].as_u64()), (Some("s"), Some(64 << 10)));
    std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(16 * MIB).unwrap();
    let v = json(&blkctl(&["thin", "pool-grow", p, "--json"]));
    assert_eq!((v["old-size"].as_u64(), v["size"].as_u64()), (Some(7 * MIB), Some(15 * MIB)));
    // Without --json: one line each.
    for args in
        [&["snapshot", p, "a", "t"][..], &["resize", p, "t", "+1M"], &["remove", p, "t"], &["create", p, "u", "1M"]]
    {
        let all: Vec<&str> = ["thin"].iter().chain(args).copied().collect();
        let out = ok(&blkctl(&all));
        assert_eq!(out.lines().count(), 1, "{all:?}: {out}");
    }
    assert!(ok(&blkctl(&["thin", "remove", p, "u"])).contains("removed thin volume 'u'"));
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }
}

/// One random argument list for `thin CMD` on `pool` that must fail: valid parts chosen at
/// random, options in random order, and at least one fault that makes the command fail whatever
/// else the list holds (the pool exists and holds data at 3 MiB of the 4 MiB vm1).
fn invalid_args(rng: &mut Rng, pool: &str, meta_same: &str) -> Vec<String> {
    let cmd = rng.pick(&["pool-create", "pool-grow", "create", "snapshot", "remove", "resize"]);
    let mut pos: Vec<&str> = vec![pool];
    let mut opts: Vec<Vec<&str>> = Vec::new();
    let json = rng.next().is_multiple_of(2);
    if json {
        opts.push(vec!["--json"]);
    }
    match cmd {
        "pool-create" => {
            // The pool exists: without --force that alone is the fault; with it, another.
            let force = rng.next().is_multiple_of(2);
            if force {
                opts.push(vec!["--force"]);
                opts.push(match rng.next() % 6 {
                    0 => vec!["--block-size", rng.pick(&["3K", "2M", "0", "32K", "x"])],
                    1 => vec!["--metadata-size", rng.pick(&["1Z", "64M", "16E", "4K"])],
                    2 => vec!["--metadata", meta_same],
                    3 => vec!["--metadata", "/nonexistent/meta.img"],
                    4 => vec!["--api-socket", "/nonexistent/api.sock"],
                    _ => vec!["--metadata", meta_same, "--metadata-size", "2M"],
                });
            } else if rng.next().is_multiple_of(2) {
                opts.push(vec!["--block-size", rng.pick(&["64K", "128K", "1M"])]);
            }
        }
        "pool-grow" => {} // the file has not grown
        "create" => {
            let size = rng.pick(&["1M", "2G", "0", "100", "1X", "300T", "-1M", "1.5"]);
            let name = if ["1M", "2G"].contains(&size) { rng.pick(&["vm1", "vm2", "bad/name", ""]) } else { "new" };
            pos.push(name);
            match rng.next() % 3 {
                0 => pos.push(size),
                1 => opts.push(vec!["--size", size]),
                _ => {
                    pos.push(size);
                    opts.push(vec!["--size", "1M"]);
                }
            }
        }
        "snapshot" => {
            let (origin, name) = match rng.next() % 3 {
                0 => ("nosuch", "snap"),
                1 => ("vm1", rng.pick(&["vm2", "vm1", "a/b", ""])),
                _ => ("", "snap"),
            };
            pos.extend([origin, name]);
        }
        "remove" => pos.push(rng.pick(&["nosuch", "bad/name", ""])),
        _ => {
            // resize
            let (vol, size, flags): (&str, &str, &[&str]) = match rng.next() % 6 {
                0 => ("nosuch", "+1M", &[]),
                1 => ("vm1", rng.pick(&["1M", "-1M", "3M", "2560K"]), &[]),
                2 => ("vm1", rng.pick(&["1M", "-2M", "2M"]), &["--shrink"]),
                3 => ("vm1", "1M", &["--discard-data"]),
                4 => ("vm1", rng.pick(&["0", "100", "1X", "+", "-4M", "-5M", "300T"]), &["--shrink", "--discard-data"]),
                _ => ("vm2", "+1M", &["--size", "2M"]),
            };
            pos.extend([vol, size]);
            for f in flags {
                opts.push(vec![f]);
            }
        }
    }
    // Now and then a fault of syntax as well.
    if rng.next().is_multiple_of(8) {
        opts.push(vec![rng.pick(&["--bogus", "-z", "--size"])]);
    }
    // Options in random order, each before, between or after the positionals.
    for i in (1..opts.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        opts.swap(i, j);
    }
    let mut args: Vec<String> = vec!["thin".into(), cmd.into()];
    let mut rest: Vec<Vec<&str>> = pos.into_iter().map(|p| vec![p]).collect();
    for o in opts {
        let at = (rng.next() % (rest.len() as u64 + 1)) as usize;
        // Keep the pool first: clap takes the first positional as the pool.
        rest.insert(at.max(1), o);
    }
    args.extend(rest.into_iter().flatten().map(String::from));
    args
}

#[test]
fn random_invalid_argument_lists_never_change_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volumes(dir.path());
    fill(&pool, "vm1", 3 * MIB, 4096, 5);
    let before = std::fs::read(&pool).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..150 {
        let args = invalid_args(&mut rng, &pool, &pool);
        let out = blkctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(std::fs::read(&pool).unwrap() == before, "{args:?} changed the pool: {}", text(&out));
        // Past the argument parser, errors come from the command itself.
        seen.insert(text(&out).starts_with("blkctl thin: error:"));
    }
    assert!(seen.contains(&true) && seen.contains(&false), "only one kind of error was made");
    assert!(ok(&blkctl(&["thin", "check", &pool])).contains("No errors"));
}
