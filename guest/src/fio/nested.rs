//! [`FioGuest`] under vmm-mini, nested: for hosts whose `/dev/kvm` is too slow to boot Linux
//! (a software KVM; [`crate::vmm_mini::detect_kvm`]).
//!
//! The host boots an *outer* guest in QEMU with TCG and `-cpu max` (emulated AMD SVM). Its
//! initramfs carries busybox, `irqbypass`/`kvm`/`kvm-amd`, stripped `vmm-mini` and
//! `vhost-user-blk` with their libraries, Debian's bzImage and the fio guest's initramfs (the
//! *inner* one, as [`FioGuest::run`] builds it). The files of each disk's stack (image files,
//! RAID members, backing files) travel in as QEMU virtio disks with serials `strata-in-N`;
//! the outer guest copies each to the same absolute path in its RAM, so the disk specs and a
//! qcow2 image's backing file name work unchanged. Then it loads KVM, serves the disks with
//! strata's daemon, boots the inner guest under vmm-mini (inner console prefixed `inner| `
//! on the outer console), stops the daemon with SIGTERM and writes one bundle to its results
//! disk (serial `strata-outer`): vmm-mini's and the daemon's exit codes, the daemon's log, the
//! inner console, the inner guest's results disk, and — if the daemon stopped cleanly — each
//! writable file as it is now, which the host writes back in place. So a nested run changes
//! the host's files as a direct one does (only the blocks that differ are rewritten).
//!
//! The carried files live in the outer guest's RAM: this is for test-sized disks (up to a few
//! hundred MiB in all).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{parse_bundle, FioDisk, FioGuest, FioOutput, RESULTS_SERIAL};
use crate::scratch::ScratchDir;
use crate::vmm_mini::VmmMini;
use crate::{io_err, Error, GuestArtifacts, Initramfs, QemuGuest, Result};

/// Serial of the outer guest's own results disk.
const OUTER_SERIAL: &str = "strata-outer";
/// PCI slot of the outer results disk; the carried files take slots from [`FIRST_FILE_SLOT`].
const OUTER_SLOT: u8 = 0x1f;
/// PCI slot of the first carried file.
const FIRST_FILE_SLOT: u8 = 0x08;
/// The most files one nested run can carry (PCI slots 0x08 to 0x1e).
pub const MAX_FILES: usize = (OUTER_SLOT - FIRST_FILE_SLOT) as usize;
/// Size of the inner guest's results disk (fio's JSON for a few disks is far smaller).
const INNER_RESULTS_BYTES: u64 = 16 << 20;
/// The inner guest's results socket in the outer guest.
const RESULTS_SOCKET: &str = "/run/strata/results.sock";

/// A host file a disk's stack reads (and maybe writes), carried into the outer guest.
#[derive(Debug, Clone)]
pub struct CarriedFile {
    /// Absolute host path; the outer guest puts the copy at the same path.
    pub path: PathBuf,
    /// Copy the file back to the host after the run (writable images; not backing files).
    pub write_back: bool,
}

/// One disk under test in a nested run.
#[derive(Debug, Clone)]
pub struct NestedDisk {
    /// A strata disk spec without `socket=` (as for `vhost-user-blk --disk`), absolute paths.
    pub spec: String,
    /// Queues to serve and ask for.
    pub num_queues: u16,
    /// The fio job's text (its `filename=` is set to the disk's device).
    pub job: String,
    /// The files `spec` needs.
    pub files: Vec<CarriedFile>,
}

/// What a nested run did.
#[derive(Debug, Clone)]
pub struct NestedOutput {
    /// Each disk's fio result; `guest` is the outer QEMU guest (its console has the inner one,
    /// prefixed `inner| `).
    pub fio: FioOutput,
    /// The inner guest's console (vmm-mini's stdout and stderr).
    pub inner_console: String,
    /// Seconds vmm-mini ran, as the outer guest measured.
    pub inner_seconds: u64,
}

