/*
 * vmfork-bench: the scenarios
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * How a fork is measured (see bench/README.md for the reasoning):
 *
 * The guest prints timestamps all the time: the Linux agent's "tick 1"
 * stream (CLOCK_MONOTONIC ns, about one line per 1-2 ms), the tiny guest's
 * "C" lines (its TSC).  The reader thread notes when the first byte of each
 * line reached the host.  For a stream whose guest clock runs, host time =
 * guest time + offset, and min(first byte read - guest timestamp) over a
 * few hundred lines is that offset plus the shortest delivery delay (tens
 * of microseconds): the estimate errs on the late side only.
 *
 * Under TCG (and for any QEMU that stops a VM) the guest clock stands still
 * while the VM is stopped: the parent's offset grows by its pause, and a
 * child, which continues the parent's guest clock, has an offset of its own
 * that grew by the whole time from the parent's stop to its own start.  So
 * every stream's offset is measured on that stream:
 *   - clone_ms: the child's first tick line after the fork, its guest
 *     timestamp placed on the host clock with the child's own offset, minus
 *     the host time the command was sent;
 *   - clone_resume_ms (TCG): the instant the child's guest clock started
 *     again, = freeze + (child offset - parent offset before the fork),
 *     where freeze is where the parent's clock stood still (fork_finish());
 *     it is the lower bound of "guest executing" as clone_ms is the upper
 *     one (clone_ms adds the wait for the guest's next tick);
 *   - parent_pause_ms: TCG: the parent's offset after the fork minus the one
 *     before; KVM (the guest TSC runs on while the VM is stopped): the
 *     largest gap between the parent's guest timestamps around the command
 *     minus the usual gap.
 * A first line whose timestamp the guest took before the stop (it was
 * printed after the fork) is the same line, same sequence number and
 * timestamp, in the parent or an earlier sibling: it is skipped.
 */

#include "bench.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define W_PRE_NS (200 * 1000000LL)      /* parent lines before the command */
#define W_POST_NS (200 * 1000000LL)     /* parent lines after the reply */
#define W_CHILD_NS (200 * 1000000LL)    /* child lines after its first one */
#define FANOUT_MEM_CHILDREN 10          /* children of a fan-out measured */
/* Under KVM the parent's pause is seen as a gap in its guest's ticks */
#define KVM_PAUSE_TICK_MAX_MS 3.0     /* the fast tiny guest's: ~1 ms */
/* Pre-forked children forked running, all at once: time enough for each to
 * handle its VM generation ID notification before it is stopped */
#define PREFORK_SETTLE_MS 1000
#define QMP_MS 60000

int bench_dirty_mib = 64;
GString *bench_samples;

char *spec_name(const VmConfig *c, const Spec *s)
{
    g_autofree char *label = vm_config_label(c);

    if (s->kind == SPEC_PEERS) {
        return g_strdup_printf("peers-%s", label);
    }
    if (s->kind == SPEC_SERVICE) {
        return g_strdup_printf("service-%s", label);
    }
    if (s->count > 1) {
        return g_strdup_printf("fanout%d-%s%s", s->count, label,
                               s->template ? "-template" : "");
    }
    if (s->alive) {
        return g_strdup_printf("fork-%s-alive%d", label, s->alive);
    }
    return g_strdup_printf("fork-%s%s", label, s->template ? "-template" : "");
}

/* ---- JSON helpers ------------------------------------------------------- */

static void set_dist(JsonObject *o, const char *name, GArray *v, bool full)
{
    Dist d;

    dist_of(v, &d);
    json_object_set_member(o, name, dist_json(&d, full));
}

static double p50_of(GArray *v)
{
    Dist d;

    dist_of(v, &d);
    return d.n ? d.p50 : NAN;
}

static void set_num(JsonObject *o, const char *name, double v)
{
    if (isnan(v)) {
        json_object_set_null_member(o, name);
    } else {
        json_object_set_double_member(o, name, round(v * 1000.0) / 1000.0);
    }
}

static void push(GArray *a, double v)
{
    if (!isnan(v)) {
        g_array_append_val(a, v);
    }
}

static GArray *darr(void)
{
    return g_array_new(false, false, sizeof(double));
}

JsonObject *bench_base_object(const char *scenario, const char *kind,
                              const VmConfig *c)
{
    JsonObject *o = json_object_new();

    json_object_set_string_member(o, "scenario", scenario);
    json_object_set_string_member(o, "kind", kind);
    json_object_set_string_member(o, "accel", c->accel);
    json_object_set_string_member(o, "accel_detail", accel_detail(c->accel));
    json_object_set_string_member(o, "guest", guest_name(c->guest));
    json_object_set_int_member(o, "mem_mib", c->mem_mib);
    json_object_set_int_member(o, "vcpus", c->vcpus);
    if (c->disk) {
        json_object_set_string_member(o, "disk", "qcow2, -blockdev, "
                                      "virtio-blk on an IOThread");
    }
    return o;
}

/* ---- Forks -------------------------------------------------------------- */

typedef struct FirstRef {
    guint32 seq;
    gint64 guest_ns;
} FirstRef;

typedef struct ForkCtx {
    BenchVm *parent;
    const char *dir;
    int seq;                    /* command number, for file names */
    bool frozen;                /* the parent is a paused template */
    gint64 min_guest_ns;        /* its guest clock when vmfork started */
    GArray *refs;               /* first lines of the template's children */
    gint64 last_reply;
} ForkCtx;

typedef struct Child {
    int index;
    int pid;
    char *monitor;
    char *out_path;
    Stream *out;
    gint64 ready_ns;            /* VMFORK_CHILD_READY (QEMU's timestamp) */
    bool first_ok;
    Line first;
    Offset off;
    double clone_ms, arrival_ms, resume_ms;
    Smaps idle, dirty;
} Child;

typedef struct ForkRun {
    int count;
    Child *c;
    gint64 t_send, t_reply;
    guint64 tsc_send;
    gint64 rt_off;
    gint64 t_stop, t_resume;    /* STOP / RESUME events, 0 if none */
    Offset off_b, off_a;
    double pause_ms;            /* guest-observed */
    const char *pause_method;
    TraceFork tf;
    double wall_ms, ready_wall_ms;
    double tick_ms;             /* the parent's usual tick interval */
    double parent_first_ms;     /* parent: its clock restart -> first tick */
    bool parent_ran;            /* the parent resumed after the fork */
} ForkRun;

/* The children's streams and files (the numbers stay) */
static void fork_run_release(ForkRun *r)
{
    for (int i = 0; r->c && i < r->count; i++) {
        Child *c = &r->c[i];

        stream_free(c->out);
        c->out = NULL;
        if (c->out_path) {
            unlink(c->out_path);
        }
        if (c->monitor) {
            unlink(c->monitor);
        }
        g_clear_pointer(&c->out_path, g_free);
        g_clear_pointer(&c->monitor, g_free);
    }
}

static void fork_run_free(ForkRun *r)
{
    fork_run_release(r);
    g_clear_pointer(&r->c, g_free);
}

/* Kill children of @parent and wait until it has reaped them */
static void kill_and_reap(BenchVm *parent, const int *pids, int n)
{
    int left = 0;
    gint64 deadline;

    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            left++;
        }
    }
    deadline = now_ns() + 30 * 1000000000LL;
    while (left > 0 && now_ns() < deadline) {
        JsonNode *ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_EXITED",
                                      1000, NULL);

        if (ev) {
            left--;
            json_node_unref(ev);
        } else if (procs_pid_gone(parent->pid)) {
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) {
            procs_wait_gone(pids[i], 5000);
        }
    }
}

static void kill_children(ForkCtx *ctx, ForkRun *r)
{
    g_autofree int *pids = g_new(int, r->count);

    for (int i = 0; i < r->count; i++) {
        pids[i] = r->c[i].pid;
    }
    kill_and_reap(ctx->parent, pids, r->count);
}

/* Did the parent, or an earlier child of the same template, print this very
 * line?  Then the guest took its timestamp before the fork. */
static bool shared_history(ForkCtx *ctx, GArray *parent_lines, const Line *l)
{
    for (guint i = 0; parent_lines && i < parent_lines->len; i++) {
        Line *p = &g_array_index(parent_lines, Line, i);

        if (p->kind == LINE_TICK && p->seq == l->seq &&
            p->guest_ns == l->guest_ns) {
            return true;
        }
    }
    for (guint i = 0; ctx->refs && i < ctx->refs->len; i++) {
        FirstRef *f = &g_array_index(ctx->refs, FirstRef, i);

        if (f->seq == l->seq && f->guest_ns == l->guest_ns) {
            return true;
        }
    }
    return false;
}

/* The first tick line a stream printed of its own: not one the parent (or a
 * sibling) printed too, and not one stamped before the command reached
 * vmfork (min_guest_ns, on the guest clock) */
static bool first_own_tick(ForkCtx *ctx, Stream *s, GArray *parent_lines,
                           guint from, gint64 min_guest_ns, gint64 deadline,
                           Line *out)
{
    for (;;) {
        gint i = stream_wait(s, from, LINE_TICK, deadline, out);

        if (i < 0) {
            return false;
        }
        if (out->guest_ns >= min_guest_ns &&
            !shared_history(ctx, parent_lines, out)) {
            return true;
        }
        from = i + 1;
    }
}

/*
 * Why a child has no tick line of its own: what it printed, and its
 * process's state and its threads' (a child that never ran its guest, or
 * one whose lines were all its parent's)
 */
