//! `--demo`: an 8 GiB qcow2 disk (created by strata, empty until the guest writes) under
//! `./strata-demo/`, served at `./strata-demo/disk.sock`, and the QEMU and vmm-mini command lines
//! that attach to it.

use std::path::{Path, PathBuf};

use super::disk_spec::DiskSpec;

/// Size of the demo disk.
pub const DEMO_SIZE: u64 = 8 << 30;

/// Create `dir/disk.qcow2` once and return the spec that serves it at `dir/disk.sock`.
pub fn prepare(dir: &Path) -> Result<DiskSpec, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let image = dir.join("disk.qcow2");
    if !image.exists() {
        let io = blockdev::IoCtx::new().map_err(|e| e.to_string())?;
        let opts = qcow::CreateOptions { size: DEMO_SIZE, ..Default::default() };
        qcow::create_path(&io, &image, &opts).map_err(|e| format!("{}: cannot create: {e}", image.display()))?;
        tracing::info!("created the 8 GiB qcow2 demo disk {}", image.display());
    }
    let socket = dir.join("disk.sock");
    for p in [&image, &socket] {
        if p.to_string_lossy().contains(',') {
            return Err(format!("{}: the demo directory path must not contain ','", p.display()));
        }
    }
    DiskSpec::parse(&format!(
        "socket={},format=qcow2,path={},name=demo,serial=strata-demo",
        socket.display(),
        image.display()
    ))
}

/// The QEMU command line that attaches a guest to the export at `socket`.
pub fn qemu_command(socket: &Path) -> String {
    format!(
        "qemu-system-x86_64 -m 1G \
-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
-chardev socket,id=c0,path={} -device vhost-user-blk-pci,chardev=c0",
        socket.display()
    )
}

/// The vmm-mini command line that boots a Linux guest on the export at `socket`; `vmm` is how
/// to run vmm-mini (see [`vmm_mini_program`]).
pub fn vmm_mini_command(vmm: &str, socket: &Path) -> String {
    format!("{vmm} --kernel BZIMAGE --initrd INITRD --disk socket={}", socket.display())
}

/// The vmm-mini command that checks the export at `socket` end to end with its built-in probe
/// guest (it writes a test pattern to the disk's first two and last sectors).
pub fn vmm_mini_probe_command(vmm: &str, socket: &Path) -> String {
    format!("{vmm} probe --disk socket={}", socket.display())
}

/// How to run vmm-mini so that a printed command works as printed: the `vmm-mini` binary next
/// to this executable when there is one (cargo builds both into the same directory), otherwise
/// the `cargo run` form, since a new user does not have vmm-mini on their PATH.
pub fn vmm_mini_program() -> String {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("vmm-mini")));
    vmm_mini_program_in(beside.as_deref())
}

/// [`vmm_mini_program`] for a candidate path (`None` when the executable's directory is unknown).
fn vmm_mini_program_in(candidate: Option<&Path>) -> String {
    match candidate {
        Some(p) if p.is_file() && !p.to_string_lossy().contains(char::is_whitespace) => p.display().to_string(),
        _ => "cargo run --release -p vmm-mini --".to_string(),
    }
}

/// The demo directory under the current directory.
pub fn default_dir() -> PathBuf {
    PathBuf::from("strata-demo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_mini_is_run_from_beside_the_daemon_or_through_cargo() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("vmm-mini");
        assert_eq!(vmm_mini_program_in(Some(&bin)), "cargo run --release -p vmm-mini --");
        assert_eq!(vmm_mini_program_in(None), "cargo run --release -p vmm-mini --");
        std::fs::write(&bin, b"").unwrap();
        assert_eq!(vmm_mini_program_in(Some(&bin)), bin.display().to_string());
    }
}
