#!/usr/bin/env bash
# Build the Debian test guest: Debian bookworm (systemd, qemu-guest-agent,
# systemd-networkd with DHCP, OpenSSH) on an ext4 root filesystem in a qcow2
# image, with its kernel and initramfs beside it for a direct kernel boot.
# What is in it and how to boot it: tests/guest/debian/README.md.
#
# Inputs: this script, tests/guest/debian/rootfs/ (files copied over the
#   installed system), guest/vmfork-guest/ (the clone customisation tool,
#   built here with gcc -static, and its unit), the package list below,
#   and the Debian archive as it
#   was when the snapshot was taken (the Date of each suite's InRelease file,
#   read through a private apt setup on the first run, then kept; --refresh
#   reads it again).
# Outputs (in $VMFORK_BUILD/guest/debian, default build/guest/debian):
#   debian.qcow2         ext4 root filesystem, no partition table (/dev/vda)
#   vmlinuz, initrd.img  the image's own kernel and initramfs
#   vmlinux              the ELF inside vmlinuz, with the PVH entry note:
#                        the same kernel, booted without its decompression
#                        (2-3 s less under TCG)
#   id_ed25519[.pub]     the test key pair that root's authorized_keys holds
#   packages.txt         installed packages and versions
#   cmdline              the kernel command line to boot with
#   key                  the cache key these files were built for (touched
#                        on every successful run: the make target)
# The build is cached under $VMFORK_CACHE/guest-debian/<key>/ (the newest
# two builds are kept); with the same key a run only copies the files.
# Needs root (mmdebstrap in root mode, mkfs.ext4 -d keeps owners); installs
# mmdebstrap, openssh-client, gcc and libc6-dev if missing.  No loop mounts.
# Options: --refresh   read the archive's state again (a new key if it moved)
#          --force     rebuild even when the cache has this key
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

usage() { echo "usage: $0 [--refresh] [--force]"; }
parse_build_options "$@"

SUITE=bookworm
APT_SOURCES="deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-updates main"
# On top of mmdebstrap's minbase variant (no Recommends).
PACKAGES=(systemd systemd-sysv udev dbus qemu-guest-agent openssh-server
          linux-image-amd64 initramfs-tools kmod iproute2 e2fsprogs procps)
# What dpkg leaves out (man pages, translations, kernel modules for hardware
# a VM does not have) is in tests/guest/debian/rootfs/etc/dpkg/dpkg.cfg.d.
# Timers that would wake every clone for housekeeping or the network.
# e2scrub_reap.service (2-3 s at boot under TCG) only cleans up after
# e2scrub on LVM, which this image does not have.
MASK_UNITS=(apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
            e2scrub_reap.service)
IMAGE_SIZE=2G
FS_LABEL=vmfork-root
CMDLINE="root=/dev/vda console=ttyS0 quiet"

# Not root: no image, and test-debian skips saying why (make goes on)
if [ "$(id -u)" != 0 ]; then
    log "skipped: needs root (mmdebstrap's root mode, and mkfs.ext4 -d" \
        "keeps the owners of the files it copies); the Debian guest's tests" \
        "will skip"
    exit 0
fi
overlay="$VMFORK_TOP/tests/guest/debian/rootfs"
cache="$VMFORK_CACHE/guest-debian"
out="$VMFORK_BUILD/guest/debian"
mkdir -p "$cache" "$out"

# One build at a time per cache (two makes, or make -j).
exec 9>"$cache/lock"
flock 9

# quiet CMD...: run CMD, show its output only when it fails.
quiet() { local o; o=$("$@" 2>&1) || { printf '%s\n' "$o" >&2; return 1; }; }
# remove_tree DIR...: rm -rf, but first unmount what a killed mmdebstrap
# may have left mounted in its chroot (/dev/pts, /proc, /sys), and never
# go through a mount.
remove_tree() {
    local d m
    for d in "$@"; do
        [ -e "$d" ] || continue
        for m in $(findmnt -rn -o TARGET | grep -F "$d/" | sort -r); do
            log "unmounting $m (left by an interrupted build)"
            umount "$m" || umount -l "$m" || true
        done
        if findmnt -rn -o TARGET | grep -qF "$d/"; then
            echo "build-guest-debian: cannot unmount what is mounted under $d" >&2
            return 1
        fi
        rm -rf --one-file-system "$d"
    done
}
hms() { local s=$1; printf '%dm%02ds' $((s / 60)) $((s % 60)); }
mib() { echo "$(( ($1 + 524288) / 1048576 )) MiB"; }

# ---- 0. Host tools -------------------------------------------------------
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (bookworm)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
qemu_img="$VMFORK_BUILD/qemu/qemu-img"
[ -x "$qemu_img" ] || qemu_img=$(command -v qemu-img) ||
    { echo "build-guest-debian: no qemu-img: build QEMU first (make qemu)" >&2; exit 1; }

