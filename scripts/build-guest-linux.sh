#!/usr/bin/env bash
# Build the Linux test guest: Debian bookworm's kernel as an uncompressed
# PVH vmlinux, and a busybox initramfs with the virtio/fw_cfg modules and
# the vmfork agent (protocol: tests/guest/README.md).
#
# Inputs: tests/guest/linux/init, tests/guest/agent/agent.c, this script,
#   and (downloaded once into $VMFORK_CACHE/guest-kernel) the .debs of
#   bookworm's current linux-image-6.1.0-*-amd64 and busybox-static.
# Outputs: $VMFORK_BUILD/guest/linux/vmlinux, .../initramfs.img
#   (default build/guest/linux/), plus .../agent (the static agent).
# Options: --refresh   re-resolve the kernel that linux-image-amd64 depends
#                      on now (otherwise the cached choice is kept);
#          --force     rebuild everything.
# Each step is skipped when its outputs are newer than its inputs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

usage() { echo "usage: $0 [--refresh] [--force]"; }
parse_build_options "$@"

# Loaded by /init with insmod, in this order after dependencies are added.
BOOT_MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
              virtio_blk failover net_failover virtio_net virtio_console qemu_fw_cfg"
# Shipped too, not loaded ("sh modprobe ext4" mounts an ext2/3/4 disk;
# the tests load the SCSI disk and NIC drivers they need).
EXTRA_MODULES="ext4 virtio_scsi sd_mod ahci e1000 e1000e 8139cp virtio-gpu"
# Dependencies that modinfo's depends= does not show (ext4 needs the crc32c
# crypto driver, which the kernel would ask a full modprobe for).
SOFTDEPS="ext4:crc32c_generic"

APT_SOURCES="deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-updates main"

cache="$VMFORK_CACHE/guest-kernel"
out="$VMFORK_BUILD/guest/linux"
script="$here/build-guest-linux.sh"
mkdir -p "$cache/debs" "$out"

# newer_than OUT IN...: true when OUT exists and is newer than every IN.
newer_than() {
    local o=$1 i
    shift
    [ $force = 0 ] && [ -e "$o" ] || return 1
    for i in "$@"; do
        [ "$i" -nt "$o" ] && return 1
    done
    return 0
}

# apt-get download into $cache/debs; with stale package lists (a package
# superseded on the mirror) update them once and retry.
apt_download() {
    (cd "$cache/debs" && private_apt guest-kernel "$APT_SOURCES" download "$@" >&2) && return 0
    log "download failed, updating the package lists and retrying"
    rm -rf "$VMFORK_CACHE/apt-guest-kernel/lists"
    (cd "$cache/debs" && private_apt guest-kernel "$APT_SOURCES" download "$@" >&2)
}

# ---- 1. Resolve and download the kernel and busybox packages -----------
if [ $refresh = 1 ] || [ ! -f "$cache/current" ]; then
    [ $refresh = 1 ] && rm -rf "$VMFORK_CACHE/apt-guest-kernel/lists"
    log "resolving the kernel that bookworm's linux-image-amd64 depends on"
    rm -f "$cache"/debs/linux-image-amd64_*.deb
    apt_download linux-image-amd64
    meta=$(echo "$cache"/debs/linux-image-amd64_*.deb)
    dep=$(dpkg-deb -f "$meta" Depends)
    if [[ ! "$dep" =~ ^(linux-image-6\.1\.0-[0-9]+-amd64)\ \(=\ ([^\)]+)\)$ ]]; then
        echo "build-guest-linux: unexpected Depends of linux-image-amd64: $dep" >&2
        exit 1
    fi
    kpkg=${BASH_REMATCH[1]} kver=${BASH_REMATCH[2]}
    log "downloading $kpkg $kver and busybox-static (~71 MB, once)"
    apt_download "$kpkg=$kver" busybox-static
    kdeb="$cache/debs/${kpkg}_${kver//:/%3a}_amd64.deb"
    bdeb=
    for f in "$cache"/debs/busybox-static_*_amd64.deb; do     # the newest
        if [ -z "$bdeb" ] || [ "$f" -nt "$bdeb" ]; then bdeb=$f; fi
    done
    new="kernel_deb=$(basename "$kdeb")
busybox_deb=$(basename "$bdeb")"
    if [ "$(cat "$cache/current" 2>/dev/null)" != "$new" ]; then
        printf '%s\n' "$new" > "$cache/current"
    fi
fi
kdeb="$cache/debs/$(sed -n 's/^kernel_deb=//p' "$cache/current")"
bdeb="$cache/debs/$(sed -n 's/^busybox_deb=//p' "$cache/current")"
if [ ! -f "$kdeb" ] || [ ! -f "$bdeb" ]; then
    echo "build-guest-linux: $kdeb or $bdeb missing; run with --refresh" >&2
    exit 1
fi
kname=$(basename "$kdeb" .deb)
kdir="$cache/$kname"
log "kernel package: $(basename "$kdeb"), busybox: $(basename "$bdeb")"
for f in "$cache"/debs/*.deb "$cache"/linux-image-*; do       # superseded ones
    case "$f" in "$kdeb"|"$bdeb"|"$kdir"|*/linux-image-amd64_*) ;; *) rm -rf "$f" ;; esac
done

