#!/usr/bin/env bash
# A one-node Ceph cluster for strata's tests and for trying RBD by hand.
#
#   scripts/ceph-dev.sh start    # start it (idempotent); prints the path of its ceph.conf
#   scripts/ceph-dev.sh status   # say whether it runs, and where
#   scripts/ceph-dev.sh stop     # stop what `start` began (pid files), nothing else
#   scripts/ceph-dev.sh conf     # print the ceph.conf path (whether or not it runs)
#
# One monitor and one bluestore OSD (on a sparse file, so data survives an OSD restart — memstore
# would lose it) as plain processes on 127.0.0.1, no systemd, no manager (nothing here needs one;
# `ceph pg dump` and `ceph -s` PG stats do), cephx authentication as a real cluster has it (the
# admin key in $CEPH_DEV_DIR/keyring, named by the conf, so clients need nothing more), a pool
# `rbd` with one replica. The OSD's caches are made small so it stays within a few hundred MB.
#
# Environment:
#   CEPH_DEV_DIR   scratch directory (default $XDG_RUNTIME_DIR/strata-ceph or /tmp/strata-ceph)
#   CEPH_DEV_PORT  the monitor's port (default: 16789 if free, else the next free one; kept in
#                  the directory, so a restarted cluster keeps its address)
#   CEPH_DEV_OSD_SIZE  size of the OSD's sparse block file (default 20G)
#
# After `start`, `export CEPH_CONF=$(scripts/ceph-dev.sh conf)` makes `ceph`, `rbd`, fio's rbd
# engine, QEMU and strata's `format=rbd` use it. Packages: scripts/setup.sh installs ceph-mon,
# ceph-osd and ceph-common.
set -euo pipefail

DIR="${CEPH_DEV_DIR:-${XDG_RUNTIME_DIR:-/tmp}/strata-ceph}"
OSD_SIZE="${CEPH_DEV_OSD_SIZE:-20G}"
CONF="$DIR/ceph.conf"
FSID_FILE="$DIR/fsid"

