#!/usr/bin/env bash
# Install the Debian 12 packages that building and testing vmfork needs.
#
# As root: adds bookworm-backports (meson >= 1.5 and python3-pycotap, which
# QEMU 10 requires and bookworm lacks) as an apt source and installs the
# missing packages.  As another user: prints the exact commands and fails.
# Idempotent: does nothing when everything is present.
set -euo pipefail

usage() { echo "usage: $0 [--check]   (--check: only report what is missing)"; }
check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

# name[/suite]: package, and the suite to take it from when not bookworm.
PKGS=(
    build-essential pkgconf ninja-build meson/bookworm-backports
    python3 python3-venv python3-distlib python3-pycotap/bookworm-backports
    libglib2.0-dev libpixman-1-dev libslirp-dev zlib1g-dev ccache
    libjson-glib-dev
    libspice-server-dev libaio-dev liburing-dev libseccomp-dev
    swtpm
    busybox-static cpio xz-utils dpkg-dev ca-certificates
    gnuplot-nox git
)
BACKPORTS_LIST=/etc/apt/sources.list.d/vmfork-bookworm-backports.list
BACKPORTS_LINE="deb http://deb.debian.org/debian bookworm-backports main"

have_pkg() {
    local name=${1%%/*} suite=${1#*/}
    dpkg-query -W -f='${Status}\n' "$name" 2>/dev/null | grep -q '^install ok installed' || return 1
    if [ "$name" = meson ]; then
        # bookworm's own meson (1.0) is too old for QEMU 10.
        dpkg --compare-versions "$(dpkg-query -W -f='${Version}' meson)" ge 1.5 || return 1
    fi
    [ "$suite" != "$1" ] || return 0
    return 0
}

missing=()
for p in "${PKGS[@]}"; do
    have_pkg "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all build dependencies present"
    exit 0
fi

need_bpo=0
for p in "${missing[@]}"; do
    case "$p" in */bookworm-backports) need_bpo=1 ;; esac
done

if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root (or run 'make' as root), which does:" >&2
    [ "$need_bpo" = 1 ] && echo "  echo '$BACKPORTS_LINE' > $BACKPORTS_LIST" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

if [ "$need_bpo" = 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: enabling bookworm-backports ($BACKPORTS_LIST) for meson 1.7 and python3-pycotap"
    echo "$BACKPORTS_LINE" > "$BACKPORTS_LIST"
fi
echo "install-deps: apt-get install ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
