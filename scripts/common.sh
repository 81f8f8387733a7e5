# Shared settings for the build scripts (sourced, not run).
# shellcheck shell=bash

QEMU_VERSION=10.0.13
QEMU_DEBIAN_VERSION=1:10.0.13+ds-0+deb13u1
QEMU_TARBALL_NAME=qemu_10.0.13+ds.orig.tar.xz
QEMU_SHA256=6a0888e806c2ffc0c5f0733e974f9aea55491950d3c47c98669c8b236dde59ae

# The lean QEMU that vmfork builds (build-qemu.sh, check-series.sh)
QEMU_FIRMWARE_PATH=/usr/share/vmfork-firmware
QEMU_CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu --without-default-features
    --enable-kvm --enable-tcg --enable-slirp --enable-pixman --enable-tools
    # what a usual libvirt domain needs: <graphics type='vnc'/'spice'>, <tpm>,
    # io='native'/'io_uring', and the default -sandbox
    --enable-vnc --enable-spice --enable-spice-protocol
    --enable-linux-aio --enable-linux-io-uring --enable-seccomp --enable-tpm
    --enable-trace-backends=log
    --disable-docs --disable-install-blobs --disable-download
    --firmwarepath="$QEMU_FIRMWARE_PATH"
)

VMFORK_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMFORK_CACHE=${VMFORK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfork}
VMFORK_BUILD=${VMFORK_BUILD:-$VMFORK_TOP/build}

log() { echo "[$(basename "$0" .sh)] $*" >&2; }

# Run apt-get with a private source list and state under the cache, so that
# downloads (source packages, .debs to unpack) need neither root nor changes
# to the system's apt sources.  $1: name of the private setup, $2: the
# sources.list lines; the rest: apt-get arguments.
private_apt() {
    local name=$1 lines=$2 dir
    shift 2
    dir="$VMFORK_CACHE/apt-$name"
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    local opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=-"
                -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
                -o "Dir::State::status=/var/lib/dpkg/status" -o "Debug::NoLocking=1"
                -o "APT::Sandbox::User=$(id -un)" -q)
    if [ ! -f "$dir/sources.list" ] || [ "$(cat "$dir/sources.list")" != "$lines" ] ||
       [ -z "$(find "$dir/lists" -maxdepth 1 -name '*Packages*' -o -maxdepth 1 -name '*Sources*' | head -1)" ]; then
        printf '%s\n' "$lines" > "$dir/sources.list"
        log "apt-get update ($name)"
        apt-get "${opts[@]}" update >&2
    fi
    apt-get "${opts[@]}" "$@"
}

# Print progress of a ninja build every 5 % (ninja prints one line per step
# when its output is not a terminal); errors pass through in full.
ninja_progress() {
    awk '/^\[[0-9]+\/[0-9]+\]/ {
             s = $1; gsub(/[\[\]]/, "", s); split(s, a, "/"); pct = int(a[1] * 100 / a[2]);
             if (pct >= last + 5 || a[1] == a[2]) { printf "  %3d%% (%s/%s)\n", pct, a[1], a[2]; fflush(); last = pct }
             next }
         { print; fflush() }'
}
