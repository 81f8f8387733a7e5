#!/usr/bin/env bash
# Export vmfork as one self-contained 'git format-patch' series against a
# clean QEMU tree, as it would be mailed upstream: the patches of
# qemu-patches/series, then one more patch that adds plugin/ as
# system/vmfork/.  The result applies with 'git am' to QEMU $QEMU_VERSION.
# Usage: export-series.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
outdir=$1
tarball=$("$here/fetch-qemu.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git_w() { git -C "$work" -c user.name="vmfork developers" -c user.email=dev@vmfork.invalid "$@"; }

log "unpacking QEMU $QEMU_VERSION into a scratch tree"
tar -xJf "$tarball" -C "$work" --strip-components=1
git_w init -q && git_w add -A -f && git_w commit -q -m "QEMU $QEMU_VERSION" && git_w tag base
while read -r patch; do
    case "$patch" in ""|\#*) continue ;; esac
    git_w am -q "$VMFORK_TOP/qemu-patches/$patch"
done < "$VMFORK_TOP/qemu-patches/series"
mkdir -p "$work/system/vmfork"
cp -a "$VMFORK_TOP/plugin/." "$work/system/vmfork/"
git_w add -A -f system/vmfork
git_w commit -q -s -m "vmfork: the vmfork subsystem (system/vmfork)

The implementation of the vmfork and query-vmfork commands: the checks
that refuse what cannot be forked, the parent's pause and fork, the
child's re-creation of threads, file descriptors, accelerator, monitor
and consoles, and the bookkeeping of children."
mkdir -p "$outdir"
git_w format-patch -q --no-signature --cover-letter base..HEAD -o "$(cd "$outdir" && pwd)"
log "wrote $(ls "$outdir"/*.patch | wc -l) files to $outdir"