static char *child_silence(ForkCtx *ctx, Child *c, GArray *parent_lines,
                           gint64 min_guest_ns)
{
    g_autoptr(GArray) lines = stream_lines(c->out, 0);
    g_autoptr(GString) why = g_string_new(NULL);
    g_autofree char *task_dir = g_strdup_printf("/proc/%d/task", c->pid);
    g_autoptr(GDir) tasks = g_dir_open(task_dir, 0, NULL);
    guint ticks = 0, early = 0, shared = 0;
    const char *last = NULL;
    struct stat st;

    for (guint i = 0; i < lines->len; i++) {
        Line *l = &g_array_index(lines, Line, i);

        if (l->kind != LINE_TICK) {
            last = l->text ? l->text : last;
            continue;
        }
        ticks++;
        early += l->guest_ns < min_guest_ns;
        shared += shared_history(ctx, parent_lines, l);
    }
    g_string_append_printf(why, "%u lines, %u ticks (%u stamped before the "
                           "command, %u its parent's too), file %lld bytes",
                           lines->len, ticks, early, shared,
                           stat(c->out_path, &st) == 0 ?
                           (long long)st.st_size : -1LL);
    if (last) {
        g_string_append_printf(why, ", last other line '%.60s'", last);
    }
    g_string_append(why, tasks ? "; threads (state wchan):" :
                    "; the process is gone");
    for (const char *t; tasks && (t = g_dir_read_name(tasks));) {
        g_autofree char *stat_path = g_strdup_printf("%s/%s/stat", task_dir,
                                                     t);
        g_autofree char *wchan_path = g_strdup_printf("%s/%s/wchan",
                                                      task_dir, t);
        g_autofree char *text = NULL, *wchan = NULL;
        char *end;

        g_file_get_contents(stat_path, &text, NULL, NULL);
        g_file_get_contents(wchan_path, &wchan, NULL, NULL);
        end = text ? strrchr(text, ')') : NULL;
        g_string_append_printf(why, " %s %c %s", t,
                               end && end[1] ? end[2] : '?',
                               wchan ? wchan : "?");
    }
    return g_string_free(g_steal_pointer(&why), false);
}

/* The vmfork argument that puts a disk's overlays in @dir, if any */
static char *overlay_dir_arg(const BenchVm *p, const char *dir)
{
    return p->cfg.disk ? g_strdup_printf(", \"overlay-dir\": \"%s\"", dir)
                       : g_strdup("");
}

static bool fork_once(ForkCtx *ctx, int count, bool paused_parent,
                      ForkRun *r, GError **errp)
{
    BenchVm *p = ctx->parent;
    bool was_frozen = ctx->frozen;
    g_autofree char *mon_tmpl = NULL, *out_tmpl = NULL, *args = NULL;
    g_autofree char *ovl = overlay_dir_arg(p, ctx->dir);
    g_autoptr(JsonNode) reply = NULL;
    g_autoptr(GArray) plines = NULL;
    JsonArray *children;
    gint64 deadline, earliest, min_guest = G_MININT64;
    JsonNode *ev;
    int seq = ctx->seq++;

    memset(r, 0, sizeof(*r));
    r->count = count;
    r->pause_ms = NAN;
    r->tf.resumed_us = -1;
    r->tf.unlocked_us = -1;
    r->c = g_new0(Child, count);
    mon_tmpl = g_strdup_printf("%s/f%d-%%i.qmp", ctx->dir, seq);
    out_tmpl = g_strdup_printf("%s/f%d-%%i.out", ctx->dir, seq);
    args = g_strdup_printf("{\"count\": %d, \"monitor\": \"%s\", \"serial\": "
                           "\"%s\", \"parent\": \"%s\"%s}", count, mon_tmpl,
                           out_tmpl, paused_parent ? "paused" : "running",
                           ovl);
    for (int i = 0; i < count; i++) {
        r->c[i].index = i;
        r->c[i].clone_ms = r->c[i].arrival_ms = r->c[i].resume_ms = NAN;
        r->c[i].out_path = g_strdup_printf("%s/f%d-%d.out", ctx->dir, seq, i);
        r->c[i].out = stream_file(r->c[i].out_path, p->cfg.guest,
                                  2 * W_CHILD_NS);
    }

    /* A clean window of parent lines since the last command */
    earliest = ctx->last_reply + W_POST_NS + W_PRE_NS;
    if (!was_frozen && now_ns() < earliest) {
        g_usleep((earliest - now_ns()) / 1000);
    }
    vm_drain_events(p);
    r->rt_off = realtime_offset_ns();

    r->tsc_send = host_rdtsc();
    r->t_send = now_ns();
    reply = qmp_execute_json(p->qmp, "vmfork", args, QMP_MS, errp);
    r->t_reply = now_ns();
    ctx->last_reply = r->t_reply;
    if (!reply) {
        g_prefix_error(errp, "vmfork: ");
        return false;
    }
    children = json_object_get_array_member(json_node_get_object(reply),
                                            "children");
    if (!children || (int)json_array_get_length(children) != count) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "vmfork returned no children list of %d", count);
        return false;
    }
    for (int i = 0; i < count; i++) {
        JsonObject *c = json_array_get_object_element(children, i);

        r->c[i].pid = json_object_get_int_member(c, "pid");
        r->c[i].monitor = g_strdup(json_object_get_string_member(c,
                                                                 "monitor"));
    }
    if (paused_parent) {
        ctx->frozen = true;
    }

    /* Events: STOP and RESUME came before the reply, READY after */
    deadline = now_ns() + (30 + count) * 1000000000LL;
    for (int got = 0; got < count;) {
        ev = qmp_next_event(p->qmp, MAX(0, (deadline - now_ns()) / 1000000),
                            NULL);
        if (!ev) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "only %d of %d VMFORK_CHILD_READY events", got, count);
            return false;
        }
        if (g_str_equal(qmp_event_name(ev), "STOP")) {
            r->t_stop = event_mono_ns(ev, r->rt_off);
        } else if (g_str_equal(qmp_event_name(ev), "RESUME")) {
            r->t_resume = event_mono_ns(ev, r->rt_off);
        } else if (g_str_equal(qmp_event_name(ev), "VMFORK_CHILD_READY")) {
            int pid = json_object_get_int_member(qmp_event_data(ev), "pid");

            for (int i = 0; i < count; i++) {
                if (r->c[i].pid == pid) {
                    r->c[i].ready_ns = event_mono_ns(ev, r->rt_off);
                    r->ready_wall_ms = MAX(r->ready_wall_ms,
                                           MS(r->c[i].ready_ns - r->t_send));
                }
            }
            got++;
        } else if (g_str_equal(qmp_event_name(ev), "VMFORK_CHILD_EXITED")) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "a child exited before it was ready (status %d)",
                        (int)json_object_get_int_member(qmp_event_data(ev),
                                                        "status"));
            json_node_unref(ev);
            return false;
        }
        json_node_unref(ev);
    }
    /* The children's trace lines came before their READY */
    if (p->traces) {
        trace_parse(p, r->rt_off, &r->tf);
    }

    /* The parent before the command */
    if (!was_frozen) {
        r->off_b = offset_estimate(p->serial, r->t_send - W_PRE_NS, r->t_send,
                                   10);
        /*
         * A child's line stamped before vmfork started is not its own.  The
         * vmfork_start trace point comes before vm_stop() freezes the guest
         * clock (by microseconds, or by milliseconds when the main thread
         * has to wait for the clock's lock), so this floor errs on the
         * early side.
         */
        if (r->off_b.ok) {
            min_guest = (r->tf.ok && r->tf.start_abs_ns ? r->tf.start_abs_ns :
                         r->t_send) - r->off_b.off_ns;
        }
        if (paused_parent) {
            /* A new template: its guest clock stands still from now on */
            ctx->min_guest_ns = min_guest;
            if (!ctx->refs) {
                ctx->refs = g_array_new(false, false, sizeof(FirstRef));
            }
            g_array_set_size(ctx->refs, 0);
        }
    } else {
        min_guest = ctx->min_guest_ns;
    }
    plines = stream_lines_since(p->serial, r->t_send - 1000000000LL);

    /* The children's first lines, then a window of lines for the offsets */
    deadline = now_ns() + (20 + count / 5) * 1000000000LL;
    for (int i = 0; i < count; i++) {
        Child *c = &r->c[i];

        c->first_ok = first_own_tick(ctx, c->out, plines, 0, min_guest,
                                     deadline, &c->first);
        if (!c->first_ok) {
            g_autofree char *why = child_silence(ctx, c, plines, min_guest);

            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "child %d (pid %d) printed no tick line of its own "
                        "into %s: %s", i, c->pid, c->out_path, why);
            return false;
        }
    }
    for (int i = 0; i < count; i++) {
        Child *c = &r->c[i];

        stream_wait_past(c->out, c->first.first_ns + W_CHILD_NS,
                         now_ns() + 10 * 1000000000LL);
        stream_stop(c->out);
        c->off = offset_estimate(c->out, c->first.first_ns,
                                 c->first.first_ns + W_CHILD_NS + 1, 5);
        c->arrival_ms = MS(c->first.first_ns - r->t_send);
        if (c->off.ok) {
            c->clone_ms = MS(c->first.guest_ns + c->off.off_ns - r->t_send);
        }
        if (ctx->frozen && ctx->refs) {
            FirstRef f = { c->first.seq, c->first.guest_ns };

            g_array_append_val(ctx->refs, f);
        }
        r->wall_ms = MAX(r->wall_ms, isnan(c->clone_ms) ? c->arrival_ms :
                         c->clone_ms);
    }
    r->parent_ran = !paused_parent && !was_frozen;
    return true;
}

/* When each child's guest clock started again: the freeze point plus its
 * own offset (TCG; under KVM the guest TSC does not stop with the VM) */
static void children_resumed(ForkRun *r, gint64 freeze_guest)
{
    for (int i = 0; i < r->count; i++) {
        Child *c = &r->c[i];

        if (c->off.ok) {
            c->resume_ms = MS(freeze_guest + c->off.off_ns - r->t_send);
        }
    }
}

/*
 * After the children are gone, for a parent that went on running: its
 * offset after the fork, measured on a quiet window (it stays constant from
 * the parent's resume on, and right after a fan-out the parent is starved
 * of CPU, which would bias it); from it the parent's pause, and (TCG) where
 * its guest clock had stopped: it restarted at that value when the parent
 * restarted its guest, so freeze = that instant - offset after.
 */
