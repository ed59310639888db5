//! Find the workspace's binaries (`blkctl`, `vhost-user-blk`, `vmm-mini`) from a test.
//!
//! Cargo only provides `CARGO_BIN_EXE_<name>` for binaries of the package under test, and
//! this crate has none, so tests here look next to their own executable instead: a test
//! binary lives in `<target>/<profile>/deps/`, the workspace's binaries in
//! `<target>/<profile>/`. When a binary is missing there, `cargo build --bins` builds the
//! workspace's binaries once (same profile, same target dir), then the lookup is retried.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Why a binary could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    /// The test executable's location does not look like `<target>/<profile>/deps/<exe>`.
    #[error("cannot locate the target dir from the test executable {exe}: {why}")]
    Layout {
        /// The running executable.
        exe: PathBuf,
        /// What did not match.
        why: String,
    },
    /// `cargo build` could not be started or failed.
    #[error("`{cmd}` failed: {detail}")]
    Build {
        /// The command line.
        cmd: String,
        /// Exit status or spawn error.
        detail: String,
    },
    /// The build succeeded but produced no binary of that name.
    #[error("no binary `{name}` in {dir} even after `cargo build --bins` (is the name right?)")]
    Missing {
        /// The binary asked for.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
}

/// The workspace root (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The profile output dir that holds the running test executable, e.g. `target/debug`.
pub fn profile_dir() -> Result<PathBuf, BinError> {
    let exe = std::env::current_exe().map_err(|e| BinError::Layout { exe: PathBuf::new(), why: e.to_string() })?;
    let parent = exe.parent().ok_or_else(|| BinError::Layout { exe: exe.clone(), why: "no parent dir".into() })?;
    // Integration and unit test binaries live in <profile>/deps; examples in <profile>/examples.
    let dir = match parent.file_name().and_then(|n| n.to_str()) {
        Some("deps") | Some("examples") => parent.parent(),
        _ => Some(parent),
    };
    dir.map(Path::to_path_buf).ok_or_else(|| BinError::Layout { exe: exe.clone(), why: "no profile dir".into() })
}

/// Path of the workspace binary `name` (e.g. `"blkctl"`), building the workspace's
/// binaries with `cargo build --bins` first if it is not there yet.
pub fn bin_path(name: &str) -> Result<PathBuf, BinError> {
    let dir = profile_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    build_bins_once(&dir)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(BinError::Missing { name: name.into(), dir })
    }
}

/// Runs `cargo build --workspace --bins` for the profile of `profile_dir`, once per process.
fn build_bins_once(profile_dir: &Path) -> Result<(), BinError> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return Ok(());
    }
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| BinError::Layout { exe: profile_dir.to_path_buf(), why: "profile dir has no parent".into() })?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).args(["build", "--workspace", "--bins"]).arg("--target-dir").arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let shown = format!("{cmd:?}");
    eprintln!("bins: building the workspace's binaries: {shown}");
    let status = cmd.status().map_err(|e| BinError::Build { cmd: shown.clone(), detail: e.to_string() })?;
    if !status.success() {
        return Err(BinError::Build { cmd: shown, detail: status.to_string() });
    }
    *built = true;
    Ok(())
}
