//! Run fio job files inside a QEMU (TCG) guest against vhost-user-blk disks and collect fio's
//! JSON (`--output-format=json+`).
//!
//! The guest boots a shared initramfs carrying fio and its libraries, built once per kernel, busybox
//! and fio binary and cached as `<cache>/initramfs/fio-<key>.cpio` ([`fio_initramfs`]). Each run
//! copies it and appends a small cpio overlay with the job files and the run script, so no run
//! rebuilds the 85 MB archive. The disks under test are `/dev/vda`, `/dev/vdb`, ... in the order
//! given (each job's `filename=` is rewritten to its disk); one more plain virtio disk, at the
//! last PCI slot with serial [`RESULTS_SERIAL`], carries each disk's JSON, stderr and exit code back
//! to the host, so the serial console only shows progress.
//!
//! The same guest also runs under vmm-mini ([`vmm_mini`]: on the host where KVM is hardware
//! virtualization; [`nested`]: inside a QEMU TCG guest that provides nested KVM).
//!
//! ```no_run
//! use strata_guest::fio::{FioDisk, FioGuest};
//! # fn main() -> Result<(), strata_guest::Error> {
//! let job = std::fs::read_to_string("fio-jobs/verify.fio").unwrap();
//! let out = FioGuest::new().disk(FioDisk::new("/tmp/disk.sock", &job)).run()?;
//! assert_eq!(out.disks[0].exit_code, 0);
//! # Ok(()) }
//! ```

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{cache_root, io_err, scratch::ScratchDir, CpioWriter, Error, GuestArtifacts, GuestOutput, Initramfs};
use crate::{QemuGuest, Result};

pub mod nested;
pub mod vmm_mini;

/// GET_ID serial of the disk that carries results back to the host.
pub const RESULTS_SERIAL: &str = "strata-results";
/// Size of the (sparse) results disk: the most fio JSON one run can return.
const RESULTS_DISK_BYTES: u64 = 64 << 20;
/// PCI slot of the results disk: after every disk under test.
const RESULTS_SLOT: u8 = 0x1f;
/// The most disks one guest can test (`vda` to `vdy`; the results disk is last).
pub const MAX_DISKS: usize = 25;
/// Bumped whenever the base initramfs's script changes, so cached archives are rebuilt.
const BASE_VERSION: u32 = 1;
/// The base initramfs's script: run what the overlay brought.
const BASE_SCRIPT: &str = "if [ -f /strata/run.sh ]; then . /strata/run.sh; else echo 'no /strata/run.sh'; exit 1; fi";

/// One disk under test: a vhost-user-blk socket and the job to run on it.
#[derive(Debug, Clone)]
pub struct FioDisk {
    /// The vhost-user-blk server's socket (it must be listening before [`FioGuest::run`]).
    pub socket: PathBuf,
    /// Queues to ask for.
    pub num_queues: u16,
    /// The job file's text; its `filename=` options are rewritten to this disk's device.
    pub job: String,
}

impl FioDisk {
    /// A one-queue disk on `socket` running `job`.
    pub fn new(socket: impl AsRef<Path>, job: &str) -> Self {
        FioDisk { socket: socket.as_ref().to_path_buf(), num_queues: 1, job: job.to_string() }
    }
}

/// What fio did on one disk.
#[derive(Debug, Clone)]
pub struct FioDiskResult {
    /// The guest device, e.g. `vda`.
    pub device: String,
    /// fio's exit code (non-zero on a verify failure or an I/O error).
    pub exit_code: i32,
    /// fio's `--output-format=json+` output.
    pub json: String,
    /// fio's stderr.
    pub stderr: String,
}

/// The results of one guest run.
#[derive(Debug, Clone)]
pub struct FioOutput {
    /// One entry per disk, in the order given.
    pub disks: Vec<FioDiskResult>,
    /// The guest's console and QEMU's exit.
    pub guest: GuestOutput,
}

/// A guest that runs fio on each of its disks in turn; see the module docs.
#[derive(Debug, Clone)]
pub struct FioGuest {
    disks: Vec<FioDisk>,
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
    quiet: bool,
    before: String,
    after: String,
}

impl Default for FioGuest {
    fn default() -> Self {
        Self::new()
    }
}

impl FioGuest {
    /// No disks yet, one vCPU, 768 MiB, a 300 s timeout, console echoed.
    pub fn new() -> Self {
        FioGuest {
            disks: Vec::new(),
            cpus: 1,
            memory_mib: 768,
            timeout: Duration::from_secs(300),
            quiet: false,
            before: String::new(),
            after: String::new(),
        }
    }

