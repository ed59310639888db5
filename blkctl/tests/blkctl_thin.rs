//! `blkctl thin` as a user runs it: exit codes of `check` (0 clean, 2 corruption, also with
//! `--repair`), and the errors that point at `--api-socket`.

use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

fn blkctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blkctl")).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_exits_0_when_clean_and_2_on_corruption_even_with_repair() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img");
    std::fs::File::create(&pool).unwrap().set_len(32 << 20).unwrap();
    let p = pool.to_str().unwrap();
    assert!(blkctl(&["thin", "pool-create", p]).status.success());
    assert!(blkctl(&["thin", "create", p, "v", "--size", "1G"]).status.success());
    let clean = blkctl(&["thin", "check", p]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("No errors"));

    // Flip a byte in every metadata page past the superblocks that holds something: whatever
    // the commit wrote there fails its checksum.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&pool).unwrap();
    let mut page = vec![0u8; 4096];
    for n in 2..64u64 {
        f.read_exact_at(&mut page, n * 4096).unwrap();
        if page.iter().any(|&b| b != 0) {
            page[100] ^= 0x40;
            f.write_all_at(&page, n * 4096).unwrap();
        }
    }
    drop(f);
    for extra in [&[][..], &["--repair"][..]] {
        let args: Vec<&str> = ["thin", "check", p].iter().chain(extra).copied().collect();
        let out = blkctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("ERROR"), "{}", text(&out));
    }
    let json = blkctl(&["thin", "check", p, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["corruptions"].as_u64().unwrap() >= 1, "{v}");
    // Opening it for use is refused and says what to run.
    let list = blkctl(&["thin", "list", p]);
    assert!(!list.status.success());
    assert!(text(&list).contains("blkctl thin check"), "{}", text(&list));
}

#[test]
fn api_socket_errors_name_the_socket_and_creation_is_refused_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img");
    std::fs::File::create(&pool).unwrap().set_len(32 << 20).unwrap();
    let p = pool.to_str().unwrap();
    let sock = dir.path().join("no-daemon.sock");
    let s = sock.to_str().unwrap();
    let out = blkctl(&["thin", "list", p, "--api-socket", s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no-daemon.sock") && text(&out).contains("cannot connect"), "{}", text(&out));
    let out = blkctl(&["thin", "pool-create", p, "--api-socket", s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not available through the daemon"), "{}", text(&out));
}
