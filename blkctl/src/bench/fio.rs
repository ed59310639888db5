//! The ceiling: the same case run by `fio --ioengine=io_uring` on the same file, one job, so a
//! report shows how close strata comes to the kernel's best on this machine.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use blockdev::{Error, ErrorKind, Result};

use super::report::Latency;
use super::{Case, Limit};

/// What fio measured for one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FioResult {
    /// Requests per second.
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mbps: f64,
    /// Requests completed.
    #[serde(default)]
    pub ops: u64,
    /// Total latency (submission to completion) in microseconds.
    pub lat_us: Latency,
    /// CPU time (user + system, fio's job process with its io_uring workers) per request, in
    /// microseconds: unlike IOPS, it barely moves when other processes share the CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
}

/// How to run fio on a file.
#[derive(Debug, Clone)]
pub struct FioRunner {
    /// The file strata measured.
    pub path: PathBuf,
    /// O_DIRECT, matching the spec's `direct=`.
    pub direct: bool,
    /// The fio binary.
    pub program: PathBuf,
}

impl FioRunner {
    /// A runner for `path`; checks that fio is installed.
    pub fn new(path: &Path, direct: bool) -> Result<Self> {
        let program = PathBuf::from("fio");
        match Command::new(&program).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(FioRunner { path: path.to_path_buf(), direct, program }),
            _ => Err(Error::new(ErrorKind::NotFound, "--fio: the fio program is not installed (apt-get install fio)")),
        }
    }

    /// fio's arguments for `case`.
    pub fn args(&self, case: &Case) -> Vec<String> {
        let mut a = vec![
            "--name=strata-ceiling".to_string(),
            "--ioengine=io_uring".to_string(),
            format!("--direct={}", u8::from(self.direct)),
            format!("--rw={}", case.workload.fio_rw()),
            format!("--bs={}", case.bs),
            format!("--iodepth={}", case.qd),
            format!("--filename={}", self.path.display()),
            "--offset=0".to_string(),
            format!("--size={}", case.range),
            "--norandommap".to_string(),
            "--randrepeat=0".to_string(),
            "--lat_percentiles=1".to_string(),
            "--percentile_list=50:90:99:99.9".to_string(),
            "--output-format=json".to_string(),
        ];
        match case.limit {
            Limit::Time(d) => {
                a.push("--time_based".to_string());
                a.push(format!("--runtime={}ms", d.as_millis().max(1)));
            }
            Limit::Ops(n) => a.push(format!("--io_size={}", n.saturating_mul(u64::from(case.bs)))),
        }
        a
    }

    /// The command line, for reports.
    pub fn command_line(&self, case: &Case) -> String {
        std::iter::once("fio".to_string()).chain(self.args(case)).collect::<Vec<_>>().join(" ")
    }

    /// Run `case` under fio. Its CPU time is fio's whole process tree (job process and io_uring
    /// workers included, as for strata), taken from `wait4`.
    pub fn run(&self, case: &Case) -> Result<FioResult> {
        let mut child = Command::new(&self.program)
            .args(self.args(case))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::from_io(e, "--fio: cannot run fio"))?;
        let mut stderr = child.stderr.take();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut text);
            }
            text
        });
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut stdout).map_err(|e| Error::from_io(e, "--fio: read fio's output"))?;
        }
        let (status, cpu) = wait_with_cpu(&mut child)?;
        let errors = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::new(ErrorKind::Io, format!("fio failed ({status}): {}", errors.trim())));
        }
        let mut result = parse_output(&stdout, case.workload.is_write())?;
        if let Some(cpu) = cpu.filter(|_| result.ops > 0) {
            result.cpu_us_per_op = Some(cpu.as_secs_f64() * 1e6 / result.ops as f64);
        }
        Ok(result)
    }
}

/// Reap `child` with `wait4`, returning its exit status and the CPU time (user + system) of it
/// and the descendants it reaped. Falls back to a plain wait (no CPU time) if `wait4` fails.
fn wait_with_cpu(child: &mut Child) -> Result<(ExitStatus, Option<Duration>)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; zeroed is valid, and wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; status and ru are live out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == pid {
            let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
            return Ok((ExitStatus::from_raw(status), Some(tv(ru.ru_utime) + tv(ru.ru_stime))));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            let status = child.wait().map_err(|e| Error::from_io(e, "--fio: wait for fio"))?;
            return Ok((status, None));
        }
    }
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("fio output: {msg}"))
}