# ---- 2. Unpack vmlinuz, the modules we need, and busybox ---------------
mod_stamp="$BOOT_MODULES | $EXTRA_MODULES | $SOFTDEPS"
if [ $force = 1 ] || [ ! -f "$kdir/.complete" ] || [ "$(cat "$kdir/.complete")" != "$mod_stamp" ]; then
    log "unpacking $(basename "$kdeb") (400 MB, temporary)"
    rm -rf "$kdir" "$cache/unpack.tmp"
    mkdir -p "$cache/unpack.tmp" "$kdir/modules"
    dpkg-deb -x "$kdeb" "$cache/unpack.tmp"
    mods=$(ls -d "$cache"/unpack.tmp/lib/modules/*/kernel)
    uname_r=$(basename "$(dirname "$mods")")
    cp "$cache"/unpack.tmp/boot/vmlinuz-* "$kdir/vmlinuz"
    echo "$uname_r" > "$kdir/uname-r"

    # Dependency closure from each module's .modinfo "depends=" field,
    # emitted dependencies first.
    declare -A seen=() path=()
    while IFS= read -r f; do
        path[$(basename "$f" .ko)]=$f
    done < <(find "$mods" -name '*.ko')
    order=()
    visit() {
        local m=$1 d deps
        [ -n "${seen[$m]:-}" ] && return 0
        seen[$m]=1
        [ -n "${path[$m]:-}" ] || { echo "build-guest-linux: module $m not in the package" >&2; exit 1; }
        deps=$(objcopy -O binary --only-section=.modinfo "${path[$m]}" /dev/stdout |
               tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
        for d in $SOFTDEPS; do
            [ "${d%%:*}" = "$m" ] && deps="$deps ${d#*:}"
        done
        echo "$deps" > "$kdir/modules/$m.deps"
        for d in $deps; do visit "$d"; done
        order+=("$m")
    }
    for m in $BOOT_MODULES; do visit "$m"; done
    printf '%s\n' "${order[@]}" > "$kdir/boot-order"
    for m in $EXTRA_MODULES; do visit "$m"; done
    for m in "${!seen[@]}"; do
        cp "${path[$m]}" "$kdir/modules/$m.ko"
    done
    rm -rf "$cache/unpack.tmp"
    printf '%s\n' "$mod_stamp" > "$kdir/.complete"
fi
uname_r=$(cat "$kdir/uname-r")

if ! newer_than "$cache/busybox" "$bdeb"; then
    log "unpacking busybox from $(basename "$bdeb")"
    rm -rf "$cache/busybox.tmp"
    dpkg-deb -x "$bdeb" "$cache/busybox.tmp"
    cp "$cache/busybox.tmp/bin/busybox" "$cache/busybox"
    rm -rf "$cache/busybox.tmp"
fi

# ---- 3. vmlinux: the ELF inside the bzImage (has the PVH entry note) ---
if ! newer_than "$out/vmlinux" "$script" || [ "$(cat "$out/vmlinux.from" 2>/dev/null)" != "$kname" ]; then
    log "extracting vmlinux from the bzImage"
    extract_vmlinux "$kdir/vmlinuz" "$out/vmlinux.tmp" || exit 1
    size=$(stat -c %s "$out/vmlinux.tmp")
    mv "$out/vmlinux.tmp" "$out/vmlinux"
    echo "$kname" > "$out/vmlinux.from"
    log "vmlinux: $(( size / 1048576 )) MiB ELF with PVH entry"
fi

# ---- 4. The agent ------------------------------------------------------
agent_src="$VMFORK_TOP/tests/guest/agent/agent.c"
if ! newer_than "$out/agent" "$agent_src" "$script"; then
    log "compiling the agent"
    ${CC:-gcc} -static -O2 -s -Wall -Wextra -Werror -o "$out/agent.tmp" "$agent_src"
    mv "$out/agent.tmp" "$out/agent"
fi

# ---- 5. The initramfs --------------------------------------------------
init_src="$VMFORK_TOP/tests/guest/linux/init"
if ! newer_than "$out/initramfs.img" "$init_src" "$out/agent" "$kdir/.complete" \
        "$cache/busybox" "$script"; then
    log "assembling the initramfs"
    root="$out/initramfs.d"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,run,root} \
             "$root/lib/modules/$uname_r"
    chmod 1777 "$root/tmp"
    cp "$cache/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list-full); do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    cp "$out/agent" "$root/bin/agent"
    install -m 0755 "$init_src" "$root/init"
    mdir="$root/lib/modules/$uname_r"
    cp "$kdir"/modules/*.ko "$mdir/"
    cp "$kdir/boot-order" "$root/etc/vmfork-modules"
    # modules.dep for busybox modprobe: every module with its transitive
    # dependencies, in load order (busybox loads them right to left).
    closure() {
        local m=$1 d
        for d in $(<"$kdir/modules/$m.deps"); do
            closure "$d"
            echo "$d"
        done
    }
    for f in "$kdir"/modules/*.ko; do
        m=$(basename "$f" .ko)
        deps=$(closure "$m" | awk '!s[$0]++' | tac | sed 's/$/.ko/' | tr '\n' ' ')
        echo "$m.ko: ${deps% }"
    done > "$mdir/modules.dep"
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
    # Fixed owners, inode numbers and times: same inputs, same bytes.
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out/initramfs.img.tmp"
    mv "$out/initramfs.img.tmp" "$out/initramfs.img"
    log "initramfs: $(( $(stat -c %s "$out/initramfs.img") / 1024 )) KiB (uncompressed cpio)," \
        "modules: $(tr '\n' ' ' < "$root/etc/vmfork-modules")"
fi
# Both outputs are now current: mark them so, so that a make rule with
# both as (grouped) targets does not run this script again.
touch "$out/vmlinux" "$out/initramfs.img"
log "up to date: $out/vmlinux $out/initramfs.img"
