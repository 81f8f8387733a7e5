/*
 * vmfork-bench: statistics, guest clocks, memory, trace points
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Statistics --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Linear interpolation between the closest ranks (R's type 7) */
static double quantile(const double *v, int n, double q)
{
    double pos = q * (n - 1);
    int lo = (int)pos;

    if (lo >= n - 1) {
        return v[n - 1];
    }
    return v[lo] + (pos - lo) * (v[lo + 1] - v[lo]);
}

void dist_of(GArray *a, Dist *d)
{
    double *v = (double *)a->data;
    double sum = 0;

    memset(d, 0, sizeof(*d));
    d->n = a->len;
    if (!a->len) {
        return;
    }
    qsort(v, a->len, sizeof(double), cmp_double);
    for (guint i = 0; i < a->len; i++) {
        sum += v[i];
    }
    d->p50 = quantile(v, a->len, 0.50);
    d->p90 = quantile(v, a->len, 0.90);
    d->p99 = quantile(v, a->len, 0.99);
    d->min = v[0];
    d->max = v[a->len - 1];
    d->mean = sum / a->len;
}

static double round3(double x)
{
    return (double)llround(x * 1000.0) / 1000.0;
}

JsonNode *dist_json(const Dist *d, bool full)
{
    g_autoptr(JsonBuilder) b = NULL;

    if (!d || d->n == 0) {
        return json_node_new(JSON_NODE_NULL);
    }
    b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "p50");
    json_builder_add_double_value(b, round3(d->p50));
    json_builder_set_member_name(b, "p90");
    json_builder_add_double_value(b, round3(d->p90));
    json_builder_set_member_name(b, "p99");
    json_builder_add_double_value(b, round3(d->p99));
    json_builder_set_member_name(b, "max");
    json_builder_add_double_value(b, round3(d->max));
    /* The samples behind the percentiles: the targets table shows it */
    json_builder_set_member_name(b, "n");
    json_builder_add_int_value(b, d->n);
    if (full) {
        json_builder_set_member_name(b, "min");
        json_builder_add_double_value(b, round3(d->min));
        json_builder_set_member_name(b, "mean");
        json_builder_add_double_value(b, round3(d->mean));
    }
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

JsonNode *json_path(JsonObject *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    JsonNode *n = NULL;

    for (int i = 0; parts[i]; i++) {
        if (!o || !json_object_has_member(o, parts[i])) {
            return NULL;
        }
        n = json_object_get_member(o, parts[i]);
        o = JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
    }
    return n;
}

double json_path_num(JsonObject *o, const char *path)
{
    JsonNode *n = o ? json_path(o, path) : NULL;

    if (!n || !JSON_NODE_HOLDS_VALUE(n)) {
        return NAN;
    }
    return json_node_get_double(n);
}

/* ---- Guest clocks ------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;

    return x < y ? -1 : x > y;
}

Offset offset_estimate(Stream *s, gint64 from_ns, gint64 to_ns, int min_n)
{
    g_autoptr(GArray) lines = stream_lines_since(s, from_ns);
    g_autoptr(GArray) lags = g_array_new(false, false, sizeof(gint64));
    Offset o = { 0 };

    for (guint i = 0; i < lines->len; i++) {
        Line *l = &g_array_index(lines, Line, i);

        if (l->kind == LINE_TICK && l->first_ns >= from_ns &&
            l->first_ns < to_ns) {
            gint64 lag = l->first_ns - l->guest_ns;

            g_array_append_val(lags, lag);
        }
    }
    o.n = lags->len;
    if (o.n < MAX(min_n, 1)) {
        return o;
    }
    qsort(lags->data, lags->len, sizeof(gint64), cmp_i64);
    o.ok = true;
    o.off_ns = g_array_index(lags, gint64, 0);
    o.spread_ns = g_array_index(lags, gint64, lags->len / 2) - o.off_ns;
    return o;
}

bool tick_median_gap(Stream *s, gint64 from_ns, gint64 to_ns,
                     gint64 *median_gap)
{
    g_autoptr(GArray) lines = stream_lines_since(s, from_ns);
    g_autoptr(GArray) gaps = g_array_new(false, false, sizeof(gint64));
    const Line *prev = NULL;

    for (guint i = 0; i < lines->len; i++) {
        Line *l = &g_array_index(lines, Line, i);

        if (l->kind != LINE_TICK || l->first_ns >= to_ns) {
            continue;
        }
        if (prev) {
            gint64 gap = l->guest_ns - prev->guest_ns;

            g_array_append_val(gaps, gap);
        }
        prev = l;
    }
    if (gaps->len < 3) {
        return false;
    }
    qsort(gaps->data, gaps->len, sizeof(gint64), cmp_i64);
    *median_gap = g_array_index(gaps, gint64, gaps->len / 2);
    return true;
}

bool tick_gap_across(Stream *s, gint64 from_ns, gint64 to_ns, gint64 off_ns,
                     gint64 h_start, gint64 h_end, gint64 *gap)
{
    g_autoptr(GArray) lines = stream_lines_since(s, from_ns);
    const Line *prev = NULL;
    bool found = false;

    *gap = 0;
    for (guint i = 0; i < lines->len; i++) {
        Line *l = &g_array_index(lines, Line, i);

        if (l->kind != LINE_TICK || l->first_ns > to_ns) {
            continue;
        }
        if (prev && prev->guest_ns + off_ns <= h_end &&
            l->guest_ns + off_ns >= h_start) {
            *gap = MAX(*gap, l->guest_ns - prev->guest_ns);
            found = true;
        }
        prev = l;
    }
    return found;
}

/* ---- Memory ------------------------------------------------------------- */

