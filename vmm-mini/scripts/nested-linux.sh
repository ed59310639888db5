#!/bin/sh
# nested-linux.sh: boot Linux under vmm-mini with a strata disk, inside a QEMU TCG guest that
# provides nested KVM (this machine's own KVM is too slow to boot Linux; DESIGN.md).
#
# The outer guest (QEMU -accel tcg -cpu max, Debian's cloud kernel) loads irqbypass, kvm and
# kvm-amd, starts strata's vhost-user-blk daemon on a 64 MiB file in its RAM and runs vmm-mini
# with the same kernel and an inner busybox initramfs. The inner guest loads the virtio-mmio
# stack, writes a pattern to /dev/vda with O_DIRECT, reads it back, compares, and powers off
# (ACPI S5). Then the ELF vmlinux extracted from the same bzImage boots through its PVH entry,
# runs the same check and resets (vmm-mini must exit 3), and a third run loses its daemon
# (kill -9) while the guest reads (vmm-mini must exit 4 naming the socket); a fourth, with
# `reconnect=100`, has two writers verifying their data while the daemon is killed and started
# again twice (vmm-mini must reconnect twice, the guest pass and power off). The inner guest
# prints its boot_params' type_of_loader: 0xff is vmm-mini's zero page (64-bit boot protocol),
# 0xb0 the one Linux builds itself at its PVH entry. The outer guest prints every exit status;
# this script exits 0 only if all of them are as expected and the first daemon exited 0 after
# SIGTERM.
#
# Usage: vmm-mini/scripts/nested-linux.sh [TARGET_DIR]
#   TARGET_DIR holds debug/vmm-mini and debug/vhost-user-blk (default: $CARGO_TARGET_DIR or
#   target); guest artifacts come from $GUEST_ARTIFACTS (default: target/guest-artifacts of the
#   repository, fetched by strata-guest's GuestArtifacts::ensure). VMM_MINI, VHOST_USER_BLK,
#   KERNEL (the bzImage), MODULES (its lib/modules/RELEASE) and BUSYBOX name the pieces
#   directly instead (tests/tests/nested.rs does). OUTER_CMDLINE and
#   INNER_CMDLINE replace "quiet" on the two kernels' command lines (e.g. loglevel=7);
#   NUM_QUEUES (default 2) sets the disk's queues on both the daemon and vmm-mini.
#   INNER_TIMEOUT (default 300) and OUTER_TIMEOUT (default 1200) bound each inner boot (in the
#   outer guest's seconds) and the whole QEMU run; on this loaded 2-core machine one inner boot
#   took from 10 s to over 2 minutes.
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${1:-${CARGO_TARGET_DIR:-$repo/target}}
art=${GUEST_ARTIFACTS:-$repo/target/guest-artifacts}
vmm=${VMM_MINI:-$target/debug/vmm-mini}
daemon=${VHOST_USER_BLK:-$target/debug/vhost-user-blk}
kdir=$(ls -d "$art"/linux-image-*-cloud-amd64_* 2>/dev/null | head -n1)
kernel=${KERNEL:-$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | head -n1)}
mods=${MODULES:-$(ls -d "$kdir"/lib/modules/* 2>/dev/null | head -n1)}/kernel
busybox=${BUSYBOX:-$(ls "$art"/busybox-static_*/bin/busybox 2>/dev/null | head -n1)}
for f in "$vmm" "$daemon" "$kernel" "$mods" "$busybox"; do
    [ -e "$f" ] || { echo "SKIPPED: missing $f" >&2; exit 77; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: qemu-system-x86_64 missing" >&2; exit 77; }
command -v lz4 >/dev/null || { echo "SKIPPED: lz4 missing (needed to extract vmlinux)" >&2; exit 77; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A directory tree with busybox and the given modules: $1 = root, rest = module paths.
populate() {
    root=$1; shift
    mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp" "$root/lib/modules"
    cp "$busybox" "$root/bin/busybox"
    for m in "$@"; do cp "$mods/$m" "$root/lib/modules/"; done
}

# Copies a dynamically linked binary and its libraries into $1.
copy_binary() {
    root=$1; bin=$2
    strip -o "$root/bin/$(basename "$bin")" "$bin"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

cpio_of() { (cd "$1" && find . | cpio -o -H newc --quiet) > "$2"; }

# The inner guest: virtio-mmio disk check.
inner=$work/inner
populate "$inner" drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_mmio.ko \
    drivers/block/virtio_blk.ko
cat > "$inner/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /lib/modules/$m.ko; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
result=FAIL
if [ -b /dev/vda ]; then
    echo "INNER: loader 0x$(dd if=/sys/kernel/boot_params/data bs=1 skip=528 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')"
    echo "INNER: $(grep -c ^processor /proc/cpuinfo) cpus"
    echo "INNER: /dev/vda $(cat /sys/block/vda/size) sectors, serial $(cat /sys/block/vda/serial 2>/dev/null)," \
        "$(ls /sys/block/vda/mq | wc -l) queues"
    i=0; while [ $i -lt 256 ]; do echo "strata nested pattern line $i"; i=$((i + 1)); done > /tmp/pattern
    dd if=/dev/zero bs=4096 count=4 2>/dev/null >> /tmp/pattern
    head -c 8192 /tmp/pattern > /tmp/want
    dd if=/tmp/want of=/dev/vda bs=4096 count=2 oflag=direct 2>/dev/null &&
        dd if=/dev/vda of=/tmp/got bs=4096 count=2 iflag=direct 2>/dev/null &&
        cmp /tmp/want /tmp/got && result=PASS
fi
echo "INNER: $result"
case "$(cat /proc/cmdline)" in
*inner.mode=reboot*) echo "INNER: rebooting"; reboot -f ;;
*inner.mode=wait*)
    echo "INNER: waiting"
    while true; do dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; sleep 0.2; done ;;
*inner.mode=rwloop*)
    # Two writers, each on its own 1 MiB, write 64 KiB with their round in it, read it back and
    # compare, 30 rounds, while the outer guest kills and restarts the daemon.
    rw() {
        r=1
        while [ $r -le 30 ]; do
            yes "writer $1 round $r" | head -c 65536 > /tmp/w$1
            seek=$(( $1 * 16 + r % 16 ))
            dd if=/tmp/w$1 of=/dev/vda bs=65536 seek=$seek count=1 oflag=direct 2>/dev/null &&
                dd if=/dev/vda of=/tmp/r$1 bs=65536 skip=$seek count=1 iflag=direct 2>/dev/null &&
                cmp -s /tmp/w$1 /tmp/r$1 || { echo "INNER: writer $1 round $r FAILED"; return 1; }
            echo "INNER: writer $1 round $r done"
            r=$((r + 1))
        done
        touch /tmp/ok$1
    }
    echo "INNER: looping"
    rw 1 & rw 2 & wait
    if [ -e /tmp/ok1 ] && [ -e /tmp/ok2 ] && ! dmesg | grep -qi "i/o error"; then
        echo "INNER: RW PASS"
    else
        echo "INNER: RW FAIL"; dmesg | tail -n 20
    fi ;;
