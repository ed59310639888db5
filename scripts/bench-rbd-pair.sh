#!/usr/bin/env bash
# A close look at one RBD row, strata against qemu-storage-daemon: both servers run side by side,
# each on its own image, and take short turns (1 s by default) for ROUNDS rounds; that is one
# block. BLOCKS blocks run, each with freshly started servers and the images swapped from the
# block before, so neither keeps the luckier image or the luckier process. Many short, adjacent
# turns follow this cluster's drift (2x over minutes) far better than scripts/bench-rbd.sh's
# per-case restarts: this is how a 4% gap at QD1 was told from noise (docs/scale-out.md,
# "Polling").
#
#   bash scripts/bench-rbd-pair.sh                               # 4K randwrite QD1, 6 x 10 rounds
#   WORKLOAD=randread QD=1 BLOCKS=8 bash scripts/bench-rbd-pair.sh
#   STRATA_KEYS=,poll-us=50 bash scripts/bench-rbd-pair.sh       # extra keys on strata's disk
#   BASE_BIN=/tmp/old/vhost-user-blk bash scripts/bench-rbd-pair.sh  # against another strata build
#
# BASE_BIN puts another build's daemon (the last landed commit's, say) in qemu-storage-daemon's
# place, with the same disk keys: a before/after of a change on this noisy cluster.
#
# librbd's cache is off for both (a conf copy with `rbd cache = false`, and `cache.direct=on`
# for qemu-storage-daemon, whose QEMU sets rbd_cache itself). Prints the ratio of the summed
# IOPS, the median of the turns' ratios, and the mean of the blocks' ratios with a 95% interval
# over blocks: turns within a block share two processes' luck and are not independent (two
# 2-block runs of one row gave 0.92 +- 0.03 and 1.01 +- 0.03 over turns).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKLOAD="${WORKLOAD:-randwrite}"
QD="${QD:-1}"
ROUNDS="${ROUNDS:-10}"
BLOCKS="${BLOCKS:-6}"
TURN="${TURN:-1s}"
SIZE="${SIZE:-1G}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BASE_BIN="${BASE_BIN:-}"
OTHER="qemu-storage-daemon"
[ -n "$BASE_BIN" ] && OTHER="base"
OUT="${OUT:-$TARGET/bench-rbd-pair}"
BIN="$TARGET/release"
say() { printf 'bench-rbd-pair: %s\n' "$*" >&2; }

case $BLOCKS in '' | *[!0-9]* | 0) say "BLOCKS must be a positive number"; exit 2 ;; esac
case $WORKLOAD in randread | randwrite | seqread | seqwrite) ;; *) say "WORKLOAD must be randread, randwrite, seqread or seqwrite"; exit 2 ;; esac
if [ -n "$BASE_BIN" ] && [ ! -x "$BASE_BIN" ]; then say "BASE_BIN=$BASE_BIN is not an executable"; exit 2; fi
if [ -z "$BASE_BIN" ] && ! qemu-storage-daemon --blockdev help 2>/dev/null | grep -qw rbd && ! ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1; then
    say "qemu-storage-daemon has no rbd driver (apt-get install -t bookworm-backports qemu-block-extra)"; exit 1
fi
if [ -z "${CEPH_CONF:-}" ]; then
    CEPH_CONF="$(bash scripts/ceph-dev.sh start)"
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.iops
sed 's/^\[client\]$/[client]\nrbd cache = false/' "$CEPH_CONF" >"$OUT/ceph.conf"
grep -q '^rbd cache = false' "$OUT/ceph.conf" || { say "no [client] section in $CEPH_CONF"; exit 1; }
export CEPH_CONF="$OUT/ceph.conf"
cargo build --release -q -p vhost-user-blk -p blkctl --bins

IMAGES="strata-pair-a-$$ strata-pair-b-$$"
trap 'kill $(jobs -p) 2>/dev/null || true; for i in $IMAGES; do rbd rm --no-progress "rbd/$i" >/dev/null 2>&1 || true; done' EXIT
for img in $IMAGES; do
    rbd create --size "$SIZE" "rbd/$img"
    say "prefilling rbd/$img ($SIZE)"
    fio --name=prefill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$img" --rw=write --bs=4M \
        --iodepth=8 --size="$SIZE" --output=/dev/null
done