/// A nested fio run; see the module docs.
#[derive(Debug, Clone)]
pub struct NestedFio {
    disks: Vec<NestedDisk>,
    cpus: u32,
    timeout: Duration,
    quiet: bool,
    before: String,
}

impl Default for NestedFio {
    fn default() -> Self {
        Self::new()
    }
}

impl NestedFio {
    /// No disks yet, one inner vCPU, a 30-minute timeout, consoles echoed.
    pub fn new() -> Self {
        NestedFio {
            disks: Vec::new(),
            cpus: 1,
            timeout: Duration::from_secs(1800),
            quiet: false,
            before: String::new(),
        }
    }

    /// Adds a disk (the first is the inner guest's `/dev/vda`).
    pub fn disk(mut self, disk: NestedDisk) -> Self {
        self.disks.push(disk);
        self
    }

    /// The inner guest's vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// Kill the outer guest and fail after this long (the inner boot gets 30 s less).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Do not echo the consoles to stderr.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Shell run in the inner guest before fio on `$dev`, as [`FioGuest::before_each`].
    pub fn before_each(mut self, script: &str) -> Self {
        self.before = script.to_string();
        self
    }

    /// The fio guest that runs inside (its sockets are the outer guest's).
    fn inner(&self) -> FioGuest {
        let mut g = FioGuest::new().cpus(self.cpus).timeout(self.timeout).quiet(self.quiet).before_each(&self.before);
        for (i, d) in self.disks.iter().enumerate() {
            g = g.disk(FioDisk { socket: guest_socket(i), num_queues: d.num_queues, job: d.job.clone() });
        }
        g
    }

    /// Every carried file once, in order, with its size; errors for a relative or missing one.
    fn files(&self) -> Result<Vec<(CarriedFile, u64)>> {
        let mut out: Vec<(CarriedFile, u64)> = Vec::new();
        for f in self.disks.iter().flat_map(|d| &d.files) {
            if !f.path.is_absolute() {
                return Err(Error::NotFound(format!("an absolute path for {}", f.path.display())));
            }
            let meta = fs::metadata(&f.path).map_err(io_err("stat disk file", &f.path))?;
            if !meta.is_file() {
                return Err(Error::NotFound(format!("{}: a regular file (nested runs carry files)", f.path.display())));
            }
            match out.iter_mut().find(|(o, _)| o.path == f.path) {
                Some((o, _)) => o.write_back |= f.write_back,
                None => out.push((f.clone(), meta.len())),
            }
        }
        if out.len() > MAX_FILES {
            return Err(Error::NotFound(format!("at most {MAX_FILES} files in a nested run (got {})", out.len())));
        }
        Ok(out)
    }

