#!/usr/bin/env bash
# What the sandbox costs on the data path (docs/sandbox.md): two strata daemons of the same
# build serve copies of the same file, one with `--seccomp off` and one with the default sandbox
# (seccomp filters, io_uring restrictions), driven by the same libblkio client
# (`blkctl bench socket=...`): 4 KiB random reads and writes at QD1 and QD32, alternating between
# the two daemons case by case, the order swapped every round. Saves
# docs/bench/45-sandbox-{on,off}.json and regenerates docs/bench.md; prints on/off per round.
#
#   bash scripts/bench-sandbox.sh                   # 256 MiB on /dev/shm, 2 s per case, 5 rounds
#   TIME=5s ROUNDS=7 DIR=/var/tmp/sb bash scripts/bench-sandbox.sh
#   PROFILE=debug TIME=200ms ROUNDS=1 SIZE_MB=16 SAVE=0 bash scripts/bench-sandbox.sh   # smoke run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
ROUNDS="${ROUNDS:-5}"
DIR="${DIR:-/dev/shm/strata-bench-sandbox}"
PROFILE="${PROFILE:-release}"
SAVE="${SAVE:-1}"
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p vhost-user-blk -p blkctl --bins
else
    cargo build -q -p vhost-user-blk -p blkctl --bins
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

mkdir -p "$DIR"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$DIR/on.raw"
cp "$DIR/on.raw" "$DIR/off.raw"
sync
rm -f "$DIR/on.sock" "$DIR/off.sock"
"$BIN/vhost-user-blk" --disk "socket=$DIR/on.sock,format=raw,path=$DIR/on.raw" 2>/dev/null &
on=$!
"$BIN/vhost-user-blk" --seccomp off --disk "socket=$DIR/off.sock,format=raw,path=$DIR/off.raw" 2>/dev/null &
off=$!
trap 'kill $on $off 2>/dev/null || true; rm -f "$DIR"/*.raw "$DIR"/*.json' EXIT
for _ in $(seq 100); do [ -S "$DIR/on.sock" ] && [ -S "$DIR/off.sock" ] && break; sleep 0.1; done
grep -q '^Seccomp:[[:space:]]*2' "/proc/$on/status" || { echo "the sandboxed daemon has no seccomp filter" >&2; exit 1; }

section="The sandbox's cost: seccomp and io_uring restrictions on vs --seccomp off (libblkio client, one queue, 4 KiB)"
parts=()
for round in $(seq "$ROUNDS"); do
    order="on off"
    [ $((round % 2)) = 0 ] && order="off on"
    for w in randread randwrite; do
        for qd in 1 32; do
            for who in $order; do
                "$BIN/blkctl" bench "socket=$DIR/$who.sock" --workloads "$w" --qd "$qd" --time "$TIME" --json \
                    --section "$section" \
                    --note "Server: strata $(git rev-parse --short HEAD), --seccomp $who, serving a ${SIZE_MB} MiB file on $DIR; the two daemons alternate case by case." \
                    > "$DIR/$who-$w-$qd-r$round.json"
                parts+=("$DIR/$who-$w-$qd-r$round.json")
            done
        done
    done
done
python3 - "$ROUNDS" "$SAVE" "${parts[@]}" <<'PY'
import json, re, sys
rounds, save, files = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
runs, by = {}, {}
for f in files:
    who, w, qd, rnd = re.search(r"/(on|off)-([a-z]+)-(\d+)-r(\d+)\.json$", f).groups()
    run = json.load(open(f))
    by.setdefault((who, w, int(qd)), {})[int(rnd)] = run["cases"][0]
    runs.setdefault(who, run)
lines = []
for who, run in runs.items():
    run["cases"] = []
    run["command"] = re.sub(r"--workloads \S+ --qd \S+", "--workloads randread,randwrite --qd 1,32", run["command"])
for (who, w, qd), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
    runs[who]["cases"].append(sorted(rs.values(), key=lambda c: c["iops"])[len(rs) // 2])
for w in ("randread", "randwrite"):
    for qd in (1, 32):
        on, off = by[("on", w, qd)], by[("off", w, qd)]
        per = [on[r]["iops"] / off[r]["iops"] for r in sorted(on) if r in off and off[r]["iops"] > 0]
        med = sorted(per)[len(per) // 2]
        lines.append(f"{w} QD{qd} {med:.3f}x (rounds {'/'.join(f'{x:.3f}' for x in per)})")
note = f" Each case ran {rounds} rounds alternating between the two daemons; rows are medians. on/off IOPS: " + ", ".join(lines) + "."
for who, run in runs.items():
    run["notes"] = (run.get("notes") or "") + note
    if not save:
        continue
    with open(f"docs/bench/45-sandbox-{who}.json", "w") as out:
        json.dump(run, out, indent=2)
print(note.strip())
PY
[ "$SAVE" = 1 ] && "$BIN/blkctl" bench-report
exit 0
