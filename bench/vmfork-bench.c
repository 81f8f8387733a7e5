/*
 * vmfork-bench: the vmfork benchmark suite
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Boots each guest configuration once, forks it many times with the
 * vmfork QMP command, measures from inside the guests (see scenarios.c and
 * bench/README.md), and runs the peers on the same guest: cold boot,
 * snapshot restore, template cloning.  Results: one JSON object per
 * scenario, a CSV row per scenario, a CSV row per measured child, and the
 * project's targets with what was measured.
 *
 * Exit status: 0 every scenario ran (some may be skipped for a missing
 * accelerator or guest), 1 a scenario failed, 2 usage error, 3 the run was
 * interrupted or could not start.
 */

#include "bench.h"

#include <fnmatch.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define BENCH_VERSION "0.1.0"

static gboolean opt_json, opt_quick, opt_list, opt_no_peers, opt_version;
static char *opt_output, *opt_csv, *opt_samples, *opt_summary;
static char **opt_scenarios;
static int opt_n, opt_verbose_count;
static char *opt_qemu, *opt_kernel, *opt_initrd, *opt_tiny, *opt_workdir,
            *opt_shmdir;

static gboolean on_verbose(const char *name G_GNUC_UNUSED,
                           const char *value G_GNUC_UNUSED,
                           gpointer data G_GNUC_UNUSED,
                           GError **errp G_GNUC_UNUSED)
{
    opt_verbose_count++;
    return TRUE;
}

static const GOptionEntry entries[] = {
    { "json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
      "Print one JSON object per scenario on stdout (one per line)", NULL },
    { "output", 'o', 0, G_OPTION_ARG_FILENAME, &opt_output,
      "Write every result as one JSON document to FILE", "FILE" },
    { "csv", 0, 0, G_OPTION_ARG_FILENAME, &opt_csv,
      "Write one CSV row per scenario to FILE", "FILE" },
    { "samples", 0, 0, G_OPTION_ARG_FILENAME, &opt_samples,
      "Write one CSV row per measured child to FILE", "FILE" },
    { "summary", 0, 0, G_OPTION_ARG_FILENAME, &opt_summary,
      "Write the targets table (Markdown) to FILE", "FILE" },
    { "quick", 0, 0, G_OPTION_ARG_NONE, &opt_quick,
      "A short smoke run (about a minute)", NULL },
    { "scenario", 's', 0, G_OPTION_ARG_STRING_ARRAY, &opt_scenarios,
      "Only the scenarios whose name matches GLOB (repeatable; peers-* are "
      "the peers)", "GLOB" },
    { "list", 0, 0, G_OPTION_ARG_NONE, &opt_list,
      "List the scenarios and exit", NULL },
    { "n", 'n', 0, G_OPTION_ARG_INT, &opt_n,
      "Measured commands per scenario (overrides the built-in choice)", "N" },
    { "dirty-mib", 0, 0, G_OPTION_ARG_INT, &bench_dirty_mib,
      "MiB a Linux child dirties for the memory figures (default 64)", "N" },
    { "no-peers", 0, 0, G_OPTION_ARG_NONE, &opt_no_peers,
      "Skip cold boot, snapshot restore and template cloning", NULL },
    { "qemu", 0, 0, G_OPTION_ARG_FILENAME, &opt_qemu,
      "Patched QEMU (default $VMFORK_QEMU or build/qemu/qemu-system-x86_64)",
      "PATH" },
    { "linux-kernel", 0, 0, G_OPTION_ARG_FILENAME, &opt_kernel,
      "Linux guest kernel (default $VMFORK_LINUX_KERNEL or "
      "build/guest/linux/vmlinux)", "PATH" },
    { "linux-initrd", 0, 0, G_OPTION_ARG_FILENAME, &opt_initrd,
      "Linux guest initramfs (default $VMFORK_LINUX_INITRD or "
      "build/guest/linux/initramfs.img)", "PATH" },
    { "tiny", 0, 0, G_OPTION_ARG_FILENAME, &opt_tiny,
      "Tiny guest (default $VMFORK_TINY or build/guest/tiny/tiny.elf)",
      "PATH" },
    { "workdir", 0, 0, G_OPTION_ARG_FILENAME, &opt_workdir,
      "Directory for sockets, serial files, logs and snapshots (default "
      "$TMPDIR or /tmp)", "DIR" },
    { "shmdir", 0, 0, G_OPTION_ARG_FILENAME, &opt_shmdir,
      "Directory for the template cloning RAM file (default /dev/shm)",
      "DIR" },
    { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, on_verbose,
      "Print every measurement (twice: also the QEMU command lines)", NULL },
    { "version", 0, 0, G_OPTION_ARG_NONE, &opt_version,
      "Print the version and exit", NULL },
    { NULL }
};

/* ---- The scenarios ------------------------------------------------------- */

static Spec fork_spec(int n, int n_mem)
{
    return (Spec) { .kind = SPEC_FORK, .count = 1, .n = n, .n_mem = n_mem };
}

