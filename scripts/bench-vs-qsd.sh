#!/usr/bin/env bash
# strata's vhost-user-blk daemon against qemu-storage-daemon, both serving copies of the same data
# and both driven by the same libblkio client (`blkctl bench socket=...`), alternating workload by
# workload in one run, on tmpfs and on a disk-backed file, with one queue and with two queues.
# Saves docs/bench/40-server-*.json and regenerates docs/bench.md.
#
#   bash scripts/bench-vs-qsd.sh            # 256 MiB files, 2 s per case
#   TIME=5s SIZE_MB=1024 bash scripts/bench-vs-qsd.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
cargo build --release -q -p vhost-user-blk --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
QSD_VERSION="$(qemu-storage-daemon --version | head -n 1)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run_one() { # DIR LABEL TAG QUEUES
    local dir="$1" label="$2" tag="$3" nq="$4"
    mkdir -p "$dir"
    head -c "$((SIZE_MB << 20))" /dev/urandom > "$dir/strata.raw"
    cp "$dir/strata.raw" "$dir/qsd.raw"
    rm -f "$dir/strata.sock" "$dir/qsd.sock"
    "$BIN/vhost-user-blk" --disk "socket=$dir/strata.sock,format=raw,path=$dir/strata.raw,num-queues=$nq" 2>/dev/null &
    local ours=$!
    qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$dir/qsd.raw,aio=io_uring" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$dir/qsd.sock,writable=on,num-queues=$nq" 2>/dev/null &
    local qsd=$!
    trap 'kill $ours $qsd 2>/dev/null || true' RETURN
    for _ in $(seq 100); do [ -S "$dir/strata.sock" ] && [ -S "$dir/qsd.sock" ] && break; sleep 0.1; done
    local qword="one queue"
    [ "$nq" != 1 ] && qword="$nq queues"
    local section="vhost-user-blk server vs qemu-storage-daemon, $label (libblkio client, $qword)"
    local parts=()
    # Alternate: each workload runs on strata, then on qemu-storage-daemon, then the next one.
    for w in randread randwrite seqread; do
        for who in strata qsd; do
            local name="strata $(git rev-parse --short HEAD)"
            [ "$who" = qsd ] && name="$QSD_VERSION"
            "$BIN/blkctl" bench "socket=$dir/$who.sock,num-queues=$nq" --workloads "$w" --qd 1,32 \
                --time "$TIME" --json --section "$section" \
                --note "Server: $name, serving a ${SIZE_MB} MiB $label copy of the same data with $qword; workloads alternate between the two servers in one run." \
                > "$dir/$who-$w.json"
            parts+=("$dir/$who-$w.json")
        done
    done
    local rss_ours rss_qsd
    rss_ours="$(rss_kib $ours)"; rss_qsd="$(rss_kib $qsd)"
    python3 - "$tag" "$nq" "$rss_ours" "$rss_qsd" "${parts[@]}" <<'PY'
import json, sys
tag, nq, rss_ours, rss_qsd = sys.argv[1:5]
files = sys.argv[5:]
merged = {}
for f in files:
    who = "qsd" if "/qsd-" in f else "strata"
    run = json.load(open(f))
    if who not in merged:
        run["command"] = run["command"].replace("--workloads " + run["cases"][0]["workload"], "--workloads randread,randwrite,seqread")
        merged[who] = run
    else:
        merged[who]["cases"].extend(run["cases"])
ours, qsd = merged["strata"], merged["qsd"]
def key(r): return (r["workload"], r["qd"])
theirs = {key(r): r for r in qsd["cases"]}
parts = []
for r in ours["cases"]:
    q = theirs.get(key(r))
    if q and q["iops"] > 0:
        parts.append(f'{r["workload"]} QD{r["qd"]} {r["iops"] / q["iops"]:.2f}x')
rss = f" Daemon RSS after the run: strata {int(rss_ours)} KiB, qemu-storage-daemon {int(rss_qsd)} KiB."
ours["notes"] = (ours.get("notes") or "") + " strata/qemu-storage-daemon IOPS: " + ", ".join(parts) + "." + rss
qsd["notes"] = (qsd.get("notes") or "") + rss
suffix = "" if nq == "1" else f"-{nq}q"
for who, run in merged.items():
    with open(f"docs/bench/40-server-{tag}{suffix}-{who}.json", "w") as out:
        json.dump(run, out, indent=2)
print(ours["notes"])
PY
    rm -f "$dir"/*.json "$dir/strata.raw" "$dir/qsd.raw"
}

for nq in 1 2; do
    run_one /dev/shm/strata-bench-vs-qsd "tmpfs" tmpfs "$nq"
    run_one "${CARGO_TARGET_DIR:-$ROOT/target}/bench-vs-qsd" "disk-backed (ext4, page cache)" disk "$nq"
done
"$BIN/blkctl" bench-report