    /// Adds a disk (the first is `/dev/vda`).
    pub fn disk(mut self, disk: FioDisk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Number of vCPUs (Linux uses at most one virtio-blk queue per vCPU).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// Kill the guest and fail after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Do not echo the console to stderr.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Shell run in the guest (busybox sh) before fio on `$dev` (e.g. `vda`), for each disk;
    /// its output lands on the console.
    pub fn before_each(mut self, script: &str) -> Self {
        self.before = script.to_string();
        self
    }

    /// Shell run in the guest after fio on `$dev`, for each disk.
    pub fn after_each(mut self, script: &str) -> Self {
        self.after = script.to_string();
        self
    }

    /// Boots the guest, runs every job, and returns each disk's result. An error means the
    /// guest could not run or did not return results; a failed job is a non-zero `exit_code`.
    pub fn run(&self) -> Result<FioOutput> {
        self.check_disks()?;
        let art = GuestArtifacts::ensure()?;
        let dir = ScratchDir::new("fio-guest").map_err(io_err("create scratch dir", std::env::temp_dir()))?;
        let initrd = self.prepare_initrd(&art, &dir)?;
        let results = create_results_disk(&dir)?;

        let mut guest = QemuGuest::new(&art.kernel, &initrd)
            .smp(self.cpus)
            .memory_mib(self.memory_mib)
            .timeout(self.timeout)
            .quiet(self.quiet);
        for d in &self.disks {
            guest = guest.vhost_user_blk(&d.socket, d.num_queues);
        }
        let guest = guest.plain_disk(&results, RESULTS_SERIAL, RESULTS_SLOT);
        let out = guest.run()?;
        let data = fs::read(&results).map_err(io_err("read results disk", &results))?;
        self.collect(&data, out)
    }

    /// An error unless there are 1 to [`MAX_DISKS`] disks.
    fn check_disks(&self) -> Result<()> {
        if self.disks.is_empty() || self.disks.len() > MAX_DISKS {
            return Err(Error::NotFound(format!("1 to {MAX_DISKS} disks to test (got {})", self.disks.len())));
        }
        Ok(())
    }

    /// Writes this run's initramfs into `dir`: the shared fio archive plus an overlay with the
    /// run script and the jobs (each `filename=` set to its disk's device).
    fn prepare_initrd(&self, art: &GuestArtifacts, dir: &ScratchDir) -> Result<PathBuf> {
        let base = fio_initramfs(art)?;
        let mut files = vec![("strata/run.sh".to_string(), self.run_script().into_bytes())];
        for (i, d) in self.disks.iter().enumerate() {
            let job = set_job_option(&d.job, "filename", &format!("/dev/{}", device_name(i)));
            files.push((format!("strata/job{i}.fio"), job.into_bytes()));
        }
        let initrd = dir.join("initrd.cpio");
        append_overlay(&base, &initrd, &files)?;
        Ok(initrd)
    }

    /// Turns the results disk's contents `data` into each disk's result; `out` is the machine's
    /// run, kept for its console.
    fn collect(&self, data: &[u8], out: GuestOutput) -> Result<FioOutput> {
        let bundle = parse_bundle(data).map_err(|why| Error::Guest {
            what: format!("no results from the guest ({why}); script exit code {:?}", out.script_exit_code()),
            console: out.console.clone(),
        })?;
        let mut disks = Vec::new();
        for i in 0..self.disks.len() {
            let get = |name: &str| bundle.iter().find(|(n, _)| n == name).map(|(_, d)| d.clone());
            let Some(rc) = get(&format!("{i}.rc")) else {
                return Err(Error::Guest {
                    what: format!("no exit code for disk {} in the results", device_name(i)),
                    console: out.console.clone(),
                });
            };
            let text = |d: Option<Vec<u8>>| String::from_utf8_lossy(&d.unwrap_or_default()).into_owned();
            disks.push(FioDiskResult {
                device: device_name(i),
                exit_code: text(Some(rc)).trim().parse().unwrap_or(-1),
                json: text(get(&format!("{i}.json"))),
                stderr: text(get(&format!("{i}.err"))),
            });
        }
        Ok(FioOutput { disks, guest: out })
    }

    /// The guest's `/strata/run.sh`.
    fn run_script(&self) -> String {
        let mut s = String::from("set -u\nmkdir -p /tmp/res\n");
        s += "res=\nfor d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = ";
        s += RESULTS_SERIAL;
        s += " ] && res=${d##*/}; done\n[ -n \"$res\" ] || { echo 'strata-fio: no results disk'; exit 1; }\n";
        for i in 0..self.disks.len() {
            let dev = device_name(i);
            s += &format!(
                "dev={dev}\nwait_dev /dev/$dev || exit 1\n{before}\necho \"strata-fio: $dev start\"\n\
                 fio --eta=never --output-format=json+ --output=/tmp/res/{i}.json /strata/job{i}.fio 2>/tmp/res/{i}.err\n\
                 echo $? > /tmp/res/{i}.rc\necho \"strata-fio: $dev rc=$(cat /tmp/res/{i}.rc)\"\n\
                 head -c 2000 /tmp/res/{i}.err\n{after}\n",
                before = self.before,
                after = self.after,
            );
        }
        s += "for f in /tmp/res/*; do printf 'STRATA-FILE %s %s\\n' \"${f##*/}\" \"$(wc -c < $f)\"; cat $f; done > /tmp/bundle\n";
        s += "echo STRATA-END >> /tmp/bundle\n";
        s += "dd if=/tmp/bundle of=/dev/$res bs=64k conv=fsync 2>/dev/null || { echo 'strata-fio: results too large'; exit 1; }\n";
        s
    }
}

/// Creates the (sparse) results disk file in `dir`.
fn create_results_disk(dir: &ScratchDir) -> Result<PathBuf> {
    let results = dir.join("results.raw");
    fs::File::create(&results)
        .and_then(|f| f.set_len(RESULTS_DISK_BYTES))
        .map_err(io_err("create results disk", &results))?;
    Ok(results)
}

/// The guest device of the `i`th disk under test: `vda`, `vdb`, ...
pub fn device_name(i: usize) -> String {
    format!("vd{}", (b'a' + (i % 26) as u8) as char)
}

/// Parses the results disk: records `STRATA-FILE <name> <len>\n<bytes>` up to `STRATA-END`.
fn parse_bundle(data: &[u8]) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = &data[at..];
        if rest.starts_with(b"STRATA-END") {
            return Ok(out);
        }
        let nl = rest.iter().take(512).position(|&b| b == b'\n').ok_or("a record header without a newline")?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| "a record header that is not text")?;
        let mut words = header.split(' ');
        let (Some("STRATA-FILE"), Some(name), Some(len), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format!("bad record header at byte {at}: {:?}", &header[..header.len().min(80)]));
        };
        let len: usize = len.parse().map_err(|_| format!("bad length in {header:?}"))?;
        let start = at + nl + 1;
        let end = start.checked_add(len).filter(|&e| e <= data.len()).ok_or_else(|| format!("{name}: truncated"))?;
        out.push((name.to_string(), data[start..end].to_vec()));
        at = end;
    }
}