static Spec template_spec(int n, int n_mem)
{
    return (Spec) { .kind = SPEC_FORK, .template = true, .count = 1, .n = n,
                    .n_mem = n_mem };
}

static Spec fanout_spec(int count, bool template, int n)
{
    return (Spec) { .kind = SPEC_FORK, .template = template, .count = count,
                    .n = n };
}

/* Single forks while @alive other children of the parent live */
static Spec alive_spec(int alive, int n)
{
    return (Spec) { .kind = SPEC_FORK, .count = 1, .n = n, .alive = alive };
}

static Spec peers_spec(int cold, int n)
{
    return (Spec) { .kind = SPEC_PEERS, .n = n, .cold_runs = cold };
}

/* The pool, vmfork serve and vmfork migrate: n first-byte samples */
static Spec service_spec(int n)
{
    return (Spec) { .kind = SPEC_SERVICE, .n = n };
}

static void add_group(GArray *groups, GuestKind guest, const char *accel,
                      int mem, int vcpus, int touch, bool disk, int nspecs,
                      const Spec *specs)
{
    Group g = { .cfg = { guest, accel, mem, vcpus, touch, disk } };

    for (int i = 0; i < nspecs; i++) {
        g.spec[g.nspecs++] = specs[i];
    }
    g_array_append_val(groups, g);
}

#define GROUP(guest, accel, mem, vcpus, ...) do { \
        const Spec s_[] = { __VA_ARGS__ }; \
        add_group(groups, guest, accel, mem, vcpus, 0, false, \
                  G_N_ELEMENTS(s_), s_); \
    } while (0)
/* A Linux guest with three quarters of its RAM written before the forks */
#define GROUP_TOUCHED(mem, ...) do { \
        const Spec s_[] = { __VA_ARGS__ }; \
        add_group(groups, GUEST_LINUX, "tcg", mem, 1, (mem) / 4 * 3, false, \
                  G_N_ELEMENTS(s_), s_); \
    } while (0)
/* A Linux guest with a qcow2 disk as virt-install writes it */
#define GROUP_DISK(...) do { \
        const Spec s_[] = { __VA_ARGS__ }; \
        add_group(groups, GUEST_LINUX, "tcg", 512, 1, 0, true, \
                  G_N_ELEMENTS(s_), s_); \
    } while (0)

/*
 * Every figure is a median of at least 20 (the performance issue): 20
 * single forks per scenario, 20 runs of each peer, 20 fan-outs where a
 * target uses them.  The fan-outs that only show how the cost grows (10
 * children, 100 with 2 GiB or under KVM) run fewer times; each of their
 * runs measures 10 or 100 children.  About 20 minutes on a 2-core machine.
 */
static GArray *scenario_groups(bool quick)
{
    GArray *groups = g_array_new(false, true, sizeof(Group));

    if (quick) {
        GROUP(GUEST_TINY, "tcg", 512, 1, fork_spec(3, 1), template_spec(3, 0),
              fanout_spec(10, false, 1), peers_spec(1, 1));
        GROUP(GUEST_LINUX, "tcg", 512, 1, fork_spec(3, 1), peers_spec(1, 1),
              service_spec(5));
        GROUP(GUEST_TINY, "kvm", 512, 1, fork_spec(2, 1));
        return groups;
    }
    GROUP(GUEST_LINUX, "tcg", 512, 1, fork_spec(20, 20), template_spec(20, 2),
          fanout_spec(10, false, 5), fanout_spec(10, true, 5),
          fanout_spec(100, false, 20), fanout_spec(100, true, 20),
          peers_spec(20, 20), service_spec(30));
    GROUP(GUEST_LINUX, "tcg", 512, 2, fork_spec(20, 2), template_spec(20, 0));
    GROUP(GUEST_LINUX, "tcg", 2048, 1, fork_spec(20, 2), template_spec(20, 0),
          fanout_spec(10, false, 2), fanout_spec(100, false, 1),
          peers_spec(20, 20));
    GROUP(GUEST_LINUX, "tcg", 2048, 2, fork_spec(20, 2));
    GROUP(GUEST_LINUX, "tcg", 512, 4, fork_spec(20, 1));
    /* How the cost grows with the children alive, and guest RAM in use */
    GROUP(GUEST_LINUX, "tcg", 512, 1, alive_spec(10, 20),
          alive_spec(100, 20));
    GROUP_TOUCHED(512, fork_spec(20, 1));
    GROUP_TOUCHED(2048, fork_spec(20, 1));
    GROUP_TOUCHED(8192, fork_spec(20, 1));
    /* What the block layer adds: overlays, switched after fork() */
    GROUP_DISK(fork_spec(20, 2), template_spec(20, 0));
    GROUP(GUEST_TINY, "tcg", 512, 1, fork_spec(20, 4), template_spec(20, 2),
          fanout_spec(10, false, 5), fanout_spec(10, true, 5),
          fanout_spec(100, false, 1), fanout_spec(100, true, 1),
          peers_spec(20, 20));
    GROUP(GUEST_TINY, "tcg", 512, 2, fork_spec(20, 2), template_spec(20, 0));
    GROUP(GUEST_TINY, "tcg", 2048, 1, fork_spec(20, 2),
          fanout_spec(100, false, 1));
    GROUP(GUEST_TINY, "tcg", 2048, 2, fork_spec(20, 0));
    GROUP(GUEST_TINY, "kvm", 512, 1, fork_spec(20, 2), template_spec(20, 1),
          fanout_spec(10, false, 2), fanout_spec(10, true, 1),
          fanout_spec(100, false, 1), peers_spec(20, 20));
    GROUP(GUEST_TINY, "kvm", 512, 2, fork_spec(20, 1), template_spec(20, 0));
    GROUP(GUEST_TINY, "kvm", 2048, 1, fork_spec(20, 1),
          fanout_spec(100, false, 1));
    GROUP(GUEST_TINY, "kvm", 2048, 2, fork_spec(20, 0));
    return groups;
}

