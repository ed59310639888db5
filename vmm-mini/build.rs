//! Assembles the probe guest (guest/probe.S) into a flat binary with binutils (`as`, `objcopy`).

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?} (binutils installed?): {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let src = "guest/probe.S";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("probe.o");
    let bin = out.join("probe.bin");
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(src));
    run(Command::new("objcopy").args(["-O", "binary", "-j", ".text"]).arg(&obj).arg(&bin));
}
