#!/usr/bin/env bash
# qcow2 benchmarks, each a comparison inside one run (workloads alternate round by round):
#   1. in-process (`blkctl bench`): a fully allocated qcow2 image against strata raw on the same
#      tmpfs data (the qcow2 image is `qemu-img convert` of the raw file, so every cluster is
#      allocated and holds the same bytes);
#   2. through the daemon: strata's vhost-user-blk server against qemu-storage-daemon, each serving
#      its own copy of that image, driven by the same libblkio client;
#   3. through the daemon: empty images (fresh for every round), 4 KiB random allocating writes
#      (`--no-prefill`, a fixed number of requests over a large virtual disk so almost every
#      write allocates a cluster).
# Saves docs/bench/50-qcow2-*.json and regenerates docs/bench.md.
#
#   bash scripts/bench-qcow2.sh
#   ROUNDS=5 TIME=3s SIZE_MB=1024 ALLOC_OPS=20000 bash scripts/bench-qcow2.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-1024}"
ROUNDS="${ROUNDS:-3}"
ALLOC_OPS="${ALLOC_OPS:-20000}"
EMPTY_SIZE="${EMPTY_SIZE:-16G}"
cargo build --release -q -p vhost-user-blk -p blkctl --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
QSD_VERSION="$(qemu-storage-daemon --version | head -n 1)"
REV="$(git rev-parse --short HEAD)"
DIR=/dev/shm/strata-bench-qcow2
rm -rf "$DIR"
mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT

echo "bench-qcow2: ${SIZE_MB} MiB of random data, qcow2 copy (64 KiB clusters)"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$DIR/data.raw"
qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$DIR/data.raw" "$DIR/data.qcow2"

