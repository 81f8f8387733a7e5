#!/usr/bin/env bash
# Builds libqmp's fuzz targets (tests/fuzz: libFuzzer with ASan and UBSan,
# compiled by clang) in build/fuzz and runs each for a bounded time; fails
# on any crash, leak, sanitizer report or check failure in a target.
#
# Missing tools are installed first when run as root (Debian bookworm:
# clang, and libclang-rt-14-dev for the libFuzzer runtime); otherwise the
# apt-get command to run is printed.  Idempotent: an existing build/fuzz is
# reused, and what the fuzzer finds accumulates in
# build/fuzz/tests/fuzz/corpus-<target>/ from one run to the next.
#
# Environment: FUZZ_BUILD (default build/fuzz), FUZZ_ARGS (extra libFuzzer
# options, e.g. FUZZ_ARGS="-jobs=2 -workers=2").
set -euo pipefail

usage() {
    echo "usage: scripts/fuzz.sh [SECONDS]   (each target runs SECONDS, default 60)"
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac
if [ $# -gt 1 ] || ! [[ "${1:-60}" =~ ^[1-9][0-9]*$ ]]; then
    usage >&2
    exit 2
fi
seconds=${1:-60}

# shellcheck source=scripts/common.sh
. "$(dirname "$0")/common.sh"
cd "$VMFORK_TOP"
build=${FUZZ_BUILD:-$VMFORK_BUILD/fuzz}
targets=(fuzz-reader)
packages=(clang libclang-rt-14-dev)

# Can clang link a libFuzzer target with the sanitizers?
fuzzer_links() {
    local tmp rc=0
    tmp=$(mktemp -d)
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
        > "$tmp/t.c"
    clang -fsanitize=fuzzer,address,undefined "$tmp/t.c" -o "$tmp/t" \
        >/dev/null 2>&1 || rc=1
    rm -rf "$tmp"
    return $rc
}

if ! command -v clang >/dev/null || ! fuzzer_links; then
    if [ "$(id -u)" -ne 0 ]; then
        log "clang with libFuzzer is missing; as root run:"
        log "  apt-get install -y --no-install-recommends ${packages[*]}"
        exit 2
    fi
    log "installing ${packages[*]} (clang and the libFuzzer runtime)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${packages[@]}"
    if ! fuzzer_links; then
        log "clang still cannot link -fsanitize=fuzzer"
        exit 2
    fi
fi

if [ ! -f "$build/build.ninja" ]; then
    log "configuring $build (CC=clang, -Dfuzz=true)"
    CC=clang meson setup "$build" -Dfuzz=true --buildtype=debugoptimized
else
    meson configure "$build" -Dfuzz=true
fi
meson compile -C "$build" "${targets[@]}"

status=0
for t in "${targets[@]}"; do
    dir="$build/tests/fuzz"
    log "running $t for $seconds s (seeds: tests/fuzz/corpus," \
        "corpus: $dir/corpus-$t, crashes: $dir/artifacts/)"
    mkdir -p "$dir/corpus-$t" "$dir/artifacts"
    # shellcheck disable=SC2086  # FUZZ_ARGS is a list of options
    if ! "$dir/$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
            -artifact_prefix="$dir/artifacts/" -dict="tests/fuzz/$t.dict" \
            ${FUZZ_ARGS:-} \
            "$dir/corpus-$t" tests/fuzz/corpus; then
        log "$t FAILED; the input is in $dir/artifacts/" \
            "(reproduce: $dir/$t $dir/artifacts/<file>)"
        status=1
    fi
done
if [ $status -eq 0 ]; then
    log "no crash in ${#targets[@]} target(s), $seconds s each"
fi
exit $status
