#!/usr/bin/env bash
# Fetch the pinned QEMU release tarball into the cache and check its sha256.
#
# Source, in order: $QEMU_TARBALL (a local path or an http(s) URL), the
# cached copy, or Debian's trixie source package (apt-get source
# --download-only with a private source list: the system's apt sources are
# not touched, no root needed).  Prints the path of the verified tarball.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

tarball="$VMFORK_CACHE/src/$QEMU_TARBALL_NAME"
mkdir -p "$VMFORK_CACHE/src"

verify() {
    echo "$QEMU_SHA256  $1" | sha256sum -c --status
}

if [ -n "${QEMU_TARBALL:-}" ]; then
    case "$QEMU_TARBALL" in
        http://*|https://*)
            log "downloading $QEMU_TARBALL"
            curl -fL --progress-bar -o "$tarball.part" "$QEMU_TARBALL"
            mv "$tarball.part" "$tarball" ;;
        *)
            cp "$QEMU_TARBALL" "$tarball.part" && mv "$tarball.part" "$tarball" ;;
    esac
fi

if [ ! -f "$tarball" ]; then
    log "fetching $QEMU_TARBALL_NAME from Debian's trixie source package qemu $QEMU_DEBIAN_VERSION"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && private_apt trixie-src "deb-src http://deb.debian.org/debian trixie main" \
        source --download-only "qemu=$QEMU_DEBIAN_VERSION" >&2)
    mv "$work/$QEMU_TARBALL_NAME" "$tarball"
fi

if ! verify "$tarball"; then
    echo "fetch-qemu: $tarball: sha256 mismatch (want $QEMU_SHA256); removed" >&2
    rm -f "$tarball"
    exit 1
fi
echo "$tarball"