static void fork_finish(ForkCtx *ctx, ForkRun *r)
{
    BenchVm *p = ctx->parent;
    bool kvm = g_str_equal(p->cfg.accel, "kvm");
    gint64 t0 = now_ns(), gap, median;

    r->tick_ms = NAN;
    r->parent_first_ms = NAN;
    if (!r->parent_ran) {
        return;
    }
    stream_wait_past(p->serial, t0 + W_POST_NS, t0 + W_POST_NS +
                     10 * 1000000000LL);
    r->off_a = offset_estimate(p->serial, t0, t0 + W_POST_NS, 10);
    ctx->last_reply = t0;       /* the next fork's window starts here */
    if (tick_median_gap(p->serial, r->t_send - W_PRE_NS, r->t_send,
                        &median)) {
        r->tick_ms = MS(median);
    }
    if (!kvm && r->off_b.ok && r->off_a.ok) {
        r->pause_ms = MS(r->off_a.off_ns - r->off_b.off_ns);
        r->pause_method = "guest clock offset after - before";
        /*
         * Its clock restarted right after its last step before vm_start
         * (the trace point).  The RESUME event comes later, once its
         * vCPUs run (patch 0023): only a fallback.
         */
        gint64 restart = r->tf.restart_abs_ns ? r->tf.restart_abs_ns
                                              : r->t_resume;

        if (restart) {
            gint64 freeze = restart - r->off_a.off_ns;
            g_autoptr(GArray) after = stream_lines_since(p->serial, r->t_send);

            children_resumed(r, freeze);
            for (guint i = 0; i < after->len; i++) {
                Line *l = &g_array_index(after, Line, i);

                if (l->kind == LINE_TICK && l->guest_ns >= freeze) {
                    r->parent_first_ms = MS(l->guest_ns - freeze);
                    break;
                }
            }
        }
    } else if (kvm && r->tick_ms > KVM_PAUSE_TICK_MAX_MS) {
        /*
         * The guest's clock runs on while it is stopped: a pause shorter
         * than the time to its next tick leaves no gap (the tiny guest's
         * default tick, 7.3 ms, showed 0 ms pauses)
         */
        r->pause_method = "not measured: the guest's ticks are too far "
                          "apart (scripts/bench.sh builds a tiny guest "
                          "that ticks every 2^20 TSC cycles)";
    } else if (kvm && r->off_b.ok && r->t_stop && r->t_resume &&
               tick_gap_across(p->serial, r->t_send - W_PRE_NS,
                               r->t_reply + W_POST_NS, r->off_b.off_ns,
                               r->t_stop, r->t_resume, &gap) &&
               !isnan(r->tick_ms)) {
        r->pause_ms = MAX(0, MS(gap) - r->tick_ms);
        r->pause_method = "guest timestamp gap across STOP..RESUME - usual "
                          "gap";
    }
}

/* Memory of an idle child (1 s after the fork), then after it dirtied a
 * known amount through its agent */
static void child_memory(ForkCtx *ctx, ForkRun *r, Child *c, bool dirty)
{
    g_autofree char *sock = NULL, *args = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(QmpClient) q = NULL;
    JsonNode *ret;
    Stream *s = NULL;
    int lfd = -1, fd;
    gint64 at = r->t_reply + 1000000000LL;

    if (now_ns() < at) {
        g_usleep((at - now_ns()) / 1000);
    }
    c->idle = smaps_read(c->pid);
    if (!dirty) {
        return;
    }
    sock = g_strdup_printf("%s/m%d.sock", ctx->dir, c->pid);
    lfd = unix_listen(sock, &err);
    q = qmp_connect_unix(c->monitor, QMP_MS, &err);
    if (lfd < 0 || !q) {
        goto out;
    }
    args = g_strdup_printf("{\"id\": \"agent\", \"backend\": {\"type\": "
                           "\"socket\", \"data\": {\"addr\": {\"type\": "
                           "\"unix\", \"data\": {\"path\": \"%s\"}}, "
                           "\"server\": false}}}", sock);
    ret = qmp_execute_json(q, "chardev-change", args, QMP_MS, &err);
    if (!ret) {
        goto out;
    }
    json_node_unref(ret);
    fd = unix_accept(lfd, QMP_MS, &err);
    if (fd < 0) {
        goto out;
    }
    s = stream_socket(fd, ctx->parent->cfg.guest, "child agent");
    if (ctx->parent->cfg.guest == GUEST_LINUX) {
        g_autofree char *cmd = g_strdup_printf("alloc %d", bench_dirty_mib);
        g_autofree char *a = serial_command(s, cmd, QMP_MS, &err);
        g_autofree char *b = a ? serial_command(s, "fill 1", 120000, &err)
                                : NULL;

        if (!b) {
            goto out;
        }
    } else {
        g_autofree char *a = serial_command(s, "w 1", 120000, &err);

        if (!a) {
            goto out;
        }
    }
    c->dirty = smaps_read(c->pid);
out:
    if (err && bench_verbose) {
        g_printerr("  child memory (pid %d): %s\n", c->pid, err->message);
    }
    stream_free(s);
    if (lfd >= 0) {
        close(lfd);
    }
    if (sock) {
        unlink(sock);
    }
}

/* Phases of one child from the trace points, ms (NAN when unknown) */
enum {
    PH_QMP_IN, PH_CHECK, PH_PREPARE, PH_FORK, PH_FDS, PH_THREADS, PH_ACCEL,
    PH_DEVICES, PH_START, PH_FIRST_OUTPUT, PH__N
};
static const char *const phase_names[PH__N] = {
    "qmp_in", "check", "prepare", "fork", "child_fds", "child_threads",
    "child_accel", "child_devices", "child_start", "first_output",
};

static void child_phases(ForkRun *r, Child *c, bool kvm, double *ph)
{
    TraceFork *tf = &r->tf;
    TraceChild *tc;
    gint64 t0, child0, first;

    for (int i = 0; i < PH__N; i++) {
        ph[i] = NAN;
    }
    if (!tf->ok || !tf->paused_abs_ns) {
        return;
    }
    t0 = tf->paused_abs_ns - tf->paused_us * 1000;
    ph[PH_QMP_IN] = MS(t0 - r->t_send);
    ph[PH_CHECK] = MS(tf->start_abs_ns - t0);
    ph[PH_PREPARE] = MS(tf->paused_abs_ns - tf->start_abs_ns);
    tc = trace_child(tf, c->pid);
    if (!tc || tc->devices_us < 0 || tc->fds_us < 0) {
        return;
    }
    child0 = tc->devices_abs_ns - tc->devices_us * 1000;
    ph[PH_FORK] = MS(child0 - tf->paused_abs_ns);
    ph[PH_FDS] = tc->fds_us / 1000.0;
    ph[PH_THREADS] = (tc->threads_us - tc->fds_us) / 1000.0;
    ph[PH_ACCEL] = (tc->accel_us - tc->threads_us) / 1000.0;
    ph[PH_DEVICES] = (tc->devices_us - tc->accel_us) / 1000.0;
    if (!c->off.ok) {
        return;
    }
    first = c->first.guest_ns + c->off.off_ns;
    if (!kvm && !isnan(c->resume_ms)) {
        gint64 resume = r->t_send + (gint64)(c->resume_ms * NS_PER_MS);

        ph[PH_START] = MS(resume - tc->devices_abs_ns);
        ph[PH_FIRST_OUTPUT] = MS(first - resume);
    } else {
        ph[PH_FIRST_OUTPUT] = MS(first - tc->devices_abs_ns);
    }
}

typedef struct Agg {
    GArray *clone, *resume, *arrival, *ready, *qmp, *pause, *pause_trace,
           *pause_unlocked, *pause_events, *uss, *pss, *rss, *uss_dirty,
           *pss_dirty, *wall, *ready_wall, *rate, *lag_parent, *lag_child,
           *tick;
    GArray *ph[PH__N];
    GArray *ph_parent_fork, *ph_parent_first;
    GString *samples;               /* per child: CSV lines */
    const char *pause_method;
    int children;
    GuestKind guest;
} Agg;

/* The series of an Agg other than ph[], for agg_init() and agg_free() */
#define AGG_SERIES(a) { \
        &(a)->clone, &(a)->resume, &(a)->arrival, &(a)->ready, &(a)->qmp, \
        &(a)->pause, &(a)->pause_trace, &(a)->pause_unlocked, \
        &(a)->pause_events, &(a)->uss, \
        &(a)->pss, &(a)->rss, &(a)->uss_dirty, &(a)->pss_dirty, &(a)->wall, \
        &(a)->ready_wall, &(a)->rate, &(a)->lag_parent, &(a)->lag_child, \
        &(a)->ph_parent_fork, &(a)->tick, &(a)->ph_parent_first, \
    }

static void agg_init(Agg *a)
{
    GArray **all[] = AGG_SERIES(a);

    memset(a, 0, sizeof(*a));
    for (guint i = 0; i < G_N_ELEMENTS(all); i++) {
        *all[i] = darr();
    }
    for (int i = 0; i < PH__N; i++) {
        a->ph[i] = darr();
    }
    a->samples = g_string_new(NULL);
}

static void agg_free(Agg *a)
{
    GArray **all[] = AGG_SERIES(a);

    for (guint i = 0; i < G_N_ELEMENTS(all); i++) {
        g_array_free(*all[i], true);
    }
    for (int i = 0; i < PH__N; i++) {
        g_array_free(a->ph[i], true);
    }
    g_string_free(a->samples, true);
}

