//! `blkctl fio --vmm vmm-mini`: the fio guest under strata's own VMM instead of QEMU.
//!
//! Where `/dev/kvm` is hardware virtualization, vmm-mini runs here, on strata's daemon serving
//! the spec (as the QEMU path does). Elsewhere — a software KVM such as this project's PVM
//! machines, or no `/dev/kvm` at all — it runs nested inside a QEMU TCG guest
//! (`strata_guest::fio::nested`): the spec's files travel in, the daemon and vmm-mini run
//! there, and the files that may have been written travel back. [`VmmMode::Auto`] picks by
//! `strata_guest::vmm_mini::detect_kvm`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use strata_guest::fio::nested::{CarriedFile, NestedDisk, NestedFio};
use strata_guest::fio::{FioDisk, FioDiskResult, FioGuest};
use strata_guest::vmm_mini::{detect_kvm, KvmHost, VmmMini};

use super::runner::{command_version, err, qcow2_backing, FioOptions, FioRun, Result, StrataDaemon};
use vhost_user_blk::spec::Spec;

/// Which machine boots the fio guest.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// QEMU with TCG (the default).
    Qemu,
    /// strata's vmm-mini (binary path), directly or nested.
    VmmMini {
        /// The `vmm-mini` binary.
        binary: PathBuf,
        /// Where it runs.
        mode: VmmMode,
    },
}

/// Where vmm-mini runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmMode {
    /// Directly if `/dev/kvm` is hardware virtualization, else nested.
    Auto,
    /// On this host (needs hardware KVM to boot Linux in reasonable time).
    Direct,
    /// Inside a QEMU TCG guest that provides nested KVM.
    Nested,
}

/// Decides [`VmmMode::Auto`], saying why through `progress`.
fn resolve(mode: VmmMode, progress: &mut dyn FnMut(&str)) -> VmmMode {
    if mode != VmmMode::Auto {
        return mode;
    }
    match detect_kvm() {
        KvmHost::Hardware => {
            progress("/dev/kvm is hardware virtualization: vmm-mini runs on this host");
            VmmMode::Direct
        }
        KvmHost::Software(why) | KvmHost::Missing(why) => {
            progress(&format!(
                "no hardware KVM here ({why}), so vmm-mini runs nested: in a QEMU TCG guest with its own KVM \
                 (1 to 20 minutes on a small machine)"
            ));
            VmmMode::Nested
        }
    }
}

/// Runs the job on the disk of `spec` under vmm-mini and returns strata's run.
pub(super) fn run_vmm_mini(
    opts: &FioOptions,
    binary: &Path,
    mode: VmmMode,
    job: &str,
    spec: &Spec,
    progress: &mut dyn FnMut(&str),
) -> Result<FioRun> {
    let vmm = VmmMini::new(binary, &opts.daemon).map_err(|e| err(e.to_string()))?;
    let version = command_version(&opts.daemon);
    match resolve(mode, progress) {
        VmmMode::Nested => run_nested(opts, &vmm, job, spec, version, progress),
        _ => run_direct(opts, &vmm, job, version, progress),
    }
}

fn run_direct(
    opts: &FioOptions,
    vmm: &VmmMini,
    job: &str,
    version: String,
    progress: &mut dyn FnMut(&str),
) -> Result<FioRun> {
    let dir = strata_guest::scratch::ScratchDir::new("blkctl-fio").map_err(|e| err(format!("scratch dir: {e}")))?;
    let socket = dir.join("strata.sock");
    progress(&format!("serving {} with {}", opts.spec, opts.daemon.display()));
    let daemon = StrataDaemon::start(opts, &socket, &dir.join("daemon.log"))?;
    progress("booting the fio guest under vmm-mini");
    let t = Instant::now();
    let disk = FioDisk { socket: socket.clone(), num_queues: opts.num_queues, job: job.to_string() };
    let out = FioGuest::new()
        .disk(disk)
        .cpus(opts.cpus)
        .timeout(opts.timeout)
        .quiet(!opts.verbose)
        .run_vmm_mini(vmm)
        .map_err(|e| {
        let hint = match detect_kvm() {
            KvmHost::Hardware => String::new(),
            KvmHost::Software(why) | KvmHost::Missing(why) => {
                format!(" (no hardware KVM here: {why}; --vmm-mode nested runs it in a QEMU TCG guest)")
            }
        };
        err(format!("vmm-mini guest: {e}{hint}"))
    })?;
    daemon.stop()?;
    fio_run(&out.disks[0], version, t.elapsed().as_secs_f64(), "vmm-mini", progress)
}