# True when something listens on TCP port $1 of any address (from /proc, no tools needed).
port_busy() {
    local hex
    hex=$(printf '%04X' "$1")
    grep -qE "^ *[0-9]+: [0-9A-F]+:$hex [0-9A-F]+:0000 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# The monitor's port: CEPH_DEV_PORT, else the one this directory used before, else a free one.
pick_port() {
    if [ -n "${CEPH_DEV_PORT:-}" ]; then
        echo "$CEPH_DEV_PORT"
    elif [ -f "$DIR/port" ]; then
        cat "$DIR/port"
    else
        local p=16789
        while port_busy "$p"; do p=$((p + 1)); done
        echo "$p"
    fi
}

say() { printf 'ceph-dev: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install it with scripts/setup.sh (apt-get install --no-install-recommends ceph-mon ceph-osd ceph-common)"
}

# True when the process in pid file $1 is alive.
alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

write_conf() {
    local fsid=$1
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$PORT
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keyring
run dir = $DIR/run
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# A killed client's watch (and so its exclusive lock) goes away after this many seconds,
# instead of 30: a restarted daemon takes its image back sooner.
osd client watch timeout = 5
ms dispatch throttle bytes = 16777216

[mon]
mon data = $DIR/mon
keyring = $DIR/mon/keyring
mon cluster log file = $DIR/log/cluster.log

[osd]
osd data = $DIR/osd
keyring = $DIR/osd/keyring
osd objectstore = bluestore
bluestore block path = $DIR/osd-block
bluestore block create = true
bluestore block size = $(numfmt --from=iec "$OSD_SIZE")
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 402653184
bluestore rocksdb options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,write_buffer_size=8388608,writable_file_max_buffer_size=0
osd op num shards = 1
osd op num threads per shard = 2
osd max object name len = 256
osd max object namespace len = 64

[client]
# Empty: many clients (tests, fio, QEMU) at once would clash on one socket path.
admin socket =
log file = $DIR/log/client.log
EOF
}

cmd_start() {
    need ceph-mon; need ceph-osd; need ceph; need monmaptool; need ceph-authtool
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash"
    if alive "$DIR/run/mon.a.pid" && alive "$DIR/run/osd.0.pid"; then
        say "already running"
        echo "$CONF"
        return 0
    fi
    local fsid fresh=0
    if [ -d "$DIR/mon" ] && [ ! -f "$DIR/keyring" ]; then
        say "$DIR holds a cluster made without cephx keys (an older ceph-dev.sh): making a new one"
        rm -f "$FSID_FILE"
    fi
    if [ ! -f "$FSID_FILE" ] || [ ! -d "$DIR/mon" ] || [ ! -d "$DIR/osd" ]; then
        rm -rf "$DIR/mon" "$DIR/osd" "$DIR/osd-block" "$DIR/port" "$DIR/keyring" "$DIR"/*.keyring
        fsid=$(cat /proc/sys/kernel/random/uuid)
        echo "$fsid" >"$FSID_FILE"
        fresh=1
    fi
    fsid=$(cat "$FSID_FILE")
    PORT=$(pick_port)
    echo "$PORT" >"$DIR/port"
    write_conf "$fsid"
    export CEPH_CONF="$CONF"

    if [ "$fresh" -eq 1 ]; then
        say "creating a monitor and an OSD in $DIR"
        # Keys: the monitor's, the admin's (what every client here uses) and the OSD's, all known
        # to the monitor from its first start, so nothing is registered while it runs.
        ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
        ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
        ceph-authtool --create-keyring "$DIR/osd.keyring" --gen-key -n osd.0 \
            --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
        ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null
        ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/osd.keyring" >/dev/null
        monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$PORT]" "$DIR/monmap" >/dev/null
        mkdir -p "$DIR/mon"
        ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" >/dev/null
    fi
    if ! alive "$DIR/run/mon.a.pid"; then
        ceph-mon -c "$CONF" -i a 2>>"$DIR/log/mon.a.stderr"
    fi
    if [ "$fresh" -eq 1 ]; then
        local uuid
        uuid=$(cat /proc/sys/kernel/random/uuid)
        timeout 60 ceph osd new "$uuid" 0 >/dev/null || die "ceph osd new failed (monitor log: $DIR/log/mon.a.log)"
        mkdir -p "$DIR/osd"
        cp "$DIR/osd.keyring" "$DIR/osd/keyring"
        ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >/dev/null 2>"$DIR/log/osd-mkfs.err" ||
            die "ceph-osd --mkfs failed: $(tail -3 "$DIR/log/osd-mkfs.err")"
    fi
    if ! alive "$DIR/run/osd.0.pid"; then
        ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd.0.stderr"
    fi
    if [ "$fresh" -eq 1 ]; then
        timeout 60 ceph osd pool create rbd 8 8 >/dev/null 2>&1 || die "cannot create pool rbd"
        timeout 60 ceph osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
        timeout 60 ceph osd pool application enable rbd rbd >/dev/null 2>&1 || true
    fi
    # Usable when an image can be created and listed.
    local i
    for i in $(seq 1 120); do
        if timeout 10 rbd ls -p rbd >/dev/null 2>&1 && timeout 20 rbd create --size 4M rbd/.ceph-dev-probe >/dev/null 2>&1; then
            timeout 20 rbd rm rbd/.ceph-dev-probe >/dev/null 2>&1 || true
            say "up (monitor 127.0.0.1:$PORT, 1 bluestore OSD, pool rbd size 1, cephx: admin key in $DIR/keyring); export CEPH_CONF=$CONF"
            echo "$CONF"
            return 0
        fi
        sleep 0.5
    done
    die "the cluster did not come up within 60 s (logs in $DIR/log)"
}

cmd_stop() {
    local name stopped=0
    for name in osd.0 mon.a; do
        local pf="$DIR/run/$name.pid"
        if alive "$pf"; then
            local pid
            pid=$(cat "$pf")
            kill -CONT "$pid" 2>/dev/null || true
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            stopped=1
        fi
        rm -f "$pf"
    done
    if [ "$stopped" -eq 1 ]; then say "stopped ($DIR kept; rm -rf it to start afresh)"; else say "not running"; fi
}

cmd_status() {
    local ok=1 name
    for name in mon.a osd.0; do
        if alive "$DIR/run/$name.pid"; then
            say "$name running (pid $(cat "$DIR/run/$name.pid"))"
        else
            say "$name not running"
            ok=0
        fi
    done
    say "conf: $CONF"
    [ "$ok" -eq 1 ]
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    conf) echo "$CONF" ;;
    -h | --help | help)
        sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "usage: $0 start|stop|status|conf (see --help)" >&2
        exit 1
        ;;
esac
