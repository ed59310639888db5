#!/usr/bin/env bash
# strata's vhost-user-blk daemon against qemu-storage-daemon, both serving copies of the same data
# and both driven by the same libblkio client (`blkctl bench socket=...`), one after the other in
# one run, on tmpfs and on a disk-backed file. Saves docs/bench/40-server-*.json and regenerates
# docs/bench.md.
#
#   bash scripts/bench-vs-qsd.sh            # 256 MiB files, 2 s per case
#   TIME=5s SIZE_MB=1024 bash scripts/bench-vs-qsd.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
cargo build --release -q -p vhost-user-blk --bins
BIN="$ROOT/target/release"
QSD_VERSION="$(qemu-storage-daemon --version | head -n 1)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run_one() { # DIR LABEL TAG
    local dir="$1" label="$2" tag="$3"
    mkdir -p "$dir"
    head -c "$((SIZE_MB << 20))" /dev/urandom > "$dir/strata.raw"
    cp "$dir/strata.raw" "$dir/qsd.raw"
    "$BIN/vhost-user-blk" --disk "socket=$dir/strata.sock,format=raw,path=$dir/strata.raw" 2>/dev/null &
    local ours=$!
    qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$dir/qsd.raw,aio=io_uring" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$dir/qsd.sock,writable=on" 2>/dev/null &
    local qsd=$!
    trap 'kill $ours $qsd 2>/dev/null || true' RETURN
    for _ in $(seq 100); do [ -S "$dir/strata.sock" ] && [ -S "$dir/qsd.sock" ] && break; sleep 0.1; done
    local section="vhost-user-blk server vs qemu-storage-daemon, $label (libblkio client, one queue)"
    for who in strata qsd; do
        local name="$who"
        [ "$who" = qsd ] && name="$QSD_VERSION"
        "$BIN/blkctl" bench "socket=$dir/$who.sock" --workloads randread,randwrite,seqread --qd 1,32 \
            --time "$TIME" --json --section "$section" \
            --note "Server: $name, serving a ${SIZE_MB} MiB $label copy of the same data; measured one after the other in one run." \
            > "docs/bench/40-server-$tag-$who.json"
    done
    local rss_ours rss_qsd
    rss_ours="$(rss_kib $ours)"; rss_qsd="$(rss_kib $qsd)"
    python3 - "docs/bench/40-server-$tag-strata.json" "docs/bench/40-server-$tag-qsd.json" "$rss_ours" "$rss_qsd" <<'PY'
import json, sys
ours_p, qsd_p, rss_ours, rss_qsd = sys.argv[1:5]
ours, qsd = json.load(open(ours_p)), json.load(open(qsd_p))
def key(r): return (r["workload"], r["qd"])
theirs = {key(r): r for r in qsd["cases"]}
parts = []
for r in ours["cases"]:
    q = theirs.get(key(r))
    if q and q["iops"] > 0:
        parts.append(f'{r["workload"]} QD{r["qd"]} {r["iops"] / q["iops"]:.2f}x')
ours["notes"] = (ours.get("notes") or "") + " strata/qemu-storage-daemon IOPS: " + ", ".join(parts) + \
    f". Daemon RSS after the run: strata {int(rss_ours) // 1024} MiB, qemu-storage-daemon {int(rss_qsd) // 1024} MiB."
json.dump(ours, open(ours_p, "w"), indent=2)
print(ours["notes"])
PY
    rm -f "$dir/strata.raw" "$dir/qsd.raw"
}

run_one /dev/shm/strata-bench-vs-qsd "tmpfs" tmpfs
run_one "$ROOT/target/bench-vs-qsd" "disk-backed (ext4, page cache)" disk
"$BIN/blkctl" bench-report