fn run_nested(
    opts: &FioOptions,
    vmm: &VmmMini,
    job: &str,
    spec: &Spec,
    version: String,
    progress: &mut dyn FnMut(&str),
) -> Result<FioRun> {
    let (spec, files) = carried_files(spec)?;
    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    progress(&format!(
        "booting a QEMU TCG guest that serves {spec} with strata's daemon and runs vmm-mini (files carried: {})",
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    ));
    let t = Instant::now();
    let disk = NestedDisk { spec: spec.to_string(), num_queues: opts.num_queues, job: job.to_string(), files };
    let out = NestedFio::new()
        .disk(disk)
        .cpus(opts.cpus)
        .timeout(opts.timeout)
        .quiet(!opts.verbose)
        .run(vmm)
        .map_err(|e| err(format!("nested vmm-mini guest: {e}")))?;
    let label = format!("vmm-mini nested in QEMU TCG, inner guest {} s", out.inner_seconds);
    fio_run(&out.fio.disks[0], version, t.elapsed().as_secs_f64(), &label, progress)
}

/// strata's [`FioRun`] from one disk's result.
fn fio_run(
    d: &FioDiskResult,
    version: String,
    guest_seconds: f64,
    vmm: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<FioRun> {
    let mut run = FioRun::from_result("strata", version, d, guest_seconds)?;
    run.vmm = vmm.to_string();
    progress(&format!("strata under {vmm}: fio exited {} after {guest_seconds:.1} s", d.exit_code));
    Ok(run)
}

/// The spec with every file made absolute (and without `direct=`: the copies live in the outer
/// guest's tmpfs, which has no O_DIRECT), and the files to carry into a nested guest: the
/// spec's `path`, `pool`, `metadata` and `members` (not `node:` references), writable unless
/// `read-only=on`, and a qcow2 image's backing chain (read-only) unless `backing=off`.
fn carried_files(spec: &Spec) -> Result<(Spec, Vec<CarriedFile>)> {
    let writable = spec.get("read-only").is_none_or(|v| !matches!(v, "on" | "true" | "yes" | "1"));
    let mut files = Vec::new();
    let mut pairs = Vec::new();
    for key in spec.keys() {
        let value = spec.get(key).unwrap_or_default();
        if key == "direct" {
            continue; // the copies live in the outer guest's tmpfs, which has no O_DIRECT
        }
        let is_file_key = matches!(key, "path" | "pool" | "metadata" | "members");
        if !is_file_key || value.starts_with("node:") {
            pairs.push((key.to_string(), value.to_string()));
            continue;
        }
        let parts: Vec<&str> = if key == "members" { value.split(':').collect() } else { vec![value] };
        let mut abs = Vec::new();
        for part in parts {
            let path = fs::canonicalize(part).map_err(|e| err(format!("{key}={part}: {e}")))?;
            abs.push(path.display().to_string());
            files.push(CarriedFile { path, write_back: writable });
        }
        pairs.push((key.to_string(), abs.join(":")));
    }
    if spec.get("format") == Some("qcow2") && spec.get("backing") != Some("off") {
        let mut image = files.first().map(|f| f.path.clone());
        while let Some(img) = image.take() {
            if let Some((backing, fmt)) = qcow2_backing(&img)? {
                files.push(CarriedFile { path: backing.clone(), write_back: false });
                image = (fmt == "qcow2").then_some(backing);
            }
        }
    }
    let spec = Spec::from_pairs(pairs).map_err(|e| err(format!("disk spec: {e}")))?;
    Ok((spec, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_guest::scratch::ScratchDir;

    #[test]
    fn carried_files_are_canonical_and_direct_is_dropped() {
        let dir = ScratchDir::new("carried-files").unwrap();
        for f in ["a.img", "b.img"] {
            fs::write(dir.join(f), [0u8; 512]).unwrap();
        }
        fs::create_dir(dir.join("sub")).unwrap();
        // Not canonical: `sub/..` and a doubled slash (no chdir: tests share the process).
        let (a, b) = (dir.join("sub/../a.img"), format!("{}//b.img", dir.path().display()));
        let got = carried_files(&Spec::parse(&format!("format=raid,members={}:{b},direct=on", a.display())).unwrap());
        let ro = carried_files(&Spec::parse(&format!("format=raw,path={},read-only=on", a.display())).unwrap());

        let (spec, files) = got.unwrap();
        let abs = |f: &str| fs::canonicalize(dir.join(f)).unwrap();
        let members = format!("{}:{}", abs("a.img").display(), abs("b.img").display());
        assert_eq!(spec.to_string(), format!("format=raid,members={members}"));
        assert_eq!(
            files.iter().map(|f| (f.path.clone(), f.write_back)).collect::<Vec<_>>(),
            [(abs("a.img"), true), (abs("b.img"), true)]
        );
        let (_, files) = ro.unwrap();
        assert!(!files[0].write_back, "a read-only disk's file is not written back");
    }

    #[test]
    fn carried_files_skip_nodes_and_name_a_missing_file() {
        let (spec, files) = carried_files(&Spec::parse("format=qcow2,path=node:tv").unwrap()).unwrap();
        assert_eq!(spec.to_string(), "format=qcow2,path=node:tv");
        assert!(files.is_empty());
        let e = carried_files(&Spec::parse("format=raw,path=/nonexistent/x.img").unwrap()).unwrap_err();
        assert!(e.to_string().contains("path=/nonexistent/x.img"), "{e}");
    }
}