static bool selected(const char *name)
{
    if (!opt_scenarios) {
        return true;
    }
    for (char **g = opt_scenarios; *g; g++) {
        if (fnmatch(*g, name, 0) == 0) {
            return true;
        }
    }
    return false;
}

/* Keep the selected scenarios (and the overrides); drop empty groups */
static void filter_groups(GArray *groups)
{
    for (guint i = 0; i < groups->len;) {
        Group *g = &g_array_index(groups, Group, i);
        int k = 0;

        for (int j = 0; j < g->nspecs; j++) {
            Spec s = g->spec[j];
            g_autofree char *name = spec_name(&g->cfg, &s);

            if ((s.kind == SPEC_PEERS && opt_no_peers) || !selected(name)) {
                continue;
            }
            if (opt_n > 0) {
                s.n = opt_n;
                s.n_mem = MIN(s.n_mem, opt_n);
                s.cold_runs = MIN(s.cold_runs, opt_n);
            }
            g->spec[k++] = s;
        }
        g->nspecs = k;
        if (k == 0) {
            g_array_remove_index(groups, i);
        } else {
            i++;
        }
    }
}

/* ---- Results ------------------------------------------------------------- */

static GPtrArray *results;      /* JsonObject*, all scenarios */
static GPtrArray *pending;      /* this group's, printed at its end */

static void emit(JsonObject *o, gpointer data G_GNUC_UNUSED)
{
    g_ptr_array_add(results, json_object_ref(o));
    g_ptr_array_add(pending, o);
}

static JsonObject *find_scenario(const char *name)
{
    for (guint i = 0; i < results->len; i++) {
        JsonObject *o = results->pdata[i];

        if (json_object_has_member(o, "scenario") &&
            g_str_equal(json_object_get_string_member(o, "scenario"), name)) {
            return o;
        }
    }
    return NULL;
}

static const char *const peer_methods[] = {
    "cold-boot", "snapshot", "snapshot-prestarted", "template",
    "template-prestarted", "container",
};

/*
 * Ratios of this group's peers to vmfork, like for like: a peer that starts
 * from nothing (cold boot, snapshot restore, template clone) against a
 * vmfork command on a running parent; a pre-started peer (a QEMU waiting
 * with -incoming defer) against a pre-forked child (start: false), whose
 * "cont" is what migrate-incoming is to the peer.
 */
static void add_ratios(const Group *g)
{
    g_autofree char *label = vm_config_label(&g->cfg);
    g_autofree char *fork_name = g_strdup_printf("fork-%s", label);
    g_autofree char *pre_name = g_strdup_printf("peer-vmfork-preforked-%s",
                                                label);
    JsonObject *f = find_scenario(fork_name);
    JsonObject *pre = find_scenario(pre_name);
    JsonObject *peers;

    if (!f) {
        return;
    }
    peers = json_object_new();
    for (guint i = 0; i < G_N_ELEMENTS(peer_methods); i++) {
        g_autofree char *pn = g_strdup_printf("peer-%s-%s", peer_methods[i],
                                              label);
        JsonObject *p = find_scenario(pn);
        bool prestarted = g_str_has_suffix(peer_methods[i], "-prestarted");
        JsonObject *v = prestarted ? pre : f;
        double clone = json_path_num(v, "clone_ms.p50");
        double resume = json_path_num(v, prestarted ? "vcpus_running_ms.p50" :
                                "clone_resume_ms.p50");
        double ms = json_path_num(p, "clone_ms.p50");
        double run = json_path_num(p, "vcpus_running_ms.p50");
        JsonObject *e;

        if (!p || isnan(ms) || !v) {
            continue;
        }
        e = json_object_new();
        json_object_set_double_member(e, "ms", ms);
        json_object_set_string_member(p, "compared_with", prestarted ?
                                      "vmfork pre-forked (cont)" :
                                      "vmfork (command)");
        if (!isnan(clone) && clone > 0) {
            double r = round(ms / clone * 10.0) / 10.0;

            json_object_set_double_member(e, "ratio", r);
            json_object_set_double_member(p, "ratio_vs_vmfork", r);
            json_object_set_double_member(p, "vmfork_clone_ms", clone);
        }
        if (!isnan(run) && !isnan(resume) && resume > 0) {
            double r = round(run / resume * 10.0) / 10.0;

            json_object_set_double_member(e, "ratio_vcpus_running", r);
            json_object_set_double_member(p, "ratio_vcpus_running_vs_vmfork",
                                          r);
        }
        json_object_set_object_member(peers, peer_methods[i], e);
    }
    if (json_object_get_size(peers)) {
        json_object_set_object_member(f, "peers", peers);
    } else {
        json_object_unref(peers);
    }
}