esac
poweroff -f
INIT
chmod +x "$inner/init"

# The outer guest: KVM, the daemon, vmm-mini.
outer=$work/outer
populate "$outer" virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko
copy_binary "$outer" "$vmm"
copy_binary "$outer" "$daemon"
cp "$kernel" "$outer/vmlinuz"
"$repo/vmm-mini/scripts/extract-vmlinux.sh" "$kernel" > "$outer/vmlinux"
cpio_of "$inner" "$outer/inner.cpio"
cat > "$outer/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd; do insmod /lib/modules/$m.ko || echo "OUTER: insmod $m failed"; done
truncate -s 64M /tmp/disk.img
/bin/vhost-user-blk --disk socket=/tmp/d.sock,format=raw,path=/tmp/disk.img,serial=nested,num-queues=@QUEUES@ \
    2>/tmp/daemon.log &
daemon=$!
for i in $(seq 1 50); do [ -S /tmp/d.sock ] && break; sleep 0.1; done
start=$(date +%s)
timeout @INNER_TIMEOUT@ /bin/vmm-mini --kernel /vmlinuz --initrd /inner.cpio --memory 256M --cpus 2 \
    --cmdline "@INNER_CMDLINE@" --disk socket=/tmp/d.sock,num-queues=@QUEUES@
echo "OUTER: vmm-mini exit $? after $(( $(date +%s) - start )) s"
# The ELF vmlinux through its PVH entry, 2 vCPUs; its reset ends vmm-mini with 3.
start=$(date +%s)
timeout @INNER_TIMEOUT@ /bin/vmm-mini --kernel /vmlinux --initrd /inner.cpio --memory 256M --cpus 2 \
    --cmdline "@INNER_CMDLINE@ inner.mode=reboot" --disk socket=/tmp/d.sock > /tmp/reboot.log 2>&1
