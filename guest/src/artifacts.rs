//! Fetch and cache Debian's cloud kernel (with its virtio modules) and busybox-static.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::{io_err, run_cmd, Error, Result};

/// The virtio modules the guest's init loads, in dependency order (Debian's cloud kernel
/// builds them as modules, not into the kernel).
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_mmio",
];

/// The metapackage whose current dependency is the kernel we boot.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The package that ships a statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Marks a fully unpacked cache entry.
const COMPLETE_STAMP: &str = ".complete";

/// Where guest artifacts are cached: `$STRATA_GUEST_CACHE` if set, else
/// `$CARGO_TARGET_DIR/guest-artifacts` if that is set, else `<workspace>/target/guest-artifacts`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_GUEST_CACHE") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // an absolute CARGO_TARGET_DIR replaces the base
        None => workspace.join("target"),
    };
    target.join("guest-artifacts")
}

/// A kernel, its modules and busybox, unpacked from Debian packages into the cache.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// The bzImage (`boot/vmlinuz-<release>`).
    pub kernel: PathBuf,
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// The versioned kernel package and version, e.g. `linux-image-6.1.0-56-cloud-amd64=6.1.192-2`.
    pub kernel_package: String,
    /// `lib/modules/<release>` of the unpacked kernel package.
    pub modules_dir: PathBuf,
    /// The statically linked busybox from `busybox-static`.
    pub busybox: PathBuf,
    /// Uncompressed `.ko` files of [`VIRTIO_MODULES`], in load order.
    pub virtio_modules: Vec<PathBuf>,
}

impl GuestArtifacts {
    /// Returns the cached artifacts, downloading and unpacking them on first use.
    ///
    /// Needs `apt-get`, `apt-cache` and `dpkg` (and package lists: `apt-get update`, which
    /// `scripts/setup.sh` runs). If apt cannot resolve the packages but a complete cache entry
    /// exists, that entry is used.
    pub fn ensure() -> Result<Self> {
        static CACHED: Mutex<Option<GuestArtifacts>> = Mutex::new(None);
        let mut cached = CACHED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(art) = cached.as_ref() {
            return Ok(art.clone());
        }
        let art = Self::ensure_in(&cache_root())?;
        *cached = Some(art.clone());
        Ok(art)
    }

    /// Like [`GuestArtifacts::ensure`], with an explicit cache directory.
    pub fn ensure_in(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(io_err("create cache dir", root))?;
        let kernel_dir = match resolve_kernel_package() {
            Ok((pkg, ver)) => ensure_deb(root, &pkg, &ver)?,
            Err(e) => newest_complete(root, "linux-image-").ok_or(e)?,
        };
        let busybox_dir = match candidate_version(BUSYBOX_PACKAGE) {
            Ok(ver) => ensure_deb(root, BUSYBOX_PACKAGE, &ver)?,
            Err(e) => newest_complete(root, BUSYBOX_PACKAGE).ok_or(e)?,
        };

        let boot = kernel_dir.join("boot");
        let kernel = fs::read_dir(&boot)
            .map_err(io_err("read", &boot))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .ok_or_else(|| Error::NotFound(format!("boot/vmlinuz-* in {}", kernel_dir.display())))?;
        let kernel_release = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_string();
        let modules_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| kernel_dir.join(d).join(&kernel_release))
            .find(|d| d.is_dir())
            .ok_or_else(|| Error::NotFound(format!("lib/modules/{kernel_release} in {}", kernel_dir.display())))?;
        let busybox = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| busybox_dir.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::NotFound(format!("bin/busybox in {}", busybox_dir.display())))?;
        // The stamp written by `ensure_deb` holds `<package>=<version>`.
        let kernel_package = fs::read_to_string(kernel_dir.join(COMPLETE_STAMP)).unwrap_or_default().trim().to_string();

        let mut art =
            GuestArtifacts { kernel, kernel_release, kernel_package, modules_dir, busybox, virtio_modules: Vec::new() };
        art.virtio_modules = VIRTIO_MODULES.iter().map(|m| art.module(m)).collect::<Result<_>>()?;
        Ok(art)
    }

    /// The uncompressed `.ko` of module `name` (`-` and `_` are equivalent), decompressing a
    /// `.ko.xz`, `.ko.zst` or `.ko.gz` next to it on first use. Useful for modules beyond
    /// the virtio set, e.g. `irqbypass`, `kvm`, `kvm-amd` for nested KVM.
    pub fn module(&self, name: &str) -> Result<PathBuf> {
        let want = name.replace('-', "_");
        let found = find_file(&self.modules_dir, &|file: &str| {
            let stem = ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().find_map(|ext| file.strip_suffix(&format!(".{ext}")));
            stem.is_some_and(|s| s.replace('-', "_") == want)
        })
        .ok_or_else(|| Error::NotFound(format!("module {name} under {}", self.modules_dir.display())))?;
        let file = found.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some((base, ext)) = file.split_once(".ko.") else {
            return Ok(found);
        };
        let out = found.with_file_name(format!("{base}.ko"));
        if out.is_file() {
            return Ok(out);
        }
        let tool = match ext {
            "xz" => "xz",
            "zst" => "zstd",
            _ => "gzip",
        };
        let data = run_bytes(Command::new(tool).arg("-dc").arg(&found))?;
        let tmp = out.with_extension(format!("ko.tmp{}", std::process::id()));
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &out).map_err(io_err("rename into place", &out))?;
        Ok(out)
    }
}