/*
 * How the cost grows with guest RAM in use: a touched group's clone
 * latency and parent pause against those of the 512 MiB touched group
 */
static void add_scaling(const Group *g)
{
    g_autofree char *label = vm_config_label(&g->cfg);
    g_autofree char *name = g_strdup_printf("fork-%s", label);
    JsonObject *f = find_scenario(name);
    JsonObject *base = find_scenario("fork-linux-tcg-512m-1cpu-touched");
    const char *const metrics[][2] = {
        { "clone_ms.p50", "clone_vs_512m" },
        { "parent_pause_ms.p50", "pause_vs_512m" },
    };

    if (!g->cfg.touch_mib || !f || !base) {
        return;
    }
    json_object_set_int_member(f, "touch_mib", g->cfg.touch_mib);
    for (guint i = 0; i < G_N_ELEMENTS(metrics); i++) {
        double v = json_path_num(f, metrics[i][0]);
        double b = json_path_num(base, metrics[i][0]);

        if (!isnan(v) && !isnan(b) && b > 0) {
            json_object_set_double_member(f, metrics[i][1],
                                          round(v / b * 100.0) / 100.0);
        }
    }
}

static char *to_json(JsonObject *o, bool pretty)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) n = json_node_new(JSON_NODE_OBJECT);

    json_node_set_object(n, o);
    json_generator_set_root(gen, n);
    json_generator_set_pretty(gen, pretty);
    return json_generator_to_data(gen, NULL);
}

static void flush_pending(void)
{
    for (guint i = 0; i < pending->len; i++) {
        if (opt_json) {
            g_autofree char *s = to_json(pending->pdata[i], false);

            printf("%s\n", s);
        }
        json_object_unref(pending->pdata[i]);
    }
    fflush(stdout);
    g_ptr_array_set_size(pending, 0);
}

/* ---- CSV ----------------------------------------------------------------- */

static const char *const csv_columns[] = {
    "scenario", "kind", "method", "accel", "guest", "mem_mib", "vcpus",
    "parent", "count", "n", "children_measured",
    "clone_ms.p50", "clone_ms.p90", "clone_ms.p99", "clone_ms.max",
    "clone_resume_ms.p50", "clone_resume_ms.p99", "clone_arrival_ms.p50",
    "ready_ms.p50", "qmp_ms.p50", "qmp_ms.p99",
    "parent_pause_ms.p50", "parent_pause_ms.p99", "parent_pause_trace_ms.p50",
    "parent_pause_unlocked_ms.p50", "parent_pause_events_ms.p50",
    "child_uss_kib.p50", "child_pss_kib.p50", "child_rss_kib.p50",
    "child_uss_dirty_kib.p50", "child_pss_dirty_kib.p50", "dirty_mib",
    "fanout_wall_ms.p50", "fanout_ready_wall_ms.p50", "clones_per_s.p50",
    "vcpus_running_ms.p50", "ratio_vs_vmfork", "ratio_vcpus_running_vs_vmfork",
    "phases_ms.qmp_in.p50", "phases_ms.check.p50", "phases_ms.prepare.p50",
    "phases_ms.fork.p50", "phases_ms.child_fds.p50",
    "phases_ms.child_threads.p50", "phases_ms.child_accel.p50",
    "phases_ms.child_devices.p50", "phases_ms.child_start.p50",
    "phases_ms.first_output.p50", "phases_ms.parent_fork.p50",
    "phases_ms.parent_first_output.p50", "tick_interval_ms",
    "offset_spread_parent_us", "offset_spread_child_us", "first_fork_clone_ms",
    "touch_mib", "clone_vs_512m", "pause_vs_512m",
    "ttfb_ms.p50", "ttfb_ms.p99", "first_response_ms.p50",
    "first_response_ms.p99", "requests_per_s", "request_ms.p50",
    "request_ms.p99", "clone_uss_kib.p50", "running_clone_uss_kib.p50",
    "migrate_total_ms.p50", "migrate_total_ms.p99", "downtime_ms.p50",
    "downtime_ms.p99", "running_at_dest_ms.p50", "running_at_dest_ms.p99",
    "skipped", "error",
};

