#!/usr/bin/env bash
# strata's vhost-user-blk daemon against qemu-storage-daemon, all serving copies of the same data
# and all driven by the same libblkio client (`blkctl bench socket=...`), alternating workload by
# workload in one run, on tmpfs and on a disk-backed file, with one queue and with two queues.
# strata runs twice: with its defaults and with `sqpoll=on` (a kernel submission thread per
# queue). Saves docs/bench/40-server-*.json and regenerates docs/bench.md.
#
# Each case runs ROUNDS times, the servers alternating (the order rotates every round); the rows
# keep each server's median round, and the notes give every round's ratio to qsd.
#
#   bash scripts/bench-vs-qsd.sh            # 256 MiB files, 2 s per case, 3 rounds
#   TIME=5s SIZE_MB=1024 ROUNDS=5 bash scripts/bench-vs-qsd.sh
#
# STRATA_EXTRA_KEYS (export keys added to its --disk) and STRATA_EXTRA_ARGS (daemon arguments)
# add a fourth server to the rotation, "extra": strata with its defaults plus these, so a
# feature that should cost nothing when it does not bite is measured against the same daemon
# without it, alternating round by round (its notes give its ratio to plain strata), e.g. I/O
# limits far above the load:
#   STRATA_EXTRA_KEYS=iops-total=100000000,bps-total=1000G bash scripts/bench-vs-qsd.sh
#   STRATA_ARGS="--seccomp off" bash scripts/bench-vs-qsd.sh   # extra daemon arguments
# (scripts/bench-sandbox.sh compares the sandbox on and off directly.)
# STRATA_BASE_BIN names another build's daemon binary (e.g. the last landed commit's, built in a
# worktree) that joins the rotation as "base", next to plain strata: the notes of strata's rows
# then give its ratio to that build, round by round (before/after a change, in one run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIME="${TIME:-2s}"
SIZE_MB="${SIZE_MB:-256}"
ROUNDS="${ROUNDS:-3}"
EXTRA_KEYS="${STRATA_EXTRA_KEYS:-}"
EXTRA_ARGS="${STRATA_EXTRA_ARGS:-}"
BASE_BIN="${STRATA_BASE_BIN:-}"
BASE=""
[ -n "$BASE_BIN" ] && BASE=base
EXTRA=""
[ -n "$EXTRA_KEYS$EXTRA_ARGS" ] && EXTRA=extra
read -r -a STRATA_ARGS <<< "${STRATA_ARGS:-}"
cargo build --release -q -p vhost-user-blk -p blkctl --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
QSD_VERSION="$(qemu-storage-daemon --version | head -n 1)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run_one() { # DIR LABEL TAG QUEUES
    local dir="$1" label="$2" tag="$3" nq="$4"
    mkdir -p "$dir"
    # Both servers get a copy made the same way: a file written by `head` and one written by
    # `cp` sit differently in the page cache (ext4 caches the copy in large folios), which
    # alone moved 1 MiB QD1 reads by 2x between two copies of the same data.
    head -c "$((SIZE_MB << 20))" /dev/urandom > "$dir/source.raw"
    cp "$dir/source.raw" "$dir/strata.raw"
    cp "$dir/source.raw" "$dir/sqpoll.raw"
    cp "$dir/source.raw" "$dir/qsd.raw"
    [ -n "$EXTRA" ] && cp "$dir/source.raw" "$dir/extra.raw"
    [ -n "$BASE" ] && cp "$dir/source.raw" "$dir/base.raw"
    rm -f "$dir/source.raw"
    sync
    rm -f "$dir/strata.sock" "$dir/sqpoll.sock" "$dir/qsd.sock" "$dir/extra.sock" "$dir/base.sock"
    "$BIN/vhost-user-blk" ${STRATA_ARGS[@]+"${STRATA_ARGS[@]}"} --disk "socket=$dir/strata.sock,format=raw,path=$dir/strata.raw,num-queues=$nq" 2>/dev/null &
    local ours=$!
    "$BIN/vhost-user-blk" ${STRATA_ARGS[@]+"${STRATA_ARGS[@]}"} --disk "socket=$dir/sqpoll.sock,format=raw,path=$dir/sqpoll.raw,num-queues=$nq,sqpoll=on" 2>/dev/null &
    local sqp=$!
    qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$dir/qsd.raw,aio=io_uring" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$dir/qsd.sock,writable=on,num-queues=$nq" 2>/dev/null &
    local qsd=$!
    local ext=""
    if [ -n "$EXTRA" ]; then
        # shellcheck disable=SC2086 # STRATA_EXTRA_ARGS is split into words on purpose
        "$BIN/vhost-user-blk" --disk "socket=$dir/extra.sock,format=raw,path=$dir/extra.raw,num-queues=$nq${EXTRA_KEYS:+,$EXTRA_KEYS}" $EXTRA_ARGS 2>/dev/null &
        ext=$!
    fi
    local bas=""
    if [ -n "$BASE" ]; then
        "$BASE_BIN" ${STRATA_ARGS[@]+"${STRATA_ARGS[@]}"} --disk "socket=$dir/base.sock,format=raw,path=$dir/base.raw,num-queues=$nq" 2>/dev/null &
        bas=$!
    fi
    trap 'kill $ours $sqp $qsd $ext $bas 2>/dev/null || true' RETURN
    for _ in $(seq 100); do [ -S "$dir/strata.sock" ] && [ -S "$dir/sqpoll.sock" ] && [ -S "$dir/qsd.sock" ] && { [ -z "$EXTRA" ] || [ -S "$dir/extra.sock" ]; } && { [ -z "$BASE" ] || [ -S "$dir/base.sock" ]; } && break; sleep 0.1; done
    local qword="one queue"
    [ "$nq" != 1 ] && qword="$nq queues"
    local section="vhost-user-blk server vs qemu-storage-daemon, $label (libblkio client, $qword)"
    local parts=()
    # Alternate: each workload runs on each server in turn, then the next workload; every round
    # rotates which server goes first.
    local order
    for round in $(seq "$ROUNDS"); do
    case $((round % 3)) in
        1) order="strata sqpoll qsd" ;;
        2) order="qsd strata sqpoll" ;;
        *) order="sqpoll qsd strata" ;;
    esac
    # The extra server runs next to plain strata, alternating which goes first.
    if [ -n "$EXTRA" ]; then
        if [ $((round % 2)) = 1 ]; then order="${order/strata/strata extra}"; else order="${order/strata/extra strata}"; fi
    fi
    if [ -n "$BASE" ]; then
        if [ $((round % 2)) = 1 ]; then order="${order/strata/base strata}"; else order="${order/strata/strata base}"; fi
    fi
    for w in randread randwrite seqread; do
        for who in $order; do
            local name="strata $(git rev-parse --short HEAD)"
            [ "$who" = sqpoll ] && name="strata $(git rev-parse --short HEAD) with sqpoll=on"
            [ "$who" = qsd ] && name="$QSD_VERSION"
            [ "$who" = base ] && name="strata built at $BASE_BIN"
            [ "$who" = extra ] && name="strata $(git rev-parse --short HEAD) with ${EXTRA_KEYS:+keys $EXTRA_KEYS}${EXTRA_KEYS:+${EXTRA_ARGS:+ and }}${EXTRA_ARGS:+arguments $EXTRA_ARGS}"
            "$BIN/blkctl" bench "socket=$dir/$who.sock,num-queues=$nq" --workloads "$w" --qd 1,32 \
                --time "$TIME" --json --section "$section" \
                --note "Server: $name, serving a ${SIZE_MB} MiB $label copy of the same data with $qword; workloads alternate between the two servers in one run." \
                > "$dir/$who-$w-r$round.json"
            parts+=("$dir/$who-$w-r$round.json")
        done
    done
    done
    local rss_ours rss_sqp rss_qsd
    rss_ours="$(rss_kib $ours)"; rss_sqp="$(rss_kib $sqp)"; rss_qsd="$(rss_kib $qsd)"
    python3 - "$tag" "$nq" "$rss_ours" "$rss_sqp" "$rss_qsd" "$ROUNDS" "$BASE_BIN" "${parts[@]}" <<'PY'
