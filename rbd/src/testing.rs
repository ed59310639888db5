//! For tests (feature `test-utils`): a Ceph cluster to run against, and scratch images.
//!
//! [`cluster`] uses the cluster `CEPH_CONF` names (scripts/test.sh starts one per run and stops
//! it), or starts the development cluster with `scripts/ceph-dev.sh start` (left running for the
//! next test; `scripts/ceph-dev.sh stop` ends it). Without Ceph's packages it says SKIPPED loudly,
//! or fails under `STRATA_REQUIRE_QEMU=1` (CI), never skips silently there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The workspace root (where `scripts/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the rbd crate sits in the workspace").to_path_buf()
}

fn required() -> bool {
    std::env::var_os("STRATA_REQUIRE_QEMU").is_some_and(|v| v == "1")
}

/// The `ceph.conf` of a running cluster, starting the development one if needed; `None` (after
/// an eprintln saying SKIPPED and why) when Ceph is not installed and CI did not require it.
/// `test` names the caller in the message. Callers pass the path on (`conf=`, `rbd -c`): the
/// environment is not changed, as other test threads may be reading it.
pub fn cluster(test: &str) -> Option<PathBuf> {
    static CONF: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let r = CONF.get_or_init(|| {
        if let Some(c) = std::env::var_os("CEPH_CONF") {
            return Ok(PathBuf::from(c));
        }
        if Command::new("ceph-mon").arg("--version").output().is_err() {
            return Err("Ceph is not installed (scripts/setup.sh installs ceph-mon, ceph-osd, ceph-common)".into());
        }
        let script = workspace_root().join("scripts/ceph-dev.sh");
        let out = Command::new("bash").arg(&script).arg("start").output().map_err(|e| format!("{script:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/ceph-dev.sh start failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let conf = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or("").to_string();
        Ok(PathBuf::from(conf))
    });
    match r {
        Ok(conf) => Some(conf.clone()),
        Err(why) if required() => panic!("{test}: a Ceph cluster is required (STRATA_REQUIRE_QEMU=1): {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: no Ceph cluster: {why}");
            None
        }
    }
}

/// Run `rbd ARGS` against `conf`; panics with its output if it fails.
pub fn rbd(conf: &Path, args: &[&str]) -> String {
    let out = Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rbd {args:?}: {e}"));
    assert!(out.status.success(), "rbd {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch image in pool `rbd`, removed (with its snapshots) when dropped.
pub struct ScratchImage {
    /// The cluster's conf.
    pub conf: PathBuf,
    /// The image's name in pool `rbd`.
    pub name: String,
}

impl ScratchImage {
    /// Create `rbd/<prefix>-<pid>-<n>` of `size` bytes.
    pub fn create(conf: &Path, prefix: &str, size: u64) -> ScratchImage {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        rbd(conf, &["create", "--size", &format!("{}K", size / 1024), &format!("rbd/{name}")]);
        ScratchImage { conf: conf.to_path_buf(), name }
    }

    /// `rbd/NAME`.
    pub fn spec(&self) -> String {
        format!("rbd/{}", self.name)
    }

    /// The image's bytes, through `rbd export`.
    pub fn export(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("export.img");
        rbd(&self.conf, &["export", "--no-progress", &self.spec(), out.to_str().expect("utf-8 path")]);
        std::fs::read(&out).expect("read the export")
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(["snap", "purge", "--no-progress", &self.spec()])
            .output();
        let _ = Command::new("rbd").arg("-c").arg(&self.conf).args(["rm", "--no-progress", &self.spec()]).output();
    }
}
