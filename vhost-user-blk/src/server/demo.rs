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

/// The vmm-mini command line that boots a Linux guest on the export at `socket`.
pub fn vmm_mini_command(socket: &Path) -> String {
    format!("vmm-mini --kernel BZIMAGE --initrd INITRD --disk socket={}", socket.display())
}

/// The vmm-mini command that checks the export at `socket` end to end with its built-in probe
/// guest (it writes a test pattern to the disk's first two and last sectors).
pub fn vmm_mini_probe_command(socket: &Path) -> String {
    format!("vmm-mini probe --disk socket={}", socket.display())
}

/// The demo directory under the current directory.
pub fn default_dir() -> PathBuf {
    PathBuf::from("strata-demo")
}
