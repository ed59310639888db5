#!/usr/bin/env bash
# Install what the tests need (as root; only what is missing) and run every test:
# formatting, clippy, the workspace's tests (including the QEMU end-to-end tests, which
# must not skip here), then each fuzz target briefly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FUZZ_SECONDS="${STRATA_FUZZ_SECONDS:-20}"

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

step "setup (scripts/setup.sh)"
bash scripts/setup.sh

# The QEMU tests skip when qemu-system-x86_64 is missing; setup.sh installed it, so here a
# skip would hide a broken environment: make it a failure instead.
export STRATA_REQUIRE_QEMU=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# A one-node Ceph cluster for the RBD tests, once per run, in a scratch directory of its own;
# stopped (and removed) however the run ends. The tests find it through CEPH_CONF.
CEPH_DEV_DIR="$(mktemp -d "${TMPDIR:-/tmp}/strata-test-ceph.XXXXXX")"
export CEPH_DEV_DIR
stop_ceph() {
    bash "$ROOT/scripts/ceph-dev.sh" stop || true
    rm -rf "$CEPH_DEV_DIR"
}
trap stop_ceph EXIT
step "ceph cluster (scripts/ceph-dev.sh start)"
CEPH_CONF="$(bash scripts/ceph-dev.sh start)"
export CEPH_CONF

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "fuzz: every target for ${FUZZ_SECONDS}s"
if [ -f tests/fuzz/Cargo.toml ]; then
    bash scripts/fuzz.sh --all "$FUZZ_SECONDS"
else
    echo "!!! WARNING: tests/fuzz/ does not exist yet: NO FUZZ TARGETS RUN !!!" >&2
fi

if [ -z "${VMM_MINI_NESTED:-}" ]; then
    echo "!!! NOTE: the nested Linux boot under vmm-mini (tests/tests/nested.rs) was SKIPPED: it takes" >&2
    echo "!!! 1 to 20 minutes on a 2-core machine; run it with VMM_MINI_NESTED=1 (docs/vmm-mini.md) !!!" >&2
    # The same rule as strata_guest::vmm_mini::detect_kvm: without hardware KVM the matrix's
    # vmm-mini cases would run nested, so they were skipped too.
    if [ -d /sys/module/kvm_pvm ] || ! grep -qw -e vmx -e svm /proc/cpuinfo || [ ! -w /dev/kvm ]; then
        echo "!!! NOTE: the end-to-end matrix under vmm-mini (e2e_matrix.rs matrix_raw_and_qcow2_under_vmm_mini) was" >&2
        echo "!!! SKIPPED too: no hardware KVM here, and nested it takes minutes; VMM_MINI_NESTED=1 runs it !!!" >&2
    fi
fi

step "all tests passed in ${SECONDS}s"
