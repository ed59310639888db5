//! Crash cases with real guests: a guest writes generations of data to three strata disks (qcow2,
//! a thin volume, RAID 5), fsyncs each (a virtio FLUSH) and logs every flush point on the serial
//! console; mid-write either QEMU or the daemon is killed with SIGKILL. The daemon is started
//! again, a second guest reads the disks back, and every block of every flushed generation must
//! hold that generation or a later one written to the same place (never older data, zeros or a
//! torn line). Then each layer's checker must find no corruption: `qemu-img check` (leaks are
//! allowed after a crash), `blkctl thin check` (likewise), `blkctl raid scrub` (no mismatches).
//!
//! Layout: the first 2 MiB of each disk are 8 slots of 256 KiB; generation `g` goes to slot
//! `g % 8`, every 32-byte line of it reading `g=<g, 8 digits> s=<slot, 2 digits> strata-crash-xx`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_tests::daemon::Daemon;
use strata_tests::guest::{require_qemu, GuestArtifacts, Initramfs, QemuGuest};
use strata_tests::scratch::ScratchDir;

const MIB: u64 = 1 << 20;
const SLOTS: u64 = 8;
const SLOT_BYTES: u64 = 256 << 10;
const LINE: u64 = 32;
/// Flush points to see before the kill.
const FLUSHES_BEFORE_KILL: usize = 6;
const DEVS: [&str; 3] = ["vda", "vdb", "vdc"];

/// The writer: generation after generation, each written to all three disks with O_DIRECT and
/// fsync'd (`W` before the writes, `FLUSHED` after the last fsync).
const WRITER: &str = r#"
for d in vda vdb vdc; do wait_dev /dev/$d || exit 1; done
g=0
while true; do
    g=$((g + 1))
    s=$((g % 8))
    yes "$(printf 'g=%08d s=%02d strata-crash-xx' $g $s)" | head -c 262144 > /tmp/chunk
    echo "W g=$g s=$s"
    for d in vda vdb vdc; do
        dd if=/tmp/chunk of=/dev/$d bs=262144 seek=$s count=1 oflag=direct conv=fsync 2>/dev/null || exit 1
    done
    echo "FLUSHED g=$g s=$s"
done
"#;

/// The checker guest: the first 2 MiB of each disk as runs of identical lines (NULs become
/// empty lines), between markers.
const READER: &str = r#"
for d in vda vdb vdc; do
    wait_dev /dev/$d || exit 1
    dd if=/dev/$d of=/tmp/r bs=262144 count=8 iflag=direct 2>/dev/null || exit 1
    echo "BEGIN $d"
    tr '\000' '\n' < /tmp/r | uniq -c
    echo "END $d"
done
"#;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blkctl() -> Command {
    Command::new(strata_tests::bins::bin_path("blkctl").expect("blkctl"))
}

/// The three disks and their daemon arguments.
struct Disks {
    qcow2: String,
    pool: String,
    members: String,
    sockets: Vec<PathBuf>,
}

