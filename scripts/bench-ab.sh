#!/usr/bin/env bash
# What a feature costs the data path when it does not bite, measured two ways: the client's
# IOPS and the daemon's own CPU time per request. Several strata daemons (the same build with
# different arguments, or another build) serve copies of the same file on tmpfs; one libblkio
# client (`blkctl bench socket=...`) runs 4 KiB random reads and writes at QD1 and QD32 on each
# in turn, case by case, the order rotating every round. Per case and daemon it keeps the IOPS
# and the daemon's user + system CPU time (every thread, io_uring workers included, from
# /proc/PID/stat) over the requests completed.
#
# On a shared 2-CPU machine one round's IOPS swing by 10-20% with other load; CPU per request
# swings far less, and it is what a feature adds to each request. Both are reported as each
# contender's median round and its ratio to the first contender, round by round (the median of
# the per-round ratios, and the ratio of the sums over all rounds). Many short rounds beat a few
# long ones here: the machine's speed drifts over seconds, and alternating every half second
# puts each contender in the same moments (TIME=500ms ROUNDS=40).
#
#   bash scripts/bench-ab.sh                     # the contenders below, 3 s per case, 7 rounds
#   TIME=2s ROUNDS=3 bash scripts/bench-ab.sh    # shorter
#   STRATA_BASE_BIN=/tmp/vub-base bash scripts/bench-ab.sh   # adds another build ("base";
#                                                            # STRATA_BASE_LABEL names it)
#   SAVE=1 bash scripts/bench-ab.sh              # saves docs/bench/46-datapath-cost-*.json
#                                                # (REPORT=NAME: docs/bench/NAME-*.json, and
#                                                # SECTION=TEXT: its heading in docs/bench.md)
#   PIN=1 bash scripts/bench-ab.sh               # client on CPU 0, every daemon on CPU 1
#   CONTENDERS="strata again seccompoff" RESTART=1 bash scripts/bench-ab.sh
#                                                # some contenders only; fresh daemons every round,
#                                                # each on the next copy of the data
#   WORKLOADS="randread randwrite seqread" bash scripts/bench-ab.sh
#                                                # 1 MiB sequential reads too (not with SAVE=1)
#
# Contenders: "strata" (this build, defaults: the reference), "again" (the same daemon once more:
# how far two identical daemons differ here, the floor under every other ratio), "limits+metrics" (I/O limits far
# above the load and `--metrics` on, with a scraper reading /metrics every second), "seccomp off"
# (`--seccomp off`: the sandbox's cost is strata against it), and "base" when STRATA_BASE_BIN
# names another build's daemon.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-3s}"
ROUNDS="${ROUNDS:-7}"
SIZE_MB="${SIZE_MB:-256}"
SAVE="${SAVE:-0}"
WORKLOADS="${WORKLOADS:-randread randwrite}"
if [ "$SAVE" = 1 ] && [ "$WORKLOADS" != "randread randwrite" ]; then
    echo "bench-ab: SAVE=1 records the 4 KiB random rows only: leave WORKLOADS unset" >&2; exit 2
fi
DIR="${DIR:-/dev/shm/strata-bench-ab}"
cargo build --release -q -p vhost-user-blk -p blkctl --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
command -v curl >/dev/null || { echo "bench-ab: curl is needed for the scraper" >&2; exit 1; }

rm -rf "$DIR"; mkdir -p "$DIR"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$DIR/source.raw"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
names=(strata again limits seccompoff)
labels=("strata (this build)" "strata again (A/A)" "limits+metrics" "seccomp off")
args=("" "" "" "--seccomp off")
keys=("" "" ",iops-total=100000000,bps-total=1000G" "")
bins=("$BIN/vhost-user-blk" "$BIN/vhost-user-blk" "$BIN/vhost-user-blk" "$BIN/vhost-user-blk")
if [ -n "${STRATA_BASE_BIN:-}" ]; then
    names+=(base); labels+=("base (${STRATA_BASE_LABEL:-$STRATA_BASE_BIN})"); args+=(""); keys+=(""); bins+=("$STRATA_BASE_BIN")
fi
# CONTENDERS picks some of them, in this order; the first is the reference.
if [ -n "${CONTENDERS:-}" ]; then
    pick=()
    for want in $CONTENDERS; do
        found=
        for i in "${!names[@]}"; do [ "${names[$i]}" = "$want" ] && pick+=("$i") && found=1; done
        [ -n "$found" ] || { echo "bench-ab: no contender '$want' (have: ${names[*]})" >&2; exit 2; }
    done
    sel() { local -n a=$1; local out=(); for i in "${pick[@]}"; do out+=("${a[$i]}"); done; a=("${out[@]}"); }
    sel names; sel labels; sel args; sel keys; sel bins
