//! Benchmark of `vmm-mini probe`: start-up (process start to the first KVM_RUN and to the
//! guest's first exit, wall and CPU) and the probe guest's round trip, against strata's daemon
//! and qemu-storage-daemon (the reference), alternating one probe each per round. Prints a
//! timings JSON (`"kind": "timings"`) for `docs/bench/` on stdout; progress on stderr.
//!
//! ```text
//! cargo build --release -p vmm-mini -p vhost-user-blk -p blkctl --examples --bins
//! target/release/examples/bench_probe [--rounds 20] > docs/bench/50-vmm-mini-probe.json
//! cargo run --release -p blkctl -- bench-report
//! ```
//!
//! `vmm-mini` and `vhost-user-blk` are taken from the directory above this example's
//! (`target/release`; `--strata PATH` names another daemon binary), qemu-storage-daemon from
//! `PATH`; both serve a 64 MiB file of their own in `$TMPDIR`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_mini::vcpu::monotonic_ns;

const QSD: &str = "qemu-storage-daemon";
const STRATA: &str = "strata";

fn die(msg: String) -> ! {
    eprintln!("bench_probe: {msg}");
    std::process::exit(2);
}

/// A backend daemon, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(cmd: &mut Command, socket: &Path) -> Daemon {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(format!("starting {cmd:?}: {e}")));
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            die(format!("{} never appeared", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// The number after `"key":` in a flat JSON object.
fn field(json: &str, key: &str) -> Option<f64> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// One probe's measurements, in ms: start to first KVM_RUN, start to first exit, CPU to first
/// KVM_RUN, the guest's run, the whole process.
fn probe(vmm: &Path, socket: &Path) -> [f64; 5] {
    let t0 = monotonic_ns();
    let out = Command::new(vmm)
        .args(["probe", "--json", "--disk"])
        .arg(format!("socket={}", socket.display()))
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(format!("running {}: {e}", vmm.display())));
    let t_end = monotonic_ns();
    let json = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !json.contains("\"outcome\":\"passed\"") {
        die(format!("probe of {} failed ({}): {json}", socket.display(), out.status));
    }
    let get = |k| field(&json, k).unwrap_or_else(|| die(format!("no {k} in {json}")));
    let since = |ns: f64| (ns - t0 as f64) / 1e6;
    [
        since(get("first_kvm_run_monotonic_ns")),
        since(get("first_exit_monotonic_ns")),
        get("cpu_ms_to_first_kvm_run"),
        get("total_ms") - get("setup_ms"),
        (t_end - t0) as f64 / 1e6,
    ]
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!(
        "{{\"host\":{:?},\"nproc\":{nproc},\"kernel\":{:?},\"cpu\":{:?}}}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease"),
        cpu
    )
}

fn utc_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn main() {
    let mut rounds = 20usize;
    let mut strata_arg = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| die("--rounds N".into())),
            "--strata" => strata_arg = Some(PathBuf::from(args.next().unwrap_or_else(|| die("--strata PATH".into())))),
            "-h" | "--help" => {
                eprintln!(
                    "usage: bench_probe [--rounds N] [--strata PATH-OF-vhost-user-blk]   (timings JSON on stdout)"
                );
                return;
            }
            other => die(format!("unknown argument {other}")),
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| die(format!("current_exe: {e}")));
    let bin_dir: PathBuf = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let vmm = bin_dir.join("vmm-mini");
    let strata = strata_arg.unwrap_or_else(|| bin_dir.join("vhost-user-blk"));
    for p in [&vmm, &strata] {
        if !p.exists() {
            die(format!(
                "{} is missing: cargo build --release -p vmm-mini -p vhost-user-blk -p blkctl --bins",
                p.display()
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("vmm-mini-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(format!("{}: {e}", dir.display())));
    for name in ["qsd.img", "strata.img"] {
        let f = std::fs::File::create(dir.join(name)).unwrap_or_else(|e| die(format!("{name}: {e}")));
        f.set_len(64 << 20).unwrap_or_else(|e| die(format!("{name}: {e}")));
    }
    let (qsd_sock, strata_sock) = (dir.join("qsd.sock"), dir.join("strata.sock"));
    let blockdev = format!("driver=file,node-name=f,filename={}", dir.join("qsd.img").display());
    let export =
        format!("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on", qsd_sock.display());
    let qsd = start(Command::new(QSD).args(["--blockdev", &blockdev, "--export", &export]), &qsd_sock);
    let disk =
        format!("socket={},format=raw,path={},serial=bench", strata_sock.display(), dir.join("strata.img").display());
    let daemon = start(Command::new(&strata).args(["--disk", &disk]), &strata_sock);

    // samples[backend][measurement]
    let mut samples = [vec![Vec::new(); 5], vec![Vec::new(); 5]];
    probe(&vmm, &qsd_sock); // warm the page cache with the binaries, not measured
    probe(&vmm, &strata_sock);
    for round in 0..rounds {
        for (b, socket) in [&qsd_sock, &strata_sock].into_iter().enumerate() {
            for (m, v) in probe(&vmm, socket).into_iter().enumerate() {
                samples[b][m].push(v);
            }
        }
        eprintln!("bench_probe: round {}/{rounds}", round + 1);
    }
    drop((qsd, daemon));
    let _ = std::fs::remove_dir_all(&dir);

    let names = [
        "process start → first KVM_RUN (wall)",
        "process start → guest's first exit (wall)",
        "process start → first KVM_RUN (CPU of vmm-mini)",
        "probe guest run (11 checks, 7 requests)",
        "whole `vmm-mini probe` process (wall)",
    ];
    let mut rows = Vec::new();
    for (m, name) in names.iter().enumerate() {
        for (b, backend) in [QSD, STRATA].iter().enumerate() {
            let list: Vec<String> = samples[b][m].iter().map(|v| format!("{v:.3}")).collect();
            rows.push(format!("{{\"what\":{name:?},\"backend\":{backend:?},\"samples\":[{}]}}", list.join(",")));
        }
    }
    let notes = "Each round runs one `vmm-mini probe --json` (a release build) against each backend (each \
                 daemon serves its own 64 MiB file in the temp dir), after one unmeasured probe each. \
                 Wall times start when the harness reads CLOCK_MONOTONIC just before it spawns vmm-mini, \
                 and end at vmm-mini's own CLOCK_MONOTONIC reading just before vCPU 0's first KVM_RUN, \
                 or when that KVM_RUN returns (the probe guest's first port write, its 5th instruction). \
                 CPU is vmm-mini's CLOCK_PROCESS_CPUTIME_ID at the first KVM_RUN (exec, loading, \
                 vhost-user negotiation, memfd, VM and vCPU set-up); the issue's target is 10 ms \
                 (Firecracker: about 8 CPU-ms). The guest run is on this machine's software KVM (about \
                 1 µs an instruction, ~150 serial exits); `vs reference` is the median's ratio to \
                 qemu-storage-daemon's.";
    let command = std::iter::once("target/release/examples/bench_probe".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{{\"kind\":\"timings\",\"section\":\"vmm-mini\",\"title\":\"`vmm-mini probe`: start-up and round trip, {rounds} rounds\",\
         \"command\":{command:?},\"date\":{:?},\"machine\":{},\"unit\":\"ms\",\
         \"reference\":{QSD:?},\"rows\":[{}],\"notes\":{notes:?}}}",
        utc_now(),
        machine(),
        rows.join(",")
    );
}
