#!/bin/sh
# extract-vmlinux.sh: write the ELF vmlinux inside a bzImage to stdout, as Linux's
# scripts/extract-vmlinux does: find the compressed payload by its magic bytes, decompress it
# from there, and keep the first result that is an ELF file.
#
# Usage: vmm-mini/scripts/extract-vmlinux.sh BZIMAGE > vmlinux
# Needs the decompressor of the kernel's compression: lz4 (Debian's cloud kernel), xz, zstd,
# gzip, bzip2 or lzop. The vmlinux has the PVH entry note if the kernel has CONFIG_PVH
# (`readelf -n vmlinux` lists a Xen note of type 0x12, XEN_ELFNOTE_PHYS32_ENTRY).
set -eu

img=${1:?usage: extract-vmlinux.sh BZIMAGE}
[ -r "$img" ] || { echo "extract-vmlinux.sh: cannot read $img" >&2; exit 2; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = "177ELF" ]; }

# try MAGIC(octal escapes for printf) GREP_PATTERN DECOMPRESSOR...
try() {
    magic=$1; shift
    # Byte offsets of every occurrence of the magic, as grep sees them in binary mode.
    for pos in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1); do
        tail -c +$((pos + 1)) "$img" | "$@" > "$tmp" 2>/dev/null || true
        if is_elf "$tmp"; then
            cat "$tmp"
            exit 0
        fi
    done
}

try '\x02\x21\x4c\x18' lz4 -dc
try '\xfd\x37\x7a\x58\x5a\x00' xz -dc
try '\x28\xb5\x2f\xfd' zstd -dc
try '\x1f\x8b\x08' gzip -dc
try 'BZh' bzip2 -dc
try '\x89\x4c\x5a' lzop -dc
echo "extract-vmlinux.sh: no compressed ELF kernel found in $img" >&2
exit 1
