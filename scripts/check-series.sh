#!/usr/bin/env bash
# Check that every patch of qemu-patches/series applies in order, builds
# on its own (qemu-system-x86_64 and the tools, with -Werror) and passes
# QEMU's scripts/checkpatch.pl.  Works in a scratch tree under the cache
# (ccache makes the builds after the first one incremental); slow: run it
# before mailing or merging a series change, not in make check.
# Usage: check-series.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ $# -eq 0 ] || { echo "usage: $0" >&2; exit 2; }
tarball=$("$here/fetch-qemu.sh")
work="$VMFORK_CACHE/check-series"
rm -rf "$work" && mkdir -p "$work/src" "$work/build"
git_w() { git -C "$work/src" -c user.name=vmfork -c user.email=vmfork@localhost "$@"; }

log "unpacking QEMU $QEMU_VERSION into $work/src"
tar -xJf "$tarball" -C "$work/src" --strip-components=1
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$work/src/meson.build"
git_w init -q && git_w add -A -f && git_w commit -q -m base
export PATH="/usr/lib/ccache:$PATH"
(cd "$work/build" && "$work/src/configure" --python=/usr/bin/python3 \
    "${QEMU_CONFIGURE_FLAGS[@]}" --enable-werror) > "$work/configure.log" 2>&1 ||
    { tail -20 "$work/configure.log" >&2; exit 1; }

n=0
total=$(grep -cv '^\s*\(#\|$\)' "$VMFORK_TOP/qemu-patches/series")
while read -r patch; do
    case "$patch" in ""|\#*) continue ;; esac
    n=$((n + 1))
    log "[$n/$total] $patch"
    git_w am -q "$VMFORK_TOP/qemu-patches/$patch"
    perl "$work/src/scripts/checkpatch.pl" --no-tree --terse -q \
        "$VMFORK_TOP/qemu-patches/$patch" || { echo "check-series: checkpatch failed on $patch" >&2; exit 1; }
    if [ "$n" = "$total" ]; then
        # The last patch wires in the subsystem: it builds with plugin/
        mkdir -p "$work/src/system/vmfork"
        cp -a "$VMFORK_TOP/plugin/." "$work/src/system/vmfork/"
    fi
    # The emulator, and tools that link util/ without the block layer or
    # with it (qemu-pr-helper needs stubs/ for what util/ calls there)
    ninja -C "$work/build" qemu-system-x86_64 qemu-img qemu-io qemu-nbd \
        qemu-pr-helper 2>&1 | ninja_progress ||
        { echo "check-series: $patch does not build" >&2; exit 1; }
done < "$VMFORK_TOP/qemu-patches/series"
log "all $total patches apply, build with -Werror and pass checkpatch"
rm -rf "$work"