static void csv_field(GString *out, JsonNode *n)
{
    if (!n || JSON_NODE_HOLDS_NULL(n) || !JSON_NODE_HOLDS_VALUE(n)) {
        return;
    }
    if (json_node_get_value_type(n) == G_TYPE_STRING) {
        g_autofree char *s = g_strdup(json_node_get_string(n));

        g_strdelimit(s, "\"\n\r", '\'');
        g_string_append_printf(out, "\"%s\"", s);
    } else if (json_node_get_value_type(n) == G_TYPE_DOUBLE) {
        g_string_append_printf(out, "%.3f", json_node_get_double(n));
    } else if (json_node_get_value_type(n) == G_TYPE_BOOLEAN) {
        g_string_append(out, json_node_get_boolean(n) ? "true" : "false");
    } else {
        g_string_append_printf(out, "%" G_GINT64_FORMAT, json_node_get_int(n));
    }
}

static bool write_csv(const char *path, GError **errp)
{
    g_autoptr(GString) out = g_string_new(NULL);

    for (guint c = 0; c < G_N_ELEMENTS(csv_columns); c++) {
        g_string_append_printf(out, "%s%s", c ? "," : "", csv_columns[c]);
    }
    g_string_append_c(out, '\n');
    for (guint i = 0; i < results->len; i++) {
        for (guint c = 0; c < G_N_ELEMENTS(csv_columns); c++) {
            if (c) {
                g_string_append_c(out, ',');
            }
            csv_field(out, json_path(results->pdata[i], csv_columns[c]));
        }
        g_string_append_c(out, '\n');
    }
    return g_file_set_contents(path, out->str, out->len, errp);
}

/* ---- Targets ------------------------------------------------------------- */

typedef struct Target {
    const char *what;
    const char *scenario;
    const char *metric;
    const char *goal_text;
    double goal;
    bool at_least;          /* measured >= goal (ratios, rates) */
    double scale;           /* measured is shown as metric * scale */
    const char *unit;
} Target;

