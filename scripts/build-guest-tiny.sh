#!/usr/bin/env bash
# Build the tiny test guest: a freestanding 32-bit multiboot ELF that QEMU
# boots with "-kernel tiny.elf" (protocol: tests/guest/README.md).
#
# Inputs: tests/guest/tiny/{start.S,tiny.c,tiny.ld}, this script.
# Output: $VMFORK_BUILD/guest/tiny/tiny.elf (default build/guest/tiny/tiny.elf).
# Environment: TINY_TICK_TSC_DELTA (TSC cycles between "C" lines, default
# 16777216 = 2^24), CC (default gcc), LD (default ld).
# Skips the build when the output is newer than every input and was built
# with the same settings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

usage() { echo "usage: $0 [--force]   (builds $VMFORK_BUILD/guest/tiny/tiny.elf)"; }
force=0
case "${1:-}" in
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

src="$VMFORK_TOP/tests/guest/tiny"
out="$VMFORK_BUILD/guest/tiny"
elf="$out/tiny.elf"
CC=${CC:-gcc}
LD=${LD:-ld}
delta=${TINY_TICK_TSC_DELTA:-16777216}
if [[ ! "$delta" =~ ^[1-9][0-9]*$ ]]; then
    echo "TINY_TICK_TSC_DELTA must be a positive integer" >&2
    exit 2
fi

cflags=(-m32 -march=i686 -ffreestanding -nostdlib -fno-pic -fno-stack-protector -O2
        -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns
        -mno-sse -mno-mmx -mgeneral-regs-only -Wall -Wextra -Werror
        "-DTICK_TSC_DELTA=${delta}ull")
settings="$CC ${cflags[*]} | $LD"
inputs=("$src/start.S" "$src/tiny.c" "$src/tiny.ld" "$here/build-guest-tiny.sh")

if [ $force = 0 ] && [ -f "$elf" ] && [ "$(cat "$out/.settings" 2>/dev/null)" = "$settings" ]; then
    fresh=1
    for f in "${inputs[@]}"; do
        [ "$f" -nt "$elf" ] && fresh=0
    done
    if [ $fresh = 1 ]; then
        log "$elf is up to date"
        exit 0
    fi
fi

log "building $elf (TSC tick delta $delta)"
mkdir -p "$out"
"$CC" "${cflags[@]}" -c "$src/start.S" -o "$out/start.o"
"$CC" "${cflags[@]}" -c "$src/tiny.c" -o "$out/tiny.o"
"$LD" -m elf_i386 -nostdlib --build-id=none -z noexecstack -z max-page-size=0x1000 \
    -T "$src/tiny.ld" -o "$out/tiny.elf.tmp" "$out/start.o" "$out/tiny.o"

# Checks: a 32-bit i386 ELF, with the multiboot magic 4-byte aligned in
# its first 8 KiB (where QEMU's multiboot loader looks for it).
ident=$(od -An -t x1 -N 5 "$out/tiny.elf.tmp" | tr -d ' \n')
[ "$ident" = 7f454c4601 ] || { echo "build-guest-tiny: not a 32-bit ELF" >&2; exit 1; }
# (grep without -q: an early exit would fail od, and the pipeline, on SIGPIPE)
od -An -t x4 -v -w4 -N 8192 "$out/tiny.elf.tmp" | grep 1badb002 >/dev/null ||
    { echo "build-guest-tiny: multiboot header not in the first 8 KiB" >&2; exit 1; }
mv "$out/tiny.elf.tmp" "$elf"
printf '%s\n' "$settings" > "$out/.settings"
log "done: $elf ($(stat -c %s "$elf") bytes)"
