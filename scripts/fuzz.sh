#!/usr/bin/env bash
# Run strata's fuzz targets (the cargo-fuzz crate in tests/fuzz/, outside the workspace).
#
#   scripts/fuzz.sh TARGET SECONDS     run one target for SECONDS
#   scripts/fuzz.sh --all SECONDS      run every target (`cargo fuzz list`) for SECONDS each
#   scripts/fuzz.sh --list             list the targets
#
# cargo-fuzz needs nightly flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. libFuzzer's corpus goes to tests/fuzz/corpus/TARGET and any crash
# to tests/fuzz/artifacts/TARGET (both git-ignored). Extra arguments after SECONDS go to
# libFuzzer (e.g. -max_len=4096). Exits non-zero when a target finds a crash.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/tests/fuzz"
export RUSTC_BOOTSTRAP=1

usage() {
    sed -n '4,6p' "$ROOT/scripts/fuzz.sh" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ "$#" -ge 1 ] || usage
if [ ! -f "$FUZZ_DIR/Cargo.toml" ]; then
    echo "fuzz: $FUZZ_DIR/Cargo.toml does not exist: no fuzz targets to run" >&2
    exit 3
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi
cd "$FUZZ_DIR"
# cargo-fuzz builds into tests/fuzz/target; a CARGO_TARGET_DIR meant for the workspace
# would mix sanitizer builds into it.
unset CARGO_TARGET_DIR

run_one() {
    local target="$1" secs="$2"
    shift 2
    local log
    log="$(mktemp)"
    echo "fuzz: $target for ${secs}s"
    mkdir -p "corpus/$target"
    local rc=0
    # Checked-in seeds (tests/fuzz/seeds/TARGET: e.g. small valid images) join the corpus.
    local seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    # Per-target libFuzzer options (tests/fuzz/options/TARGET: one per line, # comments).
    local extra=()
    if [ -f "options/$target" ]; then
        mapfile -t extra < <(grep -v '^\s*#' "options/$target" | grep -v '^\s*$')
    fi
    cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- -max_total_time="$secs" "${extra[@]}" "$@" >"$log" 2>&1 || rc=$?
    local done_line
    done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)"
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        echo "fuzz: $target FAILED (exit $rc); see tests/fuzz/artifacts/$target" >&2
        return "$rc"
    fi
    rm -f "$log"
    echo "fuzz: $target ok: ${done_line:-no executions reported}"
}

case "$1" in
--list)
    cargo fuzz list
    ;;
--all)
    [ "$#" -ge 2 ] || usage
    secs="$2"
    shift 2
    mapfile -t targets < <(cargo fuzz list)
    if [ "${#targets[@]}" -eq 0 ]; then
        echo "fuzz: no targets in $FUZZ_DIR" >&2
        exit 3
    fi
    echo "fuzz: building ${#targets[@]} targets: ${targets[*]}"
    cargo fuzz build
    for t in "${targets[@]}"; do
        run_one "$t" "$secs" "$@"
    done
    echo "fuzz: ${#targets[@]} targets ok"
    ;;
-*)
    usage
    ;;
*)
    [ "$#" -ge 2 ] || usage
    target="$1"
    secs="$2"
    shift 2
    run_one "$target" "$secs" "$@"
    ;;
esac