fi
pids=()
cleanup() { kill "${pids[@]}" "${scraper:-}" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
# One copy per contender. Copies of the same data are not equally fast here (the first one
# made read 1 MiB blocks up to 10-20% slower than the others for a whole run), so with
# RESTART=1 the contenders also rotate over the copies, round by round.
for i in "${!names[@]}"; do cp "$DIR/source.raw" "$DIR/copy$i.raw"; done
rm -f "$DIR/source.raw"
# PIN=1: the client on CPU 0 and the daemons on CPU 1, so the scheduler's placement (which
# moves from round to round) stays out of the comparison.
daemon_cpu=(); client_cpu=()
if [ "${PIN:-0}" = 1 ]; then daemon_cpu=(taskset -c 1); client_cpu=(taskset -c 0); fi
start_daemons() { # [ROUND]: contender i serves copy (i + ROUND) mod n
    pids=()
    for i in "${!names[@]}"; do
        local n=${names[$i]} extra=() copy=$(( (i + ${1:-0}) % ${#names[@]} ))
        rm -f "$DIR/$n.sock"
        [ "$n" = limits ] && extra=(--metrics "127.0.0.1:$port")
        # shellcheck disable=SC2086 # the arguments are split into words on purpose
        "${daemon_cpu[@]}" "${bins[$i]}" ${args[$i]} "${extra[@]}" --disk "socket=$DIR/$n.sock,format=raw,path=$DIR/copy$copy.raw${keys[$i]}" 2>/dev/null &
        pids+=($!)
    done
    for n in "${names[@]}"; do
        for _ in $(seq 100); do [ -S "$DIR/$n.sock" ] && break; sleep 0.1; done
        [ -S "$DIR/$n.sock" ] || { echo "bench-ab: the $n daemon did not start" >&2; exit 1; }
    done
}
stop_daemons() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
start_daemons
# The scraper a Prometheus would be: /metrics once a second.
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || true; done) &
scraper=$!

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
out="$DIR/results.tsv"
: > "$out"
for round in $(seq "$ROUNDS"); do
    # RESTART=1: fresh daemons every round, so no contender keeps one process's luck (where
    # its threads and memory landed) for the whole run.
    if [ "${RESTART:-0}" = 1 ] && [ "$round" -gt 1 ]; then stop_daemons; start_daemons "$round"; fi
    # Rotate the order every round.
    order=()
    for k in "${!names[@]}"; do order+=("$(( (k + round) % ${#names[@]} ))"); done
    for w in $WORKLOADS; do
        for qd in 1 32; do
            for i in "${order[@]}"; do
                n=${names[$i]}
                before=$(cpu_ticks "${pids[$i]}")
                "${client_cpu[@]}" "$BIN/blkctl" bench "socket=$DIR/$n.sock" --workloads "$w" --qd "$qd" --time "$TIME" --json > "$DIR/case.json"
                after=$(cpu_ticks "${pids[$i]}")
                python3 - "$DIR/case.json" "$before" "$after" "$(getconf CLK_TCK)" "$n" "$w" "$qd" "$round" >> "$out" <<'PY'
import json, sys
case = json.load(open(sys.argv[1]))["cases"][0]
ticks, hz = int(sys.argv[3]) - int(sys.argv[2]), int(sys.argv[4])
print("\t".join([sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8], f"{case['iops']:.1f}", f"{ticks / hz / case['ops'] * 1e6:.3f}"]))
PY
            done
        done
    done
    echo "bench-ab: round $round of $ROUNDS done" >&2
done

python3 - "$out" "$ROUNDS" "$TIME" "$SAVE" "$(git rev-parse --short HEAD)" "${names[@]}" -- "${labels[@]}" <<'PY'
import json, subprocess, sys, datetime, os
path, rounds, time, save, rev = sys.argv[1:6]
rest = sys.argv[6:]
sep = rest.index("--")
names, labels = rest[:sep], rest[sep + 1:]
label = dict(zip(names, labels))
data = {}
for line in open(path):
    n, w, qd, rnd, iops, cpu = line.split("\t")
    data.setdefault((w, int(qd)), {}).setdefault(n, {})[int(rnd)] = (float(iops), float(cpu))
def med(v):
    v = sorted(v)
    return v[len(v) // 2]
ref = names[0]
print(f"4 KiB random, 1 MiB sequential, tmpfs, one queue, {rounds} rounds of {time} per case; medians, and ratio to {label[ref]} (per-round ratios in brackets)")
print(f"{'case':<16} {'contender':<28} {'IOPS':>9} {'ratio':>6} {'of sums':>7}  {'daemon CPU us/op':>16} {'ratio':>6}")
rows = {"iops": [], "cpu": []}
for (w, qd), by in sorted(data.items()):
    for n in names:
        r = by[n]
        iops, cpu = med([x[0] for x in r.values()]), med([x[1] for x in r.values()])
        rows["iops"].append({"what": f"{w} QD{qd}", "backend": label[n], "samples": [r[k][0] / 1000 for k in sorted(r)]})
        rows["cpu"].append({"what": f"{w} QD{qd}", "backend": label[n], "samples": [r[k][1] for k in sorted(r)]})
        if n == ref:
            print(f"{w + ' QD' + str(qd):<16} {label[n]:<28} {iops:>9.0f} {'':>6}  {cpu:>16.2f}")
            continue
        base = by[ref]
        ri = [r[k][0] / base[k][0] for k in sorted(r) if k in base]
        rc = [r[k][1] / base[k][1] for k in sorted(r) if k in base and base[k][1] > 0]
        common_rounds = [k for k in sorted(r) if k in base]
        of_sums = sum(r[k][0] for k in common_rounds) / sum(base[k][0] for k in common_rounds)
        shown = "" if len(ri) > 10 else f"   [{'/'.join(f'{x:.2f}' for x in ri)}] [{'/'.join(f'{x:.2f}' for x in rc)}]"
        print(f"{'':<16} {label[n]:<28} {iops:>9.0f} {med(ri):>6.3f} {of_sums:>7.3f}  {cpu:>16.2f} {med(rc):>6.3f}{shown}")
if "again" in names:
    # The A/A control: every other contender against the mean of the two identical daemons.
    print(f"\nagainst the mean of {label[ref]} and {label['again']} (ratio of summed IOPS; the two differ by the A/A line above)")
    for (w, qd), by in sorted(data.items()):
        common_rounds = [k for k in by[ref] if k in by["again"]]
        pooled = sum(by[ref][k][0] + by["again"][k][0] for k in common_rounds) / 2
        for n in names:
            if n in (ref, "again"):
                continue
            ours = sum(by[n][k][0] for k in common_rounds if k in by[n])
            print(f"{w + ' QD' + str(qd):<16} {label[n]:<28} {ours / pooled:>7.3f}")
if save == "1":
    read = lambda p: open(p).read().strip() if os.path.exists(p) else ""
    cpu_model = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines() if l.startswith("model name")), "")
    machine = {"host": read("/proc/sys/kernel/hostname"), "nproc": os.cpu_count(), "kernel": read("/proc/sys/kernel/osrelease"), "cpu": cpu_model}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    section = os.environ.get("SECTION") or "What a feature costs when it does not bite: I/O limits and metrics, the sandbox, the last landed build"
    report = os.environ.get("REPORT") or "46-datapath-cost"
    common = {"kind": "timings", "section": section,
              "command": (f"CONTENDERS='{' '.join(names)}' " if os.environ.get("CONTENDERS") else "") + (f"REPORT={report} " if os.environ.get("REPORT") else "") + ("RESTART=1 " if os.environ.get("RESTART") == "1" else "") + ("PIN=1 " if os.environ.get("PIN") == "1" else "") + f"TIME={time} ROUNDS={rounds} SAVE=1 bash scripts/bench-ab.sh", "date": date, "machine": machine, "reference": label[ref]}
    meaning = {"strata": "this build with its defaults", "again": "a second daemon identical to the first (the A/A floor)",
               "limits": "I/O limits far above the load (iops-total=10^8, bps-total=1000G) and --metrics on, scraped every second",
               "seccompoff": "--seccomp off", "base": "another build's daemon (the last landed commit's)"}
    note = (f"strata {rev}, daemons: " + "; ".join(f"{label[n]}: {meaning[n]}" for n in names) + ". Alternating case by case, the order "
            "rotating every round" + (", fresh daemons every round" if os.environ.get("RESTART") == "1" else "")
            + "; the same libblkio client (blkctl bench, one queue) on 256 MiB tmpfs copies of the same data. ")
    for kind, unit, title, extra in (
        ("iops", "kIOPS", "client IOPS, 4 KiB", "IOPS swing by 10-20% from round to round here with other load; the CPU table beside it is steadier."),
        ("cpu", "µs", "daemon CPU time per request, 4 KiB (user + system, every thread)", "The daemon's CPU time over the requests completed: what each request costs the server, which a feature that does not bite must not raise."),
    ):
        rep = dict(common, title=title, unit=unit, rows=rows[kind], notes=note + extra)
        with open(f"docs/bench/{report}-{kind}.json", "w") as f:
            json.dump(rep, f, indent=2)
    print(f"saved docs/bench/{report}-{{iops,cpu}}.json")
PY
if [ "$SAVE" = 1 ]; then "$BIN/blkctl" bench-report; fi