static void agg_add(Agg *a, ForkRun *r, bool kvm, const char *scenario,
                    int cmd)
{
    TraceChild *first_child = NULL;

    push(a->qmp, MS(r->t_reply - r->t_send));
    push(a->pause, r->pause_ms);
    push(a->tick, r->tick_ms);
    push(a->ph_parent_first, r->parent_first_ms);
    if (r->pause_method) {
        a->pause_method = r->pause_method;
    }
    if (r->tf.resumed_us >= 0) {
        push(a->pause_trace, r->tf.resumed_us / 1000.0);
    }
    if (r->tf.unlocked_us >= 0) {
        push(a->pause_unlocked, r->tf.unlocked_us / 1000.0);
    }
    if (r->t_stop && r->t_resume) {
        push(a->pause_events, MS(r->t_resume - r->t_stop));
    }
    if (r->off_b.ok) {
        push(a->lag_parent, r->off_b.spread_ns / 1000.0);
    }
    if (r->count > 1) {
        push(a->wall, r->wall_ms);
        push(a->ready_wall, r->ready_wall_ms);
        push(a->rate, r->count / (r->wall_ms / 1000.0));
    }
    if (bench_verbose > 2) {
        g_printerr("      trace: start %+.3f ms, paused %lld us, resumed %lld us",
                   MS(r->tf.start_abs_ns - r->t_send),
                   (long long)r->tf.paused_us, (long long)r->tf.resumed_us);
        for (int i = 0; i < r->tf.nchildren; i++) {
            g_printerr(", pid %d forked %lld us", r->tf.child[i].pid,
                       (long long)r->tf.child[i].forked_us);
        }
        g_printerr("\n");
    }
    if (r->tf.ok && r->tf.nchildren) {
        for (int i = 0; i < r->tf.nchildren; i++) {
            TraceChild *tc = &r->tf.child[i];

            if (tc->forked_us >= 0 && !first_child) {
                first_child = tc;
            }
        }
        if (first_child) {
            push(a->ph_parent_fork,
                 (first_child->forked_us - r->tf.paused_us) / 1000.0);
        }
    }
    for (int i = 0; i < r->count; i++) {
        Child *c = &r->c[i];
        double ph[PH__N];

        a->children++;
        push(a->clone, c->clone_ms);
        push(a->resume, c->resume_ms);
        push(a->arrival, c->arrival_ms);
        if (c->ready_ns) {
            push(a->ready, MS(c->ready_ns - r->t_send));
        }
        if (c->off.ok) {
            push(a->lag_child, c->off.spread_ns / 1000.0);
        }
        if (c->idle.ok) {
            push(a->uss, c->idle.uss_kib);
            push(a->pss, c->idle.pss_kib);
            push(a->rss, c->idle.rss_kib);
        }
        if (c->dirty.ok) {
            push(a->uss_dirty, c->dirty.uss_kib);
            push(a->pss_dirty, c->dirty.pss_kib);
        }
        child_phases(r, c, kvm, ph);
        for (int k = 0; k < PH__N; k++) {
            push(a->ph[k], ph[k]);
        }
        if (bench_verbose > 1) {
            g_printerr("      child %d pid %d: clone %.2f resume %.2f "
                       "arrival %.2f ready %.2f ms; phases", i, c->pid,
                       c->clone_ms, c->resume_ms, c->arrival_ms,
                       c->ready_ns ? MS(c->ready_ns - r->t_send) : NAN);
            for (int k = 0; k < PH__N; k++) {
                g_printerr(" %s %.2f", phase_names[k], ph[k]);
            }
            g_printerr("; offset spread %.0f us\n", c->off.spread_ns / 1e3);
        }
        g_string_append_printf(a->samples, "%s,%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,"
                               "%.3f\n", scenario, cmd, i, c->clone_ms,
                               c->resume_ms, c->arrival_ms,
                               MS(r->t_reply - r->t_send), r->pause_ms,
                               c->idle.ok ? c->idle.uss_kib / 1024.0 : NAN);
    }
}

static void agg_to_json(Agg *a, JsonObject *o, bool kvm)
{
    JsonObject *ph = json_object_new();

    json_object_set_int_member(o, "children_measured", a->children);
    set_dist(o, "clone_ms", a->clone, false);
    set_dist(o, "clone_resume_ms", a->resume, false);
    set_dist(o, "clone_arrival_ms", a->arrival, false);
    set_dist(o, "ready_ms", a->ready, false);
    set_dist(o, "qmp_ms", a->qmp, false);
    set_dist(o, "parent_pause_ms", a->pause, false);
    if (a->pause_method) {
        json_object_set_string_member(o, "parent_pause_method",
                                      a->pause_method);
    } else {
        json_object_set_null_member(o, "parent_pause_method");
    }
    set_dist(o, "parent_pause_trace_ms", a->pause_trace, false);
    set_dist(o, "parent_pause_unlocked_ms", a->pause_unlocked, false);
    set_dist(o, "parent_pause_events_ms", a->pause_events, false);
    set_dist(o, "child_uss_kib", a->uss, false);
    set_dist(o, "child_pss_kib", a->pss, false);
    set_dist(o, "child_rss_kib", a->rss, false);
    set_dist(o, "child_uss_dirty_kib", a->uss_dirty, false);
    set_dist(o, "child_pss_dirty_kib", a->pss_dirty, false);
    json_object_set_int_member(o, "dirty_mib", !a->uss_dirty->len ? 0 :
                               a->guest == GUEST_LINUX ? bench_dirty_mib : 1);
    set_dist(o, "fanout_wall_ms", a->wall, false);
    set_dist(o, "fanout_ready_wall_ms", a->ready_wall, false);
    set_dist(o, "clones_per_s", a->rate, false);
    for (int k = 0; k < PH__N; k++) {
        set_dist(ph, phase_names[k], a->ph[k], false);
    }
    set_dist(ph, "parent_fork", a->ph_parent_fork, false);
    set_dist(ph, "parent_first_output", a->ph_parent_first, false);
    json_object_set_object_member(o, "phases_ms", ph);
    set_num(o, "tick_interval_ms", p50_of(a->tick));
    set_num(o, "offset_spread_parent_us", p50_of(a->lag_parent));
    set_num(o, "offset_spread_child_us", p50_of(a->lag_child));
    (void)kvm;
}

/* ---- Scenario runner ---------------------------------------------------- */

typedef struct GroupRun {
    const Group *g;
    char *dir;
    BenchVm *parent;
    ForkCtx ctx;
} GroupRun;

static bool ensure_parent(GroupRun *gr, GError **errp)
{
    VmSpawnOpts o = { .paused = true, .connect_qmp = true };

    if (gr->parent && !procs_pid_gone(gr->parent->pid)) {
        return true;
    }
    if (gr->parent) {
        g_printerr("  the parent VM died; booting a new one\n");
        vm_destroy(gr->parent);
        gr->parent = NULL;
    }
    gr->parent = vm_spawn(&gr->g->cfg, gr->dir, "parent", &o, errp);
    if (!gr->parent || !vm_boot(gr->parent, errp)) {
        return false;
    }
    if (gr->g->cfg.guest == GUEST_LINUX) {
        g_autofree char *r = serial_command(gr->parent->serial, "tick 1",
                                            QMP_MS, errp);

        if (!r) {
            return false;
        }
    }
    if (gr->g->cfg.guest == GUEST_LINUX && gr->g->cfg.touch_mib) {
        /* Guest RAM in use: the agent's buffer, written once */
        g_autofree char *cmd = g_strdup_printf("alloc %d",
                                               gr->g->cfg.touch_mib);
        g_autofree char *a = serial_command(gr->parent->serial, cmd, QMP_MS,
                                            errp);
        g_autofree char *f = a ? serial_command(gr->parent->serial, "fill 1",
                                                600000, errp) : NULL;

        if (!f) {
            return false;
        }
        g_printerr("   the guest wrote %d MiB of its RAM\n",
                   gr->g->cfg.touch_mib);
    }
    if (gr->ctx.refs) {
        g_array_free(gr->ctx.refs, true);
    }
    memset(&gr->ctx, 0, sizeof(gr->ctx));
    gr->ctx.parent = gr->parent;
    gr->ctx.dir = gr->dir;
    gr->ctx.last_reply = now_ns();
    return true;
}

/*
 * Let a paused template run again.  Its guest clock had stood still since
 * its first stop and restarts, right after the RESUME event, at that
 * value: freeze = RESUME - its offset now.  Returns whether it is known.
 */
static bool thaw(GroupRun *gr, gint64 *freeze)
{
    BenchVm *p = gr->parent;
    bool ok = false;

    if (gr->ctx.frozen && p && !procs_pid_gone(p->pid)) {
        gint64 rt_off, t_resume = 0;
        g_autoptr(JsonNode) r = NULL;
        JsonNode *ev;
        Offset off;

        vm_drain_events(p);
        rt_off = realtime_offset_ns();
        r = vm_qmp(p, "cont", NULL, QMP_MS, NULL);
        ev = r ? qmp_wait_event(p->qmp, "RESUME", 5000, NULL) : NULL;
        if (ev) {
            t_resume = event_mono_ns(ev, rt_off);
            json_node_unref(ev);
        }
        gr->ctx.last_reply = now_ns();
        stream_wait_past(p->serial, now_ns() + W_POST_NS,
                         now_ns() + W_POST_NS + 10 * 1000000000LL);
        off = offset_estimate(p->serial, gr->ctx.last_reply,
                              gr->ctx.last_reply + W_POST_NS, 10);
        ok = t_resume && off.ok;
        *freeze = t_resume - off.off_ns;
    }
    gr->ctx.frozen = false;
    if (gr->ctx.refs) {
        g_array_set_size(gr->ctx.refs, 0);
    }
    return ok;
}