# ---- 1. The archive snapshot and the cache key ---------------------------
lists="$VMFORK_CACHE/apt-guest-debian/lists"
[ $refresh = 1 ] && rm -rf "$lists"
# (updates the private lists only when they are missing)
kpkg=$(private_apt guest-debian "$APT_SOURCES" --print-uris download linux-image-amd64 |
       awk '{print $2}')
snapshot=$(for f in "$lists"/*_InRelease; do
               printf '%s %s\n' "$(basename "$f" _InRelease)" "$(sed -n 's/^Date: //p' "$f")"
           done | LC_ALL=C sort)
[ -n "$snapshot" ] || { echo "build-guest-debian: no InRelease files in $lists" >&2; exit 1; }
log "archive snapshot (--refresh reads it again):"
sed 's/^/    /' <<<"$snapshot" >&2
overlay_sum=$(cd "$overlay" && find . -type f -o -type l | LC_ALL=C sort |
              while read -r f; do stat -c '%n %a' "$f"; sha256sum < "$f"; done | sha256sum)
# The guest tool (guest/vmfork-guest/: its source, systemd unit and
# README), built here with the host's gcc, statically (the guest is
# bookworm too).
tool="$VMFORK_TOP/guest/vmfork-guest"
tool_sum=$(cat "$tool/vmfork-guest.c" "$tool/vmfork-guest.service" "$tool/README.md" | sha256sum)
key=$( { cat "$0"; echo "$SUITE ${PACKAGES[*]}"; echo "$APT_SOURCES"; echo "$snapshot";
         echo "$overlay_sum"; echo "$tool_sum"; gcc --version | head -1;
         mmdebstrap --version; } | sha256sum | cut -c1-16)
dir="$cache/$key"
FILES=(debian.qcow2 vmlinuz vmlinux initrd.img id_ed25519 id_ed25519.pub packages.txt cmdline)

# ---- 2. Build into the cache (skipped when it has this key) --------------
if [ $force = 1 ] || [ ! -f "$dir/.complete" ]; then
    t0=$SECONDS
    log "building the Debian $SUITE guest (key $key, linux-image-amd64 ${kpkg:-?})"
    remove_tree "$dir" "$cache"/tmp.*
    work=$(mktemp -d "$cache/tmp.XXXXXX")
    trap 'remove_tree "$work"' EXIT
    root="$work/rootfs"

    ssh-keygen -q -t ed25519 -N '' -C "vmfork-test-key-$key" -f "$work/id_ed25519"

    # The essential hook (after the essential packages, before the rest)
    # copies in the dpkg excludes and the initramfs settings, which must be
    # there before the kernel's postinst runs update-initramfs.  (mmdebstrap's
    # --dpkgopt=path-exclude would also delete the excluded files of the
    # essential packages, directories that dpkg then fails to unpack into.)
    # The customize hook reports the download size before mmdebstrap's
    # cleanup deletes the .debs.
    log "mmdebstrap: downloading and installing ${#PACKAGES[@]} packages and their dependencies"
    ts=$SECONDS
    if ! mmdebstrap --mode=root --variant=minbase --format=directory \
        --aptopt='APT::Install-Recommends "false"' \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --essential-hook="cp -rT --preserve=mode '$overlay/etc/dpkg' \"\$1/etc/dpkg\"" \
        --essential-hook="cp -rT --preserve=mode '$overlay/etc/initramfs-tools' \"\$1/etc/initramfs-tools\"" \
        --customize-hook='echo "I: downloaded $(du -sm "$1/var/cache/apt/archives" | cut -f1) MiB of packages"' \
        "$SUITE" "$root" - <<<"$APT_SOURCES" 2>&1 |
        # (the filter ignores ^C, so that mmdebstrap gets to clean up)
        ( trap '' INT
          tee "$cache/mmdebstrap.log" |
          while IFS= read -r line; do
              case "$line" in
                  I:*|W:*|E:*) printf '    [%s] %s\n' "$(hms $((SECONDS - ts)))" "$line" >&2 ;;
              esac
          done ); then
        tail -n 30 "$cache/mmdebstrap.log" >&2
        echo "build-guest-debian: mmdebstrap failed (whole log: $cache/mmdebstrap.log)" >&2
        exit 1
    fi
    log "installed: $(du -sm --apparent-size "$root" | cut -f1) MiB in $(hms $((SECONDS - ts)))"

    # ---- configure: files, units, credentials ----
    cp -rT --preserve=mode "$overlay" "$root"
    quiet systemctl --root="$root" enable systemd-networkd.service
    quiet systemctl --root="$root" mask "${MASK_UNITS[@]}"
    quiet passwd --root "$root" -d root          # serial console: root, no password
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    # vmfork-guest: customises a clone (hostname, machine-id, DHCP, clock,
    # the drop-ins of /etc/vmfork/clone.d/)
    gcc -static -O2 -Wall -o "$work/vmfork-guest" "$tool/vmfork-guest.c"
    install -m 755 "$work/vmfork-guest" "$root/usr/sbin/vmfork-guest"
    rm -f "$work/vmfork-guest"
    install -m 644 "$tool/vmfork-guest.service" "$root/etc/systemd/system/vmfork-guest.service"
    install -D -m 644 "$tool/README.md" "$root/usr/share/doc/vmfork-guest/README.md"
    install -d -m 755 "$root/etc/vmfork/clone.d"
    quiet systemctl --root="$root" enable vmfork-guest.service
    : > "$root/etc/machine-id"                           # a new one on each first boot
    rm -f "$root/var/lib/dbus/machine-id"

    # ---- kernel and initramfs, as installed ----
    kvers=("$root"/lib/modules/*)
    [ ${#kvers[@]} = 1 ] || { echo "build-guest-debian: expected one kernel, got: ${kvers[*]}" >&2; exit 1; }
    uname_r=$(basename "${kvers[0]}")
    for f in "vmlinuz-$uname_r" "initrd.img-$uname_r"; do
        [ -f "$root/boot/$f" ] || { echo "build-guest-debian: /boot/$f missing in the image" >&2; exit 1; }
    done
    cp "$root/boot/vmlinuz-$uname_r" "$work/vmlinuz"
    cp "$root/boot/initrd.img-$uname_r" "$work/initrd.img"
    extract_vmlinux "$work/vmlinuz" "$work/vmlinux"
    echo "$CMDLINE" > "$work/cmdline"
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package} ${Version}\n' > "$work/packages.txt"
    log "kernel $uname_r: vmlinuz $(mib "$(stat -c %s "$work/vmlinuz")"), vmlinux" \
        "$(mib "$(stat -c %s "$work/vmlinux")"), initrd.img" \
        "$(mib "$(stat -c %s "$work/initrd.img")"); $(wc -l < "$work/packages.txt") packages"

    # ---- ext4 from the directory, then qcow2 ----
    ts=$SECONDS
    log "mkfs.ext4 -d: $IMAGE_SIZE filesystem from the tree"
    truncate -s "$IMAGE_SIZE" "$work/root.raw"
    # The filesystem UUID follows the key: the same inputs give the same id.
    uuid=$(echo "$key" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
    mkfs.ext4 -q -F -L "$FS_LABEL" -U "$uuid" -m 0 -d "$root" "$work/root.raw"
    log "mkfs.ext4: $(mib $(( $(stat -c %b "$work/root.raw") * 512 ))) used in $(hms $((SECONDS - ts)))"
    remove_tree "$root"
    ts=$SECONDS
    log "qemu-img convert -O qcow2"
    "$qemu_img" convert -O qcow2 "$work/root.raw" "$work/debian.qcow2"
    rm -f "$work/root.raw"
    log "debian.qcow2: $IMAGE_SIZE virtual, $(mib "$(stat -c %s "$work/debian.qcow2")") on disk," \
        "in $(hms $((SECONDS - ts)))"

    echo "$key" > "$work/key"
    touch "$work/.complete"
    mv "$work" "$dir"
    trap - EXIT
    # Keep this build and the one before it.
    ls -1dt "$cache"/*/ | tail -n +3 | while read -r old; do
        [ -f "$old/.complete" ] && [ "${old%/}" != "$dir" ] && { log "removing old build $(basename "$old")"; rm -rf "$old"; }
    done
    log "built in $(hms $((SECONDS - t0)))"
else
    touch "$dir"
fi

# ---- 3. Copy into the build directory ------------------------------------
# same_files: the build directory holds this build's files, unchanged
# (same sizes and times: they are copied with cp -p).
same_files() {
    local f
    [ "$(cat "$out/key" 2>/dev/null)" = "$key" ] || return 1
    for f in "${FILES[@]}"; do
        [ -f "$out/$f" ] && [ "$(stat -c '%s %Y' "$dir/$f")" = "$(stat -c '%s %Y' "$out/$f")" ] || return 1
    done
}
if same_files; then
    log "up to date: $out (key $key)"
else
    rm -f "$out/key"
    for f in "${FILES[@]}"; do
        cp -p --reflink=auto "$dir/$f" "$out/$f.tmp"
        mv "$out/$f.tmp" "$out/$f"
    done
    cp "$dir/key" "$out/key"
    log "copied to $out (key $key)"
fi
# For make: key is the target that stands for all the files; it is now
# current even when nothing was copied.
touch "$out/key"