echo "OUTER: pvh reboot run: vmm-mini exit $? after $(( $(date +%s) - start )) s"
grep -v '^$' /tmp/reboot.log | sed 's/^/OUTER: pvh reboot run: /' | tail -n 25
kill $daemon; wait $daemon
echo "OUTER: daemon exit $?"
# A backend that dies under a running guest ends vmm-mini with 4 and names the socket.
/bin/vhost-user-blk --disk socket=/tmp/e.sock,format=raw,path=/tmp/disk.img 2>/tmp/daemon2.log &
daemon=$!
for i in $(seq 1 50); do [ -S /tmp/e.sock ] && break; sleep 0.1; done
/bin/vmm-mini --kernel /vmlinuz --initrd /inner.cpio --memory 256M \
    --cmdline "@INNER_CMDLINE@ inner.mode=wait" --disk socket=/tmp/e.sock > /tmp/wait.log 2>/tmp/wait.err &
vmm=$!
for i in $(seq 1 1200); do grep -q "INNER: waiting" /tmp/wait.log && break; sleep 0.1; done
kill -9 $daemon
wait $vmm
echo "OUTER: lost-backend run: vmm-mini exit $?: $(cat /tmp/wait.err)"
sed 's/^/OUTER: lost-backend run: /' /tmp/wait.log | tail -n 5
# 4. The same kill, twice, under a guest that writes and verifies, with reconnect=100: the daemon
# comes back on the same socket and vmm-mini hands it the rings and the in-flight region.
serve_r() {
    /bin/vhost-user-blk --disk socket=/tmp/r.sock,format=raw,path=/tmp/disk.img,num-queues=@QUEUES@ 2>>/tmp/daemon3.log &
    daemon=$!
    for i in $(seq 1 50); do [ -S /tmp/r.sock ] && break; sleep 0.1; done
}
serve_r
/bin/vmm-mini --kernel /vmlinuz --initrd /inner.cpio --memory 256M --cpus 2 \
    --cmdline "@INNER_CMDLINE@ inner.mode=rwloop" --disk socket=/tmp/r.sock,num-queues=@QUEUES@,reconnect=100 \
    > /tmp/rw.log 2>/tmp/rw.err &
vmm=$!
for round in 5 15; do
    for i in $(seq 1 3000); do
        grep -q "writer 1 round $round done" /tmp/rw.log && break
        kill -0 $vmm 2>/dev/null || break
        sleep 0.1
    done
    kill -9 $daemon; wait $daemon
    sleep 1
    serve_r
done
timeout @INNER_TIMEOUT@ sh -c "while kill -0 $vmm 2>/dev/null; do sleep 1; done"
wait $vmm
echo "OUTER: reconnect run: vmm-mini exit $?"
echo "OUTER: reconnect run: $(grep -c 'reconnected to' /tmp/rw.err) reconnects"
grep -e "INNER: RW" -e "FAILED" /tmp/rw.log | sed 's/^/OUTER: reconnect run: /'
sed 's/^/OUTER: reconnect run: /' /tmp/rw.err | tail -n 6
kill $daemon; wait $daemon
poweroff -f
INIT
sed -i -e "s|@INNER_CMDLINE@|console=ttyS0 panic=-1 ${INNER_CMDLINE:-quiet}|" -e "s|@QUEUES@|${NUM_QUEUES:-2}|g" \
    -e "s|@INNER_TIMEOUT@|${INNER_TIMEOUT:-300}|g" "$outer/init"
chmod +x "$outer/init"
cpio_of "$outer" "$work/outer.cpio"

log=$work/console.log
timeout "${OUTER_TIMEOUT:-1200}" qemu-system-x86_64 -accel tcg -cpu max -m 2G -smp 1 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$work/outer.cpio" -append "console=ttyS0 panic=-1 ${OUTER_CMDLINE:-quiet}" </dev/null | tee "$log"
grep -q "^INNER: PASS" "$log" && grep -q "^INNER: loader 0xff" "$log" && grep -q "OUTER: vmm-mini exit 0 " "$log" &&
    grep -q "OUTER: daemon exit 0" "$log" &&
    grep -q "OUTER: pvh reboot run: vmm-mini exit 3 " "$log" && grep -q "OUTER: pvh reboot run: INNER: PASS" "$log" &&
    grep -q "OUTER: pvh reboot run: INNER: loader 0xb0" "$log" && grep -q "OUTER: pvh reboot run: INNER: 2 cpus" "$log" &&
    grep -q "^INNER: 2 cpus" "$log" &&
    grep -q "OUTER: lost-backend run: vmm-mini exit 4: vmm-mini: vhost-user backend /tmp/e.sock went away" "$log" &&
    grep -q "OUTER: reconnect run: vmm-mini exit 0" "$log" && grep -q "OUTER: reconnect run: 2 reconnects" "$log" &&
    grep -q "OUTER: reconnect run: INNER: RW PASS" "$log" && ! grep -q "OUTER: reconnect run: .*FAILED" "$log"
