#!/usr/bin/env bash
# Build the patched QEMU: fetch the pinned release, apply qemu-patches/series,
# copy plugin/ into the tree, configure lean, build with progress, and put
# qemu-system-x86_64, qemu-img and the firmware under build/qemu/.
#
# The source and build trees live in the cache ($VMFORK_CACHE/qemu-VERSION),
# shared by every checkout; the series (patches + plugin/ + configure flags)
# is hashed into a key.  Unchanged key: nothing is rebuilt (seconds).
# Changed key: the tree is reset to the release, the series re-applied and
# ninja rebuilds only what changed (ccache when installed).
#
# --sanitize builds the same tree a second time, with AddressSanitizer and
# UndefinedBehaviorSanitizer, in its own build directory, into
# build/qemu-sanitize/ (make check-sanitize runs the vmfork tests on it).
#
# Usage: build-qemu.sh [--force] [--sanitize]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

force=0 flavour=
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --sanitize) flavour=-sanitize ;;
        *) echo "usage: $0 [--force] [--sanitize]" >&2; exit 2 ;;
    esac
done

CONFIGURE_FLAGS=("${QEMU_CONFIGURE_FLAGS[@]}" --disable-werror)
if [ -n "$flavour" ]; then
    CONFIGURE_FLAGS+=(--enable-asan --enable-ubsan)
fi

work="$VMFORK_CACHE/qemu-$QEMU_VERSION"
src="$work/src"
bld="$work/build$flavour"
out="$VMFORK_BUILD/qemu$flavour"

# The source tree depends on the series only; each build on its flags too.
tree_key() {
    {
        echo "$QEMU_SHA256"
        cd "$VMFORK_TOP"
        find qemu-patches plugin -type f | LC_ALL=C sort | xargs -r sha256sum
    } | sha256sum | cut -c1-16
}
tkey=$(tree_key)
key=$(echo "$tkey ${CONFIGURE_FLAGS[*]}" | sha256sum | cut -c1-16)

if [ "$force" = 0 ] && [ -f "$out/.key" ] && [ "$(cat "$out/.key")" = "$key" ] &&
   [ -x "$out/qemu-system-x86_64" ] && [ -x "$out/qemu-img" ]; then
    log "up to date (QEMU $QEMU_VERSION, series key $key)"
    exit 0
fi

git_q() { git -C "$src" -c user.name=vmfork -c user.email=vmfork@localhost -c advice.detachedHead=false "$@"; }

# 1. A pristine release tree, committed once as the 'upstream' tag.
if ! git_q rev-parse -q --verify upstream >/dev/null 2>&1; then
    tarball=$("$here/fetch-qemu.sh")
    log "unpacking $(basename "$tarball")"
    rm -rf "$src" "$bld" && mkdir -p "$src"
    tar -xJf "$tarball" -C "$src" --strip-components=1
    # DFSG tarball fixup (as Debian's skip-unpack-edk2-blobs): the edk2
    # blobs are not in it, so never try to unpack them.
    sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$src/meson.build"
    grep -q '^    unpack_edk2_blobs = false$' "$src/meson.build"
    git_q init -q
    git_q add -A -f   # -f: the release ships subprojects that .gitignore names
    git_q commit -q -m "QEMU $QEMU_VERSION release (DFSG tarball, edk2 unpack disabled)"
    git_q tag upstream
fi

# 2. The series on top: reset only rewrites files that differ, so ninja
#    rebuilds what the series touches, not the world.
if [ "$force" = 1 ] || [ "$(cat "$work/applied.key" 2>/dev/null)" != "$tkey" ]; then
    log "applying qemu-patches/series and plugin/ (key $tkey)"
    rm -f "$work/applied.key"
    git_q am --abort >/dev/null 2>&1 || true
    git_q checkout -q -B vmfork upstream
    git_q reset -q --hard upstream
    git_q clean -q -fd
    while read -r patch; do
        case "$patch" in ""|\#*) continue ;; esac
        git_q am -q --keep-cr "$VMFORK_TOP/qemu-patches/$patch" ||
            { echo "build-qemu: $patch does not apply" >&2; git_q am --abort || true; exit 1; }
    done < "$VMFORK_TOP/qemu-patches/series"
    if [ -n "$(ls -A "$VMFORK_TOP/plugin" 2>/dev/null)" ]; then
        mkdir -p "$src/system/vmfork"
        cp -a "$VMFORK_TOP/plugin/." "$src/system/vmfork/"
    fi
    echo "$tkey" > "$work/applied.key"
fi

# 3. Configure once per set of flags (meson re-runs itself when build files change).
export PATH="/usr/lib/ccache:$PATH"
flags_now="${CONFIGURE_FLAGS[*]}"
if [ ! -f "$bld/build.ninja" ] || [ "$(cat "$bld.flags" 2>/dev/null)" != "$flags_now" ]; then
    log "configuring QEMU $QEMU_VERSION${flavour:+ ($flavour)}"
    rm -rf "$bld" && mkdir -p "$bld"
    (cd "$bld" && "$src/configure" --python=/usr/bin/python3 "${CONFIGURE_FLAGS[@]}") > "$bld.configure.log" 2>&1 ||
        { tail -30 "$bld.configure.log" >&2; echo "build-qemu: configure failed, see $bld.configure.log" >&2; exit 1; }
    echo "$flags_now" > "$bld.flags"
fi

# 4. Build with progress.
log "building qemu-system-x86_64 and qemu-img (ninja -j$(nproc), progress every 5 %)"
set -o pipefail
# (the lock: scripts/check-qemu.sh builds QEMU's tests in the same tree)
flock "$bld.lock" ninja -C "$bld" -j"$(nproc)" qemu-system-x86_64 qemu-img 2>&1 | ninja_progress

# 5. Install into build/qemu/: the binaries, and the firmware where a
#    binary looks for it (get_relocated_path(): <exe dir>/qemu-bundle/<path>).
mkdir -p "$out"
rm -f "$out/.key"
cp -f "$bld/qemu-system-x86_64" "$bld/qemu-img" "$out/"
"$here/fetch-firmware.sh" "$out/qemu-bundle$QEMU_FIRMWARE_PATH"
# VNC's keymaps (text files of the source tree; "-vnc" needs en-us)
mkdir -p "$out/qemu-bundle$QEMU_FIRMWARE_PATH/keymaps"
find "$src/pc-bios/keymaps" -maxdepth 1 -type f ! -name 'meson.build' \
    -exec cp -f {} "$out/qemu-bundle$QEMU_FIRMWARE_PATH/keymaps/" \;
echo "$key" > "$out/.key"
log "done: $out/qemu-system-x86_64 (series key $key)"
