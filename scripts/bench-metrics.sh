#!/usr/bin/env bash
# What `--metrics` costs the data path: two strata daemons serve copies of the same data on
# tmpfs, one plain and one with `--metrics` while a scraper reads /metrics every second (as a
# Prometheus would), both driven by the same libblkio client (`blkctl bench socket=...`),
# alternating workload by workload and round by round. The issue's bar: the metrics rows stay
# within 2% of the plain ones. Saves docs/bench/45-metrics-{plain,on}.json (median rounds, the
# per-round ratios in the notes) and regenerates docs/bench.md.
#
#   bash scripts/bench-metrics.sh                 # 256 MiB, 2 s per case, 5 rounds, 1 queue
#   TIME=5s ROUNDS=7 NQ=2 bash scripts/bench-metrics.sh
#   SMOKE=1 bash scripts/bench-metrics.sh         # a quick check that it runs (writes nothing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
ROUNDS="${ROUNDS:-5}"
NQ="${NQ:-1}"
SMOKE="${SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then TIME=200ms; SIZE_MB=16; ROUNDS=2; fi
PROFILE=release
[ "$SMOKE" = 1 ] && PROFILE=debug
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p vhost-user-blk -p blkctl --bins
else
    cargo build -q -p vhost-user-blk -p blkctl --bins
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
command -v curl >/dev/null || { echo "bench-metrics: curl is needed for the scraper" >&2; exit 1; }

dir=/dev/shm/strata-bench-metrics
rm -rf "$dir"; mkdir -p "$dir"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$dir/plain.raw"
cp "$dir/plain.raw" "$dir/on.raw"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$BIN/vhost-user-blk" --disk "socket=$dir/plain.sock,format=raw,path=$dir/plain.raw,num-queues=$NQ" 2>/dev/null &
plain=$!
"$BIN/vhost-user-blk" --disk "socket=$dir/on.sock,format=raw,path=$dir/on.raw,num-queues=$NQ" \
    --metrics "127.0.0.1:$port" 2>/dev/null &
on=$!
( while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || true; done ) &
scraper=$!
trap 'kill $plain $on $scraper 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/plain.sock" ] && [ -S "$dir/on.sock" ] && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" || { echo "bench-metrics: /metrics does not answer" >&2; exit 1; }

section="The cost of --metrics (scraped every second), tmpfs, $NQ queue(s) (libblkio client)"
parts=()
for round in $(seq "$ROUNDS"); do
    order="plain on"
    [ $((round % 2)) = 0 ] && order="on plain"
    for w in randread randwrite; do
        for who in $order; do
            name="strata $(git rev-parse --short HEAD)"
            [ "$who" = on ] && name="$name with --metrics, scraped every second"
            "$BIN/blkctl" bench "socket=$dir/$who.sock,num-queues=$NQ" --workloads "$w" --qd 1,32 \
                --time "$TIME" --json --section "$section" \
                --note "Server: $name, serving a ${SIZE_MB} MiB tmpfs copy of the same data; the two daemons alternate workload by workload." \
                > "$dir/$who-$w-r$round.json"
            parts+=("$dir/$who-$w-r$round.json")
        done
    done
done
python3 - "$SMOKE" "$ROUNDS" "${parts[@]}" <<'PY'
import json, re, sys
smoke, rounds = sys.argv[1] == "1", sys.argv[2]
rounds_of, merged = {}, {}
for f in sys.argv[3:]:
    who = re.search(r"/(plain|on)-[a-z]+-r\d+\.json$", f).group(1)
    rnd = int(re.search(r"-r(\d+)\.json$", f).group(1))
    run = json.load(open(f))
    for c in run["cases"]:
        rounds_of.setdefault((who, c["workload"], c["qd"]), {})[rnd] = c
    if who not in merged:
        run["command"] = run["command"].replace("--workloads " + run["cases"][0]["workload"], "--workloads randread,randwrite")
        run["cases"] = []
        merged[who] = run
for (who, w, qd), by in sorted(rounds_of.items(), key=lambda kv: (kv[0][1], kv[0][2])):
    cases = sorted(by.values(), key=lambda c: c["iops"])
    merged[who]["cases"].append(cases[len(cases) // 2])
lines, worst = [], 0.0
for r in merged["on"]["cases"]:
    k = (r["workload"], r["qd"])
    p = next(c for c in merged["plain"]["cases"] if (c["workload"], c["qd"]) == k)
    ratio = r["iops"] / p["iops"] if p["iops"] > 0 else 0.0
    worst = max(worst, abs(1 - ratio))
    mine, theirs = rounds_of[("on",) + k], rounds_of[("plain",) + k]
    per = "/".join(f'{mine[n]["iops"] / theirs[n]["iops"]:.3f}' for n in sorted(mine) if theirs.get(n, {}).get("iops"))
    lines.append(f"{k[0]} QD{k[1]} {ratio:.3f}x (rounds {per})")
note = " With --metrics / plain IOPS, medians of " + rounds + " alternating rounds: " + ", ".join(lines) + "."
merged["on"]["notes"] = (merged["on"].get("notes") or "") + note
print(note.strip())
print(f"largest difference: {worst * 100:.1f}% (the bar: 2%)")
if not smoke:
    for who, run in merged.items():
        with open(f"docs/bench/45-metrics-{who}.json", "w") as out:
            json.dump(run, out, indent=2)
PY
[ "$SMOKE" = 1 ] || "$BIN/blkctl" bench-report
