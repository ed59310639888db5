//! Landlock: once start-up is done, every thread may touch files only beneath the directories
//! of the paths the command line and configuration name (images, sockets, the pidfile), the
//! `backing-dir`s, and each `--allow-dir`; /proc stays readable. Where the kernel has no
//! Landlock the daemon says so once and goes on.
//!
//! The ruleset is built once at prepare (on the unconfined main thread); each thread restricts
//! itself with a duplicate of it in its start hook (a Landlock domain belongs to a thread), the
//! main thread at lock-down.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
};

use crate::config::NodeSpec;
use crate::server::DiskSpec;

/// The filesystem rights Landlock handles (everything up to device ioctls, ABI 5).
const HANDLED: ABI = ABI::V5;

/// Keys whose value names a file (its directory is allowed).
const FILE_KEYS: &[&str] = &["path", "pool", "metadata", "backing-file"];
/// Keys whose value names a directory (allowed as is).
const DIR_KEYS: &[&str] = &["backing-dir"];

/// The Landlock ABI the running kernel offers (0 = none).
pub fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: the version query takes no memory (NULL attributes, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// The directories the exports and nodes name: each file key's directory, each directory key,
/// the export sockets' directories. `node:NAME` values name no file.
pub fn named_dirs(specs: &[DiskSpec], nodes: &[NodeSpec]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut pairs: Vec<&(String, String)> = specs.iter().flat_map(|s| s.device.iter()).collect();
    pairs.extend(nodes.iter().flat_map(|n| n.device.iter()));
    for (k, v) in pairs {
        if v.starts_with("node:") {
            continue;
        }
        if FILE_KEYS.contains(&k.as_str()) {
            dirs.push(dir_of(Path::new(v)));
        } else if DIR_KEYS.contains(&k.as_str()) {
            dirs.push(PathBuf::from(v));
        } else if k == "members" {
            dirs.extend(
                v.split(':').filter(|m| !m.is_empty() && !m.starts_with("node:")).map(|m| dir_of(Path::new(m))),
            );
        }
    }
    dirs.extend(specs.iter().map(|s| dir_of(&s.settings.socket)));
    dirs
}

/// The directory a file lies in (`.` for a bare name).
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Build the ruleset: full access beneath `dirs`, read access to /proc. `None` (said in the log)
/// where the kernel has no Landlock.
pub fn build(dirs: &[PathBuf]) -> Result<Option<RulesetCreated>, String> {
    let abi = kernel_abi();
    if abi == 0 {
        tracing::warn!("Landlock is not available in this kernel: file access is not limited to the named directories");
        return Ok(None);
    }
    let err = |e: landlock::RulesetError| format!("Landlock: {e}");
    for d in dirs {
        if !d.exists() {
            tracing::warn!("Landlock: {} does not exist: nothing beneath it will be reachable", d.display());
        }
    }
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(HANDLED))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(dirs, AccessFs::from_all(HANDLED)))
        .map_err(err)?
        .add_rules(path_beneath_rules(["/proc"], AccessFs::from_read(HANDLED)))
        .map_err(err)?;
    tracing::info!(
        "Landlock (ABI {abi}): files reachable only beneath {}",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(Some(ruleset))
}

/// Restrict the calling thread with (a duplicate of) `ruleset`.
pub fn restrict(ruleset: &RulesetCreated) -> Result<(), String> {
    let status = ruleset
        .try_clone()
        .map_err(|e| format!("Landlock: duplicating the ruleset: {e}"))?
        .restrict_self()
        .map_err(|e| format!("Landlock: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("Landlock: the ruleset was not enforced".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_dirs_takes_file_directories_members_and_dir_keys() {
        let spec = DiskSpec::parse("socket=/run/s/a.sock,format=raid,members=/img/a.img:/img2/b.img").unwrap();
        let q = DiskSpec::parse("socket=b.sock,format=qcow2,path=/q/x.qcow2,backing-dir=/bases").unwrap();
        let node = NodeSpec { name: "n".into(), device: vec![("path".into(), "node:base".into())] };
        let dirs = named_dirs(&[spec, q], &[node]);
        for want in ["/img", "/img2", "/q", "/bases", "/run/s", "."] {
            assert!(dirs.contains(&PathBuf::from(want)), "{want} missing from {dirs:?}");
        }
        assert!(!dirs.iter().any(|d| d.starts_with("node:")), "{dirs:?}");
    }
}