impl Disks {
    fn create(dir: &ScratchDir) -> Disks {
        let qcow2 = dir.join("disk.qcow2").display().to_string();
        run_ok(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", &qcow2, "16M"]));
        let pool = dir.join("pool.img").display().to_string();
        std::fs::File::create(&pool).and_then(|f| f.set_len(64 * MIB)).unwrap();
        run_ok(blkctl().args(["thin", "pool-create", &pool]));
        run_ok(blkctl().args(["thin", "create", &pool, "vol", "--size", "16M"]));
        let members: Vec<String> = (0..3)
            .map(|i| {
                let p = dir.join(format!("m{i}.img"));
                std::fs::File::create(&p).and_then(|f| f.set_len(16 * MIB)).unwrap();
                p.display().to_string()
            })
            .collect();
        run_ok(blkctl().args(["raid", "create", "--level", "5"]).args(&members));
        let sockets = DEVS.iter().map(|d| dir.join(format!("{d}.sock"))).collect();
        Disks { qcow2, pool, members: members.join(":"), sockets }
    }

    fn daemon(&self) -> Daemon {
        let specs = [
            format!("format=qcow2,path={}", self.qcow2),
            format!("format=thin,pool={},volume=vol", self.pool),
            format!("format=raid,members={}", self.members),
        ];
        let mut args = Vec::new();
        for (spec, sock) in specs.iter().zip(&self.sockets) {
            args.push("--disk".to_string());
            args.push(format!("socket={},{spec}", sock.display()));
        }
        Daemon::start(&args, &self.sockets)
    }

    fn guest(&self, kernel: &Path, initrd: &Path) -> QemuGuest {
        self.sockets.iter().fold(QemuGuest::new(kernel, initrd), |g, s| g.vhost_user_blk(s, 1))
    }

    /// Each layer's checker: no corruption (leaks allowed after a crash).
    fn check_layers(&self) {
        let q = Command::new("qemu-img").args(["check", "-f", "qcow2", &self.qcow2]).output().unwrap();
        assert!(
            matches!(q.status.code(), Some(0) | Some(3)),
            "qemu-img check found corruption: {}",
            String::from_utf8_lossy(&q.stdout)
        );
        let t = blkctl().args(["thin", "check", &self.pool]).output().unwrap();
        assert!(
            matches!(t.status.code(), Some(0) | Some(3)),
            "thin check found corruption: {}{}",
            String::from_utf8_lossy(&t.stdout),
            String::from_utf8_lossy(&t.stderr)
        );
        let s = run_ok(blkctl().args(["raid", "scrub", &self.members, "--json"]));
        let v: serde_json::Value = serde_json::from_str(s.trim()).expect("scrub JSON");
        assert_eq!(v["mismatches"], 0, "RAID 5 scrub: {s}");
    }
}

/// Slot -> the last generation flushed there, from the writer's console.
fn flushed(console: &str) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for l in console.lines() {
        let Some(rest) = l.trim().strip_prefix("FLUSHED g=") else { continue };
        let mut it = rest.split(" s=");
        if let (Some(Ok(g)), Some(Ok(s))) = (it.next().map(str::parse::<u64>), it.next().map(str::parse::<u64>)) {
            out.insert(s, g);
        }
    }
    out
}

/// Checks one disk's runs (`uniq -c` output) against the flush points.
fn check_disk(dev: &str, runs: &str, flushed: &HashMap<u64, u64>, last_started: u64) {
    // (byte position, line) for each line; an empty line stands for one NUL byte.
    let mut pos = 0u64;
    let mut slot_lines: HashMap<u64, Vec<String>> = HashMap::new();
    for run in runs.lines() {
        let run = run.trim_start();
        let (count, line) = run.split_once(' ').unwrap_or((run, ""));
        let count: u64 = count.parse().unwrap_or_else(|_| panic!("{dev}: bad uniq line {run:?}"));
        let width = if line.is_empty() { 1 } else { LINE };
        for _ in 0..count {
            let slot = pos / SLOT_BYTES;
            slot_lines.entry(slot).or_default().push(line.to_string());
            pos += width;
        }
    }
    assert_eq!(pos, SLOTS * SLOT_BYTES, "{dev}: the runs cover {pos} bytes, not 2 MiB:\n{runs}");
    for (slot, &g_flushed) in flushed {
        let lines = &slot_lines[slot];
        for l in lines {
            let parsed = l.strip_prefix("g=").and_then(|r| r.split_once(" s=")).and_then(|(g, r)| {
                Some((g.parse::<u64>().ok()?, r.strip_suffix(" strata-crash-xx")?.parse::<u64>().ok()?))
            });
            let Some((g, s)) = parsed else {
                panic!("{dev}: slot {slot} (flushed at generation {g_flushed}) holds {l:?}, not a whole line of data");
            };
            assert_eq!(s, *slot, "{dev}: slot {slot} holds a line of slot {s}");
            assert!(
                g >= g_flushed && g % SLOTS == *slot && g <= last_started,
                "{dev}: slot {slot} holds generation {g}, but {g_flushed} was flushed there (last started {last_started})"
            );
        }
    }
}