/// Runs a command and returns its raw stdout.
fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command { cmd: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let detail = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return Err(Error::Command { cmd: shown, detail });
    }
    Ok(out.stdout)
}

/// Depth-first search for a file whose name satisfies `pred`.
fn find_file(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if let Some(p) = find_file(&path, pred) {
                return Some(p);
            }
        } else if e.file_name().to_str().is_some_and(pred) {
            return Some(path);
        }
    }
    None
}

/// The versioned kernel package the metapackage currently depends on, and its version.
fn resolve_kernel_package() -> Result<(String, String)> {
    let out = run_cmd(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let pkg = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("|").unwrap_or(l.trim()).strip_prefix("Depends:"))
        .map(|p| p.trim().trim_start_matches('<').trim_end_matches('>').to_string())
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "a linux-image-*-cloud-amd64 dependency in `apt-cache depends {KERNEL_METAPACKAGE}` \
                 (run `apt-get update`, or scripts/setup.sh); output:\n{out}"
            ))
        })?;
    let ver = candidate_version(&pkg)?;
    Ok((pkg, ver))
}

/// The version apt would install for `pkg`.
fn candidate_version(pkg: &str) -> Result<String> {
    let out = run_cmd(Command::new("apt-cache").args(["policy", pkg]))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
        .ok_or_else(|| Error::NotFound(format!("an installable version of {pkg} (run `apt-get update`)")))
}

/// A cache directory name for a package version (no `:` from epochs, no `/`).
fn entry_name(pkg: &str, ver: &str) -> String {
    format!("{pkg}_{}", ver.replace([':', '/'], "%"))
}

/// The most recently modified complete cache entry whose name starts with `prefix`.
fn newest_complete(root: &Path, prefix: &str) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in fs::read_dir(root).ok()?.filter_map(|e| e.ok()) {
        let path = e.path();
        let named = e.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
        if !named || !path.join(COMPLETE_STAMP).is_file() {
            continue;
        }
        let mtime = e.metadata().and_then(|m| m.modified()).ok()?;
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, path));
        }
    }
    let found = best.map(|(_, p)| p)?;
    eprintln!("guest: apt could not resolve packages; using cached {}", found.display());
    Some(found)
}

/// An exclusive `flock` on `path`, held until the returned file is dropped.
fn lock_exclusive(path: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err("open", path))?;
    // SAFETY: flock takes a file descriptor and flags only; `file` owns the descriptor and
    // outlives the call. The lock is released when `file` is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(Error::Io { what: "flock", path: path.to_path_buf(), source: std::io::Error::last_os_error() });
    }
    Ok(file)
}

/// `root/<pkg>_<ver>/`: the package unpacked with `dpkg -x`, downloaded on first use.
fn ensure_deb(root: &Path, pkg: &str, ver: &str) -> Result<PathBuf> {
    let dir = root.join(entry_name(pkg, ver));
    if dir.join(COMPLETE_STAMP).is_file() {
        return Ok(dir);
    }
    let _lock = lock_exclusive(&root.join(".lock"))?;
    if dir.join(COMPLETE_STAMP).is_file() {
        return Ok(dir); // another process finished it while we waited
    }
    eprintln!("guest: fetching {pkg}={ver} into {}", dir.display());
    let tmp = root.join(format!(".tmp-{pkg}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    // As root, apt's sandbox user `_apt` cannot write into an arbitrary directory; download as
    // the current user instead (the .deb is verified against the signed lists either way).
    run_cmd(
        Command::new("apt-get")
            .current_dir(&tmp)
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{pkg}={ver}")),
    )?;
    let deb = fs::read_dir(&tmp)
        .map_err(io_err("read", &tmp))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::NotFound(format!("the downloaded .deb of {pkg} in {}", tmp.display())))?;
    let unpacked = tmp.join("root");
    run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err("remove incomplete", &dir))?;
    }
    fs::rename(&unpacked, &dir).map_err(io_err("rename into place", &dir))?;
    let _ = fs::remove_dir_all(&tmp);
    fs::write(dir.join(COMPLETE_STAMP), format!("{pkg}={ver}\n")).map_err(io_err("write", &dir))?;
    Ok(dir)
}