static void report_tsc(JsonObject *o, ForkRun *r)
{
    JsonObject *t = json_object_new();
    double hz = tsc_hz();
    long double guest_at_send;

    json_object_set_double_member(t, "host_tsc_hz", round(hz));
    json_object_set_int_member(t, "host_tsc_at_send", r->tsc_send);
    if (r->off_b.ok) {
        guest_at_send = (long double)(r->t_send - r->off_b.off_ns) * hz / 1e9L;
        json_object_set_int_member(t, "guest_tsc_at_send",
                                   (gint64)guest_at_send);
        json_object_set_int_member(t, "guest_minus_host_cycles",
                                   (gint64)(guest_at_send -
                                            (long double)r->tsc_send));
        json_object_set_boolean_member(t, "guest_equals_host",
                                       fabsl(guest_at_send - r->tsc_send) <
                                       hz / 1000.0);
    }
    json_object_set_object_member(o, "tsc", t);
}

/*
 * Children that live, paused (start: false), while a scenario measures
 * its forks: the parent then holds their pidfds, status pipes and records,
 * and the host their memory.  Returns their pids (NULL on error).
 */
static GArray *keep_alive(GroupRun *gr, int count, GError **errp)
{
    BenchVm *p = gr->parent;
    g_autofree char *ovl = overlay_dir_arg(p, gr->dir);
    g_autofree char *args = g_strdup_printf(
        "{\"count\": %d, \"start\": false, \"monitor\": "
        "\"%s/alive-%%i.qmp\", \"serial\": \"%s/alive-%%i.out\"%s}", count,
        gr->dir, gr->dir, ovl);
    g_autoptr(JsonNode) reply = NULL;
    GArray *pids = g_array_new(false, false, sizeof(int));
    JsonArray *children;

    vm_drain_events(p);
    reply = vm_qmp(p, "vmfork", args, QMP_MS, errp);
    children = reply ? json_object_get_array_member(
                   json_node_get_object(reply), "children") : NULL;
    for (guint i = 0; children && i < json_array_get_length(children); i++) {
        int pid = json_object_get_int_member(
            json_array_get_object_element(children, i), "pid");

        g_array_append_val(pids, pid);
    }
    for (int got = 0; children && got < count; got++) {
        JsonNode *ev = qmp_wait_event(p->qmp, "VMFORK_CHILD_READY", 60000,
                                      errp);

        if (!ev) {
            children = NULL;
        }
        json_node_unref(ev);
    }
    if (!children) {
        for (guint i = 0; i < pids->len; i++) {
            kill(g_array_index(pids, int, i), SIGKILL);
        }
        g_array_free(pids, true);
        return NULL;
    }
    gr->ctx.last_reply = now_ns();
    return pids;
}

static void let_die(GroupRun *gr, GArray *pids)
{
    kill_and_reap(gr->parent, (const int *)pids->data, pids->len);
    for (int i = 0; i < (int)pids->len; i++) {
        g_autofree char *mon = g_strdup_printf("%s/alive-%d.qmp", gr->dir, i);
        g_autofree char *out = g_strdup_printf("%s/alive-%d.out", gr->dir, i);

        unlink(mon);
        unlink(out);
    }
    g_array_free(pids, true);
}

static JsonObject *run_fork_spec(GroupRun *gr, const Spec *s, GError **errp)
{
    g_autofree char *name = spec_name(&gr->g->cfg, s);
    JsonObject *o = bench_base_object(name, s->count > 1 ? "fanout" : "fork",
                                &gr->g->cfg);
    bool kvm = g_str_equal(gr->g->cfg.accel, "kvm");
    int warmup = s->count == 1 && !s->template ? 1 : 0;
    int mem_done = 0;
    double first_clone = NAN;
    bool slow_ticks = false;
    g_autoptr(GArray) runs = g_array_new(false, true, sizeof(ForkRun));
    GArray *alive = NULL;
    Agg a;

    json_object_set_string_member(o, "parent", s->template ? "paused"
                                                            : "running");
    json_object_set_int_member(o, "count", s->count);
    json_object_set_int_member(o, "n", s->n);
    if (s->alive) {
        json_object_set_int_member(o, "alive", s->alive);
        if (!ensure_parent(gr, errp) ||
            !(alive = keep_alive(gr, s->alive, errp))) {
            return o;
        }
    }
    agg_init(&a);
    a.guest = gr->g->cfg.guest;
    /* A hundred Linux children each printing a line every millisecond
     * would be a hundred busy VMs on two cores: 10 ms ticks instead (the
     * first output is then up to ~10 ms after the child runs; the guest
     * clock restart is not affected) */
    if (gr->g->cfg.guest == GUEST_LINUX && s->count >= 100 &&
        ensure_parent(gr, errp)) {
        g_free(serial_command(gr->parent->serial, "tick 10", QMP_MS, NULL));
        slow_ticks = true;
        g_usleep(W_PRE_NS / 1000);
    }
    for (int i = -warmup; i < s->n && !procs_interrupted(); i++) {
        ForkRun r = { 0 };
        bool ok;

        if (!ensure_parent(gr, errp)) {
            break;
        }
        ok = fork_once(&gr->ctx, s->count, s->template, &r, errp);
        if (ok && i >= 0) {
            bool all = s->count > 1;

            if (all || mem_done < s->n_mem) {
                /* smaps_rollup of a child takes ~40 ms while 100 run */
                int step = MAX(1, r.count / FANOUT_MEM_CHILDREN);

                for (int k = 0; k < r.count; k += step) {
                    child_memory(&gr->ctx, &r, &r.c[k],
                                 !all && mem_done < MIN(s->n_mem,
                                                        BENCH_DIRTY_SAMPLES));
                }
                mem_done++;
            }
            if (i == 0 && gr->g->cfg.guest == GUEST_TINY) {
                report_tsc(o, &r);
            }
        }
        if (r.c) {
            kill_children(&gr->ctx, &r);
        }
        fork_run_release(&r);
        if (ok) {
            fork_finish(&gr->ctx, &r);
        }
        if (ok && bench_verbose) {
            g_printerr("    #%d: clone %.2f ms (resume %.2f, arrival %.2f), "
                       "qmp %.2f ms, parent pause %.2f ms%s\n", i,
                       r.wall_ms, r.c[0].resume_ms, r.c[0].arrival_ms,
                       MS(r.t_reply - r.t_send), r.pause_ms,
                       r.count > 1 ? " (clone = fan-out wall time)" : "");
        }
        if (ok && i < 0) {
            first_clone = r.c[0].clone_ms;
        } else if (ok && s->template) {
            /* Done when the template runs again (its freeze point) */
            g_array_append_val(runs, r);
            continue;
        } else if (ok) {
            agg_add(&a, &r, kvm, name, i);
        }
        fork_run_free(&r);
        if (!ok) {
            break;
        }
    }
    if (s->template) {
        gint64 freeze = 0;
        bool known = thaw(gr, &freeze);

        for (guint i = 0; i < runs->len; i++) {
            ForkRun *r = &g_array_index(runs, ForkRun, i);

            if (known && !kvm) {
                children_resumed(r, freeze);
            }
            agg_add(&a, r, kvm, name, i);
            fork_run_free(r);
        }
    }
    if (slow_ticks && gr->parent && !procs_pid_gone(gr->parent->pid)) {
        g_free(serial_command(gr->parent->serial, "tick 1", QMP_MS, NULL));
        gr->ctx.last_reply = now_ns();
    }
    if (alive && gr->parent && !procs_pid_gone(gr->parent->pid)) {
        let_die(gr, alive);
    } else if (alive) {
        g_array_free(alive, true);
    }
    set_num(o, "first_fork_clone_ms", first_clone);
    agg_to_json(&a, o, kvm);
    g_string_append(bench_samples, a.samples->str);
    agg_free(&a);
    return o;
}

/* ---- Peers -------------------------------------------------------------- */

typedef struct PeerAgg {
    const char *method;
    GArray *out, *running, *qmp, *uss, *pss;
} PeerAgg;

static void peer_init(PeerAgg *p, const char *method)
{
    p->method = method;
    p->out = darr();
    p->running = darr();
    p->qmp = darr();
    p->uss = darr();
    p->pss = darr();
}

static JsonObject *peer_json(PeerAgg *p, const VmConfig *c, int n,
                             const char *how)
{
    g_autofree char *label = vm_config_label(c);
    g_autofree char *name = g_strdup_printf("peer-%s-%s", p->method, label);
    JsonObject *o = bench_base_object(name, "peer", c);

    json_object_set_string_member(o, "method", p->method);
    json_object_set_string_member(o, "how", how);
    json_object_set_int_member(o, "n", n);
    set_dist(o, "clone_ms", p->out, true);
    set_dist(o, "vcpus_running_ms", p->running, false);
    set_dist(o, "qmp_ms", p->qmp, false);
    json_object_set_null_member(o, "parent_pause_ms");
    set_dist(o, "child_uss_kib", p->uss, false);
    set_dist(o, "child_pss_kib", p->pss, false);
    g_array_free(p->out, true);
    g_array_free(p->running, true);
    g_array_free(p->qmp, true);
    g_array_free(p->uss, true);
    g_array_free(p->pss, true);
    return o;
}

/*
 * A VM that resumes a saved state: its first own tick, placed on the host
 * clock with its own offset, minus t0; and (TCG) the instant its guest
 * clock started again, freeze + its offset.  @from > 0: the VM ran and
 * printed @from lines before it was stopped, its first output is a later
 * line, and when its clock stopped is not known.
 */
