#!/usr/bin/env bash
# The test suites under AddressSanitizer and UndefinedBehaviorSanitizer:
#
# 1. QEMU with the series, built a second time with --enable-asan
#    --enable-ubsan (build-qemu.sh --sanitize: build/qemu-sanitize/, its own
#    build directory in the cache), runs the functional and reliability
#    suites: the parent QEMUs and every forked child.
# 2. libqmp, the tools and their unit tests, built with
#    -Db_sanitize=address,undefined in build/meson-sanitize.
#
# Every sanitizer report is written to a file (log_path), whichever process
# made it; the run fails when a test fails or any report exists.  Reports
# are kept in build/sanitize-reports/.
#
# Slow (a second QEMU build, about 30 minutes on 2 cores the first time;
# the tests run 2-3 times slower): make check-sanitize, not make check.
#
# Leak detection is off for QEMU: QEMU frees little at exit by design
# (QOM objects, the machine), and a forked child exits with _exit() or by
# a signal; a leak report there says nothing about vmfork.  It is on for
# libqmp and the tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

reports="$VMFORK_BUILD/sanitize-reports"
rm -rf "$reports"
mkdir -p "$reports"

"$here/build-qemu.sh" --sanitize
# UBSan's default is to print and go on; halt so a report fails the test
# too, and log to files so no report is lost with a test's directory.
# A small quarantine: the storms bound the parent's RSS (VMFORK_SANITIZED
# loosens the bound for what ASan's allocator still holds).
san_env=(
    VMFORK_QEMU="$VMFORK_BUILD/qemu-sanitize/qemu-system-x86_64"
    VMFORK_SANITIZED=1
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:quarantine_size_mb=16:log_path=$reports/qemu-asan"
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/qemu-ubsan"
)

status=0
log "QEMU under ASan+UBSan: functional and reliability suites"
env "${san_env[@]}" meson test -C "$VMFORK_BUILD/meson" --print-errorlogs \
    --suite functional --suite reliability --timeout-multiplier 3 || status=1

sbuild="$VMFORK_BUILD/meson-sanitize"
if [ ! -f "$sbuild/build.ninja" ]; then
    meson setup "$sbuild" --buildtype=debug -Db_sanitize=address,undefined \
        -Db_lundef=false >/dev/null
fi
meson compile -C "$sbuild" >/dev/null
log "libqmp and the tools under ASan+UBSan: unit suite"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$reports/tools-asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/tools-ubsan" \
    meson test -C "$sbuild" --print-errorlogs --suite unit || status=1

# A report file may hold only a warning (ASan warns once per process about
# QEMU's makecontext coroutines); an error report has one of these lines.
errors='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:'
found=$({ grep -lE "$errors" "$reports"/* 2>/dev/null || true; } | wc -l)
warned=$(find "$reports" -type f | wc -l)
log "$warned process(es) wrote to a sanitizer log, $found with an error report"
if [ "$found" -gt 0 ]; then
    for f in $(grep -lE "$errors" "$reports"/*); do
        echo "==== $f"
        head -80 "$f"
    done
    echo "check-sanitize: $found sanitizer error report(s) in $reports" >&2
    status=1
fi
[ "$status" = 0 ] && log "no test failed and no sanitizer report"
exit "$status"
