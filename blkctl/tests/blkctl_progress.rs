//! Progress is for people at a terminal: with stderr piped (a script, a log, CI) the long
//! commands print no progress at all, unless `convert -p` asks for qemu-img's plain text. (The
//! terminal case is the unit test of `blkctl::progress::decide`.)

use std::process::{Command, Output, Stdio};

fn blkctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blkctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run blkctl")
}

/// Bytes a progress display would leave: a carriage return, an ANSI escape, a percentage.
fn progress_bytes(stderr: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut found = Vec::new();
    for (what, needle) in [("carriage return", "\r"), ("ANSI escape", "\x1b"), ("percent sign", "%")] {
        if text.contains(needle) {
            found.push(what.to_string());
        }
    }
    found
}

#[test]
fn convert_with_stderr_piped_prints_no_progress_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    // Data worth copying, so the copy reports progress many times.
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate().step_by(4096) {
        *b = (i >> 12) as u8 | 1;
    }
    std::fs::write(&src, &data).unwrap();
    let (src_s, dst_s) = (src.to_str().unwrap(), dir.path().join("dst.qcow2"));
    let dst_s = dst_s.to_str().unwrap();

    let out = blkctl(&["qcow2", "convert", "-f", "raw", "-O", "qcow2", src_s, dst_s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "convert failed: {stderr}");
    let found = progress_bytes(&out.stderr);
    assert!(found.is_empty(), "progress ({}) on a piped stderr:\n{stderr:?}", found.join(", "));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Converted "), "no result line");

    // -p: qemu-img's plain text, never a bar's escapes.
    let out = blkctl(&["qcow2", "convert", "-p", "-f", "raw", "-O", "qcow2", src_s, dst_s]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "convert -p failed: {stderr}");
    assert!(stderr.contains("    (100.00/100%)"), "no plain progress with -p:\n{stderr:?}");
    assert!(!stderr.contains('\x1b'), "terminal escapes on a pipe:\n{stderr:?}");
}

#[test]
fn raid_scrub_with_stderr_piped_prints_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let members: Vec<String> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            // Sparse, but big enough that the scrub runs long enough for a progress update.
            std::fs::File::create(&p).unwrap().set_len(128 << 20).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut create = vec!["raid", "create", "--level", "1"];
    create.extend(members.iter().map(String::as_str));
    let out = blkctl(&create);
    assert!(out.status.success(), "raid create failed: {}", String::from_utf8_lossy(&out.stderr));
    let array = members.join(":");
    let out = blkctl(&["raid", "scrub", &array]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "raid scrub failed: {stderr}");
    let found = progress_bytes(&out.stderr);
    assert!(found.is_empty(), "progress ({}) on a piped stderr:\n{stderr:?}", found.join(", "));
}

#[test]
fn thin_check_and_bench_with_stderr_piped_print_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img");
    std::fs::File::create(&pool).unwrap().set_len(64 << 20).unwrap();
    let pool = pool.to_str().unwrap();
    let out = blkctl(&["thin", "pool-create", pool]);
    assert!(out.status.success(), "pool-create failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = blkctl(&["thin", "check", pool]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "thin check failed: {stderr}");
    let found = progress_bytes(&out.stderr);
    assert!(found.is_empty(), "thin check: progress ({}) on a piped stderr:\n{stderr:?}", found.join(", "));

    let out = blkctl(&["bench", "format=mem,size=16M", "--ops", "200"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let found = progress_bytes(&out.stderr);
    assert!(found.is_empty(), "bench: progress ({}) on a piped stderr:\n{stderr:?}", found.join(", "));
}
