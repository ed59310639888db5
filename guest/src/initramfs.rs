//! An initramfs whose `/init` (busybox sh) mounts the usual file systems, loads the virtio
//! modules, runs a guest script between two markers and powers off.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, Error, GuestArtifacts, Result};
use crate::CpioWriter;

/// Printed by `/init` on the console just before the guest script runs.
pub const START_MARKER: &str = "STRATA-GUEST-SCRIPT-START";
/// Printed by `/init` after the guest script, as `STRATA-GUEST-SCRIPT-END rc=<exit code>`.
pub const END_MARKER: &str = "STRATA-GUEST-SCRIPT-END";

/// Where the guest script sits in the initramfs.
const SCRIPT_PATH: &str = "strata/script.sh";
/// Where modules sit in the initramfs, flat, as `<name>.ko`.
const MODULE_DIR: &str = "lib/modules/strata";
/// The host's fio, copied in by [`InitramfsBuilder::with_fio`].
const HOST_FIO: &str = "/usr/bin/fio";

/// Entry point: `Initramfs::builder()`.
#[derive(Debug)]
pub struct Initramfs;

impl Initramfs {
    /// A builder with an empty script, the virtio modules and busybox.
    pub fn builder() -> InitramfsBuilder {
        InitramfsBuilder::default()
    }
}

/// A node of the archive being assembled.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    /// Contents come from a host file at build time, or are given.
    File {
        src: Source,
        perm: u32,
    },
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Debug, Clone)]
enum Source {
    Host(PathBuf),
    Data(Vec<u8>),
}

/// Assembles an initramfs; see [`Initramfs::builder`].
#[derive(Debug, Default)]
pub struct InitramfsBuilder {
    artifacts: Option<GuestArtifacts>,
    script: String,
    fio: bool,
    files: Vec<(String, Source, Option<u32>)>,
    binaries: Vec<(PathBuf, String)>,
    modules: Vec<String>,
}

impl InitramfsBuilder {
    /// Uses these artifacts instead of calling [`GuestArtifacts::ensure`] at build time.
    pub fn artifacts(mut self, art: &GuestArtifacts) -> Self {
        self.artifacts = Some(art.clone());
        self
    }