/// Kills `what` (QEMU or the daemon) mid-write, restarts, verifies, checks the layers.
fn crash_and_verify(label: &str, kill_daemon: bool) {
    let art = GuestArtifacts::ensure().expect("guest artifacts");
    let dir = ScratchDir::new(label).expect("scratch dir");
    let disks = Disks::create(&dir);
    let writer = dir.join("writer.cpio");
    Initramfs::builder().artifacts(&art).script(WRITER).build(&writer).expect("writer initramfs");
    let reader = dir.join("reader.cpio");
    Initramfs::builder().artifacts(&art).script(READER).build(&reader).expect("reader initramfs");

    // Act 1: write until several flush points are logged and the next write has started; kill.
    let daemon = disks.daemon();
    let mut guest = disks.guest(&art.kernel, &writer).spawn().expect("start the writer guest");
    let wanted = format!("W g={}", FLUSHES_BEFORE_KILL + 1);
    guest
        .wait_for(Duration::from_secs(180), "the writer's flush points", |c| c.contains(&wanted))
        .expect("writer guest");
    let console = if kill_daemon {
        daemon.kill();
        std::thread::sleep(Duration::from_millis(200));
        guest.kill()
    } else {
        let c = guest.kill();
        daemon.stop(); // the daemon survives a killed frontend and still stops cleanly
        c
    };
    let flushed = flushed(&console);
    let last_started =
        console.lines().filter_map(|l| l.trim().strip_prefix("W g=")?.split(' ').next()?.parse::<u64>().ok()).max();
    assert!(flushed.len() >= FLUSHES_BEFORE_KILL.min(SLOTS as usize), "too few flush points:\n{console}");
    eprintln!("{label}: killed after flush points {flushed:?}, last generation started {last_started:?}");

    // Act 2: a fresh daemon, a second guest reads everything back.
    let daemon = disks.daemon();
    let out = disks.guest(&art.kernel, &reader).run().expect("reader guest");
    out.assert_success();
    daemon.stop();

    // Assert: every flushed generation (or a later one) is there on every disk; layers clean.
    let text = out.script_output();
    for dev in DEVS {
        let begin = format!("BEGIN {dev}\n");
        let runs = &text[text.find(&begin).expect("reader output") + begin.len()..];
        let runs = &runs[..runs.find(&format!("END {dev}")).expect("reader end")];
        check_disk(dev, runs, &flushed, last_started.unwrap_or(0));
    }
    disks.check_layers();
}

#[test]
fn qemu_killed_mid_write_loses_no_flushed_block() {
    if !require_qemu("qemu_killed_mid_write_loses_no_flushed_block") {
        return;
    }
    crash_and_verify("crash-qemu", false);
}

#[test]
fn daemon_killed_mid_write_loses_no_flushed_block() {
    if !require_qemu("daemon_killed_mid_write_loses_no_flushed_block") {
        return;
    }
    crash_and_verify("crash-daemon", true);
}

#[test]
fn the_checker_refuses_old_data_and_torn_lines() {
    let line = |g: u64, s: u64| format!("g={g:08} s={s:02} strata-crash-xx");
    let zeros = |n: u64| format!("{n} \n");
    let flushed: HashMap<u64, u64> = [(1, 9)].into();
    // Slot 0 unwritten, slot 1 holds generation 9, the rest unwritten.
    let good = format!("{}{} {}\n{}", zeros(SLOT_BYTES), SLOT_BYTES / LINE, line(9, 1), zeros(6 * SLOT_BYTES));
    check_disk("ok", &good, &flushed, 9);
    let newer = format!("{}{} {}\n{}", zeros(SLOT_BYTES), SLOT_BYTES / LINE, line(17, 1), zeros(6 * SLOT_BYTES));
    check_disk("newer", &newer, &flushed, 17);
    for bad in [
        format!("{}{} {}\n{}", zeros(SLOT_BYTES), SLOT_BYTES / LINE, line(1, 1), zeros(6 * SLOT_BYTES)),
        format!("{}{}", zeros(2 * SLOT_BYTES), zeros(6 * SLOT_BYTES)),
    ] {
        let r = std::panic::catch_unwind(|| check_disk("bad", &bad, &flushed, 17));
        assert!(r.is_err(), "accepted:\n{bad}");
    }
}
