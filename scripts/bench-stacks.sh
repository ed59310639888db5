#!/usr/bin/env bash
# One command for docs/bench.md's per-stack rows: for each stack strata serves (raw, qcow2,
# RAID 1, RAID 5, a thin volume), strata's vhost-user-blk daemon against qemu-storage-daemon,
# both driven host-side by the same libblkio client (`blkctl bench socket=...`; guest numbers
# under TCG would measure the emulator). Files live on tmpfs (/dev/shm), each server gets its
# own fresh copy, and the two servers alternate stack by stack in one run.
#
# qemu-storage-daemon serves what it can serve of the same kind: a raw file for raw, a qcow2
# image made by qemu-img for qcow2. It has no RAID 5 and no thin volumes, so for RAID and thin
# it serves a raw file of the same size on the same tmpfs: those rows show what the layer costs
# over the plain file a reference server would serve.
#
# Saves docs/bench/50-stack-<stack>-{strata,qsd}.json, then regenerates docs/bench.md (every
# saved run, including other scripts' rows). Also runs the server comparison
# (scripts/bench-vs-qsd.sh) first with ALL=1.
#
#   bash scripts/bench-stacks.sh                    # 256 MiB per disk, 2 s per case
#   TIME=5s SIZE_MB=1024 STACKS="qcow2 raid5" bash scripts/bench-stacks.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
STACKS="${STACKS:-raw qcow2 raid1 raid5 thin}"
WORK="${WORK:-/dev/shm/strata-bench-stacks}"

say() { printf 'bench-stacks: %s\n' "$*" >&2; }

if [ "${ALL:-0}" = 1 ]; then
    say "scripts/bench-vs-qsd.sh first (ALL=1)"
    bash scripts/bench-vs-qsd.sh
fi

cargo build --release -q -p vhost-user-blk -p blkctl --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
QSD_VERSION="$(qemu-storage-daemon --version | head -n 1)"
REV="$(git rev-parse --short HEAD)"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_socket() {
    for _ in $(seq 600); do [ -S "$1" ] && return 0; sleep 0.1; done
    say "error: $1 did not appear within 60 s"
    exit 1
}

# Prepare the strata stack $1 under $WORK/strata; print its disk spec.
strata_spec() {
    local d="$WORK/strata" m=$((SIZE_MB + 16))
    mkdir -p "$d"
    case "$1" in
    raw)
        truncate -s "${SIZE_MB}M" "$d/disk.raw"
        echo "format=raw,path=$d/disk.raw" ;;
    qcow2)
        qemu-img create -q -f qcow2 "$d/disk.qcow2" "${SIZE_MB}M"
        echo "format=qcow2,path=$d/disk.qcow2" ;;
    raid1)
        truncate -s "${m}M" "$d/m0" "$d/m1"
        "$BIN/blkctl" raid create --level 1 "$d/m0" "$d/m1" >/dev/null
        echo "format=raid,members=$d/m0:$d/m1" ;;
    raid5)
        local h=$((SIZE_MB / 2 + 16))
        truncate -s "${h}M" "$d/m0" "$d/m1" "$d/m2"
        "$BIN/blkctl" raid create --level 5 "$d/m0" "$d/m1" "$d/m2" >/dev/null
        echo "format=raid,members=$d/m0:$d/m1:$d/m2" ;;
    thin)
        truncate -s "$((2 * SIZE_MB))M" "$d/pool"
        "$BIN/blkctl" thin pool-create "$d/pool" >/dev/null
        "$BIN/blkctl" thin create "$d/pool" vol --size "${SIZE_MB}M" >/dev/null
        echo "format=thin,pool=$d/pool,volume=vol" ;;
    *)
        say "error: unknown stack '$1' (raw, qcow2, raid1, raid5, thin)"
        exit 1 ;;
    esac
}

# Prepare qemu-storage-daemon's disk for stack $1 under $WORK/qsd; print its --blockdev.
qsd_blockdev() {
    local d="$WORK/qsd"
    mkdir -p "$d"
    if [ "$1" = qcow2 ]; then
        qemu-img create -q -f qcow2 "$d/disk.qcow2" "${SIZE_MB}M"
        echo "driver=qcow2,node-name=disk,file.driver=file,file.aio=io_uring,file.filename=$d/disk.qcow2"
    else
        truncate -s "${SIZE_MB}M" "$d/disk.raw"
        echo "driver=file,node-name=disk,aio=io_uring,filename=$d/disk.raw"
    fi
}

for stack in $STACKS; do
    rm -rf "$WORK"
    mkdir -p "$WORK"
    spec="$(strata_spec "$stack")"
    blockdev="$(qsd_blockdev "$stack")"
    "$BIN/vhost-user-blk" --disk "socket=$WORK/strata.sock,$spec" 2>"$WORK/strata.log" &
    ours=$!
    PIDS+=("$ours")
    qemu-storage-daemon --blockdev "$blockdev" \
        --export "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path=$WORK/qsd.sock,writable=on" \
        2>"$WORK/qsd.log" &
    qsd=$!
    PIDS+=("$qsd")
    wait_socket "$WORK/strata.sock"
    wait_socket "$WORK/qsd.sock"
    what="the same kind of disk (qcow2 made by qemu-img)"
    [ "$stack" = raw ] && what="a raw file"
    case "$stack" in raid*|thin) what="a raw file of the same size (it has no $stack)";; esac
    section="Stacks: $stack, strata vs qemu-storage-daemon (libblkio client, one queue)"
    for who in strata qsd; do
        say "$stack: $who"
        if [ "$who" = strata ]; then
            note="Server: strata $REV serving \`$spec\` (on tmpfs) with one queue. Reference: $QSD_VERSION serving $what, in the same run (docs/bench/50-stack-$stack-qsd.json)."
        else
            note="Server: $QSD_VERSION serving $what on tmpfs, with one queue: the reference for strata's $stack row (docs/bench/50-stack-$stack-strata.json)."
        fi
        "$BIN/blkctl" bench "socket=$WORK/$who.sock" --workloads randread,randwrite,seqread --qd 1,32 \
            --size-limit "${SIZE_MB}M" --time "$TIME" --json --section "$section" --note "$note" \
            > "docs/bench/50-stack-$stack-$who.json"
    done
    kill -TERM "$ours"
    wait "$ours" || { say "error: strata's daemon did not exit cleanly; log:"; cat "$WORK/strata.log" >&2; exit 1; }
    kill "$qsd" 2>/dev/null || true
    wait "$qsd" 2>/dev/null || true
    PIDS=()
    python3 - "$stack" <<'PY'
import json, sys
stack = sys.argv[1]
ours = json.load(open(f"docs/bench/50-stack-{stack}-strata.json"))
ref = json.load(open(f"docs/bench/50-stack-{stack}-qsd.json"))
theirs = {(c["workload"], c["qd"]): c for c in ref["cases"]}
parts = []
for c in ours["cases"]:
    q = theirs.get((c["workload"], c["qd"]))
    if q and q["iops"] > 0:
        parts.append(f'{c["workload"]} QD{c["qd"]} {c["iops"] / q["iops"]:.2f}x')
ours["notes"] = (ours.get("notes") or "") + " strata/qemu-storage-daemon IOPS: " + ", ".join(parts) + "."
json.dump(ours, open(f"docs/bench/50-stack-{stack}-strata.json", "w"), indent=2)
print(f"{stack}: " + ", ".join(parts))
PY
done
"$BIN/blkctl" bench-report
