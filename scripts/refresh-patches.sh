#!/usr/bin/env bash
# Maintainer helper: regenerate qemu-patches/ from the commits on the
# 'vmfork' branch of the cached QEMU tree (where the series is developed:
# edit, commit or 'git rebase -i upstream' there, then run this).  Checks
# every patch with QEMU's scripts/checkpatch.pl.
# Usage: refresh-patches.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

src="$VMFORK_CACHE/qemu-$QEMU_VERSION/src"
[ $# -eq 0 ] || { echo "usage: $0" >&2; exit 2; }
[ -d "$src/.git" ] || { echo "refresh-patches: no QEMU tree at $src; run scripts/build-qemu.sh" >&2; exit 1; }

out="$VMFORK_TOP/qemu-patches"
log "exporting upstream..vmfork of $src to $out"
rm -f "$out"/*.patch
git -C "$src" format-patch -q -N --no-signature --zero-commit upstream..vmfork -o "$out"
(cd "$out" && ls ./*.patch | sed 's|^\./||' > series)
perl "$src/scripts/checkpatch.pl" --no-tree --terse "$out"/*.patch
log "$(wc -l < "$out/series") patches; plugin/ is copied, not exported here"
