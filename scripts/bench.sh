#!/usr/bin/env bash
# The benchmark suite, as `make bench` runs it.
#
#   scripts/bench.sh [--quick] [more vmfork-bench options, e.g. -s 'fork-*' -v]
#
# Runs vmfork-bench over the scenarios (vmfork and its peers, see
# bench/README.md) and writes, under build/bench/:
#   results.json   every scenario (one JSON document), the host, the targets
#   results.csv    one row per scenario
#   samples.csv    one row per measured child
#   summary.md     the targets: goal, measured, met
#   bench.log      the progress output
#   *.png          plots (gnuplot): clone latency, peers, phases, memory,
#                  scaling, fan-out, CDF, service (pool, serve, migrate)
# A full run takes about 20 minutes on 2 cores (18.5 on 2026-12-08: medians
# of at least 20 everywhere), 2 of them the service scenarios (timed alone,
# twenty cold boots among them); --quick about a minute and a half.
# Needs the patched QEMU and the guests (`make`); builds vmfork-bench and a
# tiny guest with a fast tick (build/bench/guest/tiny/tiny.elf) if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

out="$VMFORK_BUILD/bench"
bench_bin="$VMFORK_BUILD/meson/bench/vmfork-bench"

usage() {
    echo "usage: $0 [--quick] [vmfork-bench options]   (results in $out)"
    echo "       $0 --plots-only   (redraw the plots from $out/results.csv)"
}
plots_only=0
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --plots-only) plots_only=1 ;;
esac

# ---- Plots -----------------------------------------------------------------

# Column of a CSV header by name (1-based), for awk; 999 (empty) if absent
col() {
    local n
    n=$(head -1 "$1" | tr ',' '\n' | grep -nx -- "$2" | cut -d: -f1)
    echo "${n:-999}"
}

