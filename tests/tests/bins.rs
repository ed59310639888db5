//! The binary lookup finds (building if needed) the workspace's binaries.

use strata_tests::bins::bin_path;

#[test]
fn bin_path_finds_blkctl_and_it_runs() {
    let blkctl = bin_path("blkctl").expect("locate or build blkctl");
    let out = std::process::Command::new(&blkctl).arg("--help").output().expect("run blkctl --help");
    assert!(out.status.success(), "blkctl --help failed: {out:?}");
    let dir = blkctl.parent().expect("a binary path has a parent dir");
    assert_eq!(dir, strata_tests::bins::profile_dir().expect("profile dir"), "blkctl not next to the tests' profile");
}

#[test]
fn bin_path_reports_an_unknown_binary() {
    let err = bin_path("no-such-strata-binary").expect_err("an unknown binary is an error");
    assert!(err.to_string().contains("no-such-strata-binary"), "error does not name the binary: {err}");
}
