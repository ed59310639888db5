//! The end-to-end matrix: fio's verify job (`fio-jobs/verify.fio`, crc32c, 16 MiB) in a real QEMU
//! TCG guest on every stack strata serves — raw; qcow2 fresh and over a backing file; RAID 0, 1
//! and 5 healthy, RAID 1 and 5 degraded; a thin volume and a snapshot; qcow2 on a thin volume on
//! RAID 5 (a config-file stack). One daemon (one config file) and one guest per group; the guest
//! runs the job on each of its disks in turn (`strata_guest::fio`). After the guest, the daemon
//! must stop cleanly, and each layer's checker must find the result clean: `qemu-img check`,
//! `blkctl raid scrub` (no mismatches), `blkctl thin check`, plus data outside fio's range (a
//! backing file, a snapshot's origin) must be untouched.
//!
//! raw and qcow2 (fresh and over a backing file) also run under vmm-mini
//! (`matrix_raw_and_qcow2_under_vmm_mini`): directly where `/dev/kvm` is hardware
//! virtualization, else nested in a QEMU TCG guest (`strata_guest::fio::nested`), which takes
//! minutes (docs/testing.md), so that case is opt-in as `tests/nested.rs` is:
//! it runs only with `VMM_MINI_NESTED=1` and otherwise prints `SKIPPED:`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, SharedBuf};
use strata_tests::daemon::Daemon;
use strata_tests::guest::fio::nested::{CarriedFile, NestedDisk, NestedFio};
use strata_tests::guest::fio::{set_job_option, FioDisk, FioDiskResult, FioGuest};
use strata_tests::guest::require_qemu;
use strata_tests::guest::vmm_mini::{detect_kvm, KvmHost, VmmMini};
use strata_tests::scratch::ScratchDir;
use vhost_user_blk::stack::{open_spec, OpenCtx};

const MIB: u64 = 1 << 20;
/// The verify job's size: every case writes (and verifies) this much at its start.
const VERIFY: u64 = 16 * MIB;

/// One export of the config file.
struct Case {
    name: &'static str,
    /// The export's keys (TOML lines) other than `socket` and `serial`.
    keys: String,
}

impl Case {
    fn new(name: &'static str, keys: String) -> Case {
        Case { name, keys }
    }
}

fn verify_job() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fio-jobs/verify.fio");
    let job = std::fs::read_to_string(path).expect("fio-jobs/verify.fio");
    set_job_option(&job, "size", &format!("{}m", VERIFY / MIB))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blkctl(args: &[&str]) -> String {
    run(Command::new(strata_tests::bins::bin_path("blkctl").expect("blkctl")).args(args))
}

fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

fn sized_file(path: &Path, size: u64) -> String {
    std::fs::File::create(path).and_then(|f| f.set_len(size)).expect("create file");
    path.display().to_string()
}

/// A recognisable pattern: every 4 KiB block holds its index.
fn pattern(len: u64) -> Vec<u8> {
    (0..len / 4096).flat_map(|i| (i as u32 ^ 0xa5a5_0000).to_le_bytes().repeat(1024)).collect()
}

fn read_all(dev: &Arc<dyn BlockDev>, len: u64) -> Vec<u8> {
    let io = IoCtx::new().expect("io_uring");
    let mut buf = SharedBuf::new(len as usize);
    io.block_on(dev.read(&io, 0, buf.io(), IoTag::DATA)).expect("read device");
    buf.bytes().to_vec()
}

fn write_all(dev: &Arc<dyn BlockDev>, data: &[u8]) {
    let io = IoCtx::new().expect("io_uring");
    let mut buf = SharedBuf::from_slice(data);
    io.block_on(dev.write(&io, 0, buf.io(), true, IoTag::DATA)).expect("write device");
    io.block_on(dev.flush(&io, IoTag::DATA)).expect("flush device");
}