/* The goals of the performance issue (a 512 MiB guest, 1 vCPU) */
static const Target targets[] = {
    { "Linux guest, TCG: command -> child's first output",
      "fork-linux-tcg-512m-1cpu", "clone_ms.p50", "<= 3 ms", 3, false, 1,
      "ms" },
    { "Linux guest, TCG: command -> child's guest clock running",
      "fork-linux-tcg-512m-1cpu", "clone_resume_ms.p50", "<= 1.5 ms", 1.5,
      false, 1, "ms" },
    { "tiny guest, TCG: command -> first output", "fork-tiny-tcg-512m-1cpu",
      "clone_ms.p50", "<= 2 ms", 2, false, 1, "ms" },
    { "tiny guest, KVM (kvm_pvm): command -> first output",
      "fork-tiny-kvm-512m-1cpu", "clone_ms.p50", "<= 8 ms", 8, false, 1,
      "ms" },
    { "parent pause, TCG, Linux guest", "fork-linux-tcg-512m-1cpu",
      "parent_pause_ms.p50", "<= 0.8 ms", 0.8, false, 1, "ms" },
    { "parent pause, TCG, Linux guest with a disk (qcow2 on an IOThread)",
      "fork-linux-tcg-512m-1cpu-disk", "parent_pause_ms.p50", "<= 0.8 ms",
      0.8, false, 1, "ms" },
    /* Until the command lets the BQL go: only then can its vCPUs run */
    { "parent pause until its vCPUs can run, TCG, Linux guest",
      "fork-linux-tcg-512m-1cpu", "parent_pause_unlocked_ms.p50", "<= 0.8 ms",
      0.8, false, 1, "ms" },
    { "parent pause until its vCPUs can run, TCG, Linux guest with a disk",
      "fork-linux-tcg-512m-1cpu-disk", "parent_pause_unlocked_ms.p50",
      "<= 0.8 ms", 0.8, false, 1, "ms" },
    { "parent pause, TCG, tiny guest", "fork-tiny-tcg-512m-1cpu",
      "parent_pause_ms.p50", "<= 0.8 ms", 0.8, false, 1, "ms" },
    { "parent pause, KVM (kvm_pvm), tiny guest", "fork-tiny-kvm-512m-1cpu",
      "parent_pause_ms.p50", "<= 1.5 ms", 1.5, false, 1, "ms" },
    { "100 Linux clones, running parent", "fanout100-linux-tcg-512m-1cpu",
      "fanout_wall_ms.p50", "<= 0.5 s", 500, false, 1, "ms" },
    { "100 Linux clones, paused template",
      "fanout100-linux-tcg-512m-1cpu-template", "fanout_wall_ms.p50",
      "<= 0.5 s", 500, false, 1, "ms" },
    { "pre-forked Linux child: cont -> guest clock running",
      "peer-vmfork-preforked-linux-tcg-512m-1cpu", "vcpus_running_ms.p50",
      "<= 0.5 ms", 0.5, false, 1, "ms" },
    { "pre-forked Linux child: cont -> first output",
      "peer-vmfork-preforked-linux-tcg-512m-1cpu", "clone_ms.p50",
      "<= 0.5 ms", 0.5, false, 1, "ms" },
    { "pre-forked Linux child, settled (pool --settle): cont -> first output",
      "peer-vmfork-preforked-settled-linux-tcg-512m-1cpu", "clone_ms.p50",
      "<= 0.5 ms", 0.5, false, 1, "ms" },
    { "8 GiB vs 512 MiB Linux guest (3/4 of RAM written): clone latency",
      "fork-linux-tcg-8192m-1cpu-touched", "clone_vs_512m", "<= 1.5x", 1.5,
      false, 1, "x" },
    { "private memory (USS) per idle Linux child", "fork-linux-tcg-512m-1cpu",
      "child_uss_kib.p50", "<= 1 MiB", 1024, false, 1.0 / 1024, "MiB" },
    { "USS per idle Linux child, 100 children",
      "fanout100-linux-tcg-512m-1cpu", "child_uss_kib.p50", "<= 1 MiB", 1024,
      false, 1.0 / 1024, "MiB" },
    { "faster than cold boot, Linux guest",
      "peer-cold-boot-linux-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "faster than snapshot restore, Linux guest",
      "peer-snapshot-linux-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "faster than template cloning, Linux guest",
      "peer-template-linux-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "faster than a container start (runc), Linux guest's workload",
      "peer-container-linux-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "pre-forked vs pre-started snapshot restore, Linux guest",
      "peer-snapshot-prestarted-linux-tcg-512m-1cpu", "ratio_vs_vmfork",
      "> 1x", 1.01, true, 1, "x" },
    { "pre-forked vs pre-started template clone, Linux guest",
      "peer-template-prestarted-linux-tcg-512m-1cpu", "ratio_vs_vmfork",
      ">= 10x", 10, true, 1, "x" },
    { "faster than cold boot, tiny guest (TCG)",
      "peer-cold-boot-tiny-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "faster than template cloning, tiny guest (TCG)",
      "peer-template-tiny-tcg-512m-1cpu", "ratio_vs_vmfork", "> 1x", 1.01,
      true, 1, "x" },
    { "pre-forked vs pre-started template clone, tiny guest (TCG)",
      "peer-template-prestarted-tiny-tcg-512m-1cpu", "ratio_vs_vmfork",
      ">= 10x", 10, true, 1, "x" },
    { "pre-forked vs pre-started template clone, tiny guest (KVM)",
      "peer-template-prestarted-tiny-kvm-512m-1cpu", "ratio_vs_vmfork",
      ">= 10x", 10, true, 1, "x" },
    /* A fresh VM's first answer on its port (service.c) */
    { "first response: faster than cold boot, Linux guest",
      "first-response-cold-boot-linux-tcg-512m-1cpu", "ratio_vs_vmfork",
      "> 1x", 1.01, true, 1, "x" },
    { "first response: faster than snapshot restore, Linux guest",
      "first-response-snapshot-linux-tcg-512m-1cpu", "ratio_vs_vmfork",
      "> 1x", 1.01, true, 1, "x" },
    { "first response: faster than a container start (runc), same service",
      "first-response-container-linux-tcg-512m-1cpu", "ratio_vs_vmfork",
      "> 1x", 1.01, true, 1, "x" },
    { "first response: pool vs pre-started snapshot restore, Linux guest",
      "first-response-snapshot-prestarted-linux-tcg-512m-1cpu",
      "ratio_vs_vmfork", "> 1x", 1.01, true, 1, "x" },
};

/*
 * The samples behind a target's figure: those of the distribution for a
 * percentile ("clone_ms.p50": clone_ms.n, 0 where it was not measured);
 * for a ratio, those of the scenario's own latency (a peer's, the 8 GiB
 * guest's)
 */
static int target_samples(JsonObject *o, const char *metric)
{
    const char *dot = strrchr(metric, '.');
    double n;

    if (dot) {
        g_autofree char *path = g_strdup_printf("%.*s.n",
                                                (int)(dot - metric), metric);

        n = json_path_num(o, path);
    } else {
        n = json_path_num(o, "clone_ms.n");
        if (isnan(n)) {
            n = json_path_num(o, "first_response_ms.n");
        }
    }
    return isnan(n) ? 0 : (int)n;
}

