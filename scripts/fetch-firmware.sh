#!/usr/bin/env bash
# Unpack the x86 firmware QEMU needs (not in the DFSG tarball) from Debian's
# packages, without installing them: SeaBIOS + VGA BIOS (seabios), the
# option ROMs kvmvapic/linuxboot_dma/pvh/multiboot_dma (qemu-system-data
# from bookworm-backports) and the NIC ROMs (ipxe-qemu).
# Usage: fetch-firmware.sh DESTDIR   (DESTDIR receives the flat *.bin/*.rom set)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 DESTDIR" >&2; exit 2; }
dest=$1
fw="$VMFORK_CACHE/firmware"

if [ ! -f "$fw/.complete" ]; then
    log "downloading firmware packages: seabios qemu-system-data ipxe-qemu"
    rm -rf "$fw" && mkdir -p "$fw/debs" "$fw/root"
    (cd "$fw/debs" && private_apt bookworm-bin \
        "deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-backports main" \
        download seabios qemu-system-data/bookworm-backports ipxe-qemu >&2)
    for deb in "$fw"/debs/*.deb; do
        dpkg-deb -x "$deb" "$fw/root"
    done
    mkdir -p "$fw/flat"
    # qemu-system-data links to files of the other two packages: resolve
    # every link inside the unpacked root, keep files only.
    for f in "$fw"/root/usr/share/qemu/*.bin "$fw"/root/usr/share/qemu/*.rom \
             "$fw"/root/usr/share/seabios/*.bin "$fw"/root/usr/lib/ipxe/qemu/*.rom; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        t=$f
        while [ -L "$t" ]; do
            l=$(readlink "$t")
            case "$l" in /*) t="$fw/root$l" ;; *) t="$(dirname "$t")/$l" ;; esac
        done
        [ -f "$t" ] && cp "$t" "$fw/flat/$(basename "$f")"
    done
    for need in bios-256k.bin vgabios-stdvga.bin kvmvapic.bin linuxboot_dma.bin pvh.bin multiboot_dma.bin efi-virtio.rom; do
        [ -f "$fw/flat/$need" ] || { echo "fetch-firmware: $need missing from the packages" >&2; exit 1; }
    done
    touch "$fw/.complete"
fi
mkdir -p "$dest"
cp -u "$fw"/flat/* "$dest/"