/// Read the one job's numbers out of fio's `--output-format=json` (text before the first `{`,
/// such as warnings, is skipped).
pub fn parse_output(text: &str, write: bool) -> Result<FioResult> {
    let start = text.find('{').ok_or_else(|| bad("no JSON object"))?;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).map_err(bad)?;
    let dir = if write { "write" } else { "read" };
    let job0 = v.get("jobs").and_then(|j| j.get(0)).ok_or_else(|| bad("no jobs[0]"))?;
    let job = job0.get(dir).ok_or_else(|| bad(format!("no jobs[0].{dir}")))?;
    let num = |val: Option<&serde_json::Value>, what: &str| {
        val.and_then(|x| x.as_f64()).ok_or_else(|| bad(format!("no {dir}.{what}")))
    };
    let lat = job.get("lat_ns").ok_or_else(|| bad(format!("no {dir}.lat_ns")))?;
    let pct = lat.get("percentile").ok_or_else(|| bad("no lat_ns.percentile (fio too old for --lat_percentiles?)"))?;
    let p = |key: &str| num(pct.get(key), &format!("lat_ns.percentile.{key}")).map(|ns| ns / 1000.0);
    let job_num = |k: &str| job0.get(k).and_then(|x| x.as_f64());
    let cpu_us_per_op = match (
        job_num("usr_cpu"),
        job_num("sys_cpu"),
        job_num("job_runtime"),
        job.get("total_ios").and_then(|x| x.as_f64()),
    ) {
        (Some(usr), Some(sys), Some(runtime_ms), Some(ios)) if ios > 0.0 => {
            Some((usr + sys) / 100.0 * runtime_ms * 1000.0 / ios)
        }
        _ => None,
    };
    Ok(FioResult {
        cpu_us_per_op,
        ops: job.get("total_ios").and_then(|x| x.as_u64()).unwrap_or(0),
        iops: num(job.get("iops"), "iops")?,
        mbps: num(job.get("bw_bytes"), "bw_bytes")? / 1e6,
        lat_us: Latency {
            p50: p("50.000000")?,
            p90: p("90.000000")?,
            p99: p("99.000000")?,
            p99_9: p("99.900000")?,
            max: num(lat.get("max"), "lat_ns.max")? / 1000.0,
            mean: num(lat.get("mean"), "lat_ns.mean")? / 1000.0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Workload;

    const SAMPLE: &str = r#"note: a warning line
{"fio version":"fio-3.33","jobs":[{"usr_cpu":10.0,"sys_cpu":40.0,"job_runtime":1000,"read":{"iops":1000.5,"bw_bytes":4098048,"total_ios":1000,
 "lat_ns":{"min":1,"max":90000,"mean":2500.0,"percentile":{"50.000000":2000,"90.000000":3000,
 "99.000000":5000,"99.900000":8000}}},"write":{"iops":0}}]}"#;

    #[test]
    fn parses_read_numbers_in_microseconds() {
        let r = parse_output(SAMPLE, false).unwrap();
        assert_eq!(r.iops, 1000.5);
        assert!((r.mbps - 4.098048).abs() < 1e-9);
        assert_eq!((r.lat_us.p50, r.lat_us.p99_9, r.lat_us.max, r.lat_us.mean), (2.0, 8.0, 90.0, 2.5));
        assert_eq!(r.cpu_us_per_op, Some(500.0));
    }

    #[test]
    fn missing_fields_are_named() {
        let e = parse_output(SAMPLE, true).unwrap_err();
        assert!(e.to_string().contains("no write.lat_ns"), "{e}");
        assert!(parse_output("garbage", false).unwrap_err().to_string().contains("no JSON"));
    }

    #[test]
    fn args_match_the_case() {
        let r = FioRunner { path: "/dev/shm/x.img".into(), direct: true, program: "fio".into() };
        let case = Case {
            workload: Workload::SeqWrite,
            bs: 1 << 20,
            qd: 4,
            range: 1 << 30,
            limit: Limit::Time(std::time::Duration::from_secs(2)),
            seed: 0,
        };
        let line = r.command_line(&case);
        for want in ["--direct=1", "--rw=write", "--bs=1048576", "--iodepth=4", "--size=1073741824", "--runtime=2000ms"]
        {
            assert!(line.contains(want), "{want} in {line}");
        }
    }
}