static JsonArray *evaluate_targets(GString *md)
{
    JsonArray *arr = json_array_new();

    g_string_append(md, "| target | goal | measured | met | n | scenario |\n"
                        "|---|---|---|---|---|---|\n");
    for (guint i = 0; i < G_N_ELEMENTS(targets); i++) {
        const Target *t = &targets[i];
        JsonObject *o = find_scenario(t->scenario);
        double v = json_path_num(o, t->metric);
        JsonObject *e = json_object_new();
        bool met = !isnan(v) && (t->at_least ? v >= t->goal : v <= t->goal);
        int n = target_samples(o, t->metric);
        g_autofree char *shown = isnan(v) ? g_strdup("not measured") :
            g_strdup_printf("%.*f %s", t->scale != 1 || v < 10 ? 2 : 1,
                            v * t->scale, t->unit);

        json_object_set_string_member(e, "target", t->what);
        json_object_set_string_member(e, "goal", t->goal_text);
        json_object_set_string_member(e, "scenario", t->scenario);
        json_object_set_string_member(e, "metric", t->metric);
        if (isnan(v)) {
            json_object_set_null_member(e, "measured");
            json_object_set_null_member(e, "met");
        } else {
            json_object_set_double_member(e, "measured", v);
            json_object_set_boolean_member(e, "met", met);
        }
        json_object_set_int_member(e, "n", n);
        json_array_add_object_element(arr, e);
        g_string_append_printf(md, "| %s | %s | %s | %s | %d | %s %s |\n",
                               t->what, t->goal_text, shown,
                               isnan(v) ? "-" : met ? "yes" : "**no**", n,
                               t->scenario, t->metric);
    }
    return arr;
}

#define SCHED_VCPU_PACK "/proc/sys/kernel/sched_vcpu_pack"

static JsonObject *host_info(void)
{
    JsonObject *h = json_object_new();
    struct utsname u;
    g_autofree char *cpuinfo = NULL, *pack = NULL;
    double la[3];

    if (uname(&u) == 0) {
        json_object_set_string_member(h, "kernel", u.release);
    }
    json_object_set_int_member(h, "cpus", sysconf(_SC_NPROCESSORS_ONLN));
    if (g_file_get_contents("/proc/cpuinfo", &cpuinfo, NULL, NULL)) {
        char *m = strstr(cpuinfo, "model name");

        if (m && (m = strchr(m, ':'))) {
            g_autofree char *name = g_strndup(m + 2, strcspn(m + 2, "\n"));

            json_object_set_string_member(h, "cpu", name);
        }
    }
    json_object_set_double_member(h, "tsc_hz", round(tsc_hz()));
    json_object_set_string_member(h, "kvm", accel_detail("kvm"));
    json_object_set_boolean_member(h, "kvm_usable",
                                   access("/dev/kvm", R_OK | W_OK) == 0);
    if (getloadavg(la, 3) == 3) {
        json_object_set_double_member(h, "loadavg_1min", la[0]);
    }
    /* Some boots of the project's machine pack threads (bench/README.md) */
    if (g_file_get_contents(SCHED_VCPU_PACK, &pack, NULL, NULL)) {
        json_object_set_int_member(h, "sched_vcpu_pack",
                                   g_ascii_strtoll(pack, NULL, 10));
    }
    return h;
}

/* ---- Paths --------------------------------------------------------------- */

/* The checkout this binary was built in: build/meson/bench/vmfork-bench */
static char *top_dir(void)
{
    g_autofree char *exe = g_file_read_link("/proc/self/exe", NULL);
    char *dir;

    if (!exe) {
        return g_get_current_dir();
    }
    dir = g_path_get_dirname(exe);
    for (int i = 0; i < 3; i++) {
        char *up = g_path_get_dirname(dir);

        g_free(dir);
        dir = up;
    }
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_free(dir);
        return g_get_current_dir();
    }
    return dir;
}

static const char *pick(const char *opt, const char *env, const char *top,
                        const char *rel)
{
    const char *e = g_getenv(env);

    if (opt) {
        return opt;
    }
    if (e && *e) {
        return e;
    }
    return g_build_filename(top, rel, NULL);
}

