//! Property: an invalid argument list never modifies an existing file. Every blkctl command that
//! changes something is run, from a fixed list of seeds, with arguments that mix valid tokens
//! (the real paths, `--force`, `--json`, `--shrink`, valid sizes) with at least one token that
//! is invalid whatever else the command line says; each run must exit 1 (blkctl's error status,
//! usage errors included) with a message on stderr, and leave every existing file byte for byte
//! as it was.
//!
//! The invalid tokens stay invalid however the command lines evolve (a positional size or a
//! `--size`, `--force`, `--json`): a size that does not parse (`12X`, `1.5`,
//! `99999999999999999999T`, and `-5` where no relative size is taken), an unknown flag, a
//! cluster, block or chunk size out of range, an unknown RAID level or image format, a file that
//! does not exist where one must, a file of the wrong kind, and a volume, snapshot or member
//! that does not exist (or already does, for a name to create).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Seeds of the case lists (fixed, so a failure is reproducible).
const SEEDS: [u64; 6] = [1, 2, 3, 0x5eed, 0xdead_beef, 20];
/// Cases per seed.
const CASES_PER_SEED: usize = 40;
/// A blkctl run that takes longer is a hang.
const RUN_BOUND: Duration = Duration::from_secs(20);

fn blkctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_blkctl"))
}

/// The existing files every case is checked against, and their bytes.
struct Fixture {
    dir: tempfile::TempDir,
    files: Vec<(PathBuf, Vec<u8>)>,
}

/// Names in the fixture directory.
const QCOW2: &str = "img.qcow2";
const POOL: &str = "pool.img";
const R0: &str = "r0.img";
const R1: &str = "r1.img";
const SPARE: &str = "spare.img";
const DATA: &str = "data.bin";
const SRC: &str = "src.raw";

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run blkctl: {e}"));
    assert!(
        out.status.success(),
        "building the fixture: {what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    /// A qcow2 image, a thin pool with a volume, a RAID 1 array, and files holding data.
    fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str], what: &str| must(Command::new(blkctl()).current_dir(d).args(args), what);
        run(&["qcow2", "create", QCOW2, "2M"], "qcow2 create");
        std::fs::File::create(d.join(POOL)).unwrap().set_len(4 << 20).unwrap();
        run(&["thin", "pool-create", POOL], "thin pool-create");
        run(&["thin", "create", POOL, "vm1", "--size", "8M"], "thin create");
        for m in [R0, R1] {
            std::fs::File::create(d.join(m)).unwrap().set_len(2 << 20).unwrap();
        }
        run(&["raid", "create", "--level", "1", R0, R1], "raid create");
        std::fs::write(d.join(SPARE), pseudo_random(2 << 20, 1)).unwrap();
        std::fs::write(d.join(DATA), pseudo_random(1 << 20, 2)).unwrap();
        std::fs::write(d.join(SRC), pseudo_random(1 << 20, 3)).unwrap();
        let files = [QCOW2, POOL, R0, R1, SPARE, DATA, SRC]
            .iter()
            .map(|n| (d.join(n), std::fs::read(d.join(n)).unwrap()))
            .collect();
        Fixture { dir, files }
    }

    /// The fixture files that changed (or vanished), and any new file left behind (removed).
    fn changes(&self) -> (Vec<String>, Vec<String>) {
        let changed = self
            .files
            .iter()
            .filter(|(p, bytes)| std::fs::read(p).map_or(true, |now| now != *bytes))
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut left = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if !self.files.iter().any(|(p, _)| *p == path) {
                left.push(path.file_name().unwrap().to_string_lossy().into_owned());
                let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
            }
        }
        (changed, left)
    }
}

/// One command line: positional arguments in order, and options (a flag and its value, if
/// any) that may go anywhere after the subcommand.
#[derive(Clone, Debug, Default)]
struct Line {
    words: Vec<&'static str>,
    positional: Vec<String>,
    options: Vec<Vec<String>>,
}

