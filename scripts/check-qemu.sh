#!/usr/bin/env bash
# QEMU's own test suites on the patched tree, compared with the release.
#
# The series changes QEMU core (IOThreads, the thread pool, vCPU threads,
# the monitor, vl.c, savevm, KVM, consoles, vmgenid, file-posix, slirp,
# tap), so QEMU's own suites judge what it breaks for users who never fork.
# This runs the suites that `make check-unit`, `make check-qtest-x86_64`
# and `make check-block` run (meson suites unit, qtest-x86_64 and block, at
# the default "quick" speed) on two trees built with the same configure
# flags on the same machine:
#
#   patched  the tree and build directory of build-qemu.sh
#            ($VMFORK_CACHE/qemu-VERSION/{src,build})
#   release  the release commit of that tree ('upstream'), exported into
#            release-src/ and built in release-build/ next to it, once
#            (a second run rebuilds nothing)
#
# Both build directories get the firmware in their qemu-bundle/, as
# build/qemu/ does.  Then the results are compared test by test
# (scripts/check-qemu-compare.py): a test that passes on the release and
# not on the patched tree (fails, times out, skips or is missing) is a
# difference; so is a TAP subtest that passes on the release and is
# skipped or missing on the patched tree.  A difference is run once more;
# one that passes then is reported as flaky.  Differences listed in tests/qemu-suites.expected, one
# reason each, are explained; any other fails this script.  Tests that
# fail on the release as well are reported and do not fail it.
#
# Results: build/check-qemu/{results.txt,results.json}, each tree's meson
# log (TREE.log) and JSON test log (TREE.testlog.json).
#
# The patched build directory is shared with build-qemu.sh: every ninja
# run there holds $VMFORK_CACHE/qemu-VERSION/build.lock; the tests run
# outside the lock.
#
# Usage: check-qemu.sh [--reuse-release] [--tree-as-is]
#   --reuse-release  compare with the release results of an earlier run
#                    (build/check-qemu/release.*) when the release commit,
#                    flags and suites are the same, instead of running the
#                    release's tests again
#   --tree-as-is     test the cached patched tree as it is, without running
#                    build-qemu.sh first (which resets it to the release and
#                    applies qemu-patches/ when the series changed): for
#                    work on the series in the cached tree (refresh-patches.sh)
# Environment: CHECK_QEMU_SUITES (default "unit qtest-x86_64 block"),
#   CHECK_QEMU_TIMEOUT_MULTIPLIER (meson's per-test timeouts times this;
#   default 1, as QEMU's make check), CHECK_QEMU_JOBS (tests run at once,
#   default nproc).
#
# Takes about 17 minutes on 2 cores once both trees are built, most of it
# migration-test's 8-minute timeout on each tree (docs/check-qemu.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

reuse_release=0 as_is=0
for arg in "$@"; do
    case "$arg" in
        --reuse-release) reuse_release=1 ;;
        --tree-as-is) as_is=1 ;;
        *) echo "usage: $0 [--reuse-release] [--tree-as-is]" >&2; exit 2 ;;
    esac
done

read -r -a suites <<< "${CHECK_QEMU_SUITES:-unit qtest-x86_64 block}"
mult=${CHECK_QEMU_TIMEOUT_MULTIPLIER:-1}
jobs=${CHECK_QEMU_JOBS:-$(nproc)}
# The flags of build-qemu.sh's build, for both trees
CONFIGURE_FLAGS=("${QEMU_CONFIGURE_FLAGS[@]}" --disable-werror)

work="$VMFORK_CACHE/qemu-$QEMU_VERSION"
src="$work/src"
bld="$work/build"
rsrc="$work/release-src"
rbld="$work/release-build"
lock="$work/build.lock"
out="$VMFORK_BUILD/check-qemu"
expected="$VMFORK_TOP/tests/qemu-suites.expected"
mkdir -p "$out"

start=$SECONDS lap_t=$SECONDS
times=()
lap() {   # lap LABEL: remember how long the step since the last lap took
    times+=("$1=$((SECONDS - lap_t))s")
    lap_t=$SECONDS
}