int main(int argc, char **argv)
{
    g_autoptr(GOptionContext) ctx = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) groups = NULL;
    g_autoptr(GString) md = g_string_new(NULL);
    g_autofree char *top = top_dir();
    JsonArray *tarr;
    int failed = 0;
    gint64 t0;

    setlocale(LC_ALL, "C");
    ctx = g_option_context_new("- benchmark vmfork against its peers");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(ctx,
        "Boots the test guests in the patched QEMU, forks them with the vmfork\n"
        "QMP command and measures from inside the guests: clone latency (the\n"
        "child's first guest timestamp), the parent's pause (its guest clock),\n"
        "the phases of vmfork (its trace points), the children's memory\n"
        "(smaps_rollup), fan-outs of 10 and 100, and the peers on the same\n"
        "guest: cold boot, snapshot restore, template cloning.  Progress goes\n"
        "to stderr.  See bench/README.md.\n\n"
        "Exit status: 0 every scenario ran or was skipped with a reason, 1 a\n"
        "scenario failed, 2 usage error, 3 interrupted or cannot start.");
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        g_printerr("vmfork-bench: %s\n", err->message);
        return 2;
    }
    if (argc > 1) {
        g_printerr("vmfork-bench: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    if (opt_version) {
        printf("vmfork-bench %s\n", BENCH_VERSION);
        return 0;
    }
    if (bench_dirty_mib < 1 || bench_dirty_mib > 65536 || opt_n < 0) {
        g_printerr("vmfork-bench: --dirty-mib must be 1..65536, --n >= 1\n");
        return 2;
    }
    bench_verbose = opt_verbose_count;
    bench_paths.qemu = pick(opt_qemu, "VMFORK_QEMU", top,
                            "build/qemu/qemu-system-x86_64");
    bench_paths.linux_kernel = pick(opt_kernel, "VMFORK_LINUX_KERNEL", top,
                                    "build/guest/linux/vmlinux");
    bench_paths.linux_initrd = pick(opt_initrd, "VMFORK_LINUX_INITRD", top,
                                    "build/guest/linux/initramfs.img");
    bench_paths.tiny = pick(opt_tiny, "VMFORK_TINY", top,
                            "build/guest/tiny/tiny.elf");
    bench_paths.vmfork_tool = pick(NULL, "VMFORK_TOOL", top,
                                   "build/meson/qmp-tools/vmfork");
    bench_paths.workdir = opt_workdir ? opt_workdir : g_get_tmp_dir();
    bench_paths.shmdir = opt_shmdir ? opt_shmdir :
        g_file_test("/dev/shm", G_FILE_TEST_IS_DIR) ? "/dev/shm" :
        bench_paths.workdir;

    groups = scenario_groups(opt_quick);
    filter_groups(groups);
    if (opt_list) {
        for (guint i = 0; i < groups->len; i++) {
            Group *g = &g_array_index(groups, Group, i);

            for (int j = 0; j < g->nspecs; j++) {
                g_autofree char *name = spec_name(&g->cfg, &g->spec[j]);

                printf("%s\n", name);
            }
        }
        return 0;
    }
    if (!groups->len) {
        g_printerr("vmfork-bench: no scenario matches\n");
        return 2;
    }

    procs_init();
    tsc_calibrate();
    streams_init();
    results = g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);
    pending = g_ptr_array_new();
    bench_samples = g_string_new(NULL);
    g_printerr("vmfork-bench: %s run, QEMU %s, host TSC %.1f MHz\n",
               opt_quick ? "quick" : "full", bench_paths.qemu, tsc_hz() / 1e6);
    t0 = now_ns();
    for (guint i = 0; i < groups->len && !procs_interrupted(); i++) {
        Group *g = &g_array_index(groups, Group, i);

        run_group(g, emit, NULL);
        add_ratios(g);
        add_scaling(g);
        flush_pending();
    }
    streams_shutdown();
    if (procs_interrupted()) {
        return 3;
    }

    for (guint i = 0; i < results->len; i++) {
        if (json_object_has_member(results->pdata[i], "error")) {
            failed++;
        }
    }
    tarr = evaluate_targets(md);
    g_printerr("\nvmfork-bench: done in %.0f s%s\n\nTargets (benchmark goals, "
               "512 MiB guests):\n\n%s", MS(now_ns() - t0) / 1000.0,
               failed ? ", SOME SCENARIOS FAILED" : "", md->str);

    if (opt_output) {
        JsonObject *doc = json_object_new();
        JsonArray *all = json_array_new();
        g_autofree char *text = NULL;
        g_autoptr(GDateTime) now = g_date_time_new_now_utc();
        g_autofree char *date = g_date_time_format_iso8601(now);

        for (guint i = 0; i < results->len; i++) {
            json_array_add_object_element(all,
                                          json_object_ref(results->pdata[i]));
        }
        json_object_set_string_member(doc, "tool", "vmfork-bench");
        json_object_set_string_member(doc, "version", BENCH_VERSION);
        json_object_set_string_member(doc, "date", date);
        json_object_set_boolean_member(doc, "quick", opt_quick);
        json_object_set_string_member(doc, "tiny_guest", bench_paths.tiny);
        json_object_set_double_member(doc, "duration_s",
                                      round(MS(now_ns() - t0)) / 1000.0);
        json_object_set_object_member(doc, "host", host_info());
        json_object_set_array_member(doc, "scenarios", all);
        json_object_set_array_member(doc, "targets", tarr);
        text = to_json(doc, true);
        json_object_unref(doc);
        if (!g_file_set_contents(opt_output, text, -1, &err)) {
            g_printerr("vmfork-bench: %s\n", err->message);
            return 3;
        }
    } else {
        json_array_unref(tarr);
    }
    if (opt_csv && !write_csv(opt_csv, &err)) {
        g_printerr("vmfork-bench: %s\n", err->message);
        return 3;
    }
    if (opt_samples) {
        g_autoptr(GString) s = g_string_new(
            "scenario,command,child,clone_ms,clone_resume_ms,clone_arrival_ms,"
            "qmp_ms,parent_pause_ms,child_uss_mib\n");

        g_string_append(s, bench_samples->str);
        if (!g_file_set_contents(opt_samples, s->str, s->len, &err)) {
            g_printerr("vmfork-bench: %s\n", err->message);
            return 3;
        }
    }
    if (opt_summary && !g_file_set_contents(opt_summary, md->str, md->len,
                                            &err)) {
        g_printerr("vmfork-bench: %s\n", err->message);
        return 3;
    }
    return failed ? 1 : 0;
}