static bool measure_resumed(ForkCtx *ctx, BenchVm *vm, GArray *ref_lines,
                            gint64 t0, gint64 freeze_guest, bool freeze_ok,
                            guint from, PeerAgg *p, bool memory,
                            GError **errp)
{
    Line first;
    Offset off;

    /* Lines stamped before the save are older than the freeze point, which
     * the caller knows exactly or by a lower bound; a line printed both
     * before the save and after the restore is in ref_lines */
    if (!first_own_tick(ctx, vm->serial, ref_lines, from,
                        freeze_ok ? freeze_guest : G_MININT64,
                        now_ns() + 120 * 1000000000LL, &first)) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "%s: no tick line after the restore", vm->name);
        return false;
    }
    stream_wait_past(vm->serial, first.first_ns + W_CHILD_NS,
                     now_ns() + 10 * 1000000000LL);
    off = offset_estimate(vm->serial, first.first_ns,
                          first.first_ns + W_CHILD_NS + 1, 5);
    if (!off.ok) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "%s: too few tick lines", vm->name);
        return false;
    }
    push(p->out, MS(first.guest_ns + off.off_ns - t0));
    if (freeze_ok && !from && !g_str_equal(vm->cfg.accel, "kvm")) {
        push(p->running, MS(freeze_guest + off.off_ns - t0));
    }
    if (ctx->refs) {
        FirstRef f = { first.seq, first.guest_ns };

        g_array_append_val(ctx->refs, f);
    }
    if (memory) {
        g_usleep(1000000);
        Smaps m = smaps_read(vm->pid);

        if (m.ok) {
            push(p->uss, m.uss_kib);
            push(p->pss, m.pss_kib);
        }
    }
    if (bench_verbose) {
        g_printerr("    %s: first output %.1f ms\n", p->method,
                   MS(first.guest_ns + off.off_ns - t0));
    }
    return true;
}

static bool wait_migration(BenchVm *vm, GError **errp)
{
    gint64 deadline = now_ns() + 300 * 1000000000LL;

    while (now_ns() < deadline) {
        g_autoptr(JsonNode) r = vm_qmp(vm, "query-migrate", NULL, QMP_MS, errp);
        const char *st;

        if (!r) {
            return false;
        }
        st = json_object_get_string_member_with_default(
            json_node_get_object(r), "status", "none");
        if (g_str_equal(st, "completed")) {
            return true;
        }
        if (g_str_equal(st, "failed") || g_str_equal(st, "cancelled")) {
            const char *why = json_object_get_string_member_with_default(
                json_node_get_object(r), "error-desc", st);

            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "migration %s", why);
            return false;
        }
        g_usleep(5000);
    }
    g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "migration too slow");
    return false;
}

/* migrate the VM to a file (it stays paused, postmigrate) */
static bool save_state(BenchVm *vm, const char *file, GError **errp)
{
    g_autofree char *args = g_strdup_printf("{\"uri\": \"file:%s\"}", file);
    g_autoptr(JsonNode) r1 = NULL, r2 = NULL;

    r1 = vm_qmp(vm, "migrate-set-parameters",
                "{\"max-bandwidth\": 1099511627776}", QMP_MS, errp);
    if (!r1) {
        return false;
    }
    r2 = vm_qmp(vm, "migrate", args, QMP_MS, errp);
    return r2 && wait_migration(vm, errp);
}

static JsonNode *set_ignore_shared(BenchVm *vm, GError **errp)
{
    return vm_qmp(vm, "migrate-set-capabilities",
                  "{\"capabilities\": [{\"capability\": \"x-ignore-shared\", "
                  "\"state\": true}]}", QMP_MS, errp);
}

/*
 * vmfork pre-forked, like for like with the pre-started peers: children
 * forked ahead of time (start: false) from a paused template wait, paused,
 * each with its own monitor; taking one is a "cont" on its monitor.  From
 * that "cont" to the child's first own output (and, TCG, to its guest
 * clock running), as migrate-incoming on a pre-started QEMU is for the
 * peers.  The template runs on once they are forked.
 *
 * @settle_ms: as "vmfork pool --settle": the children are forked running
 * and stopped @settle_ms later, their guests' start-up work as clones
 * (the VM generation ID notification) done; their first output after
 * "cont" is the first line stamped past the last one before it.
 */
static void measure_preforked(GroupRun *gr, const Spec *s, ForkCtx *pc,
                              int settle_ms, PeerAgg *agg, GError **errp)
{
    BenchVm *p = gr->parent;
    g_autofree char *args = NULL, *ovl = NULL;
    g_autoptr(JsonNode) stop = NULL, reply = NULL;
    g_autoptr(GArray) ref = NULL;
    JsonArray *children;
    gint64 t = now_ns(), freeze = 0;
    bool freeze_ok;
    int n = s->n;
    g_autofree QmpClient **mon = g_new0(QmpClient *, n);

    vm_drain_events(p);
    stop = vm_qmp(p, "stop", NULL, QMP_MS, errp);
    if (!stop) {
        return;
    }
    gr->ctx.frozen = true;
    ovl = overlay_dir_arg(p, gr->dir);
    args = g_strdup_printf("{\"count\": %d, \"monitor\": \"%s/pre-%%i.qmp\", "
                           "\"serial\": \"%s/pre-%%i.out\", \"start\": %s, "
                           "\"parent\": \"paused\"%s}", n, gr->dir, gr->dir,
                           settle_ms ? "true" : "false", ovl);
    reply = vm_qmp(p, "vmfork", args, QMP_MS, errp);
    children = reply ? json_object_get_array_member(
                   json_node_get_object(reply), "children") : NULL;
    for (int got = 0; children && got < n; got++) {
        JsonNode *ev = qmp_wait_event(p->qmp, "VMFORK_CHILD_READY", 30000,
                                      errp);

        if (!ev) {
            children = NULL;
        }
        json_node_unref(ev);
    }
    for (int i = 0; children && i < n; i++) {
        JsonObject *c = json_array_get_object_element(children, i);

        mon[i] = qmp_connect_unix(json_object_get_string_member(c, "monitor"),
                                  QMP_MS, NULL);
    }
    if (children && settle_ms) {
        g_usleep(settle_ms * 1000);
        for (int i = 0; i < n && !*errp; i++) {
            g_autoptr(JsonNode) r = mon[i] ?
                qmp_execute_json(mon[i], "stop", NULL, QMP_MS, errp) : NULL;
        }
    }
    /* The template runs on; its clock restarts at the children's */
    freeze_ok = thaw(gr, &freeze);
    ref = stream_lines_since(p->serial, t - 1000000000LL);
    g_array_set_size(pc->refs, 0);
    for (int i = 0; children && i < n; i++) {
        JsonObject *c = json_array_get_object_element(children, i);
        g_autofree char *out = g_strdup_printf("%s/pre-%d.out", gr->dir, i);
        BenchVm child = { .cfg = p->cfg, .name = (char *)"pre-forked child" };
        g_autoptr(JsonNode) r = NULL;
        gint64 t0;
        guint settled_lines = 0;

        child.pid = json_object_get_int_member(c, "pid");
        child.qmp = mon[i];
        mon[i] = NULL;
        if (!settle_ms) {
            child.serial = stream_file(out, p->cfg.guest, 2 * W_CHILD_NS);
        }
        if (!*errp && child.qmp) {
            g_usleep(200000);
            if (settle_ms) {
                /*
                 * What it printed while it settled, then stopped: every
                 * line read (the count stays the same for 20 ms), its
                 * first output is a line after those
                 */
                child.serial = stream_file(out, p->cfg.guest, 2 * W_CHILD_NS);
                do {
                    settled_lines = stream_count(child.serial);
                    g_usleep(20000);
                } while (stream_count(child.serial) != settled_lines);
                settled_lines = MAX(settled_lines, 1);
            }
            t0 = now_ns();
            r = qmp_execute_json(child.qmp, "cont", NULL, QMP_MS, errp);
            push(agg->qmp, MS(now_ns() - t0));
            if (r) {
                measure_resumed(pc, &child, ref, t0, freeze,
                                freeze_ok && !settle_ms, settled_lines, agg,
                                i == 0, errp);
            }
        } else if (!*errp) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "no monitor for pre-forked child %d", child.pid);
        }
        kill(child.pid, SIGKILL);
        stream_free(child.serial);
        if (child.qmp) {
            qmp_close(child.qmp);
        }
        unlink(out);
    }
    /* Every child reaped before the parent's next command */
    for (int left = children ? n : 0; left > 0; left--) {
        JsonNode *ev = qmp_wait_event(p->qmp, "VMFORK_CHILD_EXITED", 30000,
                                      NULL);

        if (!ev) {
            break;
        }
        json_node_unref(ev);
    }
    gr->ctx.last_reply = now_ns();
    if (!children && !*errp) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "vmfork of %d pre-forked children failed", n);
    }
}

/*
 * The container peer: the Linux guest's workload, its agent (a static
 * binary), alone in an OCI container that runc starts, talking on its
 * standard input and output (a socket).  Start of `runc run` -> the first
 * byte of the agent's ready line, as for a cold boot; the memory of the
 * agent process and of the `runc run` process that stays with it, 1 s
 * later.  Root and runc only (crun refuses this machine's hybrid cgroup
 * layout).
 */
const char *container_missing(void)
{
    if (geteuid() != 0) {
        return "the container peer needs root (runc as root)";
    }
    if (!g_find_program_in_path("runc")) {
        return "runc is not installed (scripts/bench.sh installs it as root)";
    }
    return NULL;
}

/* Copy the Linux guest's file @name (under its kernel's directory) to
 * @path in @rootfs */
static bool copy_guest_file(const char *name, const char *rootfs,
                            const char *path, GError **errp)
{
    g_autofree char *kdir = g_path_get_dirname(bench_paths.linux_kernel);
    g_autofree char *src = g_build_filename(kdir, name, NULL);
    g_autofree char *dst = g_build_filename(rootfs, path, NULL);
    g_autofree char *dir = g_path_get_dirname(dst);
    g_autofree char *data = NULL;
    gsize len;

    g_mkdir_with_parents(dir, 0755);
    if (!g_file_get_contents(src, &data, &len, errp) ||
        !g_file_set_contents(dst, data, len, errp)) {
        return false;
    }
    chmod(dst, 0755);
    return true;
}