import json, re, sys
tag, nq, rss_ours, rss_sqp, rss_qsd, rounds, base_bin = sys.argv[1:8]
files = sys.argv[8:]
extra_vs_strata = []
merged = {}
rounds_of = {}  # (who, workload, qd) -> {round: case}
for f in files:
    who = re.search(r"/(strata|sqpoll|qsd|extra|base)-[a-z]+-r\d+\.json$", f).group(1)
    rnd = int(re.search(r"-r(\d+)\.json$", f).group(1))
    run = json.load(open(f))
    for c in run["cases"]:
        rounds_of.setdefault((who, c["workload"], c["qd"]), {})[rnd] = c
    if who not in merged:
        run["command"] = run["command"].replace("--workloads " + run["cases"][0]["workload"], "--workloads randread,randwrite,seqread")
        run["cases"] = []
        merged[who] = run
def median_case(cases):
    ordered = sorted(cases, key=lambda c: c["iops"])
    return ordered[len(ordered) // 2]
for (who, w, qd), by_round in sorted(rounds_of.items(), key=lambda kv: ("randread", "randwrite", "seqread").index(kv[0][1]) * 1000 + kv[0][2]):
    merged[who]["cases"].append(median_case(list(by_round.values())))
qsd = merged["qsd"]
def ratios(who, base="qsd"):
    parts = []
    for r in merged[who]["cases"]:
        k = (r["workload"], r["qd"])
        q = next((c for c in merged[base]["cases"] if (c["workload"], c["qd"]) == k), None)
        if not q or q["iops"] <= 0:
            continue
        mine, theirs = rounds_of[(who,) + k], rounds_of[(base,) + k]
        per_round = [f'{mine[n]["iops"] / theirs[n]["iops"]:.2f}' for n in sorted(mine) if n in theirs and theirs[n]["iops"] > 0]
        lat = ""
        if r["qd"] == 1:
            lat = f', mean latency {r["lat_us"]["mean"]:.1f} vs {q["lat_us"]["mean"]:.1f} us'
        parts.append(f'{r["workload"]} QD{r["qd"]} {r["iops"] / q["iops"]:.2f}x (rounds {"/".join(per_round)}{lat})')
    return parts
rss = f" Daemon RSS after the run: strata {int(rss_ours)} KiB, strata with sqpoll=on {int(rss_sqp)} KiB, qemu-storage-daemon {int(rss_qsd)} KiB."
for run in merged.values():
    run["notes"] = (run.get("notes") or "") + f" Each case ran {rounds} rounds alternating between the servers (the order rotated each round); the rows are each server's median round."
for who in ("strata", "sqpoll"):
    merged[who]["notes"] = (merged[who].get("notes") or "") + " strata/qemu-storage-daemon IOPS, medians: " + ", ".join(ratios(who)) + "." + rss
qsd["notes"] = (qsd.get("notes") or "") + rss
if "base" in merged:
    merged["strata"]["notes"] += " Against the base build (" + base_bin + ", alternating with this one), IOPS, medians: " + ", ".join(ratios("strata", "base")) + "."
    del merged["base"]
if "extra" in merged:
    merged["extra"]["notes"] = (merged["extra"].get("notes") or "") + " Against plain strata (the same daemon without the extra keys or arguments), IOPS, medians: " + ", ".join(ratios("extra", "strata")) + "."
suffix = "" if nq == "1" else f"-{nq}q"
for who, run in merged.items():
    name = {"sqpoll": "strata-sqpoll", "extra": "strata-extra"}.get(who, who)
    with open(f"docs/bench/40-server-{tag}{suffix}-{name}.json", "w") as out:
        json.dump(run, out, indent=2)
print(merged["strata"]["notes"])
print(merged["sqpoll"]["notes"])
if "extra" in merged:
    print(merged["extra"]["notes"])
PY
    rm -f "$dir"/*.json "$dir/strata.raw" "$dir/sqpoll.raw" "$dir/qsd.raw" "$dir/extra.raw" "$dir/base.raw"
}

for nq in 1 2; do
    run_one /dev/shm/strata-bench-vs-qsd "tmpfs" tmpfs "$nq"
    run_one "${CARGO_TARGET_DIR:-$ROOT/target}/bench-vs-qsd" "disk-backed (ext4, page cache)" disk "$nq"
done
"$BIN/blkctl" bench-report