# One block: strata serves $2, the other server $3, turns alternate (order flipped each round).
block() { # BLOCK STRATA_IMAGE OTHER_IMAGE
    # The other contender's files are named qsd.* whichever it is (qemu-storage-daemon, or BASE_BIN).
    rm -f "$OUT/strata.sock" "$OUT/qsd.sock"
    "$BIN/vhost-user-blk" --disk "socket=$OUT/strata.sock,format=rbd,pool=rbd,image=$2,conf=$CEPH_CONF,num-queues=1${STRATA_KEYS:-}" \
        2>"$OUT/strata.log" &
    local sp=$!
    if [ -n "$BASE_BIN" ]; then
        "$BASE_BIN" --disk "socket=$OUT/qsd.sock,format=rbd,pool=rbd,image=$3,conf=$CEPH_CONF,num-queues=1${STRATA_KEYS:-}" \
            2>"$OUT/qsd.log" &
    else
        qemu-storage-daemon --blockdev "driver=rbd,node-name=r,pool=rbd,image=$3,conf=$CEPH_CONF,cache.direct=on" \
            --export "type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=$OUT/qsd.sock,writable=on,num-queues=1" \
            2>"$OUT/qsd.log" &
    fi
    local qp=$!
    for _ in $(seq 300); do [ -S "$OUT/strata.sock" ] && [ -S "$OUT/qsd.sock" ] && break; sleep 0.1; done
    [ -S "$OUT/strata.sock" ] || { say "strata did not start: $(tail -3 "$OUT/strata.log")"; exit 1; }
    [ -S "$OUT/qsd.sock" ] || { say "$OTHER did not start: $(tail -3 "$OUT/qsd.log")"; exit 1; }
    for r in $(seq "$ROUNDS"); do
        local order="strata qsd"
        [ $((r % 2)) = 0 ] && order="qsd strata"
        for who in $order; do
            "$BIN/blkctl" bench "socket=$OUT/$who.sock" --workloads "$WORKLOAD" --qd "$QD" --time "$TURN" --no-prefill \
                --json --size-limit "$SIZE" 2>/dev/null |
                python3 -c 'import json, sys; print(json.load(sys.stdin)["cases"][0]["iops"])' >"$OUT/$who-h$1-r$r.iops"
        done
    done
    kill "$sp" "$qp"
    wait "$sp" "$qp" 2>/dev/null || true
}
set -- $IMAGES
for b in $(seq "$BLOCKS"); do
    if [ $((b % 2)) = 1 ]; then mine=$1 theirs=$2; else mine=$2 theirs=$1; fi
    say "block $b of $BLOCKS: strata on $mine, $OTHER on $theirs, $ROUNDS rounds of $TURN turns"
    block "$b" "$mine" "$theirs"
done

python3 - "$OUT" "$ROUNDS" "$BLOCKS" "$WORKLOAD" "$QD" "$TURN" "$OTHER" <<'PY'
import statistics, sys
out, rounds, blocks, workload, qd, turn, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
# Two-sided 95% points of Student's t for 1-10 degrees of freedom (a normal 1.96 beyond).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
pairs, per_block = [], []
for b in range(1, blocks + 1):
    mine = [(float(open(f"{out}/strata-h{b}-r{r}.iops").read()), float(open(f"{out}/qsd-h{b}-r{r}.iops").read()))
            for r in range(1, rounds + 1)]
    pairs += mine
    per_block.append(sum(s for s, _ in mine) / sum(q for _, q in mine))
ratios = [s / q for s, q in pairs]
summed = sum(s for s, _ in pairs) / sum(q for _, q in pairs)
name = "qsd" if other == "qemu-storage-daemon" else other
print(f"{workload} QD{qd}, {blocks} blocks of {rounds} turns of {turn}: strata {statistics.mean(s for s, _ in pairs):.0f} IOPS, "
      f"{other} {statistics.mean(q for _, q in pairs):.0f} IOPS")
line = f"strata / {name}: summed {summed:.3f}, median of turns {statistics.median(ratios):.3f}"
if blocks > 1:
    t = T95[blocks - 2] if blocks - 1 <= len(T95) else 1.96
    half_width = t * statistics.stdev(per_block) / len(per_block) ** 0.5
    line += f", mean of blocks {statistics.mean(per_block):.3f} +- {half_width:.3f} (95%)"
print(line)
print("blocks: " + " ".join(f"{r:.3f}" for r in per_block))
PY