Smaps smaps_read(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/smaps_rollup", pid);
    g_autofree char *text = NULL;
    Smaps m = { 0 };
    gint64 priv_clean = -1, priv_dirty = -1;

    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return m;
    }
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        long long v;
        char key[64];

        if (nl) {
            *nl = 0;
        }
        if (sscanf(line, "%63[^:]: %lld kB", key, &v) == 2) {
            if (!strcmp(key, "Rss")) {
                m.rss_kib = v;
            } else if (!strcmp(key, "Pss")) {
                m.pss_kib = v;
            } else if (!strcmp(key, "Private_Clean")) {
                priv_clean = v;
            } else if (!strcmp(key, "Private_Dirty")) {
                priv_dirty = v;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    if (priv_clean >= 0 && priv_dirty >= 0) {
        m.uss_kib = priv_clean + priv_dirty;
        m.ok = true;
    }
    return m;
}

/* ---- Trace points ------------------------------------------------------- */

TraceChild *trace_child(TraceFork *tf, int pid)
{
    for (int i = 0; i < tf->nchildren; i++) {
        if (tf->child[i].pid == pid) {
            return &tf->child[i];
        }
    }
    if (tf->nchildren == TRACE_MAX_CHILDREN) {
        return NULL;
    }
    tf->child[tf->nchildren] = (TraceChild) {
        .pid = pid, .forked_us = -1, .fds_us = -1, .threads_us = -1,
        .accel_us = -1, .devices_us = -1,
    };
    return &tf->child[tf->nchildren++];
}

/*
 * Lines of QEMU's log trace backend with -msg timestamp=on:
 *   PID@SECONDS.MICROSECONDS:NAME ARGS
 * where PID is the thread id (the main thread's is the process id).
 */
void trace_parse(BenchVm *vm, gint64 rt_off, TraceFork *tf)
{
    g_autofree char *text = NULL;
    gsize len = 0;
    char *p, *end;

    if (!g_file_get_contents(vm->log_path, &text, &len, NULL) ||
        len <= vm->log_pos) {
        return;
    }
    end = strrchr(text + vm->log_pos, '\n');
    if (!end) {
        return;
    }
    *end = 0;
    for (p = text + vm->log_pos; p && *p;) {
        char *nl = strchr(p, '\n');
        int tid, a, b;
        long long sec, usec, us;
        char name[64], what[32];
        int off = 0;

        if (nl) {
            *nl = 0;
        }
        if (sscanf(p, "%d@%lld.%lld:%63s %n", &tid, &sec, &usec, name,
                   &off) >= 4 && off > 0) {
            const char *args = p + off;
            gint64 t = sec * 1000000000LL + usec * 1000LL - rt_off;

            if (!strcmp(name, "vmfork_start")) {
                tf->ok = true;
                tf->start_abs_ns = t;
            } else if (!strcmp(name, "vmfork_parent_paused") &&
                       sscanf(args, "vm stopped and state prepared after %lld",
                              &us) == 1) {
                tf->paused_us = us;
                tf->paused_abs_ns = t;
            } else if (!strcmp(name, "vmfork_parent_forked") &&
                       sscanf(args, "child %d pid %d forked after %lld",
                              &a, &b, &us) == 3) {
                TraceChild *c = trace_child(tf, b);

                if (c) {
                    c->forked_us = us;
                }
            } else if (!strcmp(name, "vmfork_parent_phase") &&
                       sscanf(args, "%31s done", what) == 1 &&
                       !strcmp(what, "drain-end")) {
                /* The guest's clock restarts right after (vm_start) */
                tf->restart_abs_ns = t;
            } else if (!strcmp(name, "vmfork_parent_resumed") &&
                       sscanf(args, "parent resumed, paused for %lld",
                              &us) == 1) {
                tf->resumed_us = us;
            } else if (!strcmp(name, "vmfork_parent_unlocked") &&
                       sscanf(args, "parent lets its vCPUs run, %lld",
                              &us) == 1) {
                tf->unlocked_us = us;
            } else if (!strcmp(name, "vmfork_child_phase") &&
                       sscanf(args, "%31s done %lld", what, &us) == 2) {
                TraceChild *c = trace_child(tf, tid);

                if (c && !strcmp(what, "fds")) {
                    c->fds_us = us;
                } else if (c && !strcmp(what, "threads")) {
                    c->threads_us = us;
                } else if (c && !strcmp(what, "accel")) {
                    c->accel_us = us;
                } else if (c && !strcmp(what, "devices")) {
                    c->devices_us = us;
                    c->devices_abs_ns = t;
                }
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    vm->log_pos = end - text + 1;
}