    /// Boots the outer guest, runs every job in the inner one and returns the results; writes
    /// the writable files back if the daemon stopped cleanly. An error says which stage failed
    /// (with the consoles); a failed job is a non-zero `exit_code`.
    pub fn run(&self, vmm: &VmmMini) -> Result<NestedOutput> {
        let inner = self.inner();
        inner.check_disks()?;
        let files = self.files()?;
        let art = GuestArtifacts::ensure()?;
        let dir = ScratchDir::new("fio-nested").map_err(io_err("create scratch dir", std::env::temp_dir()))?;
        let inner_initrd = inner.prepare_initrd(&art, &dir)?;
        let script = self.outer_script(&inner, &files);
        let outer_initrd = dir.join("outer.cpio");
        Initramfs::builder()
            .artifacts(&art)
            .module("irqbypass")
            .module("kvm")
            .module("kvm-amd")
            .binary(stripped(&vmm.binary, &dir)?, "/bin/vmm-mini")
            .binary(stripped(&vmm.daemon, &dir)?, "/bin/vhost-user-blk")
            .extra_file(&art.kernel, "/strata/vmlinuz")
            .extra_file(&inner_initrd, "/strata/inner.cpio")
            .script(&script)
            .build(&outer_initrd)?;

        let file_bytes: u64 = files.iter().map(|(_, len)| len).sum();
        let results = dir.join("outer-results.raw");
        fs::File::create(&results)
            .and_then(|f| f.set_len(INNER_RESULTS_BYTES + 2 * file_bytes + (1 << 30)))
            .map_err(io_err("create results disk", &results))?;
        let cpio_mib = fs::metadata(&outer_initrd).map_err(io_err("stat", &outer_initrd))?.len() >> 20;
        let memory = 1024 + inner.memory_mib as u64 + 2 * cpio_mib + 2 * (file_bytes >> 20);
        let mut guest = QemuGuest::new(&art.kernel, &outer_initrd)
            .cpu("max")
            .memory_mib(memory as u32)
            .timeout(self.timeout)
            .quiet(self.quiet)
            .plain_disk(&results, OUTER_SERIAL, OUTER_SLOT);
        for (i, (f, _)) in files.iter().enumerate() {
            guest = guest.plain_disk(&f.path, &format!("strata-in-{i}"), FIRST_FILE_SLOT + i as u8);
        }
        let out = guest.run()?;

        let data = fs::read(&results).map_err(io_err("read results disk", &results))?;
        let fail = |what: String| Error::Guest { what, console: out.console.clone() };
        let bundle = parse_bundle(&data).map_err(|why| fail(format!("no results from the outer guest ({why})")))?;
        let get = |name: &str| bundle.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice());
        let text = |name: &str| String::from_utf8_lossy(get(name).unwrap_or_default()).trim().to_string();
        let inner_console = text("inner.log");
        let inner_seconds = text("vmm.secs").parse().unwrap_or(0);
        match text("vmm.rc").as_str() {
            "0" => {}
            rc => return Err(fail(format!("vmm-mini exited {rc} in the outer guest ({})", vmm_mini_exit(rc)))),
        }
        let fio = inner.collect(get("inner.results").unwrap_or_default(), out.clone())?;
        if text("daemon.rc") != "0" {
            return Err(fail(format!(
                "the daemon in the outer guest exited {} after SIGTERM: {}",
                text("daemon.rc"),
                text("daemon.log")
            )));
        }
        for (i, (f, _)) in files.iter().enumerate().filter(|(_, (f, _))| f.write_back) {
            let new =
                get(&format!("file{i}")).ok_or_else(|| fail(format!("{} did not come back", f.path.display())))?;
            write_back(&f.path, new)?;
        }
        Ok(NestedOutput { fio, inner_console, inner_seconds })
    }

    /// The outer guest's script (busybox sh).
    fn outer_script(&self, inner: &FioGuest, files: &[(CarriedFile, u64)]) -> String {
        let inner_timeout = self.timeout.as_secs().saturating_sub(30).max(30);
        let mut s = format!("set -u\n{OUTER_FUNCTIONS}\nres=$(by_serial {OUTER_SERIAL}) || exit 1\n");
        s += "[ -c /dev/kvm ] || { say 'no /dev/kvm in the outer guest: kvm-amd did not load (QEMU -cpu max emulates SVM)'; exit 1; }\n";
        s += "mkdir -p /run/strata /tmp/out\n";
        for (i, (f, len)) in files.iter().enumerate() {
            let p = sh_quote(&f.path.display().to_string());
            s += &format!(
                "dev=$(by_serial strata-in-{i}) || exit 1\nmkdir -p \"$(dirname {p})\"\n\
                 head -c {len} $dev > {p} || {{ say 'copy of {i} failed'; exit 1; }}\n"
            );
        }
        s += &format!("truncate -s {INNER_RESULTS_BYTES} /tmp/inner-results.raw\n");
        s += "/bin/vhost-user-blk";
        for (i, d) in self.disks.iter().enumerate() {
            let disk = format!("socket={},{},num-queues={}", guest_socket(i).display(), d.spec, d.num_queues);
            s += &format!(" --disk {}", sh_quote(&disk));
        }
        s += &format!(
            " --disk socket={RESULTS_SOCKET},format=raw,path=/tmp/inner-results.raw,serial={RESULTS_SERIAL} \
             2>/tmp/out/daemon.log &\ndaemon=$!\n"
        );
        for i in 0..self.disks.len() {
            s += &format!("wait_socket {} || exit 1\n", guest_socket(i).display());
        }
        s += &format!("wait_socket {RESULTS_SOCKET} || exit 1\n");
        let args: Vec<String> = inner
            .vmm_mini_args(Path::new("/strata/vmlinuz"), Path::new("/strata/inner.cpio"), Path::new(RESULTS_SOCKET))
            .iter()
            .map(|a| sh_quote(a))
            .collect();
        s += &format!(
            "say 'booting the fio guest under vmm-mini (nested KVM)'\nstart=$(date +%s)\n\
             ( timeout {inner_timeout} /bin/vmm-mini {} 2>&1; echo $? > /tmp/out/vmm.rc ) | tee /tmp/out/inner.log | sed 's/^/inner| /'\n\
             echo $(( $(date +%s) - start )) > /tmp/out/vmm.secs\n\
             say \"vmm-mini exit $(cat /tmp/out/vmm.rc) after $(cat /tmp/out/vmm.secs) s\"\n\
             kill $daemon; wait $daemon; echo $? > /tmp/out/daemon.rc\nsay \"daemon exit $(cat /tmp/out/daemon.rc)\"\n",
            args.join(" ")
        );
        s += "{\nfor f in vmm.rc vmm.secs daemon.rc daemon.log inner.log; do bundle_file $f /tmp/out/$f; done\n";
        s += "bundle_file inner.results /tmp/inner-results.raw\n";
        s += "if [ \"$(cat /tmp/out/daemon.rc)\" = 0 ]; then\n";
        for (i, (f, _)) in files.iter().enumerate().filter(|(_, (f, _))| f.write_back) {
            s += &format!("bundle_file file{i} {}\n", sh_quote(&f.path.display().to_string()));
        }
        s += "fi\necho STRATA-END\n} > $res || { say 'writing the results failed'; exit 1; }\nsync\n";
        s += "[ \"$(cat /tmp/out/vmm.rc)\" = 0 ]\n";
        s
    }
}

