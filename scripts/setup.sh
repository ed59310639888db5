#!/usr/bin/env bash
# Install everything strata's tests need, and nothing that is already there.
#
# Run as root (CI and the development machines are root). Idempotent: on a prepared
# machine it only checks and prints what it found, and does no apt or cargo work.
#
#   - QEMU 10 (qemu-system-x86, qemu-utils) from bookworm-backports, as DESIGN.md explains:
#     bookworm's own qemu-system-x86 is 7.2 and installing it would remove qemu-utils 10.
#   - fio, busybox-static, acpica-tools (iasl), cpio, binutils, xz-utils, zstd and lz4
#     (vmm-mini/scripts/extract-vmlinux.sh on Debian's LZ4-compressed kernel) from Debian.
#   - prometheus (promtool and a server for the metrics tests; its own service kept off).
#   - ceph-mon, ceph-osd, ceph-common (without recommends, ~55 MB) for the one-node Ceph cluster
#     of scripts/ceph-dev.sh that the RBD tests run against; librbd1 comes with them.
#   - rustup components clippy and rustfmt; cargo-fuzz from crates.io.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "warning: not running as root; apt-get steps will fail if anything is missing"
fi

# True when a Debian package is installed (not just known to dpkg).
installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

# True when an installed Debian package has a version at least $2.
installed_at_least() {
    local v
    installed "$1" || return 1
    v=$(dpkg-query -W -f='${Version}' "$1")
    dpkg --compare-versions "$v" ge "$2"
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -q
        APT_UPDATED=1
    fi
}

# --- QEMU 10 from bookworm-backports -------------------------------------------------------
# qemu-system-x86 and qemu-utils must both be 10.x (epoch 1:): the backports build.
QEMU_MIN="1:10.0"
need_qemu=0
for p in qemu-system-x86 qemu-utils; do
    if installed_at_least "$p" "$QEMU_MIN"; then
        say "ok: $p $(dpkg-query -W -f='${Version}' "$p")"
    else
        say "missing: $p >= $QEMU_MIN"
        need_qemu=1
    fi
done
if [ "$need_qemu" -eq 1 ]; then
    SOURCES=/etc/apt/sources.list.d/debian.sources
    if [ -f "$SOURCES" ] && ! grep -q 'bookworm-backports' "$SOURCES"; then
        say "adding bookworm-backports to $SOURCES"
        sed -i 's/^Suites: bookworm bookworm-updates$/& bookworm-backports/' "$SOURCES"
    fi
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "error: could not enable bookworm-backports (no Debian entry in $SOURCES?)" >&2
        exit 1
    fi
    APT_UPDATED=0
    apt_update_once
    say "apt-get install -t bookworm-backports qemu-system-x86 qemu-utils"
    apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils
fi

# --- Plain Debian packages -----------------------------------------------------------------
missing=()
for p in fio busybox-static acpica-tools cpio binutils xz-utils zstd lz4; do
    if installed "$p"; then
        say "ok: $p"
    else
        say "missing: $p"
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    say "apt-get install ${missing[*]}"
    apt-get install -y -q "${missing[@]}"
fi

# --- Prometheus: promtool and the server, for the metrics tests ------------------------------
# The tests start their own server on 127.0.0.1 with storage in a temp dir. The package's own
# service listens on 0.0.0.0:9090, and its postinst starts it through invoke-rc.d: a
# policy-rc.d that refuses (exit 101) keeps it from starting during the install, and the
# service is disabled and stopped after, whoever installed the package.
if installed prometheus; then
    say "ok: prometheus (promtool)"
else
    apt_update_once
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# setup.sh: no service starts while prometheus installs\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    say "apt-get install --no-install-recommends prometheus"
    apt-get install -y -q --no-install-recommends prometheus || { [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
fi
if command -v systemctl >/dev/null 2>&1; then
    # Works without a running systemd too (removes the boot-time link).
    systemctl disable prometheus.service >/dev/null 2>&1 || true
    [ ! -d /run/systemd/system ] || systemctl stop prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

# --- Ceph, for the RBD tests (scripts/ceph-dev.sh) -----------------------------------------
# Without recommends: the daemons and the `ceph`/`rbd` tools, not the dashboard or systemd glue.
ceph_missing=()
for p in ceph-mon ceph-osd ceph-common librbd1; do
    if installed "$p"; then
        say "ok: $p"
    else
        say "missing: $p"
        ceph_missing+=("$p")
    fi
done
if [ "${#ceph_missing[@]}" -gt 0 ]; then
    apt_update_once
    say "apt-get install --no-install-recommends ${ceph_missing[*]}"
    apt-get install -y -q --no-install-recommends "${ceph_missing[@]}"
fi

# The guest-artifact helper runs `apt-cache depends` and `apt-get download` at test time:
# it needs package lists. Fetch them once if this machine has none.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt_update_once
fi

# --- Rust tooling --------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    say "error: cargo is not on PATH; install a Rust toolchain first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    for c in clippy rustfmt; do
        if rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            say "ok: rustup component $c"
        else
            say "rustup component add $c"
            rustup component add "$c"
        fi
    done
fi
if cargo fuzz --version >/dev/null 2>&1; then
    say "ok: $(cargo fuzz --version)"
else
    say "cargo install cargo-fuzz --locked (compiles; takes a few minutes)"
    cargo install cargo-fuzz --locked
fi

say "done: $(qemu-system-x86_64 --version | head -n1)"
