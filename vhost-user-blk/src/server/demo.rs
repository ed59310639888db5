//! `--demo`: a sparse 8 GiB raw disk under `./strata-demo/`, served at `./strata-demo/disk.sock`,
//! and the QEMU command line that attaches to it.

use std::path::{Path, PathBuf};

use super::disk_spec::DiskSpec;

/// Size of the demo disk.
pub const DEMO_SIZE: u64 = 8 << 30;

/// Create `dir/disk.raw` once (sparse) and return the spec that serves it at `dir/disk.sock`.
pub fn prepare(dir: &Path) -> Result<DiskSpec, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let image = dir.join("disk.raw");
    if !image.exists() {
        let f = std::fs::File::create(&image).map_err(|e| format!("{}: cannot create: {e}", image.display()))?;
        f.set_len(DEMO_SIZE).map_err(|e| format!("{}: cannot size: {e}", image.display()))?;
        tracing::info!("created the sparse 8 GiB demo disk {}", image.display());
    }
    let socket = dir.join("disk.sock");
    for p in [&image, &socket] {
        if p.to_string_lossy().contains(',') {
            return Err(format!("{}: the demo directory path must not contain ','", p.display()));
        }
    }
    DiskSpec::parse(&format!(
        "socket={},format=raw,path={},name=demo,serial=strata-demo",
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

/// The demo directory under the current directory.
pub fn default_dir() -> PathBuf {
    PathBuf::from("strata-demo")
}
