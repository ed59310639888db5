//! Property: random argument lists with at least one invalid argument, against every `blkctl
//! qcow2` subcommand that changes an image, never change the existing image (byte for byte),
//! never leave a file behind, and exit 1 (never 0, never a check's 2 or 3). Seeded: a failure
//! prints the seed and the arguments; STRATA_TEST_SEED=N replays another run.

use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Lists tried per subcommand.
const CASES: usize = 60;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// One subcommand's argument pieces: options that are fine alone, options of which any one
/// makes the list invalid, and the positional arguments (in order).
struct Shape {
    cmd: &'static str,
    valid: Vec<Vec<String>>,
    invalid: Vec<Vec<String>>,
    positional: Vec<String>,
    /// Positional pieces that may stand in for an option (a size given positionally).
    optional_positional: Option<(String, Vec<String>)>,
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn shapes(img: &str, raw: &str, missing: &str) -> Vec<Shape> {
    vec![
        Shape {
            cmd: "create",
            valid: vec![
                v(&["--force"]),
                v(&["--cluster-size", "4K"]),
                v(&["--preallocation", "metadata"]),
                v(&["--refcount-bits", "8"]),
                v(&["--lazy-refcounts"]),
                v(&["--json"]),
            ],
            invalid: vec![
                v(&["--size", "1000"]),
                v(&["--size", "12X"]),
                v(&["--size", "0.5"]),
                v(&["--size", "64P"]),
                v(&["--size", "1M", "--size", "2M"]),
                v(&["--cluster-size", "3K"]),
                v(&["--cluster-size", "4M"]),
                v(&["--cluster-size", "x"]),
                v(&["--refcount-bits", "3"]),
                v(&["--refcount-bits", "128"]),
                v(&["--compat", "0.9"]),
                v(&["--compat", "0.10", "--lazy-refcounts"]),
                v(&["--preallocation", "some"]),
                v(&["--extended-l2", "--cluster-size", "1K"]),
                v(&["--backing", "base.qcow2"]),
                v(&["--backing", "img.qcow2", "--backing-format", "qcow2"]),
                v(&["--bogus"]),
                v(&["-Z"]),
            ],
            positional: vec![img.to_string()],
            optional_positional: Some(("16M".into(), v(&["1000", "1.5", "-1M", "", "1.5.5G", "99999999999999999999"]))),
        },
        Shape {
            cmd: "resize",
            valid: vec![v(&["--shrink"]), v(&["--json"])],
            invalid: vec![
                v(&["--size", "+1M", "--size", "+2M"]),
                v(&["--size", "1000"]),
                v(&["--size", "-100M"]),
                v(&["--size", "0"]),
                v(&["--size", "x"]),
                v(&["--size", "4M"]),
                v(&["--size", "64P"]),
                v(&["--bogus"]),
            ],
            positional: vec![img.to_string()],
            optional_positional: Some(("+1M".into(), v(&["1000", "+1X", "-100M", "0", "4M", "+"]))),
        },
        Shape {
            cmd: "convert",
            valid: vec![v(&["-f", "raw"]), v(&["--json"]), v(&["-p"]), v(&["--cluster-size", "4K"])],
            invalid: vec![
                v(&["-O", "vmdk"]),
                v(&["-f", "qcow3"]),
                v(&["--cluster-size", "3K"]),
                v(&["--cluster-size", "0"]),
                v(&["-c", "-O", "raw"]),
                v(&["--bogus"]),
                v(&["-f", "raw", "-f", "raw"]),
            ],
            positional: vec![raw.to_string(), img.to_string()],
            optional_positional: None,
        },
        Shape {
            cmd: "snapshot",
            valid: vec![v(&["--json"])],
            invalid: vec![
                v(&["-a", "missing"]),
                v(&["-d", "missing"]),
                v(&["-c", ""]),
                v(&["-c", "x", "-d", "y"]),
                v(&["-c", "x", "-U"]),
                v(&["--bogus"]),
            ],
            positional: vec![img.to_string()],
            optional_positional: None,
        },
        Shape {
            cmd: "convert",
            valid: vec![v(&["--json"])],
            invalid: vec![v(&["-f", "raw"])],
            positional: vec![missing.to_string(), img.to_string()],
            optional_positional: None,
        },
    ]
}

/// One random argument list of `shape` with at least one invalid piece.
fn arguments(shape: &Shape, rng: &mut StdRng) -> Vec<String> {
    let mut pieces: Vec<Vec<String>> = Vec::new();
    for g in &shape.valid {
        if rng.gen_bool(0.3) {
            pieces.push(g.clone());
        }
    }
    let bad = rng.gen_range(1..=2);
    for _ in 0..bad {
        pieces.push(shape.invalid.choose(rng).unwrap().clone());
    }
    let mut positional = shape.positional.clone();
    if let Some((good, bads)) = &shape.optional_positional {
        match rng.gen_range(0..3) {
            // A valid size positionally too: the invalid pieces alone make the list invalid.
            0 => positional.push(good.clone()),
            1 => positional.push(bads.choose(rng).unwrap().clone()),
            _ => {}
        }
    }
    pieces.shuffle(rng);
    // Positionals keep their order, at random places between the options.
    let mut out = vec![shape.cmd.to_string()];
    let mut slots: Vec<usize> = (0..positional.len()).map(|_| rng.gen_range(0..=pieces.len())).collect();
    slots.sort();
    let mut next = 0;
    for (i, piece) in pieces.iter().enumerate() {
        while next < positional.len() && slots[next] == i {
            out.push(positional[next].clone());
            next += 1;
        }
        out.extend(piece.iter().cloned());
    }
    out.extend(positional[next..].iter().cloned());
    out
}

#[test]
fn random_invalid_argument_lists_never_change_an_existing_image() {
    let have = Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var_os("STRATA_REQUIRE_QEMU").is_none(), "qemu-io is required (STRATA_REQUIRE_QEMU)");
        eprintln!("SKIPPED: random_invalid_argument_lists_never_change_an_existing_image: qemu-io not installed");
        return;
    }
    let seed = std::env::var("STRATA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.qcow2");
    let blkctl = env!("CARGO_BIN_EXE_blkctl");
    let made = Command::new(blkctl).args(["qcow2", "create"]).arg(&img).arg("8M").output().unwrap();
    assert!(made.status.success());
    // Data at 4M: a shrink to 4M is refused even with --shrink.
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 256k", "-c", "write -P 0xa5 4M 64k"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(io.status.success());
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let before = std::fs::read(&img).unwrap();
    let listing = names(dir.path());
    let (i, r, m) = (img.to_str().unwrap(), raw.to_str().unwrap(), dir.path().join("missing.raw"));
    for shape in shapes(i, r, m.to_str().unwrap()) {
        for _ in 0..CASES {
            let args = arguments(&shape, &mut rng);
            let out = Command::new(blkctl).arg("qcow2").args(&args).output().unwrap();
            let what = format!("seed {seed}: blkctl qcow2 {args:?}");
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what}: exit {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(std::fs::read(&img).unwrap() == before, "{what} changed the image");
            assert_eq!(names(dir.path()), listing, "{what} left a file behind");
        }
    }
}
