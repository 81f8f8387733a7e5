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

# The guest builders' options: --refresh and --force (sets $refresh and
# $force), -h/--help (prints usage(), which the caller defines)
parse_build_options() {
    refresh=0 force=0
    for a in "$@"; do
        case "$a" in
            --refresh) refresh=1 ;;
            --force) force=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; exit 2 ;;
        esac
    done
}

# extract_vmlinux BZIMAGE OUT: the uncompressed ELF inside a bzImage, with
# the PVH entry note that QEMU's -kernel loader needs (returns 1, saying
# why, when it is not there)
extract_vmlinux() {
    local z=$1 o=$2 setup start length magic size decomp
    u32() { od -An -t u4 -j "$1" -N 4 "$z" | tr -d ' '; }
    [ "$(od -An -c -j 0x202 -N 4 "$z" | tr -d ' ')" = HdrS ] ||
        { echo "extract_vmlinux: $z is not a bzImage" >&2; return 1; }
    # Boot protocol header: setup_sects at 0x1f1; payload_offset/length
    # at 0x248/0x24c, relative to the protected-mode code after the setup.
    setup=$(od -An -t u1 -j 0x1f1 -N 1 "$z" | tr -d ' ')
    [ "$setup" != 0 ] || setup=4
    start=$(( (setup + 1) * 512 + $(u32 0x248) )) length=$(u32 0x24c)
    magic=$(od -An -t x1 -j "$start" -N 6 "$z" | tr -d ' ')
    case "$magic" in
        fd377a585a00) decomp=(xz -dc --single-stream) ;;
        1f8b*)        decomp=(gzip -dc) ;;
        28b52ffd*)    decomp=(zstd -dcq) ;;
        *) echo "extract_vmlinux: unknown payload compression (magic $magic)" >&2; return 1 ;;
    esac
    # The last 4 bytes of the payload are the decompressed size.
    size=$(u32 $((start + length - 4)))
    # (gzip exits 2 over the trailing size word: the checks below decide)
    dd if="$z" iflag=skip_bytes,count_bytes skip="$start" count="$length" bs=1M status=none |
        "${decomp[@]}" > "$o" 2>/dev/null || true
    [ "$(od -An -t x1 -N 5 "$o" | tr -d ' ')" = 7f454c4602 ] ||
        { echo "extract_vmlinux: the payload of $z is not a 64-bit ELF" >&2; return 1; }
    [ "$(stat -c %s "$o")" = "$size" ] ||
        { echo "extract_vmlinux: $o is $(stat -c %s "$o") bytes, expected $size" >&2; return 1; }
    # XEN_ELFNOTE_PHYS32_ENTRY (18): what QEMU's PVH loader needs.
    readelf -n "$o" | grep -q 'Xen .*0x00000012' ||
        { echo "extract_vmlinux: $o has no PVH entry note" >&2; return 1; }
}