impl Line {
    fn new(words: &[&'static str], positional: &[&str]) -> Line {
        Line { words: words.to_vec(), positional: positional.iter().map(|s| s.to_string()).collect(), options: vec![] }
    }

    fn opt(&mut self, flag: &str, value: Option<&str>) {
        let mut o = vec![flag.to_string()];
        o.extend(value.map(str::to_string));
        self.options.push(o);
    }

    /// Sets an option's value (adding the option if it is not there).
    fn set(&mut self, flag: &str, value: &str) {
        match self.options.iter_mut().find(|o| o[0] == flag) {
            Some(o) => o.truncate(1),
            None => self.options.push(vec![flag.to_string()]),
        }
        self.options.iter_mut().find(|o| o[0] == flag).unwrap().push(value.to_string());
    }

    /// The argument list: options shuffled in among the positionals (which keep their order).
    fn args(&self, rng: &mut StdRng) -> Vec<String> {
        let mut units: Vec<Vec<String>> = self.positional.iter().map(|p| vec![p.clone()]).collect();
        for o in &self.options {
            let at = rng.gen_range(0..=units.len());
            units.insert(at, o.clone());
        }
        self.words.iter().map(|w| w.to_string()).chain(units.into_iter().flatten()).collect()
    }
}

/// A change that makes a command line invalid, named for the report.
type Bad = (&'static str, fn(&mut Line, &mut StdRng));

/// Sizes that never parse, in any size slot.
const BAD_SIZES: [&str; 3] = ["12X", "1.5", "99999999999999999999T"];
/// Also invalid where a size is absolute (never where `-SIZE` shrinks).
const BAD_ABSOLUTE_SIZES: [&str; 4] = ["12X", "1.5", "99999999999999999999T", "-5"];

fn pick(rng: &mut StdRng, from: &[&'static str]) -> &'static str {
    from.choose(rng).unwrap()
}

fn missing(rng: &mut StdRng) -> String {
    format!("missing-{}.img", rng.gen_range(0..100))
}

fn unknown_flag(l: &mut Line, _: &mut StdRng) {
    l.opt("--no-such-flag", None);
}

/// Positional `i` replaced (appended if an earlier change dropped it).
fn replace(l: &mut Line, i: usize, with: impl Into<String>) {
    match l.positional.get_mut(i) {
        Some(p) => *p = with.into(),
        None => l.positional.push(with.into()),
    }
}

/// A command's valid line (with valid extras) and the ways to make it invalid.
struct Subcommand {
    name: &'static str,
    valid: fn(&mut StdRng) -> Line,
    bad: &'static [Bad],
}

fn qcow2_create(rng: &mut StdRng) -> Line {
    let target = pick(rng, &[QCOW2, DATA, R0, POOL, "new.qcow2"]);
    let mut l = Line::new(&["qcow2", "create"], &[target, pick(rng, &["1M", "2M", "1.5M", "64K"])]);
    if rng.gen_bool(0.3) {
        l.opt("--cluster-size", Some(pick(rng, &["64K", "4K", "2M"])));
    }
    l
}

fn qcow2_convert(rng: &mut StdRng) -> Line {
    let (src, fmt) = *[(SRC, "raw"), (QCOW2, "qcow2"), (DATA, "raw")].choose(rng).unwrap();
    let dst = pick(rng, &[DATA, QCOW2, SPARE, R1, "new.qcow2"]);
    let mut l = Line::new(&["qcow2", "convert"], &[src, dst]);
    l.opt("-f", Some(fmt));
    if rng.gen_bool(0.3) {
        l.opt("-O", Some(pick(rng, &["raw", "qcow2"])));
    }
    l
}

fn qcow2_resize(rng: &mut StdRng) -> Line {
    Line::new(&["qcow2", "resize"], &[QCOW2, pick(rng, &["4M", "+1M", "1M", "-1M", "1.5M"])])
}

fn qcow2_snapshot(rng: &mut StdRng) -> Line {
    let mut l = Line::new(&["qcow2", "snapshot"], &[QCOW2]);
    l.opt(pick(rng, &["-c", "--create"]), Some("snap1"));
    l
}

fn thin_pool_create(rng: &mut StdRng) -> Line {
    let mut l = Line::new(&["thin", "pool-create"], &[pick(rng, &[POOL, DATA, SPARE, R0])]);
    if rng.gen_bool(0.3) {
        l.opt("--block-size", Some(pick(rng, &["64K", "128K", "1M"])));
    }
    l
}

fn thin_pool_grow(_: &mut StdRng) -> Line {
    Line::new(&["thin", "pool-grow"], &[POOL])
}

fn thin_create(rng: &mut StdRng) -> Line {
    let mut l = Line::new(&["thin", "create"], &[POOL, "vm2"]);
    l.opt("--size", Some(pick(rng, &["1M", "8M", "1.5M", "1G"])));
    l
}

fn thin_snapshot(_: &mut StdRng) -> Line {
    Line::new(&["thin", "snapshot"], &[POOL, "vm1", "snap1"])
}

fn thin_remove(_: &mut StdRng) -> Line {
    Line::new(&["thin", "remove"], &[POOL, "vm1"])
}

fn thin_resize(rng: &mut StdRng) -> Line {
    Line::new(&["thin", "resize"], &[POOL, "vm1", pick(rng, &["16M", "+1M", "1M", "-1M"])])
}

fn raid_create(rng: &mut StdRng) -> Line {
    let members: &[&str] = [&[R0, R1][..], &[DATA, SPARE][..], &[R0, SPARE][..]].choose(rng).unwrap();
    let mut l = Line::new(&["raid", "create"], members);
    l.opt("--level", Some("1"));
    if rng.gen_bool(0.3) {
        l.opt("--chunk", Some(pick(rng, &["64K", "4K", "1M"])));
    }
    l
}

fn array() -> String {
    format!("{R0}:{R1}")
}

fn raid_fail(rng: &mut StdRng) -> Line {
    let a = array();
    Line::new(&["raid", "fail"], &[&a, pick(rng, &[R0, R1, "0", "1"])])
}

fn raid_replace(rng: &mut StdRng) -> Line {
    let a = array();
    Line::new(&["raid", "replace"], &[&a, pick(rng, &[R0, R1]), SPARE])
}

fn raid_scrub_repair(_: &mut StdRng) -> Line {
    let mut l = Line::new(&["raid", "scrub"], &[&array()]);
    l.opt("--repair", None);
    l
}

const SUBCOMMANDS: &[Subcommand] = &[
    Subcommand {
        name: "qcow2 create",
        valid: qcow2_create,
        bad: &[
            ("bad size", |l, r| replace(l, 1, pick(r, &BAD_ABSOLUTE_SIZES))),
            ("--cluster-size 3K", |l, _| l.set("--cluster-size", "3K")),
            ("bad --cluster-size", |l, r| l.set("--cluster-size", pick(r, &["12X", "256", "4M", "-5"]))),
            ("bad --compat", |l, _| l.set("--compat", "9.9")),
            ("bad --refcount-bits", |l, _| l.set("--refcount-bits", "3")),
            ("bad --preallocation", |l, _| l.set("--preallocation", "sometimes")),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "qcow2 convert",
        valid: qcow2_convert,
        bad: &[
            ("--cluster-size 3K", |l, _| {
                l.set("-O", "qcow2");
                l.set("--cluster-size", "3K")
            }),
            ("bad -f", |l, r| l.set("-f", pick(r, &["vmdk", "qcow3", ""]))),
            ("bad -O", |l, r| l.set("-O", pick(r, &["vdi", "qcow"]))),
            ("missing source", |l, r| replace(l, 0, missing(r))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "qcow2 resize",
        valid: qcow2_resize,
        bad: &[
            ("bad size", |l, r| replace(l, 1, pick(r, &BAD_SIZES))),
            ("bad relative size", |l, r| replace(l, 1, pick(r, &["+12X", "-12X", "+1.5", "+99999999999999999999T"]))),
            ("missing image", |l, r| replace(l, 0, missing(r))),
            ("not a qcow2 image", |l, r| replace(l, 0, pick(r, &[DATA, POOL, R0]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "qcow2 snapshot",
        valid: qcow2_snapshot,
        bad: &[
            ("apply a missing snapshot", |l, _| {
                l.options.clear();
                l.opt("-a", Some("ghost"))
            }),
            ("delete a missing snapshot", |l, _| {
                l.options.clear();
                l.opt("-d", Some("ghost"))
            }),
            ("two actions", |l, _| l.opt("-a", Some("snap0"))),
            ("missing image", |l, r| replace(l, 0, missing(r))),
            ("not a qcow2 image", |l, r| replace(l, 0, pick(r, &[DATA, POOL, R1]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin pool-create",
        valid: thin_pool_create,
        bad: &[
            ("bad --block-size", |l, r| l.set("--block-size", pick(r, &["3K", "4K", "12X", "-5", "64M"]))),
            ("bad --metadata-size", |l, r| l.set("--metadata-size", pick(r, &BAD_ABSOLUTE_SIZES))),
            ("missing --metadata", |l, r| l.set("--metadata", &missing(r))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin pool-grow",
        valid: thin_pool_grow,
        bad: &[
            ("missing pool", |l, r| replace(l, 0, missing(r))),
            ("not a pool", |l, r| replace(l, 0, pick(r, &[DATA, QCOW2, R0]))),
            ("missing --metadata", |l, r| l.set("--metadata", &missing(r))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin create",
        valid: thin_create,
        bad: &[
            ("bad --size", |l, r| l.set("--size", pick(r, &BAD_ABSOLUTE_SIZES))),
            ("name taken", |l, _| replace(l, 1, "vm1")),
            ("missing pool", |l, r| replace(l, 0, missing(r))),
            ("not a pool", |l, r| replace(l, 0, pick(r, &[DATA, QCOW2, R0]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin snapshot",
        valid: thin_snapshot,
        bad: &[
            ("missing origin", |l, _| replace(l, 1, "ghost")),
            ("name taken", |l, _| replace(l, 2, "vm1")),
            ("missing pool", |l, r| replace(l, 0, missing(r))),
            ("not a pool", |l, r| replace(l, 0, pick(r, &[DATA, QCOW2, R0]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin remove",
        valid: thin_remove,
        bad: &[
            ("missing volume", |l, _| replace(l, 1, "ghost")),
            ("missing pool", |l, r| replace(l, 0, missing(r))),
            ("not a pool", |l, r| replace(l, 0, pick(r, &[DATA, QCOW2, R0]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "thin resize",
        valid: thin_resize,
        bad: &[
            ("bad size", |l, r| replace(l, 2, pick(r, &BAD_SIZES))),
            ("bad --size", |l, r| {
                l.positional.truncate(2);
                l.set("--size", pick(r, &BAD_SIZES))
            }),
            ("missing volume", |l, _| replace(l, 1, "ghost")),
            ("missing pool", |l, r| replace(l, 0, missing(r))),
            ("not a pool", |l, r| replace(l, 0, pick(r, &[DATA, QCOW2, R0]))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "raid create",
        valid: raid_create,
        bad: &[
            ("bad level", |l, r| l.set("--level", pick(r, &["4", "6", "10", "x", "-1"]))),
            ("bad chunk", |l, r| l.set("--chunk", pick(r, &["3K", "1", "12X", "-5", "1G"]))),
            ("bad --size", |l, r| l.set("--size", pick(r, &BAD_ABSOLUTE_SIZES))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "raid fail",
        valid: raid_fail,
        bad: &[
            ("not a member", |l, r| replace(l, 1, pick(r, &[SPARE, DATA, "7", "-1"]))),
            ("not an array", |l, _| replace(l, 0, format!("{DATA}:{SPARE}"))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "raid replace",
        valid: raid_replace,
        bad: &[
            ("OLD not a member", |l, r| replace(l, 1, pick(r, &[DATA, QCOW2]))),
            ("missing NEW", |l, r| replace(l, 2, missing(r))),
            ("bad --rate-limit", |l, r| l.set("--rate-limit", pick(r, &BAD_ABSOLUTE_SIZES))),
            ("not an array", |l, _| replace(l, 0, format!("{DATA}:{SRC}"))),
            ("unknown flag", unknown_flag),
        ],
    },
    Subcommand {
        name: "raid scrub --repair",
        valid: raid_scrub_repair,
        bad: &[
            ("not an array", |l, _| replace(l, 0, format!("{DATA}:{SPARE}"))),
            ("missing members", |l, r| replace(l, 0, format!("{}:{}", missing(r), missing(r)))),
            ("unknown flag", unknown_flag),
        ],
    },
];

/// Valid flags a command may or may not know yet (its CLI grows them): they must not make an
/// otherwise invalid line do anything. `--force` goes with what creates or formats, `--shrink`
/// with resizes, `--json` with every command. Each is added now and then only, so that most
/// lines reach their invalid token even where a flag is still unknown.
fn extras(sub: &str) -> &'static [&'static str] {
    match sub {
        "qcow2 create" | "qcow2 convert" | "thin pool-create" | "raid create" => &["--force", "--json"],
        "qcow2 resize" | "thin resize" => &["--shrink", "--json"],
        _ => &["--json"],
    }
}

/// One generated case: the subcommand, what makes it invalid, and its arguments.
struct Case {
    sub: &'static str,
    invalid: Vec<&'static str>,
    args: Vec<String>,
}

fn generate(rng: &mut StdRng) -> Case {
    let sub = SUBCOMMANDS.choose(rng).unwrap();
    let mut line = (sub.valid)(rng);
    for extra in extras(sub.name) {
        if rng.gen_bool(0.15) {
            line.opt(extra, None);
        }
    }
    let n = if rng.gen_bool(0.25) { 2 } else { 1 };
    let bad: Vec<&Bad> = sub.bad.choose_multiple(rng, n).collect();
    for (_, apply) in &bad {
        apply(&mut line, rng);
    }
    Case { sub: sub.name, invalid: bad.iter().map(|(name, _)| *name).collect(), args: line.args(rng) }
}

/// Runs blkctl in `dir`; None if it ran past [`RUN_BOUND`] (it is killed).
fn run(dir: &Path, args: &[String]) -> Option<std::process::Output> {
    let mut child = Command::new(blkctl())
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn invalid_argument_lists_never_modify_an_existing_file() {
    let started = Instant::now();
    let mut fixture = Fixture::build();
    let mut failures = Vec::new();
    let mut cases = 0;
    for seed in SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 0..CASES_PER_SEED {
            let case = generate(&mut rng);
            cases += 1;
            let shown = format!(
                "seed {seed} case {i}: blkctl {} [{} / invalid: {}]",
                case.args.join(" "),
                case.sub,
                case.invalid.join(", ")
            );
            let t0 = Instant::now();
            let out = run(fixture.dir.path(), &case.args);
            let took = t0.elapsed();
            let (changed, left) = fixture.changes();
            let mut wrong = Vec::new();
            match &out {
                None => wrong.push(format!("still running after {RUN_BOUND:?} (killed)")),
                Some(o) => {
                    if o.status.code() != Some(1) {
                        wrong.push(format!("exit status {} (want 1)", o.status));
                    }
                    if String::from_utf8_lossy(&o.stderr).trim().is_empty() {
                        wrong.push("nothing on stderr".into());
                    }
                }
            }
            if !changed.is_empty() {
                wrong.push(format!("modified {}", changed.join(", ")));
            }
            if !left.is_empty() {
                eprintln!("note: {shown}: left {} behind (removed)", left.join(", "));
            }
            if let Some(o) = &out {
                let err = String::from_utf8_lossy(&o.stderr);
                eprintln!("{shown}\n  -> {} in {took:?}: {}", o.status, err.lines().next().unwrap_or(""));
            }
            if !wrong.is_empty() {
                failures.push(format!("{shown}: {}", wrong.join("; ")));
                if !changed.is_empty() {
                    // Later cases start from intact files again.
                    fixture = Fixture::build();
                }
            }
        }
    }
    eprintln!("{cases} cases in {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {cases} invalid command lines misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