# 1. The patched tree (build-qemu.sh: nothing to do when up to date)
if [ "$as_is" = 0 ]; then
    "$here/build-qemu.sh"
    lap build-qemu
fi
[ -f "$bld/build.ninja" ] || { echo "check-qemu: no patched build in $bld; run scripts/build-qemu.sh" >&2; exit 1; }
release_commit=$(git -C "$src" rev-parse upstream)
patched_commit=$(git -C "$src" rev-parse HEAD)
[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ] || patched_commit+=" with uncommitted changes"

# 2. The release tree: an export of the 'upstream' commit, configured
#    with the same flags, both kept until the commit or the flags change.
prepare_release() {
    if [ "$(cat "$rsrc/.vmfork-release-commit" 2>/dev/null)" != "$release_commit" ]; then
        log "exporting the release ($release_commit) into $rsrc"
        rm -rf "$rsrc" "$rsrc.tmp" "$rbld" "$rbld.flags"
        mkdir -p "$rsrc.tmp"
        git -C "$src" archive upstream | tar -x -C "$rsrc.tmp"
        echo "$release_commit" > "$rsrc.tmp/.vmfork-release-commit"
        mv "$rsrc.tmp" "$rsrc"
    fi
    local flags_now="${CONFIGURE_FLAGS[*]}"
    if [ ! -f "$rbld/build.ninja" ] || [ "$(cat "$rbld.flags" 2>/dev/null)" != "$flags_now" ]; then
        log "configuring the release tree"
        rm -rf "$rbld" && mkdir -p "$rbld"
        (cd "$rbld" && PATH="/usr/lib/ccache:$PATH" "$rsrc/configure" --python=/usr/bin/python3 \
            "${CONFIGURE_FLAGS[@]}") > "$rbld.configure.log" 2>&1 ||
            { tail -30 "$rbld.configure.log" >&2; echo "check-qemu: configure failed, see $rbld.configure.log" >&2; exit 1; }
        echo "$flags_now" > "$rbld.flags"
    fi
}
prepare_release
lap release-configure

# 3. Build everything the suites need (the tests, qemu-io, qemu-nbd, the
#    storage daemon...): ninja's default target, as QEMU's make check.
#    Then the firmware into each qemu-bundle/, where the binaries of the
#    build directory look first.
build_tree() {   # build_tree NAME BUILD-DIR [LOCK]
    local name=$1 dir=$2 lockf=${3:-}
    log "building the $name tree's tests and tools (ninja -j$(nproc), progress every 5 %)"
    if [ -n "$lockf" ]; then
        PATH="/usr/lib/ccache:$PATH" flock "$lockf" ninja -C "$dir" -j"$(nproc)" all 2>&1 | ninja_progress
    else
        PATH="/usr/lib/ccache:$PATH" ninja -C "$dir" -j"$(nproc)" all 2>&1 | ninja_progress
    fi
    "$here/fetch-firmware.sh" "$dir/qemu-bundle$QEMU_FIRMWARE_PATH"
}
build_tree patched "$bld" "$lock"
lap build-patched
key_now="$release_commit ${CONFIGURE_FLAGS[*]} suites=${suites[*]} x$mult"
run_release=1
if [ "$reuse_release" = 1 ] && [ -s "$out/release.testlog.json" ] &&
   [ "$(cat "$out/release.key" 2>/dev/null)" = "$key_now" ]; then
    log "reusing the release results of $(date -r "$out/release.testlog.json" '+%F %T')"
    run_release=0
else
    build_tree release "$rbld"
    lap build-release
fi