# merge OUT_PREFIX NOTE FILES...: per (workload, qd) the median round of each side, the IOPS of
# every round kept, the ratio in the notes of the first side. Files are named WHO-ROUND.json.
merge() {
    python3 - "$@" <<'PY'
import json, sys, re, collections
out_prefix, note, ref = sys.argv[1], sys.argv[2], sys.argv[3]
files = sys.argv[4:]
runs = collections.OrderedDict()
for f in files:
    who = re.sub(r"-\d+\.json$", "", f.rsplit("/", 1)[1])
    runs.setdefault(who, []).append(json.load(open(f)))
merged = {}
for who, rs in runs.items():
    base = rs[0]
    rows = []
    for i, row in enumerate(base["cases"]):
        all_rows = sorted((r["cases"][i] for r in rs), key=lambda x: x["iops"])
        med = dict(all_rows[(len(all_rows) - 1) // 2])
        med["iops_rounds"] = [r["cases"][i]["iops"] for r in rs]
        rows.append(med)
    base["cases"] = rows
    base["notes"] = note
    merged[who] = base
whos = list(merged)
ours = [w for w in whos if w != ref]
parts = []
for w in ours:
    theirs = {(r["workload"], r["qd"]): r for r in merged[ref]["cases"]}
    for r in merged[w]["cases"]:
        q = theirs.get((r["workload"], r["qd"]))
        if q and q["iops"] > 0:
            # The load of a shared machine drifts: the median of the per-round ratios (each round
            # runs both sides back to back) is steadier than the ratio of the medians.
            per_round = sorted(a / b for a, b in zip(r["iops_rounds"], q["iops_rounds"]) if b > 0)
            paired = per_round[(len(per_round) - 1) // 2] if per_round else 0
            parts.append(f'{r["workload"]} QD{r["qd"]} {w}/{ref} {r["iops"] / q["iops"]:.2f}x (per-round median {paired:.2f}x)')
    merged[w]["notes"] += f" Median of {len(runs[w])} alternating rounds. IOPS ratio: " + ", ".join(parts) + "."
merged[ref]["notes"] += f" Median of {len(runs[ref])} alternating rounds."
for who, run in merged.items():
    with open(f"{out_prefix}-{who}.json", "w") as o:
        json.dump(run, o, indent=2)
print("; ".join(parts))
PY
}

# 1. In-process.
sec="qcow2 in-process: fully allocated image vs raw, same tmpfs data"
files=()
for r in $(seq "$ROUNDS"); do
    for who in raw qcow2; do
        "$BIN/blkctl" bench "format=$who,path=$DIR/data.$who" --workloads randread,randwrite --qd 1,32 \
            --time "$TIME" --no-prefill --json --section "$sec" 2>/dev/null > "$DIR/$who-$r.json"
        files+=("$DIR/$who-$r.json")
    done
done
merge docs/bench/50-qcow2-inproc \
    "strata $REV in this process; ${SIZE_MB} MiB of random data on tmpfs, as a raw file and as a fully allocated qcow2 image (qemu-img convert, 64 KiB clusters); no prefill (writes overwrite allocated clusters)." \
    raw "${files[@]}"
rm -f "$DIR"/*.json

start_daemons() { # STRATA_IMAGE QSD_IMAGE
    rm -f "$DIR/strata.sock" "$DIR/qsd.sock"
    "$BIN/vhost-user-blk" --disk "socket=$DIR/strata.sock,format=qcow2,path=$1" 2>/dev/null &
    OURS=$!
    qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$2,aio=io_uring" \
        --blockdev "driver=qcow2,node-name=q,file=f" \
        --export "type=vhost-user-blk,id=e,node-name=q,addr.type=unix,addr.path=$DIR/qsd.sock,writable=on" 2>/dev/null &
    QSD=$!
    for _ in $(seq 100); do [ -S "$DIR/strata.sock" ] && [ -S "$DIR/qsd.sock" ] && return 0; sleep 0.1; done
    echo "bench-qcow2: a daemon did not start" >&2
    return 1
}
stop_daemons() {
    kill "$OURS" "$QSD" 2>/dev/null || true
    wait "$OURS" "$QSD" 2>/dev/null || true
}

# 2. Daemons, fully allocated image.
sec="qcow2 through the daemon: vhost-user-blk vs qemu-storage-daemon, fully allocated image (tmpfs, libblkio client, one queue)"
cp "$DIR/data.qcow2" "$DIR/strata.qcow2"
cp "$DIR/data.qcow2" "$DIR/qsd.qcow2"
rm -f "$DIR/data.raw"
start_daemons "$DIR/strata.qcow2" "$DIR/qsd.qcow2"
files=()
for r in $(seq "$ROUNDS"); do
    for who in strata qsd; do
        "$BIN/blkctl" bench "socket=$DIR/$who.sock" --workloads randread,randwrite --qd 1,32 \
            --time "$TIME" --no-prefill --json --section "$sec" 2>/dev/null > "$DIR/$who-$r.json"
        files+=("$DIR/$who-$r.json")
    done
done
stop_daemons
merge docs/bench/51-qcow2-daemon-allocated \
    "strata $REV (format=qcow2) and $QSD_VERSION (driver=qcow2 over driver=file, aio=io_uring, default caches), each serving its own copy of one fully allocated ${SIZE_MB} MiB qcow2 image (64 KiB clusters) on tmpfs." \
    qsd "${files[@]}"
rm -f "$DIR"/*.json "$DIR/strata.qcow2" "$DIR/qsd.qcow2"

# 3. Daemons, empty images: allocating writes.
sec="qcow2 through the daemon: vhost-user-blk vs qemu-storage-daemon, empty image, 4K random allocating writes (tmpfs)"
files=()
for r in $(seq "$ROUNDS"); do
    for who in strata qsd; do
        qemu-img create -q -f qcow2 -o cluster_size=65536 "$DIR/strata.qcow2" "$EMPTY_SIZE"
        qemu-img create -q -f qcow2 -o cluster_size=65536 "$DIR/qsd.qcow2" "$EMPTY_SIZE"
        start_daemons "$DIR/strata.qcow2" "$DIR/qsd.qcow2"
        "$BIN/blkctl" bench "socket=$DIR/$who.sock" --workloads randwrite --qd 32 \
            --ops "$ALLOC_OPS" --no-prefill --json --section "$sec" 2>/dev/null > "$DIR/$who-$r.json"
        files+=("$DIR/$who-$r.json")
        stop_daemons
        rm -f "$DIR/strata.qcow2" "$DIR/qsd.qcow2"
    done
done
merge docs/bench/52-qcow2-daemon-empty \
    "strata $REV and $QSD_VERSION, each on a fresh empty $EMPTY_SIZE qcow2 image (qemu-img create, 64 KiB clusters, no lazy refcounts) per round; $ALLOC_OPS random 4 KiB writes at QD32 without prefill, so nearly every write allocates a cluster." \
    qsd "${files[@]}"

"$BIN/blkctl" bench-report