# awk over results.csv with named columns: rows "name value..." for gnuplot.
# The string columns that may hold commas (skipped, error) are the last ones,
# so splitting on commas is safe for the columns used here.
csv_rows() {   # $1: awk condition on the named fields, $2..: fields to print
    local csv=$out/results.csv cond=$1; shift
    local prog="" f
    for f in scenario kind accel guest mem_mib vcpus parent count "$@"; do
        prog+="$(printf '%s=$%s; ' "v_${f//[^a-zA-Z0-9_]/_}" "$(col "$csv" "$f")")"
    done
    local print='printf "%s", v_scenario'
    for f in "$@"; do
        print+="; printf \" %s\", (v_${f//[^a-zA-Z0-9_]/_} == \"\" ? \"NaN\" : v_${f//[^a-zA-Z0-9_]/_})"
    done
    awk -F, "NR > 1 { $prog gsub(/\"/, \"\", v_scenario); gsub(/\"/, \"\", v_kind); gsub(/\"/, \"\", v_parent); gsub(/\"/, \"\", v_accel); gsub(/\"/, \"\", v_guest); if ($cond) { $print; printf \"\\n\" } }" "$csv"
}

plots() {
    local csv=$out/results.csv term dat
    [ -s "$csv" ] || { log "no $csv: no plots"; return 0; }
    command -v gnuplot >/dev/null || { log "gnuplot not installed: no plots"; return 0; }
    if gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1; then
        term="pngcairo size 1200,700 font 'sans,10'"
    else
        term="png size 1200,700"
    fi
    dat=$(mktemp -d)
    trap 'rm -rf "$dat"' RETURN

    # 1. Clone latency of single forks: first guest output p50/p99, and the
    #    guest clock restart (TCG)
    csv_rows 'v_kind == "fork"' clone_ms.p50 clone_ms.p99 clone_resume_ms.p50 \
        | sed 's/^fork-//' > "$dat/clone.dat"
    # 2. Peers vs vmfork (first guest output, p50), per configuration
    for cfg in $(csv_rows 'v_kind == "peer"' mem_mib | awk '{print $1}' \
                 | sed -E 's/^peer-(cold-boot|snapshot-prestarted|snapshot|template-prestarted|template|container|vmfork-preforked-settled|vmfork-preforked)-//' | sort -u); do
        {
            csv_rows "v_scenario == \"fork-$cfg\"" clone_ms.p50 | awk '{print "vmfork", $2}'
            csv_rows "v_scenario ~ /^peer-.*-$cfg\$/" clone_ms.p50 \
                | sed -E "s/^peer-(.*)-$cfg /\\1 /"
        } > "$dat/peers-$cfg.dat"
    done
    # 3. Fan-out: time until every child ran, by count
    csv_rows 'v_kind == "fork" || v_kind == "fanout"' clone_ms.p50 fanout_wall_ms.p50 \
        | awk '{ s = $1; sub(/^(fork|fanout[0-9]+)-/, "", s);
                 n = ($1 ~ /^fanout/) ? $1 : "fanout1"; sub(/^fanout/, "", n); sub(/-.*/, "", n);
                 v = (n == 1) ? $2 : $3; print s, n, v }' \
        | sort -k1,1 -k2,2n \
        | awk '{ line[NR] = $0; cfg[NR] = $1; n[$1]++ }
               END { for (i = 1; i <= NR; i++) if (n[cfg[i]] > 1) print line[i] }' \
        > "$dat/fanout.dat"
    # 4. Phases of vmfork (single forks, p50, ms), TCG and KVM apart (their
    #    scales differ)
    for a in tcg kvm; do
        csv_rows "v_kind == \"fork\" && v_accel == \"$a\"" phases_ms.qmp_in.p50 \
            phases_ms.check.p50 phases_ms.prepare.p50 phases_ms.fork.p50 \
            phases_ms.child_fds.p50 phases_ms.child_threads.p50 \
            phases_ms.child_accel.p50 phases_ms.child_devices.p50 \
            phases_ms.child_start.p50 phases_ms.first_output.p50 \
            | sed 's/^fork-//' > "$dat/phases-$a.dat"
    done
    # 5. Memory of a child (MiB): idle 1 s, and after dirtying
    csv_rows 'v_kind == "fork" || v_kind == "fanout"' child_uss_kib.p50 \
        child_pss_kib.p50 child_uss_dirty_kib.p50 child_pss_dirty_kib.p50 \
        | awk '{ printf "%s", $1; for (i = 2; i <= NF; i++) printf " %s", ($i == "NaN" ? "NaN" : $i / 1024); printf "\n" }' \
        > "$dat/memory.dat"

    gnuplot <<EOF || log "a plot failed (a partial run lacks its data?)"
set terminal $term
set datafile missing "NaN"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set key top left
set xtics rotate by -35 noenhanced font ",8"

set output "$out/clone_latency.png"
set title "vmfork clone latency: command sent -> child guest (single forks)"
set ylabel "ms"
set style histogram clustered gap 1
plot "$dat/clone.dat" using 2:xtic(1) title "first guest output p50", \
     "" using 3 title "first guest output p99", \
     "" using 4 title "guest clock running p50 (TCG)"

set style histogram rowstacked
set key outside right top
names = "qmp-in check prepare+stop+save fork child:fds child:threads child:accel child:devices child:start first-output"
colors = "#332288 #88ccee #44aa99 #117733 #999933 #ddcc77 #cc6677 #882255 #aa4499 #bbbbbb"
do for [a in "tcg kvm"] {
    f = "$dat/phases-" . a . ".dat"
    if (system("test -s " . f . " && echo 1") eq "1") {
        set output "$out/phases-" . a . ".png"
        set title "Where the time goes: phases of one vmfork under " . a . " (p50, ms)"
        plot for [i=2:11] f using (column(i) < 0 ? 0 : column(i)):xtic(1) title word(names, i-1) lc rgb word(colors, i-1)
    }
}

set output "$out/memory.png"
set title "Memory of a child: idle 1 s after the fork, and after dirtying (p50, MiB)"
set style histogram clustered gap 1
set key top left
set ylabel "MiB"
plot "$dat/memory.dat" using 2:xtic(1) title "USS idle", "" using 3 title "PSS idle", \
     "" using 4 title "USS dirty", "" using 5 title "PSS dirty"
EOF

    local f cfg
    for f in "$dat"/peers-*.dat; do
        [ -s "$f" ] || continue
        cfg=$(basename "$f" .dat); cfg=${cfg#peers-}
        gnuplot <<EOF || log "a plot failed (a partial run lacks its data?)"
set terminal $term
set output "$out/peers-$cfg.png"
set title "$cfg: command -> guest running again (first guest output, p50)"
set style data histograms
set style fill solid 0.8 border -1
set logscale y
set ylabel "ms (log scale)"
set grid ytics
set xtics noenhanced
unset key
plot "$f" using 2:xtic(1) lc rgb "#4477aa", "" using 0:2:(sprintf("%.1f", \$2)) with labels offset 0,1 notitle
EOF
    done

    # How the cost grows (Linux guest, TCG): with guest RAM in use, vCPUs,
    # children alive; clone latency and parent pause, p50
    csv_rows 'v_scenario ~ /^fork-linux-tcg-[0-9]+m-1cpu-touched$/' \
        mem_mib clone_ms.p50 parent_pause_ms.p50 \
        | awk '{print $2 * 3 / 4 / 1024, $3, $4}' | sort -g > "$dat/scale-ram.dat"
    csv_rows 'v_scenario ~ /^fork-linux-tcg-512m-[0-9]cpu$/' \
        vcpus clone_ms.p50 parent_pause_ms.p50 \
        | awk '{print $2, $3, $4}' | sort -g > "$dat/scale-vcpus.dat"
    {
        csv_rows 'v_scenario == "fork-linux-tcg-512m-1cpu"' clone_ms.p50 \
            parent_pause_ms.p50 | awk '{print 0, $2, $3}'
        csv_rows 'v_scenario ~ /^fork-linux-tcg-512m-1cpu-alive[0-9]+$/' \
            clone_ms.p50 parent_pause_ms.p50 \
            | sed -E 's/^fork-linux-tcg-512m-1cpu-alive//' | sort -g
    } > "$dat/scale-alive.dat"
    if [ -s "$dat/scale-ram.dat" ] || [ -s "$dat/scale-alive.dat" ]; then
        # A partial run (-s) may lack a panel's data: not fatal
        gnuplot <<EOF || log "scaling.png: gnuplot failed (data missing?)"
set terminal $term
set output "$out/scaling.png"
set multiplot layout 1,3 title "How the cost grows, Linux guest under TCG (p50)"
set grid
set ylabel "ms"
set yrange [0:*]
set key top left
set title "guest RAM in use"
set xlabel "GiB written by the guest"
plot "$dat/scale-ram.dat" using 1:2 with linespoints lw 2 title "clone (first output)", \
     "" using 1:3 with linespoints lw 2 title "parent pause"
set title "vCPUs (512 MiB)"
set xlabel "vCPUs"
set xtics 1
plot "$dat/scale-vcpus.dat" using 1:2 with linespoints lw 2 title "clone (first output)", \
     "" using 1:3 with linespoints lw 2 title "parent pause"
set title "children alive (512 MiB, 1 vCPU)"
set xlabel "other children of the parent alive"
set xtics autofreq
plot "$dat/scale-alive.dat" using 1:2 with linespoints lw 2 title "clone (first output)", \
     "" using 1:3 with linespoints lw 2 title "parent pause"
unset multiplot
EOF
    fi

    # Clones on demand and on other hosts (bench/service.c): first byte
    # through vmfork serve, and moving a clone (p50 and p99, ms)
    {
        csv_rows 'v_kind == "service" && v_scenario ~ /^serve-(direct|warm|empty)-/' \
            ttfb_ms.p50 ttfb_ms.p99 | sed -E 's/^serve-([a-z]+)-[^ ]*/serve:\1/'
        csv_rows 'v_kind == "service" && v_scenario ~ /^first-response-/' \
            first_response_ms.p50 first_response_ms.p99 \
            | sed -E 's/^first-response-(vmfork-command|vmfork|cold-boot|container|snapshot-prestarted|snapshot)-(linux|tiny)-[^ ]*/fresh:\1/; s/fresh:snapshot-prestarted/fresh:prestarted/; s/fresh:vmfork-command/fresh:command/'
        csv_rows 'v_kind == "service" && v_scenario ~ /^migrate-precopy-/' \
            migrate_total_ms.p50 migrate_total_ms.p99 | awk '{print "precopy:total", $2, $3}'
        csv_rows 'v_kind == "service" && v_scenario ~ /^migrate-postcopy-/' \
            running_at_dest_ms.p50 running_at_dest_ms.p99 \
            | awk '{print "postcopy:running", $2, $3}'
        csv_rows 'v_kind == "service" && v_scenario ~ /^migrate-postcopy-/' \
            migrate_total_ms.p50 migrate_total_ms.p99 | awk '{print "postcopy:total", $2, $3}'
    } | awk '$2 != "NaN"' > "$dat/service.dat"
    if [ -s "$dat/service.dat" ]; then
        gnuplot <<EOF || log "service.png: gnuplot failed"
set terminal $term
set output "$out/service.png"
set title "Clones on demand (fresh: request -> first byte of a fresh VM; serve: connect -> first byte) and moved (vmfork migrate), Linux guest, TCG"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set ylabel "ms (log scale)"
set grid ytics
set key top left
set xtics noenhanced rotate by -25
plot "$dat/service.dat" using 2:xtic(1) title "p50", "" using 3 title "p99"
EOF
    fi

    if [ -s "$dat/fanout.dat" ]; then
        gnuplot <<EOF || log "a plot failed (a partial run lacks its data?)"
set terminal $term
set output "$out/fanout.png"
set title "Fan-out: one vmfork command with count N -> every child's first guest output (p50)"
set logscale xy
set xlabel "children per command"
set ylabel "ms"
set grid
set key outside right top noenhanced
set xtics (1, 10, 100)
configs = system("awk '{print \$1}' $dat/fanout.dat | sort -u | tr '\\\\n' ' '")
plot for [c in configs] "< awk -v c=" . c . " '\$1 == c' $dat/fanout.dat" using 2:3 with linespoints lw 2 title c
EOF
    fi

    if [ -s "$out/samples.csv" ]; then
        gnuplot <<EOF || log "a plot failed (a partial run lacks its data?)"
set terminal $term
set output "$out/clone_cdf.png"
set title "Clone latency of every measured child (single forks): CDF"
set xlabel "ms (first guest output)"
set ylabel "fraction of children"
set logscale x
set grid
set key outside right top noenhanced
set datafile separator ","
scen = system("awk -F, 'NR > 1 && \$1 ~ /^fork-/ {print \$1}' $out/samples.csv | sort -u | tr '\\\\n' ' '")
plot for [s in scen] "< awk -F, -v s=" . s . " '\$1 == s && \$4 != \"nan\" {print \$4}' $out/samples.csv | sort -g | awk '{a[NR]=\$1} END {for (i = 1; i <= NR; i++) print a[i] \",\" i/NR}'" \
     using 1:2 with steps title s
EOF
    fi
    log "plots: $(cd "$out" && ls -- *.png 2>/dev/null | tr '\n' ' ')"
}

if [ $plots_only = 1 ]; then
    plots
    exit 0
fi

# ---- Run ---------------------------------------------------------------------

for f in qemu/qemu-system-x86_64 guest/linux/vmlinux guest/linux/initramfs.img \
         guest/tiny/tiny.elf; do
    if [ ! -e "$VMFORK_BUILD/$f" ]; then
        echo "bench: $VMFORK_BUILD/$f is missing: run 'make' first" >&2
        exit 1
    fi
done
if [ ! -x "$bench_bin" ] || [ -n "$(find "$VMFORK_TOP/bench" -newer "$bench_bin" -name '*.[ch]' 2>/dev/null)" ]; then
    log "building vmfork-bench"
    [ -f "$VMFORK_BUILD/meson/build.ninja" ] ||
        meson setup "$VMFORK_BUILD/meson" "$VMFORK_TOP" --buildtype=debugoptimized >&2
    meson compile -C "$VMFORK_BUILD/meson" >&2
fi
# The tiny guest with a tick every 2^20 TSC cycles (~0.46 ms at 2.3 GHz)
# instead of 2^24 (~7 ms): the child's first line then comes within half a
# millisecond of its start, not within 7 (same sources and build script)
VMFORK_BUILD="$out" TINY_TICK_TSC_DELTA=1048576 "$here/build-guest-tiny.sh" >&2

# The container peer needs runc (Debian's; crun 1.8 refuses this machine's
# hybrid cgroup layout) and root; without them it is skipped with the reason
if ! command -v runc >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing runc (Debian package) for the container peer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >&2 ||
        log "runc could not be installed: the container peer is skipped"
fi

mkdir -p "$out"
rm -f "$out"/*.png "$out"/results.json "$out"/results.csv "$out"/samples.csv "$out"/summary.md
# How busy the CPUs are with other work, over 2 s (user+nice+system+irq)
cpu_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    sleep 2
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    echo "$a $b" | awk '{ d = $4 - $2; if (d <= 0) d = 1; printf "%.0f%%", 100 * ($3 - $1) / d }'
}
load=$(cut -d' ' -f1-3 /proc/loadavg)
busy=$(cpu_busy)
log "before the run: CPUs $busy busy with other work, load average $load (above ~10% the numbers are noisy)"
# A kernel of the project's machine that packs runnable threads onto fewer
# CPUs (bench/README.md, "Noise"): latencies several times an unpacked boot's
pack=$(cat /proc/sys/kernel/sched_vcpu_pack 2>/dev/null || echo 0)
[ "$pack" = 0 ] ||
    log "this kernel packs runnable threads (sched_vcpu_pack=$pack): expect latencies several times an unpacked boot's; compare binaries within one run"
set +e
"$bench_bin" --tiny "$out/guest/tiny/tiny.elf" \
    --output "$out/results.json" --csv "$out/results.csv" \
    --samples "$out/samples.csv" --summary "$out/summary.md" "$@" \
    2>&1 | tee "$out/bench.log" >&2
status=${PIPESTATUS[0]}
set -e
if [ ! -s "$out/results.csv" ]; then
    echo "bench: vmfork-bench wrote no results (exit status $status)" >&2
    [ "$status" != 0 ] || status=1
    exit "$status"
fi
plots

# ---- Summary -----------------------------------------------------------------

echo
echo "== Results (p50 unless said; ms; USS in MiB) =="
{
    echo "scenario clone clone-p99 resume qmp pause USS fan-out-wall peer/vmfork"
    csv_rows 'v_kind != "skipped"' clone_ms.p50 clone_ms.p99 clone_resume_ms.p50 \
        qmp_ms.p50 parent_pause_ms.p50 child_uss_kib.p50 fanout_wall_ms.p50 ratio_vs_vmfork \
        | awk '{ printf "%s", $1;
                 for (i = 2; i <= NF; i++) {
                     v = $i; if (v == "NaN") v = "-";
                     else if (i == 7) v = sprintf("%.1f", v / 1024);
                     else if (i == 9) v = sprintf("%.1fx", v);
                     else v = sprintf("%.2f", v);
                     printf " %s", v }
                 printf "\n" }'
} | column -t
echo
echo "== Targets (benchmark goals, not assertions) =="
cat "$out/summary.md"
echo
echo "before the run: CPUs $busy busy with other work, load average $load; after: CPUs $(cpu_busy) busy"
[ "$pack" = 0 ] || echo "sched_vcpu_pack=$pack: this boot packs runnable threads (bench/README.md, \"Noise\")"
echo "results: $out/results.json, results.csv, samples.csv, summary.md, *.png"
exit "$status"
