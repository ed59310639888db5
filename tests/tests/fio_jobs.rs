//! The fio job files in `fio-jobs/`: each parses on its own, the set covers the workloads the
//! benchmark report needs, and the verify job checks data with crc32c.

use std::path::PathBuf;
use std::process::Command;

fn jobs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fio-jobs")
}

fn job_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(jobs_dir())
        .expect("fio-jobs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fio"))
        .collect();
    files.sort();
    files
}

fn fio_available() -> bool {
    let found = Command::new("fio").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("STRATA_REQUIRE_QEMU").is_none(),
            "fio is required here (scripts/setup.sh installs it) but was not found"
        );
        eprintln!("SKIPPED: fio job parsing, because fio is not installed (scripts/setup.sh installs it)");
    }
    found
}

#[test]
fn every_job_file_parses_alone() {
    if !fio_available() {
        return;
    }
    let files = job_files();
    assert!(files.len() >= 7, "expected the seven job files, found {files:?}");
    for f in files {
        let out = Command::new("fio").arg("--parse-only").arg(&f).env_clear().output().expect("run fio");
        assert!(
            out.status.success(),
            "{} does not parse: {}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_set_covers_the_report_workloads() {
    let names: Vec<String> =
        job_files().iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for want in
        ["randread-4k-qd32", "randwrite-4k-qd32", "randrw-70-30", "seqread-1m", "seqwrite-1m", "lat-qd1", "verify"]
    {
        assert!(names.iter().any(|n| n == want), "missing fio-jobs/{want}.fio");
    }
}

#[test]
fn the_verify_job_checks_crc32c_during_and_after() {
    let text = std::fs::read_to_string(jobs_dir().join("verify.fio")).expect("verify.fio");
    let options: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with(';')).collect();
    for want in ["verify=crc32c", "verify_fatal=1", "do_verify=1"] {
        assert!(options.contains(&want), "verify.fio lacks `{want}`");
    }
    assert!(options.iter().any(|l| l.starts_with("verify_backlog=")), "verify.fio lacks verify_backlog");
}

#[test]
fn job_files_hold_only_options_and_comments() {
    for f in job_files() {
        let text = std::fs::read_to_string(&f).expect("read job file");
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            let ok = l.is_empty()
                || l.starts_with(';')
                || l.starts_with('#')
                || (l.starts_with('[') && l.ends_with(']'))
                || l.contains('=');
            assert!(ok, "{}:{}: not a job option: {line}", f.display(), n + 1);
            assert!(!l.contains("${"), "{}:{}: uses an environment variable", f.display(), n + 1);
        }
    }
}
