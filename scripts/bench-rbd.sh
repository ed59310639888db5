#!/usr/bin/env bash
# strata's daemon serving an RBD image against the floor (`fio --ioengine=rbd`: librbd with
# nothing in between) and against qemu-storage-daemon's `driver=rbd`, on the same cluster and the
# same image, in alternating rounds: 4 KiB random read and write at QD32 and at QD1 (latency),
# and 1 MiB sequential read and write at QD32. The contenders take turns case by case (the
# order rotating every round), so each case's three runs are minutes apart at most: this
# cluster's speed drifts by up to 2x over minutes (RocksDB compaction, the shared disk), and
# whole-contender blocks measured that drift rather than the contenders. Only one of them can
# hold the image's exclusive lock, so each server starts for its turn and stops after it.
#
# Clients: strata and qemu-storage-daemon are driven through vhost-user-blk by the same libblkio
# client (`blkctl bench socket=...`, one queue); the floor is fio's rbd engine. CPU per request is
# the whole machine's CPU time (/proc/stat: client, server, OSD and monitor together — on a
# 2-CPU machine the OSD shares the CPUs) during the case divided by the requests completed.
#
#   bash scripts/bench-rbd.sh                       # 1 GiB image, 5 s per case, 6 rounds
#   TIME=10s ROUNDS=10 SIZE=4G bash scripts/bench-rbd.sh
#   TIME=1s ROUNDS=1 SIZE=256M bash scripts/bench-rbd.sh   # a smoke run
#   ONLY=randwrite-qd1 CONTENDERS='strata qsd' ROUNDS=20 bash scripts/bench-rbd.sh  # a closer look
#
# librbd's cache: CACHE=off (the default) gives all three contenders a copy of the conf with
# `rbd cache = false`, and qemu-storage-daemon `cache.direct=on` (QEMU sets rbd_cache itself
# after reading the conf: true unless cache.direct=on, whatever the conf says), so every write
# completes when the OSD has it, for all three alike. With
# the cache on, fio's rbd engine (which never flushes) has its writes acknowledged by librbd in
# its own process, while the servers, driven by a client that does not flush either, stay in
# librbd's write-through-until-flush mode: the write rows then compare two different things.
# CACHE=conf leaves the conf as it is for strata and fio; qemu-storage-daemon then runs without
# cache.direct=on, so QEMU turns librbd's cache on for it.
#
# SAVE=1 also writes docs/bench/47-rbd-{iops,latency,cpu}.json and regenerates docs/bench.md.
#
# Uses the cluster CEPH_CONF names, or starts scripts/ceph-dev.sh's (and leaves it running).
# Prints a markdown table (for docs/bench.md, with the cluster's shape) and saves every case as
# JSON under $OUT (default target/bench-rbd/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-5s}"
ROUNDS="${ROUNDS:-6}"
SIZE="${SIZE:-1G}"
CACHE="${CACHE:-off}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${OUT:-$TARGET/bench-rbd}"
IMAGE="strata-bench-$$"
mkdir -p "$OUT"
rm -f "$OUT"/*.json

say() { printf 'bench-rbd: %s\n' "$*" >&2; }

if [ -z "${CEPH_CONF:-}" ]; then
    CEPH_CONF="$(bash scripts/ceph-dev.sh start)"
fi
export CEPH_CONF
case $CACHE in
    off)
        # The same cluster, with librbd's cache off for every client that reads this copy.
        sed 's/^\[client\]$/[client]\nrbd cache = false/' "$CEPH_CONF" >"$OUT/ceph.conf"
        grep -q '^rbd cache = false' "$OUT/ceph.conf" || { say "no [client] section in $CEPH_CONF"; exit 1; }
        CEPH_CONF="$OUT/ceph.conf" ;;
    conf) ;;
    *) say "CACHE must be off or conf, not '$CACHE'"; exit 2 ;;
esac
[ -n "${ONLY:-}${CONTENDERS:-}" ] && [ "${SAVE:-0}" = 1 ] && { say "SAVE=1 records every row and contender: leave ONLY and CONTENDERS unset"; exit 2; }
command -v fio >/dev/null || { say "fio is missing (scripts/setup.sh)"; exit 1; }
HAVE_QSD=1
if ! qemu-storage-daemon --blockdev help 2>/dev/null | grep -qw rbd && ! ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1; then
    say "WARNING: qemu-storage-daemon has no rbd driver (apt-get install -t bookworm-backports qemu-block-extra): its column is SKIPPED"
    HAVE_QSD=0
fi

cargo build --release -q -p vhost-user-blk -p blkctl --bins
BIN="$TARGET/release"
SECS="${TIME%s}"

rbd create --size "$SIZE" "rbd/$IMAGE"
trap 'kill $(jobs -p) 2>/dev/null || true; rbd rm --no-progress "rbd/$IMAGE" >/dev/null 2>&1 || true' EXIT
say "prefilling rbd/$IMAGE ($SIZE) so reads hit written objects"
fio --name=prefill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$IMAGE" --rw=write --bs=4M \
    --iodepth=8 --size="$SIZE" --output=/dev/null

# CPU jiffies of the whole machine (all but idle and iowait).
busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# The cases: name workload blocksize qd (blkctl's workload names; fio's rw= below).
CASES="randread-qd32:randread:4k:32 randwrite-qd32:randwrite:4k:32 randread-qd1:randread:4k:1 randwrite-qd1:randwrite:4k:1 seqread-qd32:seqread:1m:32 seqwrite-qd32:seqwrite:1m:32"
if [ -n "${ONLY:-}" ]; then
    # A subset, by name, for a closer look at a few rows (more rounds in the same time).
    picked=""
    for want in $ONLY; do
        hit=""
        for c in $CASES; do [ "${c%%:*}" = "$want" ] && hit=$c; done
        [ -n "$hit" ] || { say "ONLY: no case '$want' (cases: $(for c in $CASES; do printf '%s ' "${c%%:*}"; done))"; exit 2; }
        picked="$picked $hit"
    done
    CASES="${picked# }"
fi

# One case on one contender; writes $OUT/<who>-<case>-r<round>.json as {iops, lat_us, cpu_us_per_req}.
run_case() { # WHO CASE WORKLOAD BS QD ROUND SOCKET
    local who=$1 case=$2 w=$3 bs=$4 qd=$5 round=$6 sock=${7:-}
    local j0 j1 t0 t1 raw="$OUT/raw-$who-$case-r$round.json"
    j0=$(busy_jiffies); t0=$(date +%s.%N)
    if [ "$who" = fio ]; then
        local rw=$w
        case $w in seqread) rw=read ;; seqwrite) rw=write ;; esac
        fio --name=c --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$IMAGE" --rw="$rw" --bs="$bs" \
            --iodepth="$qd" --size="$SIZE" --time_based --runtime="$SECS" --output-format=json >"$raw"
    else
        "$BIN/blkctl" bench "socket=$sock" --workloads "$w" --qd "$qd" --time "$TIME" --no-prefill --json \
            --size-limit "$SIZE" >"$raw" 2>/dev/null
    fi
    j1=$(busy_jiffies); t1=$(date +%s.%N)
    python3 - "$who" "$raw" "$((j1 - j0))" "$(getconf CLK_TCK)" "$OUT/$who-$case-r$round.json" <<'PY'
import json, sys
who, raw, jiffies, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
d = json.load(open(raw))
if who == "fio":
    job = d["jobs"][0]
    side = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
    iops, ios, lat = side["iops"], side["total_ios"], side["clat_ns"]["mean"] / 1000 + side["slat_ns"]["mean"] / 1000
else:
    c = d["cases"][0]
    iops, lat = c["iops"], c["lat_us"]["mean"]
    ios = c.get("ops") or c.get("ios") or iops * c.get("secs", c.get("seconds", 1))
cpu_us = jiffies / hz * 1e6 / max(ios, 1)
json.dump({"iops": iops, "lat_us": lat, "cpu_us_per_req": cpu_us}, open(out, "w"))
PY
}

start_strata() {
    rm -f "$OUT/strata.sock"
    "$BIN/vhost-user-blk" --disk "socket=$OUT/strata.sock,format=rbd,pool=rbd,image=$IMAGE,conf=$CEPH_CONF,num-queues=1" 2>"$OUT/strata.log" &
    echo $! >"$OUT/strata.pid"
    for _ in $(seq 300); do [ -S "$OUT/strata.sock" ] && return; sleep 0.1; done
    say "strata did not start: $(tail -3 "$OUT/strata.log")"; exit 1
}
QSD_CACHE=""
[ "$CACHE" = off ] && QSD_CACHE=",cache.direct=on"
start_qsd() {
    rm -f "$OUT/qsd.sock"
    qemu-storage-daemon --blockdev "driver=rbd,node-name=r,pool=rbd,image=$IMAGE,conf=$CEPH_CONF$QSD_CACHE" \
        --export "type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=$OUT/qsd.sock,writable=on,num-queues=1" \
        2>"$OUT/qsd.log" &
    echo $! >"$OUT/qsd.pid"
    for _ in $(seq 300); do [ -S "$OUT/qsd.sock" ] && return; sleep 0.1; done
    say "qemu-storage-daemon did not start: $(tail -3 "$OUT/qsd.log")"; exit 1
}
stop_pid() { local p; p=$(cat "$1"); kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; }

WHO="strata fio"
[ "$HAVE_QSD" = 1 ] && WHO="strata fio qsd"
if [ -n "${CONTENDERS:-}" ]; then
    for w in $CONTENDERS; do
        case " $WHO " in *" $w "*) ;; *) say "CONTENDERS: '$w' is not one of: $WHO"; exit 2 ;; esac
    done
    WHO="$CONTENDERS"
fi
for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS"
    for c in $CASES; do
        IFS=: read -r name w bs qd <<<"$c"
        # Rotate who goes first, every round.
        set -- $WHO
        for _ in $(seq $(((round - 1) % $#))); do set -- "${@:2}" "$1"; done
        for who in "$@"; do
            case $who in
                strata) start_strata ;;
                qsd) start_qsd ;;
            esac
            run_case "$who" "$name" "$w" "$bs" "$qd" "$round" "$OUT/$who.sock"
            case $who in
                strata) stop_pid "$OUT/strata.pid" ;;
                qsd) stop_pid "$OUT/qsd.pid" ;;
            esac
        done
    done
done

python3 - "$OUT" "$ROUNDS" "$WHO" "$(git rev-parse --short HEAD)" "$(ceph --version | awk '{print $3}')" "$CACHE" "$TIME" "${SAVE:-0}" "$SIZE" "$(for c in $CASES; do printf '%s ' "${c%%:*}"; done)" <<'PY'
import datetime, json, os, statistics, subprocess, sys
out, rounds, who, rev, ceph, cache, secs, save, size = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
cases = sys.argv[10].split()
# Where the OSD keeps its data (scripts/ceph-dev.sh's `bluestore block path`): tmpfs takes the
# host's disk out of the measurement.
osd_fs = ""
conf = os.environ.get("CEPH_CONF", "")
block = next((l.split("=", 1)[1].strip() for l in open(conf) if l.strip().startswith("bluestore block path")), "") if os.path.exists(conf) else ""
if block and os.path.exists(block) and subprocess.run(["stat", "-f", "-c", "%T", block], capture_output=True, text=True).stdout.strip() == "tmpfs":
    osd_fs = " in tmpfs"
cache_words = "off for all three" if cache == "off" else "as the conf sets it"
names = {"strata": f"strata {rev} (vhost-user, libblkio client)", "fio": "fio --ioengine=rbd (floor)", "qsd": "qemu-storage-daemon driver=rbd (libblkio client)"}
def val(w, c, k, r):
    p = f"{out}/{w}-{c}-r{r}.json"
    return json.load(open(p))[k] if os.path.exists(p) else None
def med(w, c, k):
    vals = [v for r in range(1, rounds + 1) if (v := val(w, c, k, r)) is not None]
    return statistics.median(vals) if vals else float("nan")
def ratio(a, b, c):
    # The median of the per-round IOPS ratios (each round's runs are adjacent in time), then
    # the ratio of the summed IOPS over the rounds both ran.
    pairs = [(x, y) for r in range(1, rounds + 1) if (x := val(a, c, "iops", r)) and (y := val(b, c, "iops", r))]
    if not pairs:
        return "n/a"
    med_ratio = statistics.median(x / y for x, y in pairs)
    summed = sum(x for x, _ in pairs) / sum(y for _, y in pairs)
    return f"{med_ratio:.2f} ({summed:.3f})"
print(f"### RBD: strata vs fio rbd vs qemu-storage-daemon (Ceph {ceph}, 1 monitor + 1 bluestore OSD on a sparse file{osd_fs}, pool size 1, all on this host; librbd cache {cache_words}; {rounds} rounds of {secs} per case, the contenders alternating case by case; medians, ratios are medians of per-round ratios with the ratio of summed IOPS after them)\n")
print("| case | " + " | ".join(names[w] for w in who) + " | strata / fio |" + (" strata / qsd |" if "qsd" in who else ""))
print("|---" * (len(who) + 2 + ("qsd" in who)) + "|")
for c in cases:
    cells = []
    for w in who:
        cells.append(f'{med(w, c, "iops"):.0f} IOPS, {med(w, c, "lat_us"):.0f} us, {med(w, c, "cpu_us_per_req"):.0f} us CPU/req')
    row = f"| {c} | " + " | ".join(cells) + f' | {ratio("strata", "fio", c)} |'
    if "qsd" in who:
        row += f' {ratio("strata", "qsd", c)} |'
    print(row)
if save == "1":
    read = lambda p: open(p).read().strip() if os.path.exists(p) else ""
    cpu_model = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines() if l.startswith("model name")), "")
    shape = f"Ceph {ceph}: 1 monitor and 1 bluestore OSD on a sparse file{osd_fs}, pool rbd with 1 replica, cephx, all on this host (the OSD shares the 2 CPUs with client and server)"
    common = {"kind": "timings", "section": "Ceph RBD: strata over librbd against fio's rbd engine (the floor) and qemu-storage-daemon driver=rbd",
              "command": f"TIME={secs} ROUNDS={rounds} SIZE={size} CACHE={cache} SAVE=1 bash scripts/bench-rbd.sh",
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": {"host": read("/proc/sys/kernel/hostname"), "nproc": os.cpu_count(), "kernel": read("/proc/sys/kernel/osrelease"), "cpu": cpu_model},
              "reference": names["fio"]}
    note = (f"strata {rev}. {shape}. One {size} image, prefilled; librbd cache {cache_words}. strata and qemu-storage-daemon serve it over "
            "vhost-user-blk (one queue) to the same libblkio client (blkctl bench); fio's rbd engine is librbd with nothing in between. "
            "The contenders take turns case by case, the order rotating every round; each server starts for its turn (it must hold the "
            "image's exclusive lock) and stops after it. ")
    for kind, key, unit, title, extra in (
        ("iops", "iops", "IOPS", "IOPS", "One sample per round."),
        ("latency", "lat_us", "µs", "mean completion latency", "At QD1 this is the round trip of one request."),
        ("cpu", "cpu_us_per_req", "µs", "whole-machine CPU time per request",
         "All CPU time on the machine during the case (client, server, OSD, monitor) over the requests completed."),
    ):
        rows = [{"what": c, "backend": names[w], "samples": [v for r in range(1, rounds + 1) if (v := val(w, c, key, r)) is not None]}
                for c in cases for w in who]
        with open(f"docs/bench/47-rbd-{kind}.json", "w") as f:
            json.dump(dict(common, title=f"RBD: {title}", unit=unit, rows=rows, notes=note + extra), f, indent=2)
    print("saved docs/bench/47-rbd-{iops,latency,cpu}.json")
PY
if [ "${SAVE:-0}" = 1 ]; then "$BIN/blkctl" bench-report; fi