/// Serves `cases` (after `nodes`, TOML `[[node]]` tables) from one daemon, runs the verify job
/// on each in one guest, checks every run, and stops the daemon cleanly.
fn run_cases(dir: &ScratchDir, nodes: &str, cases: &[Case]) {
    let mut config = nodes.to_string();
    let mut sockets = Vec::new();
    for c in cases {
        let socket = dir.join(format!("{}.sock", c.name));
        config +=
            &format!("\n[[export]]\nsocket = {:?}\nserial = {:?}\n{}\n", socket.display().to_string(), c.name, c.keys);
        sockets.push(socket);
    }
    let config_path = dir.join("strata.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let daemon = Daemon::start_config(&config_path, &sockets);

    let job = verify_job();
    let mut guest = FioGuest::new().before_each(NAME_DISK);
    for s in &sockets {
        guest = guest.disk(FioDisk::new(s, &job));
    }
    let out = guest.run().expect("run the guest");
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    check_verify_runs(&names, &out.disks, &out.guest.console);
    out.guest.assert_success();
    daemon.stop();
}

/// The guest's before-each hook: names each disk by its serial on the console.
const NAME_DISK: &str = "echo \"strata-matrix: $dev is $(cat /sys/block/$dev/serial)\"";

/// Each named disk's verify run really ran on that disk, wrote and verified all of its range
/// with crc32c and verify_fatal, and ended without error.
fn check_verify_runs(names: &[&str], results: &[FioDiskResult], console: &str) {
    assert_eq!(names.len(), results.len(), "a result per disk: {console}");
    for (name, r) in names.iter().zip(results) {
        assert!(
            console.contains(&format!("strata-matrix: {} is {name}", r.device)),
            "{} is not {name}: {console}",
            r.device
        );
        assert_eq!(r.exit_code, 0, "{name}: fio failed on {}:\n{}\n{console}", r.device, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.json[r.json.find('{').unwrap_or(0)..]).expect("fio JSON");
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "{name}: {job}");
        assert_eq!(job["job options"]["verify"], "crc32c", "{name}: the job does not verify");
        assert_eq!(job["job options"]["verify_fatal"], "1", "{name}: verify errors would not be fatal");
        assert_eq!(job["write"]["io_bytes"].as_u64(), Some(VERIFY), "{name}: fio did not write it all");
        assert!(job["read"]["io_bytes"].as_u64() >= Some(VERIFY), "{name}: fio did not verify it all");
        eprintln!("matrix: {name} on {}: verify ok", r.device);
    }
}

fn raid_scrub_clean(members: &str) {
    let out = blkctl(&["raid", "scrub", members, "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("scrub JSON");
    assert_eq!(v["mismatches"], 0, "scrub of {members}: {out}");
}

fn raid_create(level: &str, files: &[String]) {
    let mut args = vec!["raid", "create", "--level", level];
    args.extend(files.iter().map(String::as_str));
    blkctl(&args);
}

/// The raw and qcow2 cases' files: a raw file, a fresh qcow2 image, and a qcow2 overlay over a
/// raw backing file holding [`pattern`].
struct RawAndQcow2 {
    raw: String,
    fresh: String,
    top: String,
    base: PathBuf,
}

impl RawAndQcow2 {
    fn create(dir: &ScratchDir) -> RawAndQcow2 {
        let raw = sized_file(&dir.join("disk.raw"), 32 * MIB);
        let fresh = dir.join("fresh.qcow2").display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &fresh, "32M"]);
        let base = dir.join("base.raw");
        std::fs::write(&base, pattern(32 * MIB)).expect("write backing file");
        let top = dir.join("top.qcow2").display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base.to_str().unwrap(), &top]);
        RawAndQcow2 { raw, fresh, top, base }
    }

    /// (name, format, file) of each case.
    fn cases(&self) -> [(&'static str, &'static str, &str); 3] {
        [("raw", "raw", &self.raw), ("qcow2-fresh", "qcow2", &self.fresh), ("qcow2-backing", "qcow2", &self.top)]
    }

    /// After the guest: the images are clean, the backing file is untouched, and the overlay
    /// holds fio's writes in fio's range and the backing data past it.
    fn check_after(&self, dir: &ScratchDir) {
        qemu_img(&["check", "-q", "-f", "qcow2", &self.fresh]);
        qemu_img(&["check", "-q", "-f", "qcow2", &self.top]);
        assert!(std::fs::read(&self.base).unwrap() == pattern(32 * MIB), "the backing file changed");
        let conv = dir.join("top.raw").display().to_string();
        qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &self.top, &conv]);
        let data = std::fs::read(&conv).unwrap();
        let v = VERIFY as usize;
        assert!(data[v..] == pattern(32 * MIB)[v..], "the overlay lost backing data past fio's range");
        assert!(data[..v] != pattern(32 * MIB)[..v], "fio's writes are not in the overlay");
    }
}