/// Shell functions of the outer script.
const OUTER_FUNCTIONS: &str = r#"say() { echo "strata-nested: $*"; }
# by_serial SERIAL: the /dev/vdX whose virtio serial is SERIAL (waits up to 10 s).
by_serial() {
    n=0
    while [ $n -lt 100 ]; do
        for d in /sys/block/vd*; do
            [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && { echo /dev/${d##*/}; return 0; }
        done
        n=$((n + 1)); sleep 0.1
    done
    say "no disk with serial $1"; return 1
}
# wait_socket PATH: until the daemon listens there (60 s), or it died.
wait_socket() {
    n=0
    while [ ! -S "$1" ]; do
        kill -0 $daemon 2>/dev/null || { say "the daemon exited:"; cat /tmp/out/daemon.log; return 1; }
        n=$((n + 1)); [ $n -gt 600 ] && { say "the daemon did not listen on $1"; return 1; }
        sleep 0.1
    done
}
# bundle_file NAME PATH: one record of the results bundle.
bundle_file() { printf 'STRATA-FILE %s %s\n' "$1" "$(wc -c < "$2")"; cat "$2"; }
"#;

/// The `i`th disk's socket in the outer guest.
fn guest_socket(i: usize) -> PathBuf {
    PathBuf::from(format!("/run/strata/d{i}.sock"))
}

/// What a vmm-mini exit status means (docs/vmm-mini.md, "Booting Linux").
fn vmm_mini_exit(rc: &str) -> &'static str {
    match rc {
        "1" => "a guest or KVM fault",
        "2" => "set-up error",
        "3" => "the guest reset or panicked",
        "4" => "a vhost-user backend went away",
        "77" => "no /dev/kvm",
        "124" | "143" => "timed out",
        "" => "no exit status: the outer guest did not get that far",
        _ => "unexpected",
    }
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A stripped copy of `bin` in `dir` (the debug binaries are mostly symbols), or `bin` itself
/// if `strip` is not there.
fn stripped(bin: &Path, dir: &ScratchDir) -> Result<PathBuf> {
    let name = bin.file_name().ok_or_else(|| Error::NotFound(format!("a file name in {}", bin.display())))?;
    let out = dir.join(name);
    match Command::new("strip").arg("-o").arg(&out).arg(bin).status() {
        Ok(s) if s.success() => Ok(out),
        _ => Ok(bin.to_path_buf()),
    }
}

/// Makes `path` hold `data`, rewriting only the 1 MiB chunks that differ (sparse regions that
/// stayed zero stay holes).
fn write_back(path: &Path, data: &[u8]) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let file = fs::OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open to write back", path))?;
    let mut old = vec![0u8; CHUNK];
    for (i, new) in data.chunks(CHUNK).enumerate() {
        let off = (i * CHUNK) as u64;
        let n = read_full_at(&file, &mut old[..new.len()], off).map_err(io_err("read", path))?;
        if n < new.len() || old[..new.len()] != *new {
            file.write_all_at(new, off).map_err(io_err("write back", path))?;
        }
    }
    file.set_len(data.len() as u64).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("sync", path))
}

/// Reads up to `buf.len()` bytes at `off`, stopping early only at the end of the file.
fn read_full_at(file: &fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_back_rewrites_changed_chunks_and_the_length() {
        let dir = ScratchDir::new("write-back-test").unwrap();
        let path = dir.join("f");
        fs::write(&path, vec![7u8; 3 << 20]).unwrap();
        let mut new = vec![7u8; (2 << 20) + 5];
        new[(1 << 20) + 3] = 9;
        write_back(&path, &new).unwrap();
        assert_eq!(fs::read(&path).unwrap(), new);
        let grown = vec![1u8; 4 << 20];
        write_back(&path, &grown).unwrap();
        assert_eq!(fs::read(&path).unwrap(), grown);
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn outer_script_serves_every_disk_and_bundles_writable_files_only() {
        let disk = |spec: &str| NestedDisk { spec: spec.into(), num_queues: 2, job: "[j]\n".into(), files: vec![] };
        let n = NestedFio::new().disk(disk("format=raw,path=/x/a.raw")).disk(disk("format=qcow2,path=/x/b.qcow2"));
        let files = vec![
            (CarriedFile { path: "/x/a.raw".into(), write_back: true }, 4096),
            (CarriedFile { path: "/x/base.raw".into(), write_back: false }, 8192),
        ];
        let s = n.outer_script(&n.inner(), &files);
        assert!(s.contains("--disk 'socket=/run/strata/d0.sock,format=raw,path=/x/a.raw,num-queues=2'"), "{s}");
        assert!(s.contains("--disk 'socket=/run/strata/d1.sock,format=qcow2,path=/x/b.qcow2,num-queues=2'"), "{s}");
        assert!(s.contains("head -c 8192 $dev > '/x/base.raw'"), "{s}");
        assert!(s.contains("bundle_file file0 '/x/a.raw'") && !s.contains("bundle_file file1"), "{s}");
        // The results disk is vmm-mini's last disk.
        let last_disk = s.rfind("'--disk'").unwrap();
        assert!(s[last_disk..].starts_with(&format!("'--disk' 'socket={RESULTS_SOCKET}'")), "{s}");
    }
}