bool container_bundle(const char *bundle, const char *const *args,
                      bool host_net, GError **errp)
{
    g_autofree char *rootfs = g_build_filename(bundle, "rootfs", NULL);
    g_autofree char *config = g_build_filename(bundle, "config.json", NULL);
    g_autofree char *out = NULL;
    const char *spec[] = { "runc", "spec", "--bundle", bundle, NULL };
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(JsonGenerator) gen = json_generator_new();
    JsonObject *root, *proc;
    JsonArray *argv;
    int status;

    for (const char *const *d = (const char *const[]){ "dev", "proc", "sys",
         "tmp", NULL }; *d; d++) {
        g_autofree char *path = g_build_filename(rootfs, *d, NULL);

        g_mkdir_with_parents(path, 0755);
    }
    /* The agent, and the guest's busybox (static) with its shell tools */
    if (!copy_guest_file("agent", rootfs, "agent", errp) ||
        !copy_guest_file("initramfs.d/bin/busybox", rootfs, "bin/busybox",
                         errp)) {
        return false;
    }
    for (const char *const *t = (const char *const[]){ "sh", "cat", "nc",
         NULL }; *t; t++) {
        g_autofree char *link = g_build_filename(rootfs, "bin", *t, NULL);

        if (symlink("busybox", link) < 0 && errno != EEXIST) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "symlink %s: "
                        "%s", link, g_strerror(errno));
            return false;
        }
    }
    if (!g_spawn_sync(NULL, (char **)spec, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, &out, NULL, &status, errp) ||
        !g_spawn_check_wait_status(status, errp) ||
        !json_parser_load_from_file(parser, config, errp)) {
        return false;
    }
    root = json_node_get_object(json_parser_get_root(parser));
    proc = json_object_get_object_member(root, "process");
    json_object_set_boolean_member(proc, "terminal", false);
    argv = json_array_new();
    for (const char *const *a = args; *a; a++) {
        json_array_add_string_element(argv, *a);
    }
    json_object_set_array_member(proc, "args", argv);
    json_object_set_string_member(proc, "cwd", "/");
    if (host_net) {
        /* The host's network: a port it listens on is the host's */
        JsonArray *ns = json_object_get_array_member(
            json_object_get_object_member(root, "linux"), "namespaces");
        JsonArray *kept = json_array_new();

        for (guint i = 0; i < json_array_get_length(ns); i++) {
            JsonObject *n = json_array_get_object_element(ns, i);

            if (!g_str_equal(json_object_get_string_member(n, "type"),
                             "network")) {
                json_array_add_object_element(kept, json_object_ref(n));
            }
        }
        json_object_set_array_member(json_object_get_object_member(
            root, "linux"), "namespaces", kept);
    }
    json_generator_set_root(gen, json_parser_get_root(parser));
    return json_generator_to_file(gen, config, errp);
}

void container_remove(const char *name, pid_t pid)
{
    char *kill_argv[] = { "runc", "kill", (char *)name, "KILL", NULL };
    char *del_argv[] = { "runc", "delete", "--force", (char *)name, NULL };

    g_spawn_sync(NULL, kill_argv, NULL, G_SPAWN_SEARCH_PATH |
                 G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL,
                 NULL, NULL, NULL, NULL, NULL, NULL);
    if (pid > 0) {
        procs_wait_gone(pid, 10000);
    }
    g_spawn_sync(NULL, del_argv, NULL, G_SPAWN_SEARCH_PATH |
                 G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL,
                 NULL, NULL, NULL, NULL, NULL, NULL);
}

static void run_container(GroupRun *gr, const Spec *s, PeerAgg *p,
                          GError **errp)
{
    g_autofree char *bundle = g_build_filename(gr->dir, "container", NULL);
    g_autofree char *log = g_build_filename(gr->dir, "container.log", NULL);

    if (!container_bundle(bundle, (const char *const[]){ "/agent", "-",
                                                          NULL },
                          false, errp)) {
        return;
    }
    for (int i = 0; i < s->cold_runs && !*errp && !procs_interrupted(); i++) {
        g_autofree char *name = g_strdup_printf("vmfork-bench-%d-%d",
                                                (int)getpid(), i);
        char *argv[] = { "/usr/bin/env", "runc", "run", "--bundle", bundle,
                         name, NULL };
        Stream *st;
        gint64 t0;
        pid_t pid;
        Line l;
        int sv[2];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "socketpair: %s", g_strerror(errno));
            return;
        }
        t0 = now_ns();
        pid = procs_spawn_io(argv, log, sv[1]);
        close(sv[1]);
        st = stream_socket(sv[0], GUEST_LINUX, name);
        if (pid < 0 || stream_wait(st, 0, LINE_READY,
                                   now_ns() + 30 * 1000000000LL, &l) < 0) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "runc run: no ready line (see %s)", log);
        } else {
            push(p->out, MS(l.first_ns - t0));
            if (bench_verbose) {
                g_printerr("    container: first output %.1f ms\n",
                           MS(l.first_ns - t0));
            }
        }
        if (!*errp && i == 0) {
            const char *state[] = { "runc", "state", name, NULL };
            g_autofree char *json = NULL;
            g_autoptr(JsonParser) jp = json_parser_new();
            int status;

            g_usleep(1000000);
            if (g_spawn_sync(NULL, (char **)state, NULL, G_SPAWN_SEARCH_PATH,
                             NULL, NULL, &json, NULL, &status, NULL) &&
                json_parser_load_from_data(jp, json, -1, NULL)) {
                /* the agent, and the runc process that stays with it */
                Smaps m = smaps_read(json_object_get_int_member(
                    json_node_get_object(json_parser_get_root(jp)), "pid"));
                Smaps r = smaps_read(pid);

                if (m.ok && r.ok) {
                    push(p->uss, m.uss_kib + r.uss_kib);
                    push(p->pss, m.pss_kib + r.pss_kib);
                }
            }
        }
        container_remove(name, pid);
        stream_free(st);
    }
}