# 4. Run the suites.  meson prints one line a test; show the ones that do
#    not pass and a progress line every 10 %, keep the whole in TREE.log.
run_suites() {   # run_suites NAME BUILD-DIR LOGBASE [TEST...]
    local name=$1 dir=$2 logbase=$3 args=() s
    shift 3
    if [ $# -gt 0 ]; then
        args=("$@")
    else
        for s in "${suites[@]}"; do args+=(--suite "$s"); done
    fi
    rm -f "$dir/meson-logs/$logbase.json" "$dir/meson-logs/$logbase.txt"
    log "$name tree: meson test ${args[*]} (timeouts x$mult, $jobs at once)"
    # meson exits non-zero when a test fails: the comparison judges
    "$dir/pyvenv/bin/meson" test -C "$dir" --no-rebuild -t "$mult" --num-processes "$jobs" \
        --logbase "$logbase" "${args[@]}" 2>&1 | tee "$out/$name.log" |
        awk -v tree="$name" '
            /^ *[0-9]+\/[0-9]+ / {
                split($1, a, "/"); pct = int(a[1] * 100 / a[2])
                r = ""; for (i = 2; i <= NF; i++) if ($i ~ /^(OK|SKIP|FAIL|TIMEOUT|ERROR|EXPECTEDFAIL|UNEXPECTEDPASS|INTERRUPT)$/) r = $i
                if (r != "OK" && r != "SKIP" && r != "EXPECTEDFAIL") { print "  [" tree "] " $0; fflush() }
                if (pct >= last + 10 || a[1] == a[2]) { printf "  [%s] %3d%% (%s/%s)\n", tree, pct, a[1], a[2]; fflush(); last = pct }
            }' || true
    [ -s "$dir/meson-logs/$logbase.json" ] ||
        { echo "check-qemu: meson wrote no test log for the $name tree (see $out/$name.log)" >&2; exit 1; }
}
# A rebuild in the shared build directory while the tests run (another
# build-qemu.sh) mixes two builds: say so (the retry below then helps).
stamp() { stat -c %Y "$bld/qemu-system-x86_64" "$bld/qemu-img" 2>/dev/null | tr '\n' ' '; }
stamp_before=$(stamp)
run_suites patched "$bld" check-qemu
lap test-patched
if [ "$(stamp)" != "$stamp_before" ]; then
    log "WARNING: the patched binaries were rebuilt while the tests ran; failures may come from that"
fi
cp -f "$bld/meson-logs/check-qemu.json" "$out/patched.testlog.json"
if [ "$run_release" = 1 ]; then
    run_suites release "$rbld" check-qemu
    lap test-release
    cp -f "$rbld/meson-logs/check-qemu.json" "$out/release.testlog.json"
    echo "$key_now" > "$out/release.key"
fi

# 5. Compare; run each unexplained difference once more on the patched tree.
compare=(python3 "$here/check-qemu-compare.py" --release "$out/release.testlog.json"
         --patched "$out/patched.testlog.json" --intro "$bld/meson-info/intro-tests.json"
         --intro "$rbld/meson-info/intro-tests.json" --expected "$expected"
         --suites "${suites[*]}")
mapfile -t again < <("${compare[@]}" --candidates)
rm -f "$out/patched-retry.testlog.json" "$out/patched-retry.log"
if [ "${#again[@]}" -gt 0 ]; then
    log "${#again[@]} test(s) did worse on the patched tree; running them once more"
    run_suites patched-retry "$bld" check-qemu-retry "${again[@]}"
    lap retry-patched
    cp -f "$bld/meson-logs/check-qemu-retry.json" "$out/patched-retry.testlog.json"
    compare+=(--retry "$out/patched-retry.testlog.json")
fi
times+=("total=$((SECONDS - start))s")
rc=0
"${compare[@]}" --outdir "$out" \
    --meta "patched=$patched_commit (series key $(cat "$work/applied.key" 2>/dev/null || echo '?'))" \
    --meta "release=$release_commit" \
    --meta "host=$(uname -r), $(nproc) CPUs, /dev/kvm $([ -w /dev/kvm ] && echo yes || echo no), user $(id -un)" \
    --meta "timeout multiplier=$mult, jobs=$jobs" \
    --meta "times=${times[*]}" || rc=$?
log "results in $out/results.txt and results.json (${times[*]})"
exit "$rc"