/// Sets `key=value` in a fio job file's text: every line setting `key` is replaced; if none
/// does, the option goes into the `[global]` section (created at the top if there is none).
pub fn set_job_option(job: &str, key: &str, value: &str) -> String {
    let line = format!("{key}={value}");
    let mut found = false;
    let mut lines: Vec<String> = job
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let is_key = !t.starts_with([';', '#']) && t.split('=').next().is_some_and(|k| k.trim() == key);
            if is_key && t.contains('=') {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        match lines.iter().position(|l| l.trim() == "[global]") {
            Some(g) => lines.insert(g + 1, line),
            None => {
                lines.insert(0, line);
                lines.insert(0, "[global]".into());
            }
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The shared initramfs with fio, built on first use and cached under
/// `<cache>/initramfs/fio-<key>.cpio`, the key covering the kernel package, busybox and the
/// host's fio binary (size and modification time).
pub fn fio_initramfs(art: &GuestArtifacts) -> Result<PathBuf> {
    let fio = Path::new("/usr/bin/fio");
    let meta = fs::metadata(fio).map_err(|_| Error::NotFound("/usr/bin/fio (scripts/setup.sh installs fio)".into()))?;
    let mut h = DefaultHasher::new();
    (BASE_VERSION, &art.kernel_package, &art.busybox, meta.len(), meta.modified().ok()).hash(&mut h);
    let dir = cache_root().join("initramfs");
    let path = dir.join(format!("fio-{:016x}.cpio", h.finish()));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    Initramfs::builder().artifacts(art).with_fio(true).script(BASE_SCRIPT).build(&tmp)?;
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    Ok(path)
}

/// Writes `out`: a copy of the archive `base` followed by a second newc archive holding
/// `files` (guest path, contents; mode 0755). Linux unpacks concatenated archives in order, so a
/// file here replaces one of the same name in `base`.
pub fn append_overlay(base: &Path, out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    fs::copy(base, out).map_err(io_err("copy initramfs", base))?;
    let file = fs::OpenOptions::new().append(true).open(out).map_err(io_err("open", out))?;
    let len = file.metadata().map_err(io_err("stat", out))?.len();
    let mut w = BufWriter::new(file);
    // Each archive starts 4-byte aligned (the kernel skips zero padding between archives).
    w.write_all(&[0u8; 4][..((4 - len % 4) % 4) as usize]).map_err(io_err("write", out))?;
    let mut cpio = CpioWriter::new(w);
    let mut dirs: Vec<String> = Vec::new();
    for (name, data) in files {
        let name = name.trim_start_matches('/');
        let mut ancestors: Vec<String> = Path::new(name)
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        ancestors.reverse();
        for d in ancestors {
            if !dirs.contains(&d) {
                cpio.dir(&d, 0o755).map_err(io_err("write", out))?;
                dirs.push(d);
            }
        }
        cpio.file(name, 0o755, data).map_err(io_err("write", out))?;
    }
    cpio.finish().map_err(io_err("write", out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_job_option_replaces_every_setting_line() {
        let job = "; comment filename=x\n[global]\nfilename=/dev/vda\n[a]\nsize=64m\n[b]\n size = 1m\n";
        let out = set_job_option(job, "size", "16m");
        assert_eq!(out, "; comment filename=x\n[global]\nfilename=/dev/vda\n[a]\nsize=16m\n[b]\nsize=16m\n");
        let out = set_job_option(job, "filename", "/dev/vdc");
        assert!(out.contains("filename=/dev/vdc") && !out.contains("filename=/dev/vda"), "{out}");
        assert!(out.starts_with("; comment filename=x\n"), "comments are left alone: {out}");
    }

    #[test]
    fn set_job_option_adds_to_global_or_creates_it() {
        assert_eq!(set_job_option("[global]\nbs=4k\n[j]\n", "size", "1m"), "[global]\nsize=1m\nbs=4k\n[j]\n");
        assert_eq!(set_job_option("[j]\nbs=4k\n", "size", "1m"), "[global]\nsize=1m\n[j]\nbs=4k\n");
    }

    #[test]
    fn bundles_parse_and_bad_ones_are_refused() {
        let good = b"STRATA-FILE 0.rc 2\n0\nSTRATA-FILE 0.json 2\n{}STRATA-END\n\0\0\0";
        let files = parse_bundle(good).unwrap();
        assert_eq!(files, vec![("0.rc".to_string(), b"0\n".to_vec()), ("0.json".to_string(), b"{}".to_vec())]);
        assert!(parse_bundle(b"").unwrap_err().contains("newline"));
        assert!(parse_bundle(b"\0\0\0\0").unwrap_err().contains("newline"));
        assert!(parse_bundle(b"STRATA-FILE a 99999999999\nxx").unwrap_err().contains("truncated"));
        assert!(parse_bundle(b"STRATA-FILE a -1\n").unwrap_err().contains("length"));
        assert!(parse_bundle(b"junk\n").unwrap_err().contains("bad record"));
    }

    #[test]
    fn device_names_follow_linux_order() {
        assert_eq!(device_name(0), "vda");
        assert_eq!(device_name(3), "vdd");
    }

    #[test]
    fn overlay_appends_an_aligned_second_archive() {
        let dir = ScratchDir::new("overlay-test").unwrap();
        let base = dir.join("base.cpio");
        fs::write(&base, b"12345").unwrap();
        let out = dir.join("out.cpio");
        append_overlay(&base, &out, &[("strata/a/b.sh".into(), b"echo".to_vec())]).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(&data[..8], b"12345\0\0\0");
        assert_eq!(&data[8..14], b"070701");
        let text = String::from_utf8_lossy(&data);
        let (s, a, b) =
            (text.find("strata\0").unwrap(), text.find("strata/a\0").unwrap(), text.find("strata/a/b.sh\0"));
        assert!(s < a && a < b.unwrap(), "parents come first: {text:?}");
        assert!(text.contains("TRAILER!!!"));
    }
}