static void run_peers(GroupRun *gr, const Spec *s,
                      void (*emit)(JsonObject *, gpointer), gpointer data)
{
    const VmConfig *c = &gr->g->cfg;
    VmSpawnOpts cold = { 0 };
    VmSpawnOpts deferred = { .incoming = "defer", .connect_qmp = true };
    g_autofree char *snap = g_strdup_printf("%s/snapshot.mig", gr->dir);
    g_autofree char *snap_uri = g_strdup_printf("file:%s", snap);
    g_autofree char *tstate = g_strdup_printf("%s/template.mig", gr->dir);
    g_autofree char *tstate_args = g_strdup_printf("{\"uri\": \"file:%s\"}",
                                                   tstate);
    g_autofree char *snap_args = g_strdup_printf("{\"uri\": \"%s\"}", snap_uri);
    g_autofree char *shm = NULL, *ram = NULL;
    g_autoptr(GArray) src_lines = NULL, tmpl_lines = NULL;
    GError *err = NULL;
    gint64 freeze = 0;
    bool freeze_ok = false;
    ForkCtx pc = { 0 };
    PeerAgg p;

    pc.refs = g_array_new(false, false, sizeof(FirstRef));

    /* 1. Cold boot: a new QEMU to the guest's ready line */
    peer_init(&p, "cold-boot");
    for (int i = 0; i < s->cold_runs && !err && !procs_interrupted(); i++) {
        g_autofree char *nm = g_strdup_printf("cold%d", i);
        BenchVm *vm = vm_spawn(c, gr->dir, nm, &cold, &err);
        Line l;

        if (vm && vm_wait_ready(vm, 0, 180000, &l, &err) >= 0) {
            push(p.out, MS(l.first_ns - vm->spawn_ns));
            if (bench_verbose) {
                g_printerr("    cold boot: %.0f ms\n",
                           MS(l.first_ns - vm->spawn_ns));
            }
            if (i == 0) {
                g_usleep(1000000);
                Smaps m = smaps_read(vm->pid);

                if (m.ok) {
                    push(p.uss, m.uss_kib);
                    push(p.pss, m.pss_kib);
                }
            }
        }
        vm_destroy(vm);
    }
    emit(peer_json(&p, c, s->cold_runs,
                   "spawn of a new QEMU -> first byte of the guest's ready "
                   "line"), data);
    if (err) {
        goto fail;
    }

    /* 2. Snapshot restore: migrate the running parent to a file, then a new
     * QEMU with -incoming, cold and pre-started (-incoming defer) */
    if (!ensure_parent(gr, &err)) {
        goto fail;
    }
    {
        gint64 t = now_ns();

        if (!save_state(gr->parent, snap, &err)) {
            goto fail;
        }
        /* The source goes on: its guest clock restarts where the save
         * stopped it (that is the freeze point), and a line it had stamped
         * before the save and prints now is printed by the restored VMs */
        gr->ctx.frozen = true;
        freeze_ok = thaw(gr, &freeze);
        src_lines = stream_lines_since(gr->parent->serial, t - 1000000000LL);
    }
    for (int pre = 0; pre < 2 && !err; pre++) {
        peer_init(&p, pre ? "snapshot-prestarted" : "snapshot");
        g_array_set_size(pc.refs, 0);
        for (int i = 0; i < s->n && !err && !procs_interrupted(); i++) {
            g_autofree char *nm = g_strdup_printf("snap%d-%d", pre, i);
            VmSpawnOpts o = cold;
            BenchVm *vm;
            gint64 t0;

            o.incoming = snap_uri;
            vm = vm_spawn(c, gr->dir, nm, pre ? &deferred : &o, &err);
            t0 = vm ? vm->spawn_ns : 0;
            if (vm && pre) {
                g_autoptr(JsonNode) r = NULL;

                g_usleep(200000);
                t0 = now_ns();
                r = vm_qmp(vm, "migrate-incoming", snap_args, QMP_MS, &err);
                push(p.qmp, MS(now_ns() - t0));
            }
            if (vm && !err) {
                measure_resumed(&pc, vm, src_lines, t0, freeze, freeze_ok,
                                false, &p,
                                i == 0, &err);
            }
            vm_destroy(vm);
        }
        emit(peer_json(&p, c, s->n, pre ?
                       "migrate-incoming on a QEMU started with -incoming "
                       "defer -> the guest's first output" :
                       "spawn of a QEMU with -incoming file: -> the guest's "
                       "first output"), data);
    }
    unlink(snap);
    if (err) {
        goto fail;
    }

    /* 3. Template cloning as Kata does it: a template VM whose RAM is a
     * shared file (share=on) saves its device state with x-ignore-shared;
     * a clone maps the same file privately (share=off) and loads the
     * state with migrate-incoming */
    shm = procs_make_dir(bench_paths.shmdir, "vmfork-bench-ram");
    if (!shm) {
        g_set_error(&err, G_IO_ERROR, G_IO_ERROR_FAILED, "mkdtemp in %s: %s",
                    bench_paths.shmdir, g_strerror(errno));
        goto fail;
    }
    ram = g_strdup_printf("%s/template.ram", shm);
    {
        VmSpawnOpts to = { .paused = true, .connect_qmp = true,
                           .mem_path = ram, .mem_share = true };
        BenchVm *t = vm_spawn(c, gr->dir, "template", &to, &err);
        g_autoptr(JsonNode) r = NULL;

        if (t && vm_boot(t, &err) && c->guest == GUEST_LINUX) {
            g_free(serial_command(t->serial, "tick 1", QMP_MS, &err));
        }
        if (t && !err) {
            g_usleep(300000);
            r = set_ignore_shared(t, &err);
            if (r && save_state(t, tstate, &err)) {
                /* Its clock stopped after the last line it stamped (by less
                 * than a tick): a lower bound of the freeze point */
                tmpl_lines = stream_lines_since(t->serial, 0);
                freeze_ok = false;
                for (guint k = 0; k < tmpl_lines->len; k++) {
                    Line *l = &g_array_index(tmpl_lines, Line, k);

                    if (l->kind == LINE_TICK) {
                        freeze = l->guest_ns;
                        freeze_ok = true;
                    }
                }
            }
        }
        vm_destroy(t);
        if (err) {
            goto fail;
        }
    }
    for (int pre = 0; pre < 2 && !err; pre++) {
        peer_init(&p, pre ? "template-prestarted" : "template");
        g_array_set_size(pc.refs, 0);
        for (int i = 0; i < s->n && !err && !procs_interrupted(); i++) {
            g_autofree char *nm = g_strdup_printf("clone%d-%d", pre, i);
            VmSpawnOpts o = deferred;
            g_autoptr(JsonNode) r1 = NULL, r2 = NULL;
            BenchVm *vm;
            gint64 t0;

            o.mem_path = ram;
            o.mem_share = false;
            vm = vm_spawn(c, gr->dir, nm, &o, &err);
            t0 = vm ? vm->spawn_ns : 0;
            if (vm && pre) {
                r1 = set_ignore_shared(vm, &err);
                g_usleep(200000);
                t0 = now_ns();
            } else if (vm) {
                r1 = set_ignore_shared(vm, &err);
            }
            if (r1) {
                gint64 q0 = now_ns();

                r2 = vm_qmp(vm, "migrate-incoming", tstate_args, QMP_MS, &err);
                if (pre) {
                    push(p.qmp, MS(now_ns() - q0));
                }
            }
            if (r2) {
                measure_resumed(&pc, vm, tmpl_lines, t0, freeze, freeze_ok,
                                0, &p, i == 0, &err);
            }
            vm_destroy(vm);
        }
        emit(peer_json(&p, c, s->n, pre ?
                       "migrate-incoming (x-ignore-shared) on a QEMU started "
                       "with -incoming defer and share=off RAM -> the guest's "
                       "first output" :
                       "spawn of a QEMU (share=off RAM on the template's "
                       "file, -incoming defer, x-ignore-shared, "
                       "migrate-incoming) -> the guest's first output"),
             data);
    }
    unlink(tstate);
    if (err) {
        goto fail;
    }

    /* 4. A container with the Linux guest's workload */
    if (c->guest == GUEST_LINUX) {
        const char *why = container_missing();

        peer_init(&p, "container");
        if (why) {
            JsonObject *o = peer_json(&p, c, 0, "");

            json_object_set_string_member(o, "skipped", why);
            emit(o, data);
        } else {
            run_container(gr, s, &p, &err);
            emit(peer_json(&p, c, s->cold_runs, "spawn of `runc run` (an OCI "
                           "container with the guest's agent, static, as its "
                           "only process) -> first byte of the agent's ready "
                           "line"), data);
        }
        if (err) {
            goto fail;
        }
    }

    /* 5. vmfork's own pre-started mode: pre-forked children */
    if (ensure_parent(gr, &err)) {
        peer_init(&p, "vmfork-preforked");
        measure_preforked(gr, s, &pc, 0, &p, &err);
        emit(peer_json(&p, c, s->n, "cont on the monitor of a child forked "
                       "ahead of time (start: false) from a paused template "
                       "-> the guest's first output"), data);
    }
    /*
     * Settled children under TCG only: under this machine's KVM (kvm_pvm)
     * the lines a settled child printed kept arriving after its stop had
     * returned and its output had been still for 20 ms, which made its
     * first output look earlier than its cont
     */
    if (!err && !g_str_equal(c->accel, "kvm") && ensure_parent(gr, &err)) {
        peer_init(&p, "vmfork-preforked-settled");
        measure_preforked(gr, s, &pc, PREFORK_SETTLE_MS, &p, &err);
        emit(peer_json(&p, c, s->n, "cont on the monitor of a child forked "
                       "ahead of time from a paused template, running, and "
                       "stopped " G_STRINGIFY(PREFORK_SETTLE_MS) " ms later "
                       "(vmfork pool --settle) -> the guest's first output"),
             data);
    }

fail:
    if (err) {
        JsonObject *o = bench_base_object("peers-error", "peer", c);
        g_autofree char *label = vm_config_label(c);
        g_autofree char *nm = g_strdup_printf("peers-%s", label);

        g_printerr("  peers failed: %s\n", err->message);
        json_object_set_string_member(o, "scenario", nm);
        json_object_set_string_member(o, "error", err->message);
        emit(o, data);
        g_error_free(err);
    }
    if (shm) {
        procs_remove_dir(shm);
    }
    g_array_free(pc.refs, true);
}

void run_group(const Group *g, void (*emit)(JsonObject *, gpointer),
               gpointer data)
{
    GroupRun gr = { .g = g };
    g_autofree char *label = vm_config_label(&g->cfg);
    const char *why = vm_missing(&g->cfg);
    g_autoptr(GError) err = NULL;
    gint64 t0 = now_ns();

    if (why) {
        for (int i = 0; i < g->nspecs; i++) {
            g_autofree char *name = spec_name(&g->cfg, &g->spec[i]);
            JsonObject *o = bench_base_object(name, "skipped", &g->cfg);

            json_object_set_string_member(o, "skipped", why);
            emit(o, data);
        }
        g_printerr("== %s: skipped: %s\n", label, why);
        return;
    }
    g_printerr("== %s (%s): booting the parent VM\n", label,
               accel_detail(g->cfg.accel));
    gr.dir = procs_make_dir(bench_paths.workdir, "vmfork-bench");
    if (!ensure_parent(&gr, &err)) {
        for (int i = 0; i < g->nspecs; i++) {
            g_autofree char *name = spec_name(&g->cfg, &g->spec[i]);
            JsonObject *o = bench_base_object(name, "error", &g->cfg);

            json_object_set_string_member(o, "error", err->message);
            emit(o, data);
        }
        g_printerr("   boot failed: %s\n", err->message);
        goto out;
    }
    g_printerr("   booted in %.1f s\n", MS(now_ns() - t0) / 1000.0);
    for (int i = 0; i < g->nspecs && !procs_interrupted(); i++) {
        const Spec *s = &g->spec[i];
        g_autofree char *name = spec_name(&g->cfg, s);
        g_autoptr(GError) e = NULL;
        gint64 t1 = now_ns();

        if (s->kind == SPEC_PEERS) {
            g_printerr("-- %s: cold boot x%d, snapshot restore x%d+%d, "
                       "template clone x%d+%d\n", name, s->cold_runs, s->n,
                       s->n, s->n, s->n);
            run_peers(&gr, s, emit, data);
        } else if (s->kind == SPEC_SERVICE) {
            g_printerr("-- %s: a pool and vmfork serve (first byte x%d, "
                       "%d s of load, memory), vmfork migrate\n", name,
                       s->n, 10);
            run_service(&g->cfg, s, emit, data);
        } else {
            JsonObject *o;

            g_printerr("-- %s: %d command(s) of count %d%s\n", name, s->n,
                       s->count, s->template ? ", paused template" : "");
            o = run_fork_spec(&gr, s, &e);
            if (e) {
                g_printerr("   error: %s\n", e->message);
                json_object_set_string_member(o, "error", e->message);
            } else {
                JsonObject *cl = json_object_get_object_member(o, "clone_ms");
                JsonObject *pp = json_object_has_member(o, "parent_pause_ms") &&
                    !json_object_get_null_member(o, "parent_pause_ms") ?
                    json_object_get_object_member(o, "parent_pause_ms") : NULL;

                if (cl) {
                    g_printerr("   clone p50 %.2f ms, p99 %.2f ms%s",
                               json_object_get_double_member(cl, "p50"),
                               json_object_get_double_member(cl, "p99"),
                               pp ? "" : "\n");
                }
                if (pp) {
                    g_printerr("; parent pause p50 %.2f ms\n",
                               json_object_get_double_member(pp, "p50"));
                }
            }
            emit(o, data);
        }
        g_printerr("   (%.1f s)\n", MS(now_ns() - t1) / 1000.0);
    }
out:
    vm_destroy(gr.parent);
    if (gr.ctx.refs) {
        g_array_free(gr.ctx.refs, true);
    }
    procs_remove_dir(gr.dir);
    g_free(gr.dir);
}