#[test]
fn matrix_raw_and_qcow2() {
    if !require_qemu("matrix_raw_and_qcow2") {
        return;
    }
    let dir = ScratchDir::new("matrix-qcow2").expect("scratch dir");
    let files = RawAndQcow2::create(&dir);
    let cases: Vec<Case> = files
        .cases()
        .iter()
        .map(|(name, fmt, path)| Case::new(name, format!("format = {fmt:?}\npath = {path:?}")))
        .collect();

    run_cases(&dir, "", &cases);

    files.check_after(&dir);
}

/// raw, qcow2 and qcow2 over a backing file, each running the verify job, in a Linux guest
/// booted by vmm-mini: directly on hardware KVM, else nested in a QEMU TCG guest (opt-in).
#[test]
fn matrix_raw_and_qcow2_under_vmm_mini() {
    let direct = detect_kvm() == KvmHost::Hardware;
    if !direct && std::env::var_os("VMM_MINI_NESTED").is_none() {
        eprintln!(
            "SKIPPED: matrix_raw_and_qcow2_under_vmm_mini: no hardware KVM here ({}), and nested in QEMU TCG \
             it takes 1 to 20 minutes: opt-in, set VMM_MINI_NESTED=1 (docs/vmm-mini.md)",
            detect_kvm()
        );
        return;
    }
    if !require_qemu("matrix_raw_and_qcow2_under_vmm_mini") {
        return;
    }
    let bin = |name| strata_tests::bins::bin_path(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let vmm = VmmMini::new(bin("vmm-mini"), bin("vhost-user-blk")).expect("vmm-mini and the daemon");
    let dir = ScratchDir::new("matrix-vmm-mini").expect("scratch dir");
    let files = RawAndQcow2::create(&dir);
    let job = verify_job();
    let names: Vec<&str> = files.cases().iter().map(|c| c.0).collect();

    let started = std::time::Instant::now();
    if direct {
        let cases: Vec<Case> = files
            .cases()
            .iter()
            .map(|(name, fmt, path)| Case::new(name, format!("format = {fmt:?}\npath = {path:?}")))
            .collect();
        let mut config = String::new();
        let mut guest = FioGuest::new().before_each(NAME_DISK);
        let mut sockets = Vec::new();
        for c in &cases {
            let socket = dir.join(format!("{}.sock", c.name));
            config += &format!(
                "\n[[export]]\nsocket = {:?}\nserial = {:?}\n{}\n",
                socket.display().to_string(),
                c.name,
                c.keys
            );
            guest = guest.disk(FioDisk::new(&socket, &job));
            sockets.push(socket);
        }
        std::fs::write(dir.join("strata.toml"), &config).expect("write config");
        let daemon = Daemon::start_config(&dir.join("strata.toml"), &sockets);
        let out = guest.run_vmm_mini(&vmm).expect("run the guest under vmm-mini");
        check_verify_runs(&names, &out.disks, &out.guest.console);
        out.guest.assert_success();
        daemon.stop();
    } else {
        let mut nested = NestedFio::new().before_each(NAME_DISK).timeout(std::time::Duration::from_secs(2400));
        for (name, fmt, path) in files.cases() {
            let mut carried = vec![CarriedFile { path: path.into(), write_back: true }];
            if name == "qcow2-backing" {
                carried.push(CarriedFile { path: files.base.clone(), write_back: false });
            }
            let spec = format!("format={fmt},path={path},serial={name}");
            nested = nested.disk(NestedDisk { spec, num_queues: 1, job: job.clone(), files: carried });
        }
        let out = nested.run(&vmm).expect("run the guest under vmm-mini, nested");
        check_verify_runs(&names, &out.fio.disks, &out.fio.guest.console);
        out.fio.guest.assert_success();
        eprintln!("matrix: inner guest (boot, 3 verify jobs, power-off) {} s under vmm-mini", out.inner_seconds);
    }
    eprintln!(
        "matrix: vmm-mini ({}) run took {:.0} s",
        if direct { "direct" } else { "nested" },
        started.elapsed().as_secs_f64()
    );

    files.check_after(&dir);
}

#[test]
fn matrix_raid_healthy() {
    if !require_qemu("matrix_raid_healthy") {
        return;
    }
    let dir = ScratchDir::new("matrix-raid").expect("scratch dir");
    let files = |prefix: &str, n: usize, size: u64| -> Vec<String> {
        (0..n).map(|i| sized_file(&dir.join(format!("{prefix}{i}.img")), size)).collect()
    };
    let (r0, r1, r5) = (files("r0-", 2, 16 * MIB), files("r1-", 2, 32 * MIB), files("r5-", 3, 16 * MIB));
    raid_create("0", &r0);
    raid_create("1", &r1);
    raid_create("5", &r5);
    let case = |name, m: &[String]| Case::new(name, format!("format = \"raid\"\nmembers = {:?}", m.join(":")));

    run_cases(&dir, "", &[case("raid0", &r0), case("raid1", &r1), case("raid5", &r5)]);

    raid_scrub_clean(&r1.join(":"));
    raid_scrub_clean(&r5.join(":"));
    let st = blkctl(&["raid", "status", &r0.join(":"), "--json"]);
    assert!(st.contains("\"degraded\": false") || st.contains("\"degraded\":false"), "{st}");
}

#[test]
fn matrix_raid_degraded() {
    if !require_qemu("matrix_raid_degraded") {
        return;
    }
    let dir = ScratchDir::new("matrix-raid-degraded").expect("scratch dir");
    let files = |prefix: &str, n: usize, size: u64| -> Vec<String> {
        (0..n).map(|i| sized_file(&dir.join(format!("{prefix}{i}.img")), size)).collect()
    };
    let (r1, r5) = (files("r1-", 2, 32 * MIB), files("r5-", 3, 16 * MIB));
    raid_create("1", &r1);
    raid_create("5", &r5);
    // One member of each is gone: the arrays start degraded.
    std::fs::remove_file(&r1[1]).unwrap();
    std::fs::remove_file(&r5[2]).unwrap();
    let case = |name, m: &[String]| Case::new(name, format!("format = \"raid\"\nmembers = {:?}", m.join(":")));

    run_cases(&dir, "", &[case("raid1-degraded", &r1), case("raid5-degraded", &r5)]);

    for m in [&r1, &r5] {
        let st = blkctl(&["raid", "status", &m.join(":"), "--json"]);
        assert!(st.contains("\"degraded\": true") || st.contains("\"degraded\":true"), "not degraded: {st}");
    }
}

#[test]
fn matrix_thin_volume_and_snapshot() {
    if !require_qemu("matrix_thin_volume_and_snapshot") {
        return;
    }
    let dir = ScratchDir::new("matrix-thin").expect("scratch dir");
    // A pool with a volume, and a snapshot of a volume holding a pattern.
    let pool = sized_file(&dir.join("pool.img"), 128 * MIB);
    blkctl(&["thin", "pool-create", &pool]);
    blkctl(&["thin", "create", &pool, "vol", "--size", "32M"]);
    blkctl(&["thin", "create", &pool, "origin", "--size", "32M"]);
    let origin_spec = format!("format=thin,pool={pool},volume=origin");
    {
        let dev = open_spec(&origin_spec, &OpenCtx::new()).expect("open origin");
        write_all(&dev, &pattern(32 * MIB));
    }
    blkctl(&["thin", "snapshot", &pool, "origin", "snap"]);

    run_cases(
        &dir,
        "",
        &[
            Case::new("thin", format!("format = \"thin\"\npool = {pool:?}\nvolume = \"vol\"")),
            Case::new("thin-snapshot", format!("format = \"thin\"\npool = {pool:?}\nvolume = \"snap\"")),
        ],
    );

    // The pool is consistent; the origin is untouched; the snapshot still shares its data
    // past fio's range.
    blkctl(&["thin", "check", &pool]);
    let want = pattern(32 * MIB);
    let origin = read_all(&open_spec(&origin_spec, &OpenCtx::new()).unwrap(), 32 * MIB);
    assert!(origin == want, "writes to the snapshot changed its origin");
    let snap =
        read_all(&open_spec(&format!("format=thin,pool={pool},volume=snap"), &OpenCtx::new()).unwrap(), 32 * MIB);
    assert!(snap[VERIFY as usize..] == want[VERIFY as usize..], "the snapshot lost its origin's data");
    assert!(snap[..VERIFY as usize] != want[..VERIFY as usize], "fio's writes are not in the snapshot");
}

#[test]
fn matrix_qcow2_on_thin_on_raid5() {
    if !require_qemu("matrix_qcow2_on_thin_on_raid5") {
        return;
    }
    let dir = ScratchDir::new("matrix-stack").expect("scratch dir");
    // qcow2 on a thin volume on RAID 5, made in place through the stack builder.
    let members: Vec<String> = (0..3).map(|i| sized_file(&dir.join(format!("s{i}.img")), 32 * MIB)).collect();
    raid_create("5", &members);
    let members = members.join(":");
    {
        let array = open_spec(&format!("format=raid,members={members}"), &OpenCtx::new()).expect("assemble");
        let io = IoCtx::new().unwrap();
        let p = io.block_on(thin::Pool::create(&io, array.clone(), None, Default::default())).expect("pool");
        io.block_on(p.create_volume(&io, "v", 40 * MIB)).expect("volume");
        io.block_on(p.commit(&io)).expect("commit");
        drop(p);
        let mut ctx = OpenCtx::new();
        ctx.nodes.insert("array".into(), array);
        let vol = open_spec("format=thin,pool=node:array,volume=v", &ctx).expect("open volume");
        let opts = qcow::create::CreateOptions { size: 32 * MIB, ..Default::default() };
        io.block_on(qcow::create::create(&io, &vol, &opts)).expect("qcow2 in the volume");
        io.block_on(vol.flush(&io, IoTag::DATA)).expect("flush");
    }
    let nodes = format!(
        "[[node]]\nname = \"array\"\nformat = \"raid\"\nmembers = {members:?}\n\n\
         [[node]]\nname = \"tv\"\nformat = \"thin\"\npool = \"node:array\"\nvolume = \"v\"\n\n\
         [[node]]\nname = \"img\"\nformat = \"qcow2\"\npath = \"node:tv\"\n"
    );
    run_cases(&dir, &nodes, &[Case::new("qcow2-thin-raid5", "node = \"img\"".into())]);

    // Parity consistent, pool consistent, the qcow2 image clean by qemu-img.
    raid_scrub_clean(&members);
    let array = open_spec(&format!("format=raid,members={members}"), &OpenCtx::new()).unwrap();
    let io = IoCtx::new().unwrap();
    let report = io.block_on(thin::check::check(&io, array.clone(), None, false)).expect("thin check");
    assert_eq!(report.exit_code(), 0, "thin pool on the array: {report:?}");
    let mut ctx = OpenCtx::new();
    ctx.nodes.insert("array".into(), array);
    let vol = open_spec("format=thin,pool=node:array,volume=v", &ctx).unwrap();
    let image = dir.join("stack.qcow2");
    std::fs::write(&image, read_all(&vol, vol.info().size)).unwrap();
    qemu_img(&["check", "-q", "-f", "qcow2", image.to_str().unwrap()]);
}