    /// The guest script (busybox `sh`), sourced in a subshell by `/init` after the modules are
    /// loaded. It can call `wait_dev /dev/vda [SECONDS]` to wait for a device node. Its exit
    /// code is reported in the end marker.
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.to_string();
        self
    }

    /// Copies the host's `/usr/bin/fio` with the libraries `ldd` lists and the dynamic loader.
    pub fn with_fio(mut self, fio: bool) -> Self {
        self.fio = fio;
        self
    }

    /// Copies host file `src` to `dst` (absolute guest path), keeping its permission bits.
    pub fn extra_file(mut self, src: impl AsRef<Path>, dst: &str) -> Self {
        self.files.push((dst.to_string(), Source::Host(src.as_ref().to_path_buf()), None));
        self
    }

    /// Writes `data` to `dst` (absolute guest path) with permissions `perm`.
    pub fn extra_data(mut self, dst: &str, data: impl Into<Vec<u8>>, perm: u32) -> Self {
        self.files.push((dst.to_string(), Source::Data(data.into()), Some(perm)));
        self
    }

    /// Copies a dynamically linked host binary to `dst` together with the libraries `ldd`
    /// reports (at their host paths) and the loader.
    pub fn binary(mut self, src: impl AsRef<Path>, dst: &str) -> Self {
        self.binaries.push((src.as_ref().to_path_buf(), dst.to_string()));
        self
    }

    /// Loads kernel module `name` (e.g. `kvm`) after the virtio modules, in call order.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Writes the uncompressed newc archive to `path`.
    pub fn build(self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let art = match self.artifacts {
            Some(a) => a,
            None => GuestArtifacts::ensure()?,
        };
        let mut tree: BTreeMap<String, Node> = BTreeMap::new();
        let put = |tree: &mut BTreeMap<String, Node>, name: &str, node: Node| {
            let name = name.trim_start_matches('/').to_string();
            let mut parent = Path::new(&name).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                tree.entry(p.to_string_lossy().into_owned()).or_insert(Node::Dir);
                parent = p.parent();
            }
            tree.insert(name, node);
        };

        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "mnt", "etc", "root"] {
            put(&mut tree, d, Node::Dir);
        }
        put(&mut tree, "dev/console", Node::CharDev(5, 1));
        put(&mut tree, "bin/busybox", Node::File { src: Source::Host(art.busybox.clone()), perm: 0o755 });
        put(&mut tree, "bin/sh", Node::Symlink("busybox".into()));

        let mut module_names = Vec::new();
        for (name, ko) in crate::VIRTIO_MODULES.iter().map(|n| n.to_string()).zip(&art.virtio_modules) {
            put(
                &mut tree,
                &format!("{MODULE_DIR}/{name}.ko"),
                Node::File { src: Source::Host(ko.clone()), perm: 0o644 },
            );
            module_names.push(name);
        }
        for name in &self.modules {
            let ko = art.module(name)?;
            put(&mut tree, &format!("{MODULE_DIR}/{name}.ko"), Node::File { src: Source::Host(ko), perm: 0o644 });
            module_names.push(name.clone());
        }

        let mut binaries = self.binaries.clone();
        if self.fio {
            binaries.push((PathBuf::from(HOST_FIO), HOST_FIO.to_string()));
        }
        let mut lib_dirs = BTreeSet::new();
        for (src, dst) in &binaries {
            put(&mut tree, dst, Node::File { src: Source::Host(src.clone()), perm: 0o755 });
            for lib in ldd(src)? {
                if let Some(dir) = lib.parent() {
                    lib_dirs.insert(dir.to_string_lossy().into_owned());
                }
                let name = lib.to_string_lossy().into_owned();
                put(&mut tree, &name, Node::File { src: Source::Host(lib), perm: 0o755 });
            }
        }
        for (dst, src, perm) in &self.files {
            let perm = match (perm, src) {
                (Some(p), _) => *p,
                (None, Source::Host(p)) => fs::metadata(p).map_err(io_err("stat", p))?.permissions().mode() & 0o7777,
                (None, Source::Data(_)) => 0o644,
            };
            put(&mut tree, dst, Node::File { src: src.clone(), perm });
        }

        let lib_path = lib_dirs.into_iter().collect::<Vec<_>>().join(":");
        let init = init_script(&module_names, &lib_path);
        put(&mut tree, "init", Node::File { src: Source::Data(init.into_bytes()), perm: 0o755 });
        put(&mut tree, SCRIPT_PATH, Node::File { src: Source::Data(self.script.into_bytes()), perm: 0o755 });

        let file = fs::File::create(path).map_err(io_err("create", path))?;
        let mut w = CpioWriter::new(BufWriter::new(file));
        for (name, node) in &tree {
            match node {
                Node::Dir => w.dir(name, 0o755),
                Node::Symlink(target) => w.symlink(name, target),
                Node::CharDev(major, minor) => w.char_dev(name, 0o600, *major, *minor),
                Node::File { src: Source::Data(d), perm } => w.file(name, *perm, d),
                Node::File { src: Source::Host(p), perm } => {
                    let data = fs::read(p).map_err(io_err("read", p))?;
                    w.file(name, *perm, &data)
                }
            }
            .map_err(io_err("write", path))?;
        }
        w.finish().map_err(io_err("write", path))?;
        Ok(())
    }
}

/// The libraries (and loader) a dynamic binary needs, as absolute host paths; empty for a
/// static binary.
fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    if !bin.is_file() {
        return Err(Error::NotFound(format!("binary {} (for the initramfs)", bin.display())));
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| Error::Command { cmd: format!("ldd {}", bin.display()), detail: e.to_string() })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(Error::Command { cmd: format!("ldd {}", bin.display()), detail: all });
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(Error::NotFound(format!("{line} (a library of {})", bin.display())));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The `/init` script.
fn init_script(modules: &[String], lib_path: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# Generated by strata-guest (guest/src/initramfs.rs).
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export LD_LIBRARY_PATH={lib_path}
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in {modules}; do
    insmod /{MODULE_DIR}/$m.ko || echo "strata-init: insmod $m failed"
done

# wait_dev PATH [SECONDS]: wait until a device node exists (default 10 s).
wait_dev() {{
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1))
        if [ "$n" -gt $((${{2:-10}} * 10)) ]; then
            echo "strata-init: $1 did not appear"
            return 1
        fi
        sleep 0.1
    done
}}

echo "{START_MARKER}"
( . /{SCRIPT_PATH} )
rc=$?
echo "{END_MARKER} rc=$rc"
sync
# Let the serial port drain before the power goes.
sleep 0.2
poweroff -f
"#,
        modules = modules.join(" "),
    )
}
