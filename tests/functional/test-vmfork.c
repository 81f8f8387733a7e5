/*
 * Functional tests of the vmfork command: what a user of the parent and
 * of each child sees, from the guests and from the host.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE     /* unshare() */
#include "vmtest.h"
#include "audit.h"
#include <glib/gstdio.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EVENT_TIMEOUT_MS 30000

static JsonObject *nth_child(JsonArray *children, guint i)
{
    return json_array_get_object_element(children, i);
}

/* vmfork with JSON @args is refused: an error of @class (NULL: any)
 * whose description names @desc */
static void fork_refused(Vm *vm, const char *args, const char *class,
                         const char *desc)
{
    g_autoptr(GError) err = vm_qmp_error(vm, "vmfork", args);

    g_assert_nonnull(err);
    g_test_message("%s -> %s", args, err->message);
    if (class) {
        g_assert_cmpstr(qmp_error_class(err), ==, class);
    }
    g_assert_nonnull(strstr(qmp_error_desc(err), desc));
}

static Vm *fork_one(Vm *parent, const char *args)
{
    g_autoptr(JsonArray) children = vm_fork(parent, args);

    g_assert_cmpuint(json_array_get_length(children), ==, 1);
    return vm_attach_child(parent, nth_child(children, 0));
}

static gint64 event_int(JsonNode *ev, const char *member)
{
    return json_object_get_int_member(qmp_event_data(ev), member);
}

/*
 * Memory: the child starts with the parent's memory as it was at the
 * fork, and after that neither sees the other's writes.
 */
static void linux_fork_isolates_memory(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_LINUX, .smp = GPOINTER_TO_INT(data) };
    g_autofree char *h_fork = NULL, *h_child = NULL, *h_parent2 = NULL;
    g_autofree char *h_child2 = NULL, *h_child3 = NULL, *h_parent3 = NULL;
    g_autofree char *pong_p = NULL, *pong_c = NULL;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    h_fork = vm_agent(parent, "fill a1");
    child = fork_one(parent, NULL);

    pong_p = vm_agent(parent, "ping");
    pong_c = vm_agent(child, "ping");
    g_assert_cmpstr(pong_p, ==, "pong");
    g_assert_cmpstr(pong_c, ==, "pong");

    h_child = vm_agent(child, "hash");
    g_assert_cmpstr(h_child, ==, h_fork);

    h_parent2 = vm_agent(parent, "fill b2");
    g_assert_cmpstr(h_parent2, !=, h_fork);
    h_child2 = vm_agent(child, "hash");
    g_assert_cmpstr(h_child2, ==, h_fork);

    h_child3 = vm_agent(child, "fill c3");
    g_assert_cmpstr(h_child3, !=, h_parent2);
    h_parent3 = vm_agent(parent, "hash");
    g_assert_cmpstr(h_parent3, ==, h_parent2);

    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* The "T <seq> <ns>" lines of a Linux guest's tick stream for @ms of
 * host time: how many, and the guest time from the first to the last */
typedef struct Ticks {
    guint n;
    guint64 first_seq, last_seq, first_ns, last_ns;
} Ticks;

static void ticks_add(Ticks *t, const char *line)
{
    guint64 seq, ns;

    if (sscanf(line, "T %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT, &seq,
               &ns) != 2) {
        return;
    }
    if (t->n) {
        /* one stream, in order: each tick one more than the last */
        g_assert_cmpuint(seq, ==, t->last_seq + 1);
        g_assert_cmpuint(ns, >, t->last_ns);
    } else {
        t->first_seq = seq;
        t->first_ns = ns;
    }
    t->n++;
    t->last_seq = seq;
    t->last_ns = ns;
}

/*
 * Both VMs keep running on their own for 10 s: the tick stream that the
 * parent's guest started before the fork (100 ms) goes on in both, on
 * each one's console, one tick after the other, across 10 s of each
 * one's guest clock; and both answer commands after.
 */
static void linux_fork_both_keep_running(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    Ticks tp = { 0 }, tc = { 0 };
    gint64 end;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    g_free(vm_agent(parent, "tick 100"));
    child = fork_one(parent, NULL);
    end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        g_autofree char *lp = vm_read_line(parent, 20);
        g_autofree char *lc = vm_read_line(child, 20);

        if (lp) {
            ticks_add(&tp, lp);
        }
        if (lc) {
            ticks_add(&tc, lc);
        }
    }
    g_test_message("10 s: the parent's guest ticked %u times over %.2f s of "
                   "its clock, the child's %u times over %.2f s", tp.n,
                   (tp.last_ns - tp.first_ns) / 1e9, tc.n,
                   (tc.last_ns - tc.first_ns) / 1e9);
    /* 100 at 100 ms; ticks a loaded host delays are not made up */
    g_assert_cmpuint(tp.n, >=, 50);
    g_assert_cmpuint(tc.n, >=, 50);
    g_assert_cmpuint(tp.last_ns - tp.first_ns, >, 9 * 1000000000ULL);
    g_assert_cmpuint(tc.last_ns - tc.first_ns, >, 9 * 1000000000ULL);
    g_free(vm_agent(parent, "tick 0"));
    g_free(vm_agent(child, "tick 0"));
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* count: 3 gives three independent children, each announced and listed */
static void linux_fork_three_children(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *h0 = NULL, *args = NULL;
    g_autoptr(GHashTable) hashes = g_hash_table_new_full(g_str_hash,
                                                         g_str_equal,
                                                         g_free, NULL);
    Vm *parent, *child[3];
    JsonNode *q;
    JsonArray *listed;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    h0 = vm_agent(parent, "fill 10");
    args = g_strdup_printf("{\"count\": 3, \"monitor\": \"%s/child-%%i.qmp\"}",
                           parent->dir);
    children = vm_fork(parent, args);
    g_assert_cmpuint(json_array_get_length(children), ==, 3);
    for (guint i = 0; i < 3; i++) {
        g_autofree char *want = g_strdup_printf("%s/child-%u.qmp",
                                                parent->dir, i);
        g_autoptr(GError) err = NULL;
        JsonNode *ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_READY",
                                      EVENT_TIMEOUT_MS, &err);

        g_assert_no_error(err);
        g_assert_cmpstr(json_object_get_string_member(nth_child(children, i),
                                                      "monitor"), ==, want);
        json_node_unref(ev);
        child[i] = vm_attach_child(parent, nth_child(children, i));
    }
    for (guint i = 0; i < 3; i++) {
        g_autofree char *before = vm_agent(child[i], "hash");
        char *after = vm_agent(child[i], "fill %x", 0x100 + i);

        g_assert_cmpstr(before, ==, h0);
        g_hash_table_add(hashes, after);
    }
    g_assert_cmpuint(g_hash_table_size(hashes), ==, 3);
    {
        g_autofree char *hp = vm_agent(parent, "hash");

        g_assert_cmpstr(hp, ==, h0);
    }
    q = vm_qmp(parent, "query-vmfork", NULL);
    listed = json_object_get_array_member(json_node_get_object(q), "children");
    g_assert_cmpuint(json_array_get_length(listed), ==, 3);
    for (guint i = 0; i < 3; i++) {
        JsonObject *c = nth_child(listed, i);

        g_assert_cmpint(json_object_get_int_member(c, "pid"), ==,
                        child[i]->pid);
        g_assert_cmpstr(json_object_get_string_member(c, "state"), ==,
                        "running");
    }
    json_node_unref(q);
    for (guint i = 0; i < 3; i++) {
        vm_quit(child[i]);
    }
    vm_quit(parent);
    vm_cleanup_all();
}

#define TB_HASH_ENTRIES "TB hash entries"

/* The number on the first "TB hash entries" line of @text on */
static gint64 tb_hash_entries(const char *text)
{
    const char *line = strstr(text, TB_HASH_ENTRIES);

    g_assert_nonnull(line);
    return g_ascii_strtoll(line + strlen(TB_HASH_ENTRIES), NULL, 10);
}

/*
 * The "TB hash entries" that x-query-jit reports for the TB hash table
 * that a process inherited or built, and for a forked child's own (-1
 * where it has none)
 */
static void jit_tb_entries(Vm *vm, gint64 *inherited, gint64 *own)
{
    g_autoptr(JsonNode) r = vm_qmp(vm, "x-query-jit", NULL);
    const char *text = json_object_get_string_member(json_node_get_object(r),
                                                     "human-readable-text");
    const char *own_table = strstr(text, "Forked child's own TB hash table:");

    g_assert_true(!own_table || strstr(text, TB_HASH_ENTRIES) < own_table);
    *inherited = tb_hash_entries(text);
    *own = own_table ? tb_hash_entries(own_table) : -1;
}

/*
 * parent: paused keeps a template; start: false keeps the child paused.
 * Under TCG the child adds what it translates to a TB hash table of its
 * own: each insertion into the inherited one would write to a random page
 * of it, shared with the parent until then.
 */
static void linux_fork_paused_template(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autofree char *s_parent = NULL, *s_child = NULL, *s_child2 = NULL;
    g_autofree char *s_parent2 = NULL, *pong = NULL, *h = NULL, *hc = NULL;
    gint64 p_inherited, p_own, c_inherited, c_own;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    h = vm_agent(parent, "fill 77");
    child = fork_one(parent, "{\"parent\": \"paused\", \"start\": false}");
    s_parent = vm_runstate(parent);
    s_child = vm_runstate(child);
    g_assert_cmpstr(s_parent, ==, "paused");
    g_assert_cmpstr(s_child, ==, "paused");

    json_node_unref(vm_qmp(child, "cont", NULL));
    s_child2 = vm_runstate(child);
    g_assert_cmpstr(s_child2, ==, "running");
    hc = vm_agent(child, "hash");
    g_assert_cmpstr(hc, ==, h);
    s_parent2 = vm_runstate(parent);
    g_assert_cmpstr(s_parent2, ==, "paused");

    /*
     * The child ran code that the parent never did ("hash"): its new TBs
     * are in its own table, and it can only have removed entries from
     * the one it shares (guest writes to translated code)
     */
    jit_tb_entries(parent, &p_inherited, &p_own);
    jit_tb_entries(child, &c_inherited, &c_own);
    g_test_message("TB hash entries: paused parent %" G_GINT64_FORMAT
                   ", child %" G_GINT64_FORMAT " inherited and %"
                   G_GINT64_FORMAT " its own", p_inherited, c_inherited,
                   c_own);
    g_assert_cmpint(p_own, ==, -1);
    g_assert_cmpint(c_own, >, 0);
    g_assert_cmpint(c_inherited, <=, p_inherited);

    json_node_unref(vm_qmp(parent, "cont", NULL));
    pong = vm_agent(parent, "ping");
    g_assert_cmpstr(pong, ==, "pong");
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * Lifecycle: events and query-vmfork match what happened; a child quits
 * cleanly and is reaped; the parent's sockets and pidfile survive it.
 */
static void linux_fork_lifecycle(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autoptr(JsonArray) children = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *pidfile = NULL, *pong = NULL;
    JsonNode *ev, *q;
    JsonObject *c, *qo;
    Vm *parent, *child;
    pid_t pid;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    children = vm_fork(parent, NULL);
    c = nth_child(children, 0);
    pid = json_object_get_int_member(c, "pid");
    g_assert_cmpint(json_object_get_int_member(c, "clone-id"), >, 0);

    ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_READY", EVENT_TIMEOUT_MS,
                        &err);
    g_assert_no_error(err);
    g_assert_cmpint(event_int(ev, "pid"), ==, pid);
    g_assert_cmpstr(json_object_get_string_member(qmp_event_data(ev),
                                                  "monitor"), ==,
                    json_object_get_string_member(c, "monitor"));
    json_node_unref(ev);

    child = vm_attach_child(parent, c);
    q = vm_qmp(child, "query-vmfork", NULL);
    qo = json_node_get_object(q);
    g_assert_cmpint(json_object_get_int_member(qo, "generation"), ==, 1);
    g_assert_cmpint(json_object_get_int_member(qo, "parent-pid"), ==,
                    parent->pid);
    g_assert_cmpint(json_object_get_int_member(qo, "clone-id"), ==,
                    json_object_get_int_member(c, "clone-id"));
    json_node_unref(q);

    vm_quit(child);
    ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &err);
    g_assert_no_error(err);
    g_assert_cmpint(event_int(ev, "pid"), ==, pid);
    g_assert_cmpint(event_int(ev, "status"), ==, 0);
    json_node_unref(ev);
    /* Reaped: no zombie left */
    g_assert_true(pid_wait_gone(pid, 5000));

    q = vm_qmp(parent, "query-vmfork", NULL);
    c = nth_child(json_object_get_array_member(json_node_get_object(q),
                                               "children"), 0);
    g_assert_cmpstr(json_object_get_string_member(c, "state"), ==, "exited");
    g_assert_cmpint(json_object_get_int_member(c, "exit-status"), ==, 0);
    json_node_unref(q);

    /* The parent's socket paths and pidfile are still there and work */
    pidfile = g_strdup_printf("%s/qemu.pid", parent->dir);
    g_assert_true(g_file_test(pidfile, G_FILE_TEST_EXISTS));
    g_assert_true(g_file_test(parent->qmp_path, G_FILE_TEST_EXISTS));
    {
        /* QEMU serves one client per QMP socket: reconnect */
        g_autoptr(GError) e2 = NULL;

        qmp_close(parent->qmp);
        parent->qmp = qmp_connect_unix(parent->qmp_path, 5000, &e2);
        g_assert_no_error(e2);
    }
    pong = vm_agent(parent, "ping");
    g_assert_cmpstr(pong, ==, "pong");
    vm_quit(parent);
    vm_cleanup_all();
}

/* A child killed by a signal is reaped and reported with 128 + signal */
static void linux_fork_child_killed_is_reaped(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autoptr(JsonArray) children = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *pong = NULL;
    JsonNode *ev;
    pid_t pid;
    Vm *parent;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    children = vm_fork(parent, NULL);
    pid = json_object_get_int_member(nth_child(children, 0), "pid");
    json_node_unref(qmp_wait_event(parent->qmp, "VMFORK_CHILD_READY",
                                   EVENT_TIMEOUT_MS, &err));
    g_assert_no_error(err);
    g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
    ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &err);
    g_assert_no_error(err);
    g_assert_cmpint(event_int(ev, "status"), ==, 128 + SIGKILL);
    json_node_unref(ev);
    g_assert_true(pid_wait_gone(pid, 5000));
    pong = vm_agent(parent, "ping");
    g_assert_cmpstr(pong, ==, "pong");
    vm_quit(parent);
    vm_cleanup_all();
}

/* A child can fork again: generation 2, its parent is the first child */
static void linux_fork_of_fork(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autofree char *h = NULL, *hg = NULL, *hc = NULL, *args = NULL;
    JsonNode *q;
    Vm *parent, *child, *grandchild;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    child = fork_one(parent, NULL);
    h = vm_agent(child, "fill 5a5a");
    args = g_strdup_printf("{\"monitor\": \"%s/grandchild.qmp\"}",
                           parent->dir);
    grandchild = fork_one(child, args);
    hg = vm_agent(grandchild, "hash");
    g_assert_cmpstr(hg, ==, h);
    q = vm_qmp(grandchild, "query-vmfork", NULL);
    g_assert_cmpint(json_object_get_int_member(json_node_get_object(q),
                                               "generation"), ==, 2);
    g_assert_cmpint(json_object_get_int_member(json_node_get_object(q),
                                               "parent-pid"), ==, child->pid);
    /* Each lists its own children, none of its ancestors' */
    g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
        json_node_get_object(q), "children")), ==, 0);
    json_node_unref(q);
    q = vm_qmp(child, "query-vmfork", NULL);
    g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
        json_node_get_object(q), "children")), ==, 1);
    g_assert_cmpint(json_object_get_int_member(nth_child(
        json_object_get_array_member(json_node_get_object(q), "children"), 0),
        "pid"), ==, grandchild->pid);
    json_node_unref(q);
    g_free(vm_agent(grandchild, "fill 99"));
    hc = vm_agent(child, "hash");
    g_assert_cmpstr(hc, ==, h);
    vm_quit(grandchild);
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * Tiny guest: the counter goes on from the parent's value at the fork,
 * in the child and in the parent, and memory is isolated both ways.
 */
static void tiny_fork_counter_and_memory(gconstpointer data)
{
    /* "tcg,thread=single,2": round-robin TCG with two vCPUs on one thread */
    g_auto(GStrv) spec = g_strsplit(data, ",", 3);
    g_autofree char *accel = spec[1] && spec[2] ?
        g_strdup_printf("%s,%s", spec[0], spec[1]) : g_strdup(spec[0]);
    VmOptions o = { .guest = GUEST_TINY, .accel = accel,
                    .smp = spec[1] && spec[2] ? atoi(spec[2]) : 1 };
    g_autofree char *w_parent = NULL, *h_child = NULL, *w_child = NULL;
    g_autofree char *h_parent = NULL, *w_parent2 = NULL, *h_child2 = NULL;
    gint64 last = -1, seq, first_child, first_parent;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    w_parent = vm_tiny_cmd(parent, "w 1234abcd");

    last = vm_tiny_next_seq(parent, 30000);
    json_node_unref(vm_qmp(parent, "stop", NULL));
    while ((seq = vm_tiny_next_seq(parent, 500)) >= 0) {
        last = seq;
    }
    g_assert_cmpint(last, >, 0);
    /*
     * A line cut by the stop is completed by both VMs; neither reader
     * counts it (the child's reader never saw its start): drop its start.
     */
    g_string_truncate(parent->serial_buf, 0);
    child = fork_one(parent, "{\"parent\": \"paused\", \"start\": false}");
    json_node_unref(vm_qmp(child, "cont", NULL));
    json_node_unref(vm_qmp(parent, "cont", NULL));
    first_child = vm_tiny_next_seq(child, 60000);
    first_parent = vm_tiny_next_seq(parent, 60000);
    /* A line cut by the stop is completed first, then the next one */
    g_assert_cmpint(first_child, ==, first_parent);
    g_assert_cmpint(first_child, >=, last + 1);
    g_assert_cmpint(first_child, <=, last + 2);

    h_child = vm_tiny_cmd(child, "h");
    g_assert_true(g_str_has_suffix(w_parent, h_child));
    w_child = vm_tiny_cmd(child, "w 55aa55aa");
    h_parent = vm_tiny_cmd(parent, "h");
    g_assert_true(g_str_has_suffix(w_parent, h_parent));
    w_parent2 = vm_tiny_cmd(parent, "w 0badf00d");
    h_child2 = vm_tiny_cmd(child, "h");
    g_assert_true(g_str_has_suffix(w_child, h_child2));
    g_assert_false(g_str_has_suffix(w_parent2, h_child2));

    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* The tiny guest's TSC, as its "t" command reads it */
static guint64 tiny_tsc(Vm *vm)
{
    g_autofree char *t = vm_tiny_cmd(vm, "t");

    return g_ascii_strtoull(t, NULL, 16);
}

/*
 * The guest's TSC goes on from where it was, in a child of a parent
 * forked as soon as its guest is up.  A child's vCPUs are new ones given
 * their parent's TSC: under TCG from the tick count the child inherits,
 * under KVM written into vCPUs that KVM created with a TSC of its own.
 * (Linux before 6.8 takes a host write within a second of a new vCPU's
 * TSC as a request to synchronise with it, and a young guest's TSC is
 * that close.  This machine's kvm_pvm ignores TSC writes: its guests run
 * on the host's TSC, so here the KVM case checks only that the child's
 * clock goes on.)
 *
 * The guest reads its TSC when asked ("t"), once before the fork, which
 * is in the child's past too, and once in the child.  (Its ticks cannot
 * tell: it prints one only when its TSC has passed the next deadline, so
 * a TSC that went back shows as a late tick at the right TSC.)
 */
static void tiny_fork_young_parent_clock(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_TINY, .accel = data };
    guint64 tsc_before, tsc_parent, tsc_child;
    gint64 seq_before;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    seq_before = vm_tiny_next_seq(parent, 30000);
    tsc_before = tiny_tsc(parent);
    child = fork_one(parent, NULL);
    tsc_child = tiny_tsc(child);
    tsc_parent = tiny_tsc(parent);
    g_test_message("%s: TSC %" G_GINT64_MODIFIER "x before the fork, then %"
                   G_GINT64_MODIFIER "x in the child and %" G_GINT64_MODIFIER
                   "x in the parent", vm_describe(&o), tsc_before, tsc_child,
                   tsc_parent);
    g_assert_cmpuint(tsc_parent, >, tsc_before);
    /* Not back to 0, nor behind its own past */
    g_assert_cmpuint(tsc_child, >, tsc_before);
    /*
     * Nor ahead by more than the time the test took (under KVM the
     * guest's TSC runs on while it is paused; 2^32 cycles is more than a
     * second at the TSC rates of today).
     */
    g_assert_cmpuint(tsc_child, <=, tsc_before + (1ull << 32));
    /* It ticks on from the parent's count (a tick is 2^24 cycles) */
    g_assert_cmpint(vm_tiny_next_seq(child, 2000), >, seq_before);

    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * The names of the STOP and RESUME events that @vm sent so far (its
 * other events are dropped), space-separated; each one's time must not
 * be before the one before it.
 */
static char *run_events(Vm *vm)
{
    GString *names = g_string_new(NULL);
    gint64 last_us = 0;
    JsonNode *ev;

    while ((ev = qmp_next_event(vm->qmp, 0, NULL))) {
        const char *name = qmp_event_name(ev);
        JsonObject *ts = json_object_get_object_member(
            json_node_get_object(ev), "timestamp");
        gint64 us = json_object_get_int_member(ts, "seconds") * G_USEC_PER_SEC
            + json_object_get_int_member(ts, "microseconds");

        if (!strcmp(name, "STOP") || !strcmp(name, "RESUME")) {
            g_string_append_printf(names, "%s%s", names->len ? " " : "",
                                   name);
            g_assert_cmpint(us, >=, last_us);
            last_us = us;
        }
        json_node_unref(ev);
    }
    return g_string_free(names, FALSE);
}

/*
 * A running parent sends STOP and RESUME for a fork, once each and in
 * that order, before the command's reply; it sends RESUME once its vCPUs
 * run again (vm_start_vcpus_first(), patch 0023), so that its guest does
 * not wait for the event to be built.  A parent that stays paused sends
 * STOP only, and RESUME at its 'cont'.  A parent whose fork() failed
 * (VMFORK_FAULT=fail-fork:1) runs again, and says so.
 */
static void tiny_fork_stop_resume_events(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GError) err = NULL;
    g_autofree char *e1 = NULL, *e2 = NULL, *e3 = NULL, *e4 = NULL;
    Vm *parent, *child, *failing;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    g_free(run_events(parent));         /* its start's */

    child = fork_one(parent, NULL);
    e1 = run_events(parent);
    g_assert_cmpstr(e1, ==, "STOP RESUME");
    g_assert_cmpint(vm_tiny_next_seq(parent, 2000), >=, 1);
    vm_quit(child);

    child = fork_one(parent, "{\"parent\": \"paused\"}");
    e2 = run_events(parent);
    g_assert_cmpstr(e2, ==, "STOP");
    json_node_unref(vm_qmp(parent, "cont", NULL));
    e3 = run_events(parent);
    g_assert_cmpstr(e3, ==, "RESUME");
    vm_quit(child);

    g_setenv("VMFORK_FAULT", "fail-fork:1", TRUE);
    failing = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    g_free(run_events(failing));
    err = vm_qmp_error(failing, "vmfork", NULL);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(qmp_error_desc(err), "fork() failed"));
    e4 = run_events(failing);
    g_assert_cmpstr(e4, ==, "STOP RESUME");
    g_assert_cmpint(vm_tiny_next_seq(failing, 2000), >=, 1);
    g_test_message("%s: events \"%s\", \"%s\" then \"%s\" at 'cont', "
                   "\"%s\" for a failed fork", vm_describe(&o), e1, e2, e3,
                   e4);

    vm_quit(failing);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * A child starts its threads on the stacks of its parent's threads, which
 * glibc keeps for it as cached stacks, and the first reuse of a cached
 * stack binds a call into the dynamic linker (_dl_allocate_tls_init()).
 * The parent binds it before its first fork, so that no child looks the
 * symbol up in every loaded library.  ld.so says what each process binds,
 * with its process ID, on QEMU's stderr (LD_DEBUG=bindings).
 */
static void tiny_fork_stack_reuse_bound(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *in_parent = NULL, *in_child = NULL;
    guint by_parent, by_child;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_setenv("LD_DEBUG", "bindings", TRUE);
    parent = vm_start(&o);
    g_unsetenv("LD_DEBUG");
    g_assert_cmpint(vm_tiny_next_seq(parent, 30000), >, 0);
    child = fork_one(parent, NULL);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);

    in_parent = g_strdup_printf("^ *%d:\\tbinding file .*"
                                "`_dl_allocate_tls_init'", parent->pid);
    in_child = g_strdup_printf("^ *%d:\\tbinding file .*"
                               "`_dl_allocate_tls_init'", child->pid);
    by_parent = vm_log_count(parent, in_parent);
    by_child = vm_log_count(parent, in_child);
    g_test_message("%s: _dl_allocate_tls_init() bound %u time(s) by the "
                   "parent, %u by the child", vm_describe(&o), by_parent,
                   by_child);
    g_assert_cmpuint(by_parent, ==, 1);
    g_assert_cmpuint(by_child, ==, 0);
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * Where the RTC's second begins, as a fraction of the host's second in
 * (-0.5, 0.5]: `qom-get /machine rtc-time` is read until its second
 * changes, and the change lies between the read before (which saw the old
 * second) and this one.  *ERR: half that window.
 */
static double rtc_edge_phase(Vm *vm, double *err)
{
    const char *args = "{\"path\": \"/machine\", \"property\": \"rtc-time\"}";
    gint64 deadline = g_get_monotonic_time() + 3 * G_USEC_PER_SEC;
    gint64 prev_before = 0, before, after;
    gint64 sec, prev_sec = -1;
    gint64 frac;

    for (;;) {
        JsonNode *r;

        before = g_get_real_time();
        r = vm_qmp(vm, "qom-get", args);
        after = g_get_real_time();
        sec = json_object_get_int_member(json_node_get_object(r), "tm_sec");
        json_node_unref(r);
        if (prev_sec >= 0 && sec != prev_sec) {
            break;
        }
        prev_sec = sec;
        prev_before = before;
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(500);
    }
    *err = (after - prev_before) / 2e6;
    frac = (prev_before + after) / 2 % G_USEC_PER_SEC;
    return (frac > G_USEC_PER_SEC / 2 ? frac - G_USEC_PER_SEC : frac) / 1e6;
}

/*
 * The RTC ticks when the host's second does, in the parent and in a
 * child (patch 0022), so that a clone that sets its wall clock at the
 * RTC's update interrupt (vmfork-guest) is right to the millisecond, not
 * up to a second late.  QEMU is started 0.4 s into a host second: an RTC
 * that began its seconds when QEMU started runs about half a second late.
 */
static void tiny_fork_rtc_in_phase(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    Vm *vm[2];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_usleep((G_USEC_PER_SEC + 400000 - g_get_real_time() % G_USEC_PER_SEC) %
             G_USEC_PER_SEC);
    vm[0] = vm_start(&o);
    vm[1] = fork_one(vm[0], NULL);
    for (guint i = 0; i < 2; i++) {
        double err, phase = rtc_edge_phase(vm[i], &err);

        g_test_message("%s, %s: the RTC's second begins %+.4f s (+-%.4f s) "
                       "from the host's", vm_describe(&o),
                       i ? "child" : "parent", phase, err);
        g_assert_cmpfloat(ABS(phase), <, err + 0.01);
    }
    vm_quit(vm[1]);
    vm_quit(vm[0]);
    vm_cleanup_all();
}

/* The next reply on a raw QMP connection (events skipped), as an object */
static JsonObject *raw_qmp_reply(int fd, JsonParser *parser, int timeout_ms)
{
    for (;;) {
        g_autofree char *line = fd_read_line(fd, timeout_ms);
        JsonObject *o;

        if (!line) {
            return NULL;
        }
        g_assert_true(json_parser_load_from_data(parser, line, -1, NULL));
        o = json_node_get_object(json_parser_get_root(parser));
        if (!json_object_has_member(o, "event")) {
            return o;
        }
    }
}

/*
 * A QMP client may write many commands at once (patch 0020 reads QMP
 * input in chunks, not a byte at a time).  Each is answered, in order,
 * with and without out-of-band execution negotiated: the monitor parses
 * what it read only while it is not suspended, and the rest waits.  300
 * commands are more than one read and more than the request queue; the
 * last one is cut in two writes.  Then a vmfork and a stop written with
 * it: the parent runs both, and the child, which inherits the unparsed
 * stop, does not run it.
 */
static void qmp_pipelined_commands(void)
{
    const char *extra[] = {
        "-qmp", "unix:@DIR@/pipe.qmp,server=on,wait=off", NULL
    };
    g_autofree char *dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "pipe.qmp", NULL);
    VmOptions o = { .guest = GUEST_TINY, .extra = extra, .dir = dir };
    g_autoptr(JsonParser) parser = json_parser_new();
    JsonObject *r;
    Vm *vm;

    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        vm_cleanup_all();
        return;
    }
    vm = vm_start(&o);
    for (int oob = 0; oob < 2; oob++) {
        g_autoptr(GString) cmds = g_string_new(NULL);
        g_autofree char *greeting = NULL;
        int fd = vm_unix_connect(vm->pid, path, 10000), i;

        g_assert_cmpint(fd, >=, 0);
        greeting = fd_read_line(fd, 10000);
        g_assert_nonnull(strstr(greeting, "\"QMP\""));
        fd_write_all(fd, oob ? "{\"execute\": \"qmp_capabilities\", "
                     "\"arguments\": {\"enable\": [\"oob\"]}}\n"
                     : "{\"execute\": \"qmp_capabilities\"}\n");
        r = raw_qmp_reply(fd, parser, 10000);
        g_assert_true(r && json_object_has_member(r, "return"));
        for (i = 0; i < 300; i++) {
            g_string_append_printf(cmds, "{\"execute\": \"%s\", \"id\": %d}\n",
                                   i % 3 ? "query-status" : "query-name", i);
        }
        g_string_append(cmds, "{\"execute\": \"query-status\", \"id\": 30");
        fd_write_all(fd, cmds->str);
        fd_write_all(fd, "0}\n");
        for (i = 0; i <= 300; i++) {
            r = raw_qmp_reply(fd, parser, 10000);
            g_assert_nonnull(r);
            g_assert_true(json_object_has_member(r, "return"));
            g_assert_cmpint(json_object_get_int_member(r, "id"), ==, i);
        }
        g_test_message("%s: 301 commands in one write answered in order",
                       oob ? "out-of-band enabled" : "no out-of-band");
        if (oob) {
            g_autofree char *state = NULL;
            JsonArray *a;
            Vm *child;

            fd_write_all(fd, "{\"execute\": \"vmfork\", \"id\": \"f\"}\n"
                         "{\"execute\": \"stop\", \"id\": \"s\"}\n");
            r = raw_qmp_reply(fd, parser, 30000);
            g_assert_nonnull(r);
            g_assert_cmpstr(json_object_get_string_member(r, "id"), ==, "f");
            a = json_object_get_array_member(
                json_object_get_object_member(r, "return"), "children");
            g_assert_cmpuint(json_array_get_length(a), ==, 1);
            child = vm_attach_child(vm, json_array_get_object_element(a, 0));
            r = raw_qmp_reply(fd, parser, 10000);
            g_assert_nonnull(r);
            g_assert_cmpstr(json_object_get_string_member(r, "id"), ==, "s");
            /* The parent stopped; the child did not run its parent's stop */
            g_assert_null(raw_qmp_reply(fd, parser, 500));
            state = vm_runstate(vm);
            g_assert_cmpstr(state, ==, "paused");
            g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
            g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
            vm_quit(child);
        }
        close(fd);
    }
    vm_quit(vm);
    vm_cleanup_all();
}

static void subprocess_exited(GObject *p, GAsyncResult *res, gpointer done)
{
    g_subprocess_wait_finish(G_SUBPROCESS(p), res, NULL);
    *(bool *)done = true;
}

/*
 * A QMP client on a pipe writes its commands and closes it: each is run,
 * the last a quit.  A monitor that reads ahead must not read the end of
 * the input while commands it read wait for it (it used to, now and then:
 * the end of the input dropped them, and QEMU never quit).  Ten QEMUs
 * with -qmp stdio, each given 40 commands and then the end of its input.
 */
static void qmp_stdio_commands_then_eof(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GString) cmds = g_string_new(
        "{\"execute\": \"qmp_capabilities\"}\n");

    if (vm_skip_if_missing(&o)) {
        return;
    }
    for (int i = 0; i < 40; i++) {
        g_string_append_printf(cmds, "{\"execute\": \"%s\"}\n",
                               i % 2 ? "cont" : "stop");
    }
    g_string_append(cmds, "{\"execute\": \"quit\"}\n");
    for (int run = 0; run < 10; run++) {
        const char *argv[] = {
            vm_qemu_binary(), "-accel", "tcg", "-M", "pc", "-m", "64",
            "-nodefaults", "-display", "none", "-S", "-qmp", "stdio",
            "-kernel", g_getenv("VMFORK_TINY"), NULL
        };
        gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
        g_autoptr(GSubprocess) p = NULL;
        g_autoptr(GError) err = NULL;
        GOutputStream *in;
        bool done = false;

        p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDIN_PIPE |
                              G_SUBPROCESS_FLAGS_STDOUT_SILENCE, &err);
        g_assert_no_error(err);
        in = g_subprocess_get_stdin_pipe(p);
        g_assert_true(g_output_stream_write_all(in, cmds->str, cmds->len,
                                                NULL, NULL, &err));
        g_assert_true(g_output_stream_close(in, NULL, &err));
        g_subprocess_wait_async(p, NULL, subprocess_exited, &done);
        while (!done && g_get_monotonic_time() < deadline) {
            if (!g_main_context_iteration(NULL, false)) {
                g_usleep(1000);
            }
        }
        if (!done) {
            g_subprocess_force_exit(p);
            g_subprocess_wait(p, NULL, NULL);
            g_error("run %d: QEMU did not quit within 20 s of the end of "
                    "its input", run);
        }
        /* quit: exit status 0 */
        g_assert_true(g_subprocess_get_if_exited(p));
        g_assert_cmpint(g_subprocess_get_exit_status(p), ==, 0);
    }
}

/* Bad arguments: a clear error, and the parent runs on untouched */
static void fork_bad_arguments_leave_parent_running(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *long_path = NULL, *existing = NULL, *nodir = NULL;
    const struct {
        const char *args;
        const char *class;
        const char *desc;
    } cases[] = {
        { "{\"count\": 0}", "GenericError", "count must be between" },
        { "{\"count\": 100000}", "GenericError", "count must be between" },
        { "{\"count\": \"two\"}", "GenericError", "expected: integer" },
        { "{\"parent\": \"frozen\"}", "GenericError", "frozen" },
        { "{\"monitor\": \"\"}", "GenericError", "must not be empty" },
        { "{\"monitor\": \"/tmp/x-%q\"}", "GenericError", "%q" },
        { "{\"bogus\": 1}", "GenericError", "bogus" },
        { "{\"count\": 2, \"monitor\": \"/tmp/vmtest-same.qmp\"}",
          "GenericError", "needs %i or %p" },
        { "{\"overlay-dir\": \"/nonexistent-dir\"}", "GenericError",
          "is not a directory" },
        { "{\"overlay-dir\": \"/etc/passwd\"}", "GenericError",
          "is not a directory" },
        { "{\"start\": \"yes\"}", "GenericError", "expected: boolean" },
        { "{\"hostfwd-offset\": 70000}", "GenericError",
          "between -65535 and 65535" },
        { "{\"serial\": \"/tmp/x-%z\"}", "GenericError", "%z" },
        { "{\"taps\": \"n0\"}", "GenericError", "expected: array" },
        { "{\"taps\": [{\"netdev\": \"n0\", \"ifname\": \"x\"}]}",
          "GenericError", "'n0' is not a tap netdev" },
    };
    Vm *vm;
    gint64 a, b;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        fork_refused(vm, cases[i].args, cases[i].class, cases[i].desc);
    }

    long_path = g_strdup_printf("{\"monitor\": \"%s/%0200d\"}", vm->dir, 0);
    existing = g_strdup_printf("{\"monitor\": \"%s\"}", vm->qmp_path);
    nodir = g_strdup("{\"monitor\": \"/nonexistent-dir/child.qmp\"}");
    {
        const struct { const char *args, *desc; } paths[] = {
            { long_path, "longer than a unix socket path" },
            { existing, "exists" },
            { nodir, "cannot create monitor" },
        };

        for (guint i = 0; i < G_N_ELEMENTS(paths); i++) {
            fork_refused(vm, paths[i].args, NULL, paths[i].desc);
        }
    }
    /* Still the same VM, running, and nothing was forked */
    {
        g_autofree char *s = vm_runstate(vm);
        JsonNode *q = vm_qmp(vm, "query-vmfork", NULL);

        g_assert_cmpstr(s, ==, "running");
        g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
            json_node_get_object(q), "children")), ==, 0);
        json_node_unref(q);
    }
    a = vm_tiny_next_seq(vm, 30000);
    b = vm_tiny_next_seq(vm, 30000);
    g_assert_cmpint(b, ==, a + 1);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * Arguments that would make a child fail as it comes up are refused up
 * front: a serial template that names a directory, a hostfwd-offset that
 * moves some child's host forward off the valid ports.
 */
static void fork_child_arguments_checked_up_front(void)
{
    int port = 65000;
    g_autofree char *netdev = g_strdup_printf(
        "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22", port);
    const char *extra[] = { "-netdev", netdev, NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *serial_dir = NULL;
    const struct { const char *args, *desc; } cases[] = {
        { "{\"serial\": \"/tmp\"}", "serial path '/tmp' is a directory" },
        { "{\"serial\": \"/nonexistent-dir/s-%p\"}",
          "cannot create serial files" },
        { "{\"hostfwd-offset\": 300, \"count\": 2, "
          "\"monitor\": \"@DIR@/c-%i.qmp\"}",
          "would listen on port 65600 in child 1" },
        { "{\"hostfwd-offset\": -65000}", "would listen on port 0" },
    };
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GString) args = g_string_new(cases[i].args);
        g_autoptr(GError) err = NULL;

        g_string_replace(args, "@DIR@", vm->dir, 0);
        err = vm_qmp_error(vm, "vmfork", args->str);
        g_assert_nonnull(err);
        g_test_message("%s -> %s", args->str, err->message);
        g_assert_nonnull(strstr(qmp_error_desc(err), cases[i].desc));
    }
    /* Nothing was forked, and the VM runs on */
    {
        JsonNode *q = vm_qmp(vm, "query-vmfork", NULL);

        g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
            json_node_get_object(q), "children")), ==, 0);
        json_node_unref(q);
    }
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/* Configurations that cannot be forked are refused, naming the cause */
static void fork_blockers_refused(void)
{
    g_autofree char *disk = NULL, *disk_path = NULL;
    const char *extra_disk[] = { "-drive", NULL, NULL };
    const char *extra_shm[] = {
        "-object", "memory-backend-memfd,id=mem0,size=64M,share=on",
        "-machine", "memory-backend=mem0", NULL
    };
    const char *extra_net[] = {
        "-netdev", "socket,id=net0,udp=127.0.0.1:1,localaddr=127.0.0.1:0",
        NULL
    };
    const struct {
        const char *const *extra;
        const char *desc;
    } cases[] = {
        { extra_disk, "disk" },
        { extra_shm, "shared memory" },
        { extra_net, "netdev 'net0'" },
    };

    if (vm_skip_if_missing(&(VmOptions){ .guest = GUEST_TINY })) {
        return;
    }
    disk_path = g_strdup_printf("%s/vmtest-disk-%d.raw", g_get_tmp_dir(),
                                getpid());
    disk = g_strdup_printf("file=%s,format=raw,if=virtio", disk_path);
    extra_disk[1] = disk;
    g_assert_true(g_file_set_contents(disk_path, "", 0, NULL));
    g_assert_cmpint(truncate(disk_path, 1 << 20), ==, 0);
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        VmOptions o = { .guest = GUEST_TINY, .extra = cases[i].extra };
        g_autoptr(GError) err = NULL;
        g_autofree char *s = NULL;
        Vm *vm = vm_start(&o);

        err = vm_qmp_error(vm, "vmfork", NULL);
        g_assert_nonnull(err);
        g_test_message("%s", err->message);
        g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
        g_assert_nonnull(strstr(qmp_error_desc(err), cases[i].desc));
        s = vm_runstate(vm);
        g_assert_cmpstr(s, ==, "running");
        g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
        vm_quit(vm);
        vm_cleanup_all();
    }
    unlink(disk_path);
}

/*
 * Identity: with a vmgenid device the child gets a new generation ID
 * (Linux reseeds its RNG and says so) and reads its clone id and
 * generation from fw_cfg; parent and child random numbers differ.
 */
static void linux_fork_new_identity(void)
{
    const char *extra[] = { "-device", "vmgenid", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *id_parent = NULL, *id_child = NULL, *want = NULL;
    g_autofree char *dmesg_parent = NULL, *dmesg_child = NULL;
    g_autofree char *r_parent = NULL, *r_child = NULL, *t_read = NULL;
    g_autofree char *t_seen = NULL, *t_first = NULL;
    guint64 t_run;
    JsonNode *reply;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    g_free(vm_agent(parent, "rand 16"));   /* the RNG is seeded */
    id_parent = vm_agent(parent, "cloneid");
    g_assert_true(g_str_has_prefix(id_parent, "00000000000000000000 0000000000"));

    /*
     * The child's commands wait in the serial port while it is paused.
     * The new generation ID reaches Linux as an ACPI notification that
     * the kernel handles in a worker, so the child may run before the
     * reseed: it waits for the kernel's "crng reseeded" record (reading
     * the log takes nothing from the RNG), then reads /dev/urandom.  The
     * parent reads as many bytes, and without the reseed both would get
     * the same ones.  How soon is measured on the child's own guest
     * clock, which stood still while it was paused: from its first
     * command (run as soon as it runs) to the read, so neither the QMP
     * command nor the host's load before the child runs counts.
     */
    reply = vm_qmp(parent, "vmfork", "{\"start\": false}");
    g_assert_false(json_object_has_member(json_node_get_object(reply),
                                          "warning"));
    child = vm_attach_child(parent, json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(reply), "children"),
        0));
    json_node_unref(reply);
    vm_agent_send(child, "time");
    vm_agent_send(child, "kmsg 1000 reseeded due to virtual machine fork");
    vm_agent_send(child, "rand 32");
    vm_agent_send(child, "time");
    json_node_unref(vm_qmp(child, "cont", NULL));
    t_first = vm_agent_reply(child);
    t_seen = vm_agent_reply(child);
    r_child = vm_agent_reply(child);
    t_read = vm_agent_reply(child);
    r_parent = vm_agent(parent, "rand 32");
    t_run = g_ascii_strtoull(t_first, NULL, 10);
    g_test_message("child saw the reseed %.1f ms and read /dev/urandom "
                   "%.1f ms of guest time after its first command",
                   (g_ascii_strtoull(t_seen, NULL, 10) - t_run) / 1e6,
                   (g_ascii_strtoull(t_read, NULL, 10) - t_run) / 1e6);
    g_assert_cmpuint(g_ascii_strtoull(t_read, NULL, 10) - t_run, <,
                     100 * 1000 * 1000);
    g_assert_cmpstr(r_parent, !=, r_child);

    id_child = vm_agent(child, "cloneid");
    want = g_strdup_printf("%020d 0000000001", child->pid);
    g_assert_true(g_str_has_prefix(id_child, want));

    /* Linux says "crng reseeded due to virtual machine fork" */
    dmesg_child = vm_agent(child, "sh dmesg | grep -c 'virtual machine fork'");
    dmesg_parent = vm_agent(parent,
                            "sh dmesg | grep -c 'virtual machine fork'");
    g_test_message("child: %s, parent: %s", dmesg_child, dmesg_parent);
    g_assert_true(g_str_has_prefix(dmesg_child, "0 "));
    g_assert_true(g_str_has_prefix(dmesg_parent, "1"));

    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* A VM's generation ID, from query-vm-generation-id */
static char *generation_id(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "query-vm-generation-id", NULL);
    char *guid = g_strdup(json_object_get_string_member(
                              json_node_get_object(r), "guid"));

    json_node_unref(r);
    return guid;
}

/*
 * Every child has a generation ID of its own: the siblings of one
 * command, and those of the next, differ from each other and from their
 * parent.  A child's GUID once came from GLib's PRNG (the "auto" value),
 * whose state each child inherits: every child of a parent got the same
 * GUID, and their Linux guests reseeded their RNGs with the same input.
 * GLib's PRNG is reseeded in a child too: an "auto" GUID that two
 * siblings ask for afterwards differs as well.
 */
static void tiny_siblings_own_generation_ids(void)
{
    const char *extra[] = { "-device", "vmgenid,id=vmgenid0", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    const char *set_auto = "{\"path\": \"/machine/peripheral/vmgenid0\", "
                           "\"property\": \"guid\", \"value\": \"auto\"}";
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal, g_free,
                                                       NULL);
    Vm *parent, *child[4];
    int n = 0;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    g_hash_table_add(seen, generation_id(parent));
    for (int command = 0; command < 2; command++) {
        JsonNode *r = vm_qmp(parent, "vmfork", "{\"count\": 2}");
        JsonArray *children = json_object_get_array_member(
            json_node_get_object(r), "children");

        for (guint i = 0; i < json_array_get_length(children); i++) {
            child[n++] = vm_attach_child(
                parent, json_array_get_object_element(children, i));
        }
        json_node_unref(r);
    }
    g_assert_cmpint(n, ==, 4);
    for (int i = 0; i < n; i++) {
        char *guid = generation_id(child[i]);

        g_test_message("TCG, tiny guest: child %d (pid %d) has GUID %s", i,
                       child[i]->pid, guid);
        g_assert_true(g_hash_table_add(seen, guid));
    }
    for (int i = 0; i < 2; i++) {
        json_node_unref(vm_qmp(child[i], "qom-set", set_auto));
        g_assert_true(g_hash_table_add(seen, generation_id(child[i])));
    }
    for (int i = 0; i < n; i++) {
        vm_quit(child[i]);
    }
    vm_quit(parent);
    vm_cleanup_all();
}

/* The "NAME:  N kB" line of /proc/PID/FILE, in KiB */
static gint64 proc_kib(pid_t pid, const char *file, const char *name)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/%s", pid, file);
    g_autofree char *text = NULL, *value = NULL;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    value = proc_status_value(text, name);
    return g_ascii_strtoll(value, NULL, 10);
}

/*
 * -overcommit mem-lock=on (libvirt's <locked/>): a child does not inherit
 * its parent's memory locks, so it takes them again; on fault, so that it
 * still shares the guest's RAM with its parent instead of copying it all.
 */
static void tiny_fork_mem_lock(void)
{
    const char *extra[] = { "-overcommit", "mem-lock=on", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    gint64 locked_parent, locked_child, private_child;
    Vm *parent, *child;

    if (geteuid() != 0) {
        g_test_skip("mem-lock=on needs root (RLIMIT_MEMLOCK) for QEMU");
        return;
    }
    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    child = fork_one(parent, NULL);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    locked_parent = proc_kib(parent->pid, "status", "VmLck");
    locked_child = proc_kib(child->pid, "status", "VmLck");
    private_child = proc_kib(child->pid, "smaps_rollup", "Private_Clean") +
                    proc_kib(child->pid, "smaps_rollup", "Private_Dirty");
    g_test_message("TCG, tiny guest, mem-lock=on: %" G_GINT64_FORMAT
                   " KiB locked in the parent, %" G_GINT64_FORMAT " KiB in "
                   "the child, whose private memory is %" G_GINT64_FORMAT
                   " KiB", locked_parent, locked_child, private_child);
    g_assert_cmpint(locked_parent, >=, 64 * 1024);
    g_assert_cmpint(locked_child, >=, 64 * 1024);
    g_assert_cmpint(private_child, <, 16 * 1024);
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* Without vmgenid the reply warns that the RNG state is shared */
static void fork_without_vmgenid_warns(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    JsonNode *reply;
    const char *warning;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    reply = vm_qmp(vm, "vmfork", NULL);
    warning = json_object_get_string_member_with_default(
        json_node_get_object(reply), "warning", NULL);
    g_assert_nonnull(warning);
    g_assert_nonnull(strstr(warning, "vmgenid"));
    json_node_unref(reply);
    vm_quit(vm);
    vm_cleanup_all();
}

/* serial: the child's first serial port writes to a file of its own */
static void tiny_fork_serial_template(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *args = NULL, *path = NULL, *text = NULL;
    g_autoptr(JsonArray) children = NULL;
    gint64 deadline;
    pid_t pid;
    Vm *parent;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    args = g_strdup_printf("{\"serial\": \"%s/serial-%%i-%%p.log\"}",
                           parent->dir);
    children = vm_fork(parent, args);
    pid = json_object_get_int_member(json_array_get_object_element(children,
                                                                   0),
                                     "pid");
    path = g_strdup_printf("%s/serial-0-%d.log", parent->dir, pid);
    deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (!(g_file_get_contents(path, &text, NULL, NULL) &&
             strstr(text, "\nC "))) {
        g_clear_pointer(&text, g_free);
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
    /* ... while the parent's port stays with the parent */
    g_assert_cmpint(vm_tiny_next_seq(parent, 30000), >, 0);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * The fd safety net: an fd that no part of the VM claims refuses the
 * fork, naming its path.  Here a writable file handed to QEMU the way
 * libvirt hands fds over (getfd, add-fd) and never used: a child would
 * share it with the parent.  Once it is gone, the VM forks.
 */
static void fork_unclaimed_fd_refused(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(JsonObject) getfd = json_object_new();
    g_autoptr(JsonObject) addfd = json_object_new();
    g_autofree char *path = NULL, *path2 = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonArray) children = NULL;
    Vm *vm, *child;
    int fd;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    path = g_build_filename(vm->dir, "behind-its-back.img", NULL);
    path2 = g_build_filename(vm->dir, "in-an-fd-set.img", NULL);

    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    g_assert_cmpint(fd, >=, 0);
    json_object_set_string_member(getfd, "fdname", "leak");
    json_node_unref(qmp_execute_with_fd(vm->qmp, "getfd", getfd, fd,
                                        10000, &err));
    g_assert_no_error(err);
    close(fd);
    fd = open(path2, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    g_assert_cmpint(fd, >=, 0);
    json_object_set_int_member(addfd, "fdset-id", 7);
    json_node_unref(qmp_execute_with_fd(vm->qmp, "add-fd", addfd, fd, 10000,
                                        &err));
    g_assert_no_error(err);
    close(fd);

    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, path));
    g_assert_nonnull(strstr(err->message, path2));
    g_assert_nonnull(strstr(err->message, "open for writing"));
    g_assert_nonnull(strstr(err->message, "fd set 7"));
    g_clear_error(&err);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);

    /* Without them, it forks */
    json_node_unref(vm_qmp(vm, "closefd", "{\"fdname\": \"leak\"}"));
    json_node_unref(vm_qmp(vm, "remove-fd", "{\"fdset-id\": 7}"));
    children = vm_fork(vm, NULL);
    child = vm_attach_child(vm, json_array_get_object_element(children, 0));
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A unix socket server chardev of each child listens where the command's
 * 'chardevs' template says (here the tiny guest's serial port): the reply
 * lists each child's path, and each carries that child's guest.
 */
static void tiny_fork_chardev_template(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *args = NULL;
    g_autoptr(JsonArray) c = NULL;
    const struct { const char *args, *desc; } bad[] = {
        { "{\"chardevs\": [{\"id\": \"nosuch\", \"path\": \"/tmp/x\"}]}",
          "'nosuch' is not a unix socket server chardev" },
        { "{\"chardevs\": [{\"id\": \"compat_monitor0\", "
          "\"path\": \"/tmp/x\"}]}", "not a unix socket server chardev" },
        { "{\"count\": 2, \"chardevs\": [{\"id\": \"agent\", "
          "\"path\": \"/tmp/same.sock\"}]}", "needs %i or %p" },
        { "{\"chardevs\": [{\"id\": \"agent\", "
          "\"path\": \"/nonexistent-dir/a.sock\"}]}",
          "cannot create chardev 'agent' sockets" },
        { "{\"chardevs\": [{\"id\": \"agent\"}]}",
          "'agent' has neither a path nor a logfile" },
        { "{\"chardevs\": [{\"id\": \"agent\", \"logfile\": \"/tmp/x\"}]}",
          "'agent' is not a chardev with a log" },
    };
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        fork_refused(vm, bad[i].args, NULL, bad[i].desc);
    }
    args = g_strdup_printf("{\"count\": 2, \"monitor\": \"%s/c-%%i.qmp\", "
                           "\"chardevs\": [{\"id\": \"agent\", "
                           "\"path\": \"%s/agent-%%i.sock\"}]}",
                           vm->dir, vm->dir);
    c = vm_fork(vm, args);
    for (guint i = 0; i < 2; i++) {
        JsonObject *kid = nth_child(c, i);
        JsonObject *ch = json_array_get_object_element(
            json_object_get_array_member(kid, "chardevs"), 0);
        g_autofree char *want = g_strdup_printf("%s/agent-%u.sock", vm->dir,
                                                i);
        g_autofree char *line = NULL;
        pid_t pid = json_object_get_int_member(kid, "pid");
        int fd;

        g_assert_cmpstr(json_object_get_string_member(ch, "id"), ==,
                        "agent");
        g_assert_cmpstr(json_object_get_string_member(ch, "path"), ==, want);
        fd = vm_unix_connect(pid, want, 10000);
        g_assert_cmpint(fd, >=, 0);
        /* a whole counter line of this child's guest */
        g_free(fd_read_line(fd, 10000));
        line = fd_read_line(fd, 10000);
        g_test_message("child %d on %s: %s", pid, want, line);
        g_assert_nonnull(line);
        g_assert_true(g_str_has_prefix(line, "C "));
        close(fd);
    }
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/* Wait until the file at @path has @needle in it; its contents */
static char *file_wait_for(const char *path, const char *needle)
{
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    char *text = NULL;

    while (!(g_file_get_contents(path, &text, NULL, NULL) &&
             strstr(text, needle))) {
        g_clear_pointer(&text, g_free);
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
    return text;
}

/*
 * A chardev's log (logfile=) is the child's own: a pty's with a log, as
 * libvirt writes a <serial type='pty'> with a <log> (a child's pty is a
 * new null chardev, logging where the child's own log is), and a null
 * chardev's (the same chardev in the child, its log moved), each on a
 * serial port of the Linux guest.  What the child's guest writes is
 * logged to PATH.fork-PID, never to the parent's log, which goes on.
 */
static void linux_fork_chardev_logs(void)
{
    const char *extra[] = {
        "-chardev", "pty,id=ptylog,logfile=@DIR@/port2.log,logappend=on",
        "-device", "isa-serial,chardev=ptylog,index=2",
        "-chardev", "null,id=nulllog,logfile=@DIR@/port3.log",
        "-device", "isa-serial,chardev=nulllog,index=3",
        NULL
    };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autoptr(JsonArray) children = NULL;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    g_free(vm_sh(parent, "echo parent-before >/dev/ttyS2; "
                 "echo parent-before >/dev/ttyS3"));
    children = vm_fork(parent, NULL);
    child = vm_attach_child(parent,
                            json_array_get_object_element(children, 0));
    g_free(vm_sh(child, "echo child-%d >/dev/ttyS2; echo child-%d "
                 ">/dev/ttyS3", child->pid, child->pid));
    for (int port = 2; port <= 3; port++) {
        g_autofree char *log = g_strdup_printf("%s/port%d.log", parent->dir,
                                               port);
        g_autofree char *child_log = g_strdup_printf("%s.fork-%d", log,
                                                     child->pid);
        g_autofree char *mark = g_strdup_printf("child-%d", child->pid);
        g_autofree char *text = file_wait_for(child_log, mark);
        g_autofree char *parent_text = NULL;

        g_test_message("TCG, Linux guest: %s: %s", child_log, text);
        g_assert_null(strstr(text, "parent-"));
        g_free(vm_sh(parent, "echo parent-after >/dev/ttyS%d", port));
        parent_text = file_wait_for(log, "parent-after");
        g_assert_nonnull(strstr(parent_text, "parent-before"));
        g_assert_null(strstr(parent_text, "child-"));
    }
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * A VM whose serial port @index is a null chardev 'piped' that logs to a
 * FIFO, as libvirt's <log> through virtlogd does; *reader is the FIFO's
 * read end, opened first so that QEMU's open of the log does not wait
 * for one.  NULL when the test is skipped.
 */
static Vm *start_with_piped_log(GuestKind guest, int index, int *reader)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_auto(GStrv) extra = NULL;
    VmOptions o = { .guest = guest, .dir = dir };

    g_assert_nonnull(dir);
    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        return NULL;
    }
    extra = vm_piped_log_args(dir, index, reader);
    o.extra = (const char *const *)extra;
    return vm_start(&o);
}

/*
 * A chardev whose log is not a file, such as the pipe to virtlogd that
 * libvirt passes for a <log>, is refused by name (here a FIFO) unless the
 * command says where the children log: a child cannot have a log of its
 * own there, nor share the parent's.
 */
static void tiny_fork_chardev_log_pipe_refused(void)
{
    int reader;
    Vm *vm = start_with_piped_log(GUEST_TINY, 1, &reader);

    if (!vm) {
        return;
    }
    fork_refused(vm, NULL, NULL,
                 "chardev 'piped' (chardev-null): its log (logfile=) is a "
                 "pipe, as libvirt's to virtlogd: a child could only share "
                 "it (give the children's log files: chardevs [{\"id\": "
                 "\"piped\", \"logfile\": TEMPLATE}])");
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    close(reader);
    vm_cleanup_all();
}

/*
 * The same log on a pipe passed in an fd set, as libvirt passes its pipe
 * to virtlogd (add-fd, then logfile=/dev/fdset/N,logappend=on): the child
 * logs to its own file and holds no copy of the pipe, the set's included,
 * so that the reader (virtlogd) sees the end of the parent's log when the
 * parent exits, while the child runs on.
 */
static void tiny_fork_chardev_log_fdset_pipe(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(JsonObject) addfd = json_object_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *tmpl = NULL, *args = NULL, *log = NULL, *link = NULL;
    struct stat st;
    gint64 deadline;
    char buf[256];
    ssize_t n;
    Vm *vm, *child;
    int p[2];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    g_assert_cmpint(fcntl(p[0], F_SETFL, O_NONBLOCK), ==, 0);
    g_assert_cmpint(fstat(p[0], &st), ==, 0);
    link = g_strdup_printf("pipe:[%lu]", (unsigned long)st.st_ino);
    json_object_set_int_member(addfd, "fdset-id", 3);
    json_node_unref(qmp_execute_with_fd(vm->qmp, "add-fd", addfd, p[1], 10000,
                                        &err));
    g_assert_no_error(err);
    close(p[1]);
    json_node_unref(vm_qmp(vm, "chardev-add", "{\"id\": \"piped\", "
                           "\"backend\": {\"type\": \"null\", \"data\": "
                           "{\"logfile\": \"/dev/fdset/3\", "
                           "\"logappend\": true}}}"));
    /* The set's copy and the chardev's */
    g_assert_cmpuint(audit_count_fds(vm->pid, link), ==, 2);

    tmpl = g_build_filename(vm->dir, "piped-%p.log", NULL);
    args = g_strdup_printf("{\"chardevs\": [{\"id\": \"piped\", "
                           "\"logfile\": \"%s\"}]}", tmpl);
    child = fork_one(vm, args);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    log = g_strdup_printf("%s/piped-%d.log", vm->dir, child->pid);
    g_assert_true(g_file_test(log, G_FILE_TEST_IS_REGULAR));
    g_test_message("%s: the parent holds the pipe in %u fds, the child in "
                   "%u", vm_describe(&o), audit_count_fds(vm->pid, link),
                   audit_count_fds(child->pid, link));
    g_assert_cmpuint(audit_count_fds(vm->pid, link), ==, 2);
    g_assert_cmpuint(audit_count_fds(child->pid, link), ==, 0);
    audit_vm_pair(vm, child);

    vm_quit(vm);
    deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while ((n = read(p[0], buf, sizeof(buf))) != 0 &&
           g_get_monotonic_time() < deadline) {
        g_assert_true(n > 0 || errno == EAGAIN);
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(n, ==, 0);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    vm_quit(child);
    close(p[0]);
    vm_cleanup_all();
}

/*
 * ... and forked when it does ('chardevs': [{id, logfile}], a template):
 * each child logs to its own file, the parent's log goes on in the pipe
 * (read here, as virtlogd would), which never carries a child's line.
 * Linux guest, the null chardev with a log on its third serial port.
 */
static void linux_fork_chardev_log_pipe_template(void)
{
    g_autofree char *args = NULL;
    g_autoptr(GString) piped = g_string_new(NULL);
    g_autoptr(JsonArray) children = NULL;
    gint64 deadline;
    Vm *parent, *child[2];
    int reader;

    parent = start_with_piped_log(GUEST_LINUX, 2, &reader);
    if (!parent) {
        return;
    }
    g_free(vm_sh(parent, "echo parent-before >/dev/ttyS2"));
    args = g_strdup_printf("{\"count\": 2, \"chardevs\": [{\"id\": "
                           "\"piped\", \"logfile\": "
                           "\"%s/piped-%%i-%%p.log\"}]}", parent->dir);
    children = vm_fork(parent, args);
    for (int i = 0; i < 2; i++) {
        child[i] = vm_attach_child(parent,
                                   json_array_get_object_element(children,
                                                                 i));
        g_free(vm_sh(child[i], "echo child-%d >/dev/ttyS2", child[i]->pid));
    }
    g_free(vm_sh(parent, "echo parent-after >/dev/ttyS2"));
    for (int i = 0; i < 2; i++) {
        g_autofree char *log = g_strdup_printf("%s/piped-%d-%d.log",
                                               parent->dir, i, child[i]->pid);
        g_autofree char *mark = g_strdup_printf("child-%d", child[i]->pid);
        g_autofree char *text = file_wait_for(log, mark);

        g_test_message("TCG, Linux guest: %s: %s", log, text);
        g_assert_null(strstr(text, "parent-"));
        vm_quit(child[i]);
    }
    /* The pipe: the parent's lines, before and after the fork, only */
    deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (!strstr(piped->str, "parent-after")) {
        char buf[4096];
        ssize_t n = read(reader, buf, sizeof(buf));

        if (n > 0) {
            g_string_append_len(piped, buf, n);
            continue;
        }
        g_assert_true(n < 0 && errno == EAGAIN);
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
    g_test_message("the parent's log, in the pipe: %s", piped->str);
    g_assert_nonnull(strstr(piped->str, "parent-before"));
    g_assert_null(strstr(piped->str, "child-"));
    vm_quit(parent);
    close(reader);
    vm_cleanup_all();
}

/*
 * QEMU started as root that drops to a user of its own (-run-with user=,
 * -runas before it): its pidfile, written before, is root's, mode 0600,
 * and no longer readable to QEMU, which must still know it for its own
 * (before: refused, "fd N (DIR/qemu.pid, open for writing) has no fork
 * rule").  The child runs as that user, without the pidfile.
 */
static void tiny_fork_run_with_user(void)
{
    static const char *const extra[] = { "-run-with", "user=nobody", NULL };
    g_autofree char *dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_autofree char *pidfile = g_build_filename(dir, "qemu.pid", NULL);
    g_autofree char *path = NULL, *status = NULL, *uid = NULL;
    g_autofree char *want = NULL;
    VmOptions o = { .guest = GUEST_TINY, .dir = dir, .extra = extra };
    struct passwd *nobody = getpwnam("nobody");
    GStatBuf st;
    Vm *vm, *child;

    g_assert_nonnull(dir);
    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        return;
    }
    if (geteuid() != 0 || !nobody) {
        g_test_skip("needs root and a user 'nobody' for QEMU to drop to");
        return;
    }
    /* Its directory, where the children's monitors go, is the user's */
    g_assert_cmpint(chown(dir, nobody->pw_uid, nobody->pw_gid), ==, 0);
    vm = vm_start(&o);
    g_assert_cmpint(g_stat(pidfile, &st), ==, 0);
    g_assert_cmpuint(st.st_uid, ==, 0);
    g_assert_cmpuint(st.st_mode & 0077, ==, 0);
    child = fork_one(vm, NULL);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);

    path = g_strdup_printf("/proc/%d/status", child->pid);
    g_assert_true(g_file_get_contents(path, &status, NULL, NULL));
    uid = proc_status_value(status, "Uid");
    want = g_strdup_printf("%u\t", nobody->pw_uid);
    g_assert_true(g_str_has_prefix(uid, want));
    g_assert_cmpuint(audit_count_fds(child->pid, "/qemu.pid"), ==, 0);
    g_assert_cmpuint(audit_count_fds(vm->pid, "/qemu.pid"), ==, 1);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A QEMU started with -daemonize forks (its pipe to the launcher is closed
 * once used, so no fd of unknown owner is left), and the child runs.
 */
static void tiny_fork_daemonized(void)
{
    VmOptions o = { .guest = GUEST_TINY, .daemonize = true };
    g_autoptr(JsonArray) c = NULL;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    /*
     * GCC 12's ASan: -daemonize's forks leave the allocator's lock taken
     * in the daemon, whose new threads then wait for it forever (seen in
     * QEMU's own monitor IOThread, before any vmfork code; 3 of 4 starts
     * hung with the ASan build of 38153d9 too)
     */
    if (g_getenv("VMFORK_SANITIZED")) {
        g_test_skip("a -daemonize QEMU under ASan hangs in its own start");
        return;
    }
    vm = vm_start(&o);
    c = vm_fork(vm, NULL);
    child = vm_attach_child(vm, nth_child(c, 0));
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/* ---- Where a child first runs ---------------------------------------- */

/* The CPU list every thread of @pid may run on, if they all agree */
static char *threads_cpus_allowed(pid_t pid)
{
    g_autoptr(GPtrArray) status = proc_threads_read(pid, "status");
    g_autofree char *common = NULL;

    g_assert_cmpuint(status->len, >, 0);
    for (guint i = 0; i < status->len; i++) {
        g_autofree char *cpus = proc_status_value(status->pdata[i],
                                                  "Cpus_allowed_list");

        if (!common) {
            common = g_steal_pointer(&cpus);
        } else if (strcmp(common, cpus) != 0) {
            g_test_message("pid %d: a thread may run on %s, another on %s",
                           pid, cpus, common);
            return g_strdup("(threads differ)");
        }
    }
    return g_steal_pointer(&common);
}

static void pin_thread(pid_t tid, int cpu)
{
    cpu_set_t one;

    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    g_assert_cmpint(sched_setaffinity(tid, sizeof(one), &one), ==, 0);
}

/* Thread @tid of process @pid may run on CPU @cpu only */
static void assert_pinned(pid_t pid, pid_t tid, int cpu)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task/%d/status", pid,
                                            tid);
    g_autofree char *status = NULL, *want = g_strdup_printf("%d", cpu);
    g_autofree char *cpus = NULL;

    g_assert_true(g_file_get_contents(path, &status, NULL, NULL));
    cpus = proc_status_value(status, "Cpus_allowed_list");
    g_test_message("pid %d thread %d: CPUs %s", pid, tid, cpus);
    g_assert_cmpstr(cpus, ==, want);
}

/*
 * Threads placed apart, as libvirt's <vcpupin>, <iothreadpin> and
 * <vcpusched> place them (sched_setaffinity() and sched_setscheduler() on
 * each thread, from outside QEMU): a child's vCPU thread and IOThread are
 * new threads, made by its main thread, and each gets the CPUs and the
 * policy of the parent's thread it stands for; the child's other threads
 * run where the parent's main thread does.  Started, pre-forked, and of a
 * paused parent.
 */
static void tiny_fork_pinned_threads(void)
{
    static const char *const extra[] = { "-object", "iothread,id=io0", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    struct sched_param none = { 0 };
    g_autofree char *main_cpus = NULL;
    cpu_set_t mine;
    int first = -1, last = -1;
    Vm *vm, *child[3];

    if (sched_getaffinity(0, sizeof(mine), &mine) < 0 ||
        CPU_COUNT(&mine) < 2) {
        g_test_skip("needs 2 CPUs: a thread placed apart from the others");
        return;
    }
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (CPU_ISSET(i, &mine)) {
            first = first < 0 ? i : first;
            last = i;
        }
    }
    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    main_cpus = threads_cpus_allowed(vm->pid);
    pin_thread(vm_thread_id(vm, NULL), last);
    g_assert_cmpint(sched_setscheduler(vm_thread_id(vm, NULL), SCHED_BATCH,
                                       &none), ==, 0);
    pin_thread(vm_thread_id(vm, "io0"), first);
    child[0] = fork_one(vm, NULL);
    child[1] = fork_one(vm, "{\"start\": false}");
    json_node_unref(vm_qmp(child[1], "cont", NULL));
    /*
     * Of a paused parent, a child is steered to the other CPU first
     * (placement.c), then all its threads get the parent's CPUs back:
     * the pinned ones their own again
     */
    json_node_unref(vm_qmp(vm, "stop", NULL));
    child[2] = fork_one(vm, NULL);
    for (int i = 0; i < 3; i++) {
        pid_t vcpu, io;
        g_autofree char *path = NULL, *status = NULL, *cpus = NULL;

        g_assert_cmpint(vm_tiny_next_seq(child[i], 30000), >, 0);
        vcpu = vm_thread_id(child[i], NULL);
        io = vm_thread_id(child[i], "io0");
        assert_pinned(child[i]->pid, vcpu, last);
        g_assert_cmpint(sched_getscheduler(vcpu), ==, SCHED_BATCH);
        assert_pinned(child[i]->pid, io, first);
        g_assert_cmpint(sched_getscheduler(io), ==, SCHED_OTHER);
        /* ... and its main thread where the parent's is */
        path = g_strdup_printf("/proc/%d/status", child[i]->pid);
        g_assert_true(g_file_get_contents(path, &status, NULL, NULL));
        cpus = proc_status_value(status, "Cpus_allowed_list");
        g_assert_cmpstr(cpus, ==, main_cpus);
        vm_quit(child[i]);
    }
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * QEMU's log in a file (-D, here with trace events): the parent writes on
 * to it, and each child to PATH.fork-PID from its first steps on, as a
 * file chardev's child does.  Before, the log file was an fd that nothing
 * claimed, and the fork was refused.
 */
static void tiny_fork_log_file(void)
{
    static const char *const extra[] = {
        "-D", "@DIR@/debug.log", "-trace", "vmfork_child_phase",
        "-trace", "vmfork_parent_resumed", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *plog = NULL, *clog = NULL, *ptext = NULL;
    g_autofree char *ctext = NULL;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    child = fork_one(vm, NULL);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    plog = g_build_filename(vm->dir, "debug.log", NULL);
    clog = g_strdup_printf("%s.fork-%d", plog, child->pid);
    g_assert_true(g_file_get_contents(plog, &ptext, NULL, NULL));
    g_assert_true(g_file_get_contents(clog, &ctext, NULL, NULL));
    g_test_message("parent's log %zu bytes, child's (%s) %zu bytes",
                   strlen(ptext), clog, strlen(ctext));
    /* The parent's own trace line in its log, the child's last in its */
    g_assert_nonnull(strstr(ptext, "vmfork_parent_resumed"));
    g_assert_null(strstr(ctext, "vmfork_parent_resumed"));
    g_assert_nonnull(strstr(ctext, "vmfork_child_phase monitor done"));
    g_assert_null(strstr(ptext, "vmfork_child_phase monitor done"));
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A new child starts on a CPU other than the forking thread's (Linux
 * queues it there, behind the parent), then every thread of the child,
 * the vCPU and IOThreads it made meanwhile among them, may run on every
 * CPU its parent may: started children and a pre-forked one alike.  A
 * command that makes more children than there are other CPUs leaves
 * them where Linux puts them, and a running vCPU that does not halt
 * counts as busy.
 */
static void tiny_fork_child_cpu_affinity(void)
{
    static const char *const extra[] = {
        "-object", "iothread,id=io0", "-trace", "vmfork_placement", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *parent_cpus = NULL, *many = NULL, *running = NULL;
    g_autoptr(JsonArray) crowd = NULL;
    cpu_set_t mine;
    Vm *vm, *child[3];

    if (sched_getaffinity(0, sizeof(mine), &mine) < 0 ||
        CPU_COUNT(&mine) < 2) {
        g_test_skip("needs 2 CPUs: with one, there is no other to start on");
        return;
    }
    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    parent_cpus = threads_cpus_allowed(vm->pid);
    g_test_message("parent's threads may run on CPUs %s", parent_cpus);
    /* A paused parent leaves every CPU but its own to a child */
    child[0] = fork_one(vm, "{\"parent\": \"paused\"}");
    child[1] = fork_one(vm, "{\"parent\": \"paused\"}");
    child[2] = fork_one(vm, "{\"start\": false, \"parent\": \"paused\"}");
    for (int i = 0; i < 3; i++) {
        g_autofree char *cpus = NULL;

        if (i < 2) {
            g_assert_cmpint(vm_tiny_next_seq(child[i], 30000), >, 0);
        }
        cpus = threads_cpus_allowed(child[i]->pid);
        g_test_message("child %d (pid %d): its threads may run on CPUs %s",
                       i, child[i]->pid, cpus);
        g_assert_cmpstr(cpus, ==, parent_cpus);
    }
    json_node_unref(vm_qmp(child[2], "cont", NULL));
    g_assert_cmpint(vm_tiny_next_seq(child[2], 30000), >, 0);
    /* Each fork did move its child (else this test proved nothing) */
    g_assert_cmpuint(vm_log_count(vm, "they first run on [1-9]"), ==, 3);
    g_assert_cmpuint(vm_log_count(vm, "they first run on 0 "), ==, 0);
    for (int i = 0; i < 3; i++) {
        vm_quit(child[i]);
    }

    /* As many children as CPUs: one would have none left to start on */
    if (CPU_COUNT(&mine) <= 8) {
        many = g_strdup_printf("{\"count\": %d, \"parent\": \"paused\"}",
                               CPU_COUNT(&mine));
        crowd = vm_fork(vm, many);
        g_assert_cmpuint(vm_log_count(vm, "they first run on 0 "), ==, 1);
        for (guint i = 0; i < json_array_get_length(crowd); i++) {
            Vm *c = vm_attach_child(vm, nth_child(crowd, i));

            g_assert_cmpint(vm_tiny_next_seq(c, 30000), >, 0);
            vm_quit(c);
        }
    }

    /*
     * The tiny guest's vCPU never halts: a running parent counts it busy
     * (on 2 CPUs that leaves none for a child, which then stays put)
     */
    json_node_unref(vm_qmp(vm, "cont", NULL));
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    child[0] = fork_one(vm, NULL);
    g_assert_cmpint(vm_tiny_next_seq(child[0], 30000), >, 0);
    g_assert_cmpuint(vm_log_count(vm, "1 vCPU\\(s\\) busy"), ==, 1);
    running = threads_cpus_allowed(child[0]->pid);
    g_assert_cmpstr(running, ==, parent_cpus);
    vm_quit(child[0]);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A KVM child sets its memory slots before it creates the irqchip and
 * the PIT.  Creating those replaces the VM's I/O bus, and the kernel
 * frees the old bus after an SRCU grace period that starts a jiffy
 * later; a memslot set meanwhile waits for that grace period before its
 * own.  That was 5 to 10 ms of a 12 ms clone of the tiny guest under
 * this machine's kvm_pvm.  (The time is the benchmark's business; this
 * checks the order, in the trace of the child's ioctls.)
 */
static void tiny_fork_kvm_memslots_first(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_TINY, .accel = data };
    g_autofree char *log = NULL;
    const char *events[] = { "kvm_set_user_memory", "kvm_vm_ioctl" };
    const char *slot, *irqchip, *pit;
    gsize from;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    /* Paused, the parent makes no VM ioctl: those traced are the child's */
    json_node_unref(vm_qmp(vm, "stop", NULL));
    for (guint i = 0; i < G_N_ELEMENTS(events); i++) {
        vm_trace_enable(vm, events[i]);
    }
    from = vm_log_size(vm);
    child = fork_one(vm, "{\"parent\": \"paused\"}");
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    log = vm_log_since(vm, from);

    /* KVM_CREATE_IRQCHIP is 0xae60, KVM_CREATE_PIT2 0x4040ae77 */
    slot = strstr(log, "kvm_set_user_memory ");
    irqchip = strstr(log, "kvm_vm_ioctl type 0xae60,");
    pit = strstr(log, "kvm_vm_ioctl type 0x4040ae77,");
    g_test_message("%s: child's first memslot at byte %td, irqchip at %td, "
                   "PIT at %td of its trace", vm_describe(&o),
                   slot ? slot - log : -1, irqchip ? irqchip - log : -1,
                   pit ? pit - log : -1);
    g_assert_nonnull(slot);
    g_assert_nonnull(irqchip);
    g_assert_nonnull(pit);
    g_assert_true(slot < irqchip);
    g_assert_true(slot < pit);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * When a VM starts, kvmclock tells each vCPU that its guest was stopped
 * (KVM_KVMCLOCK_CTRL, 0xaead), so that the guest's watchdog does not take
 * the pause for a lockup.  Patch 0021 queues that for the vCPU thread
 * instead of waiting for it; the thread must still make the ioctl before
 * it enters the guest again (KVM_RUN, 0xae80).  A child's first start and
 * its parent's resume, under KVM, in the trace of the vCPU ioctls.
 */
static void tiny_fork_kvm_clock_ctrl_before_run(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_TINY, .accel = data };
    const char *who[] = { "child", "parent" };
    gsize from;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    json_node_unref(vm_qmp(vm, "stop", NULL));
    vm_trace_enable(vm, "kvm_vcpu_ioctl");
    /* The parent stays paused: the vCPU ioctls traced first are the child's */
    from = vm_log_size(vm);
    child = fork_one(vm, "{\"parent\": \"paused\"}");
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    for (int i = 0; i < 2; i++) {
        g_autofree char *log = NULL;
        const char *ctrl, *run;

        if (i == 1) {
            /* The child is gone: now the parent's resume */
            vm_quit(child);
            from = vm_log_size(vm);
            json_node_unref(vm_qmp(vm, "cont", NULL));
            g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
        }
        log = vm_log_since(vm, from);
        ctrl = strstr(log, "kvm_vcpu_ioctl cpu_index 0, type 0xaead,");
        run = strstr(log, "kvm_vcpu_ioctl cpu_index 0, type 0xae80,");
        g_test_message("%s: %s's first KVM_KVMCLOCK_CTRL at byte %td, first "
                       "KVM_RUN at %td of its trace", vm_describe(&o),
                       who[i], ctrl ? ctrl - log : -1, run ? run - log : -1);
        g_assert_nonnull(ctrl);
        g_assert_nonnull(run);
        g_assert_true(ctrl < run);
    }
    vm_quit(vm);
    vm_cleanup_all();
}

/* ---- VNC ------------------------------------------------------------- */

/* Read exactly @len bytes (5 s at most) */
static bool read_full(int fd, void *buf, size_t len)
{
    for (size_t got = 0; got < len;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        ssize_t n;

        if (poll(&pfd, 1, 5000) <= 0) {
            return false;
        }
        n = read(fd, (char *)buf + got, len - got);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
            return false;
        }
        got += MAX(n, 0);
    }
    return true;
}

/* An RFB 3.8 client without authentication: the framebuffer size */
static int vnc_connect(pid_t pid, const char *path, guint16 *w, guint16 *h)
{
    int fd = vm_unix_connect(pid, path, 10000);
    guint8 version[12], n, types[16], result[4], init[24], shared = 1;
    guint8 none = 1;
    guint32 name_len;
    g_autofree char *name = NULL;

    g_assert_cmpint(fd, >=, 0);
    g_assert_true(read_full(fd, version, sizeof(version)));
    g_assert_cmpint(memcmp(version, "RFB 003.008\n", 12), ==, 0);
    g_assert_cmpint(write(fd, "RFB 003.008\n", 12), ==, 12);
    g_assert_true(read_full(fd, &n, 1));
    g_assert_true(n > 0 && n <= sizeof(types));
    g_assert_true(read_full(fd, types, n));
    g_assert_nonnull(memchr(types, none, n));
    g_assert_cmpint(write(fd, &none, 1), ==, 1);
    g_assert_true(read_full(fd, result, 4));
    g_assert_cmpint(result[3], ==, 0);
    g_assert_cmpint(write(fd, &shared, 1), ==, 1);
    g_assert_true(read_full(fd, init, sizeof(init)));
    *w = init[0] << 8 | init[1];
    *h = init[2] << 8 | init[3];
    name_len = GUINT32_FROM_BE(*(guint32 *)(init + 20));
    name = g_malloc(name_len);
    g_assert_true(read_full(fd, name, name_len));
    return fd;
}

/* Ask for the whole framebuffer; the server answers with an update */
static void vnc_assert_update(int fd, guint16 w, guint16 h)
{
    guint8 req[10] = { 3, 0, 0, 0, 0, 0, w >> 8, w, h >> 8, h };
    guint8 hdr[4];

    g_assert_cmpint(write(fd, req, sizeof(req)), ==, sizeof(req));
    g_assert_true(read_full(fd, hdr, sizeof(hdr)));
    g_assert_cmpint(hdr[0], ==, 0);         /* FramebufferUpdate */
    g_assert_cmpint(hdr[2] << 8 | hdr[3], >, 0);
    /* the rest of it: drain what came */
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char buf[65536];

        if (poll(&pfd, 1, 200) <= 0 || read(fd, buf, sizeof(buf)) <= 0) {
            break;
        }
    }
}

/*
 * VNC, with a client connected at the fork: the child never hangs (the
 * encoding worker is the parent's), drops the parent's client and
 * listener, and listens where display-update says; the parent's client
 * keeps its updates.
 */
static void tiny_fork_vnc_with_client(void)
{
    const char *extra[] = { "-device", "VGA",
                            "-vnc", "unix:@DIR@/vnc.sock", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *psock = NULL, *csock = NULL, *upd = NULL;
    g_autoptr(JsonArray) children = NULL;
    JsonNode *q;
    guint16 w, h, cw, ch;
    int pfd, cfd;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    psock = g_build_filename(vm->dir, "vnc.sock", NULL);
    pfd = vnc_connect(vm->pid, psock, &w, &h);
    vnc_assert_update(pfd, w, h);

    children = vm_fork(vm, NULL);
    child = vm_attach_child(vm, json_array_get_object_element(children, 0));
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    /* The child answers and listens nowhere: its VNC is off */
    q = vm_qmp(child, "query-vnc", NULL);
    g_assert_false(json_object_get_boolean_member(json_node_get_object(q),
                                                  "enabled"));
    json_node_unref(q);
    vnc_assert_update(pfd, w, h);

    csock = g_build_filename(vm->dir, "child-vnc.sock", NULL);
    upd = g_strdup_printf("{\"type\": \"vnc\", \"addresses\": "
                          "[{\"type\": \"unix\", \"path\": \"%s\"}]}",
                          csock);
    json_node_unref(vm_qmp(child, "display-update", upd));
    cfd = vnc_connect(child->pid, csock, &cw, &ch);
    g_assert_cmpint(cw, ==, w);
    g_assert_cmpint(ch, ==, h);
    vnc_assert_update(cfd, cw, ch);
    vnc_assert_update(pfd, w, h);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    close(cfd);
    close(pfd);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/* ---- Disks ------------------------------------------------------------ */

/*
 * Disks: each clone writes its own qcow2 overlay on top of the image that
 * was active at the fork, which keeps the data from before the fork and
 * is not written again.
 */
static void linux_fork_disks_are_private(void)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-disk-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *drive = g_strdup_printf(
        "file=%s,format=raw,if=virtio,cache=writeback", base);
    const char *extra[] = { "-drive", drive, NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *args = NULL, *b_p = NULL, *b_c = NULL;
    g_autofree char *w_p = NULL, *w_c = NULL, *base_data = NULL;
    g_autoptr(GDir) d = NULL;
    const char *name;
    gsize len;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        g_rmdir(dir);
        return;
    }
    vm_register_dir(dir);
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 16 << 20), ==, 0);
    parent = vm_start(&o);
    vm_disk_write(parent, "vda", 100, "before-the-fork");

    /* Without overlay-dir: refused, naming the disk */
    {
        g_autoptr(GError) err = vm_qmp_error(parent, "vmfork", NULL);

        g_assert_nonnull(err);
        g_assert_nonnull(strstr(err->message, "overlay-dir"));
    }
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    child = fork_one(parent, args);

    vm_disk_write(parent, "vda", 200, "written-by-the-parent");
    vm_disk_write(child, "vda", 200, "written-by-the-child");
    b_p = vm_disk_read(parent, "vda", 100);
    b_c = vm_disk_read(child, "vda", 100);
    w_p = vm_disk_read(parent, "vda", 200);
    w_c = vm_disk_read(child, "vda", 200);
    g_assert_cmpstr(b_p, ==, "before-the-fork");
    g_assert_cmpstr(b_c, ==, "before-the-fork");
    g_assert_cmpstr(w_p, ==, "written-by-the-parent");
    g_assert_cmpstr(w_c, ==, "written-by-the-child");

    vm_quit(child);
    vm_quit(parent);

    /* The base has the data from before the fork and nothing after */
    g_assert_true(g_file_get_contents(base, &base_data, &len, NULL));
    g_assert_cmpuint(len, ==, 16 << 20);
    g_assert_cmpint(memcmp(base_data + 100 * 512, "before-the-fork", 15),
                    ==, 0);
    for (int i = 0; i < 512; i++) {
        g_assert_cmpint(base_data[200 * 512 + i], ==, 0);
    }
    /* Every overlay is a clean qcow2 image */
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 2);
    d = g_dir_open(dir, 0, NULL);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        g_unlink(path);
    }
    g_rmdir(dir);
    vm_cleanup_all();
}

/*
 * Disk writes while the fork happens: the guest's writer fsyncs numbered
 * records one after the other across the fork, and goes on in both VMs.
 * Each sees every write it acknowledged, the ones from before the fork
 * included, and records of its own identity after them, never the other's.
 */
static void linux_fork_disk_writes_during_fork(void)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-wdisk-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *drive = g_strdup_printf(
        "file=%s,format=raw,if=virtio,cache=writeback", base);
    const char *extra[] = { "-drive", drive, NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *args = NULL, *id_p = NULL, *id_c = NULL;
    g_autofree char *runs_p = NULL, *runs_c = NULL, *want_p = NULL;
    g_autofree char *sum_fork = NULL, *sum_end = NULL;
    g_auto(GStrv) rc = NULL;
    guint64 acked_p, acked_c, before, after_p;
    Vm *parent, *child;

    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        vm_cleanup_all();
        return;
    }
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 64 << 20), ==, 0);
    parent = vm_start(&o);
    id_p = vm_clone_id_word(parent);
    vm_writer_start(parent, "/dev/vda");
    vm_writer_wait(parent, 20);

    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    child = fork_one(parent, args);
    sum_fork = file_sha256(base);
    id_c = vm_clone_id_word(child);
    g_assert_cmpstr(id_c, !=, id_p);
    /* both write on: at least 20 more records each after the fork */
    acked_c = vm_writer_wait(child, 0);
    vm_writer_wait(child, acked_c + 20);
    vm_writer_wait(parent, acked_c + 20);
    acked_p = vm_writer_stop(parent);
    acked_c = vm_writer_stop(child);

    /* The parent: its own records only, every acknowledged one */
    runs_p = vm_writer_check(parent, "/dev/vda", acked_p);
    after_p = g_ascii_strtoull(strchr(runs_p, ':') + 1, NULL, 10);
    want_p = g_strdup_printf("%s:%" G_GUINT64_FORMAT, id_p, after_p);
    g_assert_cmpstr(runs_p, ==, want_p);

    /* The child: the parent's records up to the fork, then its own */
    runs_c = vm_writer_check(child, "/dev/vda", acked_c);
    rc = g_strsplit_set(runs_c, ":,", -1);
    g_assert_cmpuint(g_strv_length(rc), ==, 4);
    g_assert_cmpstr(rc[0], ==, id_p);
    g_assert_cmpstr(rc[2], ==, id_c);
    before = g_ascii_strtoull(rc[1], NULL, 10);
    g_test_message("%" G_GUINT64_FORMAT " records before the fork, then "
                   "%" G_GUINT64_FORMAT " in the parent and %s in the child",
                   before, after_p - before, rc[3]);
    g_assert_cmpuint(before, >, 0);                 /* written before */
    g_assert_cmpuint(after_p, >, before);           /* and after, in both */
    g_assert_cmpuint(g_ascii_strtoull(rc[3], NULL, 10), >, 0);

    vm_quit(child);
    vm_quit(parent);

    /* Nothing wrote the base after the fork; every overlay is clean */
    sum_end = file_sha256(base);
    g_assert_cmpstr(sum_end, ==, sum_fork);
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 2);
    vm_cleanup_all();
}

/* ---- User networking ---------------------------------------------------- */

/* What a TCP server on 127.0.0.1:port says first (NULL: nobody there) */
static char *tcp_read_banner(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char buf[64] = "";
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    ssize_t n = 0;

    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return NULL;
    }
    while (n == 0 && g_get_monotonic_time() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };

        if (poll(&p, 1, 1000) > 0) {
            n = read(fd, buf, sizeof(buf) - 1);
            break;
        }
    }
    close(fd);
    return n > 0 ? g_strstrip(g_strdup(buf)) : g_strdup("");
}

/* The banner at @port, once it is @want (the guest's server may start late) */
static char *tcp_wait_banner(int port, const char *want)
{
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    char *b = NULL;

    do {
        g_free(b);
        b = tcp_read_banner(port);
        if (b && g_str_equal(b, want)) {
            break;
        }
        g_usleep(100 * 1000);
    } while (g_get_monotonic_time() < deadline);
    return b;
}

/* A server in the guest on port 7777 that says what /tmp/id holds */
static void guest_net_up(Vm *vm, const char *id)
{
    g_autofree char *r = vm_agent(vm,
        "sh ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && "
        "ip route add default via 10.0.2.2 && echo %s > /tmp/id && "
        "(nc -ll -p 7777 -e cat /tmp/id >/dev/null 2>&1 &)", id);

    g_assert_true(g_str_has_prefix(r, "0"));
}

/* A host loopback server that accepts one connection, answers and closes */
static gpointer host_echo_server(gpointer data)
{
    int lfd = GPOINTER_TO_INT(data), fd;
    char buf[64] = "";
    ssize_t n;

    fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
        return NULL;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    if (n > 0 && write(fd, "seen ", 5) == 5 && write(fd, buf, n) == n) {
        /* answered */
    }
    close(fd);
    return NULL;
}

static char *guest_calls_host(Vm *vm, int port, const char *word)
{
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons(port) };
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    g_autofree char *r = NULL;
    GThread *t;

    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    g_assert_cmpint(bind(lfd, (struct sockaddr *)&a, sizeof(a)), ==, 0);
    g_assert_cmpint(listen(lfd, 4), ==, 0);
    t = g_thread_new("host-server", host_echo_server, GINT_TO_POINTER(lfd));
    r = vm_agent(vm, "sh echo %s | nc -w 10 10.0.2.2 %d", word, port);
    g_thread_join(t);
    close(lfd);
    return g_strdup(r);
}

/*
 * User networking: the child has a stack of its own; its service is
 * reached on the offset host port while the parent's stays on its own,
 * and both reach a host loopback server.
 */
static void linux_fork_user_network(void)
{
    /* port + offset, the child's forward, is free too */
    int offset = 7, port = vm_free_ports(offset, 2);
    int hport = vm_free_ports(1, 1);
    g_autofree char *netdev = g_strdup_printf(
        "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:7777", port);
    const char *extra[] = { "-netdev", netdev, "-device",
                            "virtio-net-pci,netdev=n0,romfile=", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *args = NULL, *b_parent = NULL, *b_child = NULL;
    g_autofree char *b_parent2 = NULL, *c_parent = NULL, *c_child = NULL;
    g_autoptr(JsonArray) children = NULL;
    JsonArray *fwds;
    JsonObject *fwd;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    guest_net_up(parent, "parent");
    b_parent = tcp_wait_banner(port, "parent");
    g_assert_cmpstr(b_parent, ==, "parent");

    args = g_strdup_printf("{\"hostfwd-offset\": %d}", offset);
    children = vm_fork(parent, args);
    /* The reply says where the host reaches the child's guest */
    fwds = json_object_get_array_member(nth_child(children, 0), "hostfwds");
    g_assert_cmpuint(json_array_get_length(fwds), ==, 1);
    fwd = json_array_get_object_element(fwds, 0);
    g_assert_cmpstr(json_object_get_string_member(fwd, "netdev"), ==, "n0");
    g_assert_cmpstr(json_object_get_string_member(fwd, "protocol"), ==, "tcp");
    g_assert_cmpstr(json_object_get_string_member(fwd, "host-address"), ==,
                    "127.0.0.1");
    g_assert_cmpint(json_object_get_int_member(fwd, "host-port"), ==,
                    port + offset);
    g_assert_cmpint(json_object_get_int_member(fwd, "guest-port"), ==, 7777);
    child = vm_attach_child(parent, nth_child(children, 0));
    g_free(vm_agent(child, "sh echo child > /tmp/id"));

    b_child = tcp_wait_banner(port + offset, "child");
    b_parent2 = tcp_read_banner(port);
    g_assert_cmpstr(b_child, ==, "child");
    g_assert_cmpstr(b_parent2, ==, "parent");

    c_parent = guest_calls_host(parent, hport, "from-parent");
    c_child = guest_calls_host(child, hport, "from-child");
    g_test_message("parent: %s; child: %s", c_parent, c_child);
    /* exit status 0, and the host answered "seen WORD" (hex) */
    g_assert_true(g_str_has_prefix(c_parent, "0 7365656e2066726f6d2d70"));
    g_assert_true(g_str_has_prefix(c_child, "0 7365656e2066726f6d2d63"));

    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/* The HOST_FORWARD lines of 'info usernet' (slirp's sockets) */
static guint host_forwards(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "human-monitor-command",
                         "{\"command-line\": \"info usernet\"}");
    g_auto(GStrv) lines = g_strsplit(json_node_get_string(r), "\n", -1);
    guint n = 0;

    for (char **l = lines; *l; l++) {
        n += strstr(*l, "HOST_FORWARD") != NULL;
    }
    json_node_unref(r);
    return n;
}

/*
 * Without hostfwd-offset a child has no host forwards (the parent's ports
 * are the parent's): its stack lists none and listens nowhere on the
 * host, and the parent's forward still reaches the parent's guest.
 */
static void linux_fork_no_hostfwd_without_offset(void)
{
    int port = vm_free_ports(1, 1);
    g_autofree char *netdev = g_strdup_printf(
        "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:7777", port);
    const char *extra[] = { "-netdev", netdev, "-device",
                            "virtio-net-pci,netdev=n0,romfile=", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *b_parent = NULL, *b_after = NULL;
    g_autoptr(JsonArray) children = NULL;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    guest_net_up(parent, "parent");
    b_parent = tcp_wait_banner(port, "parent");
    g_assert_cmpstr(b_parent, ==, "parent");
    g_assert_cmpuint(host_forwards(parent), ==, 1);

    children = vm_fork(parent, NULL);
    g_assert_false(json_object_has_member(nth_child(children, 0),
                                          "hostfwds"));
    child = vm_attach_child(parent, nth_child(children, 0));
    g_free(vm_agent(child, "sh echo child > /tmp/id"));
    g_assert_cmpuint(host_forwards(child), ==, 0);
    g_assert_cmpuint(host_forwards(parent), ==, 1);
    /* the child holds no listening TCP socket on the host */
    audit_vm_pair(parent, child);
    {
        g_autofree char *cmd = g_strdup_printf(
            "sh -c 'ss -Htlnp | grep -c \"pid=%d,\" || true'", child->pid);
        g_autofree char *out = NULL;

        g_assert_true(g_spawn_command_line_sync(cmd, &out, NULL, NULL,
                                                NULL));
        g_assert_cmpint(atoi(out), ==, 0);
    }
    b_after = tcp_read_banner(port);
    g_assert_cmpstr(b_after, ==, "parent");
    vm_quit(child);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * 'qom-set ... guid auto' gives a running VM a new generation ID at any
 * time, as a fork does: the property changes and Linux reseeds its RNG.
 */
static void linux_vmgenid_guid_auto(void)
{
    const char *extra[] = { "-device", "vmgenid,id=vmgenid0", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    const char *get = "{\"path\": \"/machine/peripheral/vmgenid0\", "
                      "\"property\": \"guid\"}";
    g_autofree char *g0 = NULL, *g1 = NULL, *before = NULL;
    JsonNode *r;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    g_free(vm_agent(vm, "rand 16"));   /* the RNG is seeded: it says so */
    before = vm_sh(vm, "dmesg | grep -c 'virtual machine fork' || true");
    g_assert_cmpint(atoi(before), ==, 0);
    r = vm_qmp(vm, "qom-get", get);
    g0 = g_strdup(json_node_get_string(r));
    json_node_unref(r);
    json_node_unref(vm_qmp(vm, "qom-set", "{\"path\": \"/machine/peripheral/"
                           "vmgenid0\", \"property\": \"guid\", "
                           "\"value\": \"auto\"}"));
    r = vm_qmp(vm, "qom-get", get);
    g1 = g_strdup(json_node_get_string(r));
    json_node_unref(r);
    g_test_message("guid %s -> %s", g0, g1);
    g_assert_cmpstr(g0, !=, g1);
    g_free(vm_agent(vm, "kmsg 5000 reseeded due to virtual machine fork"));
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * Under TCG a parent that runs on after its first fork is sent one VM
 * generation ID notification with its GUID unchanged, so that its guest
 * translates the code that handles it once, instead of every child doing
 * so (identity.c).  Linux counts the notifications it handles (GPE 0x05,
 * the vmgenid device's), and does nothing else for an unchanged GUID: no
 * reseed.  One notification after the first fork, none after the second.
 */
static guint64 gpe05_count(Vm *vm)
{
    g_autofree char *n = vm_sh(vm, "cat /sys/firmware/acpi/interrupts/gpe05");

    return g_ascii_strtoull(n, NULL, 10);
}

static void linux_parent_warmed_once(void)
{
    const char *extra[] = { "-device", "vmgenid", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *reseeds = NULL;
    g_autofree char *g0 = NULL, *g1 = NULL;
    guint64 n0, n1 = 0;
    JsonNode *r;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    r = vm_qmp(vm, "query-vm-generation-id", NULL);
    g0 = g_strdup(json_object_get_string_member(json_node_get_object(r),
                                                "guid"));
    json_node_unref(r);
    n0 = gpe05_count(vm);
    for (int fork_no = 1; fork_no <= 2; fork_no++) {
        r = vm_qmp(vm, "vmfork", "{\"start\": false}");
        vm_quit(vm_attach_child(vm, json_array_get_object_element(
            json_object_get_array_member(json_node_get_object(r), "children"),
            0)));
        json_node_unref(r);
        /* handled within a few ms; a second one would come as soon */
        for (int i = 0; i < 20 && (n1 = gpe05_count(vm)) == n0; i++) {
            g_usleep(100 * 1000);
        }
        g_usleep(500 * 1000);
        n1 = gpe05_count(vm);
        g_test_message("TCG, Linux guest: GPE 0x05 handled %" G_GUINT64_FORMAT
                       " times before any fork, %" G_GUINT64_FORMAT
                       " after fork %d", n0, n1, fork_no);
        g_assert_cmpuint(n1, ==, n0 + 1);
    }
    r = vm_qmp(vm, "query-vm-generation-id", NULL);
    g1 = g_strdup(json_object_get_string_member(json_node_get_object(r),
                                                "guid"));
    json_node_unref(r);
    g_assert_cmpstr(g0, ==, g1);
    reseeds = vm_sh(vm, "dmesg | grep -c 'virtual machine fork' || true");
    g_assert_cmpint(atoi(reseeds), ==, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/* ---- Audit: nothing shared between parent and child ------------------- */

/*
 * Every fd of each child is compared with every fd of the parent (kcmp),
 * and their MAP_SHARED mappings: with the default VGA the parent maps a
 * display surface (a memfd) and, under KVM, a kvm_run page per vCPU, so
 * there is something that a careless fork would leave shared.  Three
 * children from one command: a later one must not keep what the parent
 * holds for the earlier ones (their status pipes, which the parent has
 * closed by now, so only the count of fds shows them).
 */
static void fork_shares_nothing(gconstpointer data)
{
    const char *accel = data;
    const char *vga[] = { "-vga", "std", NULL };
    VmOptions o = { .guest = GUEST_TINY, .accel = accel, .extra = vga };
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *h = NULL;
    guint nfds[3];
    Vm *parent;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    h = vm_tiny_cmd(parent, "h");
    g_assert_cmpuint(audit_count_shared_mappings(parent->pid, "/memfd:"),
                     >, 0);
    if (g_str_equal(accel, "kvm")) {
        g_assert_cmpuint(audit_count_shared_mappings(
                             parent->pid, " anon_inode:kvm-vcpu:"), >, 0);
    }
    children = vm_fork(parent, "{\"count\": 3}");
    g_assert_cmpuint(json_array_get_length(children), ==, 3);
    for (guint i = 0; i < 3; i++) {
        Vm *child = vm_attach_child(parent, nth_child(children, i));
        g_autofree char *hc = vm_tiny_cmd(child, "h");
        GArray *fds = audit_list_fds(child->pid);

        /* The child is up and has run guest code */
        g_assert_cmpstr(hc, ==, h);
        nfds[i] = fds->len;
        audit_free_fds(fds);
        g_test_message("child %u of 3, pid %d: %u fds", i + 1, child->pid,
                       nfds[i]);
        g_assert_cmpuint(nfds[i], ==, nfds[0]);
        audit_vm_pair(parent, child);
        g_assert_cmpint(vm_tiny_next_seq(child, 10000), >=, 0);
        vm_quit(child);
    }
    vm_quit(parent);
    vm_cleanup_all();
}

/* ---- Tap networking ------------------------------------------------------ */

/* A tap interface of this network namespace, opened as QEMU would */
static int tap_create(const char *name)
{
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);

    g_assert_cmpint(fd, >=, 0);
    g_strlcpy(ifr.ifr_name, name, IFNAMSIZ);
    g_assert_cmpint(ioctl(fd, TUNSETIFF, &ifr), ==, 0);
    return fd;
}

static void iface_up(const char *name)
{
    struct ifreq ifr = { 0 };
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    g_strlcpy(ifr.ifr_name, name, IFNAMSIZ);
    g_assert_cmpint(ioctl(s, SIOCGIFFLAGS, &ifr), ==, 0);
    ifr.ifr_flags |= IFF_UP;
    g_assert_cmpint(ioctl(s, SIOCSIFFLAGS, &ifr), ==, 0);
    close(s);
}

/*
 * A tap test runs as root in a network namespace of its own (its taps go
 * away with it): skip with the reason (true) where that cannot be, else
 * enter the namespace and bring its lo up for the tests that follow.
 */
static bool tap_skip_or_enter_netns(const VmOptions *o)
{
    int fd;

    if (geteuid() != 0) {
        g_test_skip("tap needs root (CAP_NET_ADMIN) for a network namespace");
        return true;
    }
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        g_test_skip("/dev/net/tun cannot be opened: no tap here");
        return true;
    }
    close(fd);
    if (vm_skip_if_missing(o)) {
        return true;
    }
    g_assert_cmpint(unshare(CLONE_NEWNET), ==, 0);
    iface_up("lo");
    return false;
}

/* Frames the host received on a tap: what the guest behind it sent
 * (/proc/net/dev is this namespace's; /sys/class/net is the mounter's) */
static guint64 tap_frames_from_guest(const char *name)
{
    g_autofree char *text = NULL;
    g_autofree char *key = g_strdup_printf("%s:", name);
    g_auto(GStrv) lines = NULL;

    g_assert_true(g_file_get_contents("/proc/net/dev", &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        const char *l = lines[i] + strspn(lines[i], " ");
        guint64 bytes, packets;

        if (g_str_has_prefix(l, key) &&
            sscanf(l + strlen(key), "%" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT,
                   &bytes, &packets) == 2) {
            return packets;
        }
    }
    g_error("no interface %s in /proc/net/dev", name);
}

static bool wait_iface(const char *name)
{
    for (int i = 0; i < 5000 && !if_nametoindex(name); i++) {
        g_usleep(1000);
    }
    return if_nametoindex(name) != 0;
}

static char *nic_mac(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "query-rx-filter", NULL);
    char *mac = g_strdup(json_object_get_string_member(
        json_array_get_object_element(json_node_get_array(r), 0),
        "main-mac"));

    json_node_unref(r);
    return mac;
}

static guint64 guest_carrier_changes(Vm *vm)
{
    g_autofree char *r = vm_agent(vm, "fread /sys/class/net/eth0/"
                                  "carrier_changes");
    g_autofree char *text = g_malloc0(strlen(r) / 2 + 1);

    for (gsize i = 0; i < strlen(r) / 2; i++) {
        sscanf(r + 2 * i, "%2hhx", (unsigned char *)&text[i]);
    }
    return g_ascii_strtoull(text, NULL, 10);
}

/* A raw socket that sees the frames arriving on a host interface */
static int frame_capture(const char *iface)
{
    struct sockaddr_ll sll = {
        .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
        .sll_ifindex = if_nametoindex(iface),
    };
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sll, sizeof(sll)), ==, 0);
    return fd;
}

/* How many frames the guest sent came from the source MAC mac
 * (aa:bb:...), and how many from others */
static void frames_by_source(int fd, const char *mac, guint *from_mac,
                             guint *others)
{
    guint8 want[6], frame[2048];
    ssize_t n;

    g_assert_cmpint(sscanf(mac, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &want[0],
                           &want[1], &want[2], &want[3], &want[4], &want[5]),
                    ==, 6);
    *from_mac = *others = 0;
    for (;;) {
        struct sockaddr_ll from;
        socklen_t len = sizeof(from);

        n = recvfrom(fd, frame, sizeof(frame), MSG_DONTWAIT,
                     (struct sockaddr *)&from, &len);
        if (n < 12) {
            break;
        }
        if (from.sll_pkttype == PACKET_OUTGOING) {
            continue;           /* the host's own, towards the guest */
        }
        if (!memcmp(frame + 6, want, 6)) {
            (*from_mac)++;
        } else {
            (*others)++;
        }
    }
}

/*
 * One guest sends ARP requests; only its own tap sees frames.  The
 * interfaces are named in taps[], their guests in vms[].
 */
static void only_own_tap_sees(Vm **vms, const char *const *taps, guint n,
                              guint sender)
{
    guint64 before[3], after[3];

    g_assert_cmpuint(n, <=, 3);
    for (guint i = 0; i < n; i++) {
        before[i] = tap_frames_from_guest(taps[i]);
    }
    g_free(vm_agent(vms[sender], "sh arping -c 3 -w 5 -I eth0 10.77.0.1"));
    for (guint i = 0; i < n; i++) {
        after[i] = tap_frames_from_guest(taps[i]);
        g_test_message("guest %u sent: %s got %" G_GUINT64_FORMAT " frames",
                       sender, taps[i], after[i] - before[i]);
    }
    for (guint i = 0; i < n; i++) {
        if (i == sender) {
            g_assert_cmpuint(after[i], >=, before[i] + 3);
        } else {
            g_assert_cmpuint(after[i], ==, before[i]);
        }
    }
}

/*
 * Tap networking: each child gets a tap of its own, an fd passed with
 * getfd or an interface it opens from a name template.  No child holds
 * the parent's tap queue, and each guest's frames leave on its own tap.
 * In a network namespace of this test program's own.
 */
static void linux_fork_tap(void)
{
    const char *extra[] = {
        "-netdev", "tap,id=n0,ifname=vmfp0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56", NULL
    };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    const char *const taps[] = { "vmfp0", "vmfc0", "vmfi0" };
    g_autofree char *mac_p = NULL, *mac_c = NULL, *want_c = NULL;
    g_autofree char *mac_i = NULL, *adopted = NULL;
    guint64 carrier0;
    guint from_new, from_others;
    int capture;
    g_autoptr(JsonObject) getfd = json_object_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonArray) c1 = NULL, c2 = NULL;
    Vm *vms[3];
    int fd;

    if (tap_skip_or_enter_netns(&o)) {
        return;
    }

    vms[0] = vm_start(&o);
    /* Without taps for the children: refused, naming the netdev */
    {
        g_autoptr(GError) e = vm_qmp_error(vms[0], "vmfork", NULL);

        g_assert_nonnull(e);
        g_test_message("%s", e->message);
        g_assert_nonnull(strstr(qmp_error_desc(e), "tap netdev 'n0'"));
    }
    /* Bad taps: a clear error each, and the parent runs on */
    {
        const struct { const char *args, *desc; } bad[] = {
            { "{\"taps\": [{\"netdev\": \"n0\"}]}", "either fds or ifname" },
            { "{\"taps\": [{\"netdev\": \"n0\", \"fds\": [\"nosuch\"]}]}",
              "'nosuch' has not been found" },
            { "{\"taps\": [{\"netdev\": \"n0\", \"fds\": []}]}",
              "one fd per child" },
            { "{\"taps\": [{\"netdev\": \"n0\", \"ifname\": "
              "\"a-much-too-long-name-%i\"}]}", "1 to 15 characters" },
            { "{\"count\": 2, \"taps\": [{\"netdev\": \"n0\", "
              "\"ifname\": \"vmfsame\"}]}", "needs %i or %p" },
            { "{\"taps\": [{\"netdev\": \"n1\", \"ifname\": \"x\"}]}",
              "'n1' is not a tap netdev" },
        };

        for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
            fork_refused(vms[0], bad[i].args, NULL, bad[i].desc);
        }
    }
    g_free(vm_agent(vms[0], "sh for c in all default; do echo 1 > "
                    "/proc/sys/net/ipv6/conf/$c/disable_ipv6; done; "
                    "ip link set eth0 up"));
    mac_p = nic_mac(vms[0]);
    g_assert_cmpstr(mac_p, ==, "52:54:00:12:34:56");
    carrier0 = guest_carrier_changes(vms[0]);

    /* Child 1: a tap fd passed with getfd */
    fd = tap_create("vmfc0");
    json_object_set_string_member(getfd, "fdname", "tap-child0");
    json_node_unref(qmp_execute_with_fd(vms[0]->qmp, "getfd", getfd, fd,
                                        EVENT_TIMEOUT_MS, &err));
    g_assert_no_error(err);
    close(fd);
    c1 = vm_fork(vms[0], "{\"taps\": [{\"netdev\": \"n0\", "
                 "\"fds\": [\"tap-child0\"]}]}");
    vms[1] = vm_attach_child(vms[0], nth_child(c1, 0));

    /* Child 2: opens the interface that the template names */
    c2 = vm_fork(vms[0], "{\"taps\": [{\"netdev\": \"n0\", "
                 "\"ifname\": \"vmfi%i\", \"new-mac\": false}]}");
    vms[2] = vm_attach_child(vms[0], nth_child(c2, 0));
    g_assert_true(wait_iface("vmfi0"));

    for (guint i = 0; i < 3; i++) {
        iface_up(taps[i]);
    }
    for (guint i = 1; i < 3; i++) {
        audit_vm_pair(vms[0], vms[i]);
    }

    /*
     * Child 1 has a MAC of its own from its clone id, child 2 (new-mac
     * false) and the parent the parent's; only child 1's guest saw its
     * link go down and up.
     */
    mac_c = nic_mac(vms[1]);
    want_c = g_strdup_printf("02:fc:00:%02x:%02x:%02x", (vms[1]->pid >> 16)
                             & 0xff, (vms[1]->pid >> 8) & 0xff,
                             vms[1]->pid & 0xff);
    g_assert_cmpstr(mac_c, ==, want_c);
    mac_i = nic_mac(vms[2]);
    g_assert_cmpstr(mac_i, ==, mac_p);
    g_free(mac_p);
    mac_p = nic_mac(vms[0]);
    g_assert_cmpstr(mac_p, ==, "52:54:00:12:34:56");
    for (int i = 0; i < 5000 && guest_carrier_changes(vms[1]) < carrier0 + 2;
         i++) {
        g_usleep(1000);
    }
    g_assert_cmpuint(guest_carrier_changes(vms[1]), ==, carrier0 + 2);
    g_assert_cmpuint(guest_carrier_changes(vms[2]), ==, carrier0);
    g_assert_cmpuint(guest_carrier_changes(vms[0]), ==, carrier0);

    /* Child 1's guest takes its new address up (binds the driver again) */
    adopted = vm_agent(vms[1], "sh d=$(basename $(readlink "
                       "/sys/class/net/eth0/device)); "
                       "echo $d > /sys/bus/virtio/drivers/virtio_net/unbind; "
                       "echo $d > /sys/bus/virtio/drivers/virtio_net/bind; "
                       "ip link set eth0 up; cat /sys/class/net/eth0/address");
    g_test_message("child 1 guest: %s", adopted);
    {
        g_autofree char *hex = g_strdup("0 ");

        for (const char *c = want_c; *c; c++) {
            g_autofree char *old = hex;

            hex = g_strdup_printf("%s%02x", old, *c);
        }
        g_assert_true(g_str_has_prefix(adopted, hex));
    }

    capture = frame_capture("vmfc0");
    for (guint sender = 0; sender < 3; sender++) {
        only_own_tap_sees(vms, taps, 3, sender);
    }
    /* What child 1 sent carries its new MAC */
    frames_by_source(capture, want_c, &from_new, &from_others);
    g_test_message("vmfc0: %u frames from %s, %u from others", from_new,
                   want_c, from_others);
    g_assert_cmpuint(from_new, >=, 3);
    g_assert_cmpuint(from_others, ==, 0);
    close(capture);
    vm_quit(vms[2]);
    vm_quit(vms[1]);
    vm_quit(vms[0]);
    vm_cleanup_all();
}

/* The interfaces of the tap fds of a process, from their fdinfo */
static char *tap_ifaces(pid_t pid)
{
    GArray *fds = audit_list_fds(pid);
    g_autoptr(GString) names = g_string_new(NULL);

    for (guint i = 0; i < fds->len; i++) {
        FdEntry *e = &g_array_index(fds, FdEntry, i);
        g_autofree char *path = NULL, *info = NULL;
        const char *iff;

        if (!g_str_equal(e->target, "/dev/net/tun")) {
            continue;
        }
        path = g_strdup_printf("/proc/%d/fdinfo/%d", pid, e->fd);
        if (g_file_get_contents(path, &info, NULL, NULL) &&
            (iff = strstr(info, "iff:\t"))) {
            g_string_append_printf(names, "%s%.*s", names->len ? "," : "",
                                   (int)strcspn(iff + 5, "\n"), iff + 5);
        }
    }
    audit_free_fds(fds);
    return g_string_free(g_steal_pointer(&names), false);
}

/* The tiny guest's next "L <changes> <up>" line (NULL: none in time);
 * the tick lines before it are dropped */
static char *tiny_next_link(Vm *vm, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;

    for (;;) {
        int left = (deadline - g_get_monotonic_time()) / 1000;
        char *line = vm_read_line(vm, MAX(left, 0));

        if (!line || g_str_has_prefix(line, "L ")) {
            return line;
        }
        g_free(line);
    }
}

/* How many link lines the tiny guest prints in its next @ticks ticks */
static guint tiny_link_lines_in_ticks(Vm *vm, int ticks)
{
    guint links = 0;

    while (ticks > 0) {
        g_autofree char *line = vm_read_line(vm, 30000);

        g_assert_nonnull(line);
        links += g_str_has_prefix(line, "L ");
        ticks -= g_str_has_prefix(line, "C ");
    }
    return links;
}

/*
 * The tap switch and the link bounce under each accelerator, with the
 * tiny guest, which watches its virtio-net device's link status (it has
 * no NIC driver: the device model runs, and the guest runs on), and a tap
 * passed in an fd set (add-fd): the child holds that tap, the parent its
 * own.
 */
static void tiny_fork_tap(gconstpointer accel)
{
    const char *extra[] = {
        "-netdev", "tap,id=n0,ifname=vmftp0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .accel = accel, .extra = extra };
    g_autoptr(JsonObject) addfd = json_object_new();
    g_autoptr(JsonArray) c = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *mac = NULL, *ifs_p = NULL, *ifs_c = NULL;
    g_autofree char *down = NULL, *up = NULL;
    Vm *vm, *child;
    gint64 a, b;
    int fd;

    if (tap_skip_or_enter_netns(&o)) {
        return;
    }
    vm = vm_start(&o);
    fd = tap_create("vmftc0");
    json_object_set_int_member(addfd, "fdset-id", 7);
    json_node_unref(qmp_execute_with_fd(vm->qmp, "add-fd", addfd, fd,
                                        EVENT_TIMEOUT_MS, &err));
    g_assert_no_error(err);
    close(fd);
    /* Paused until its serial port is connected: it sees all it prints */
    c = vm_fork(vm, "{\"start\": false, \"taps\": [{\"netdev\": \"n0\", "
                "\"fds\": [\"/dev/fdset/7\"]}]}");
    child = vm_attach_child(vm, nth_child(c, 0));
    mac = nic_mac(child);
    g_assert_true(g_str_has_prefix(mac, "02:fc:00:"));
    json_node_unref(vm_qmp(child, "cont", NULL));

    /* The child's guest sees its link go down, then up; the parent's not */
    down = tiny_next_link(child, 30000);
    up = tiny_next_link(child, 30000);
    g_test_message("child's guest: link lines '%s', '%s'", down, up);
    g_assert_nonnull(down);
    g_assert_nonnull(up);
    g_assert_true(g_str_has_suffix(down, " 0"));
    g_assert_true(g_str_has_suffix(up, " 1"));
    a = vm_tiny_next_seq(child, 30000);
    b = vm_tiny_next_seq(child, 30000);
    g_assert_cmpint(b, ==, a + 1);
    g_assert_cmpuint(tiny_link_lines_in_ticks(vm, 20), ==, 0);

    /*
     * The parent keeps its tap (and the fd set, the caller's to remove);
     * the child holds its own tap only: the fd it switched to and the fd
     * set's copy, never the parent's
     */
    ifs_p = tap_ifaces(vm->pid);
    ifs_c = tap_ifaces(child->pid);
    g_test_message("tap fds: parent %s, child %s", ifs_p, ifs_c);
    g_assert_nonnull(strstr(ifs_p, "vmftp0"));
    g_assert_nonnull(strstr(ifs_c, "vmftc0"));
    g_assert_null(strstr(ifs_c, "vmftp0"));
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * The fds that 'taps' names from getfd are taken over even when the fork
 * fails (here: fork() itself, VMFORK_FAULT=fail-fork:1): the name is gone
 * from the monitor and QEMU holds the tap no more.  An add-fd set stays,
 * the caller's to remove, with its fd.  The parent runs on.
 */
static void tiny_tap_fds_after_failed_fork(void)
{
    const char *extra[] = {
        "-netdev", "tap,id=n0,ifname=vmfgp0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autoptr(JsonObject) getfd = json_object_new();
    g_autoptr(JsonObject) addfd = json_object_new();
    g_autoptr(GError) err = NULL, e1 = NULL, e2 = NULL, e3 = NULL;
    g_autofree char *ifs0 = NULL, *ifs1 = NULL, *ifs2 = NULL;
    JsonNode *sets;
    Vm *vm;
    int fd;

    if (tap_skip_or_enter_netns(&o)) {
        return;
    }
    g_setenv("VMFORK_FAULT", "fail-fork:1", TRUE);
    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");

    fd = tap_create("vmfgc0");
    json_object_set_string_member(getfd, "fdname", "tap-c0");
    json_node_unref(qmp_execute_with_fd(vm->qmp, "getfd", getfd, fd,
                                        EVENT_TIMEOUT_MS, &err));
    g_assert_no_error(err);
    close(fd);
    ifs0 = tap_ifaces(vm->pid);
    g_assert_nonnull(strstr(ifs0, "vmfgc0"));

    e1 = vm_qmp_error(vm, "vmfork", "{\"taps\": [{\"netdev\": \"n0\", "
                      "\"fds\": [\"tap-c0\"]}]}");
    g_assert_nonnull(e1);
    g_test_message("%s", e1->message);
    g_assert_nonnull(strstr(qmp_error_desc(e1), "fork() failed"));
    ifs1 = tap_ifaces(vm->pid);
    g_test_message("tap fds: before %s, after %s", ifs0, ifs1);
    g_assert_null(strstr(ifs1, "vmfgc0"));
    e2 = vm_qmp_error(vm, "vmfork", "{\"taps\": [{\"netdev\": \"n0\", "
                      "\"fds\": [\"tap-c0\"]}]}");
    g_assert_nonnull(e2);
    g_assert_nonnull(strstr(qmp_error_desc(e2), "'tap-c0' has not been found"));

    /* The same from an add-fd set: the set and its tap stay */
    fd = tap_create("vmfgs0");
    json_object_set_int_member(addfd, "fdset-id", 3);
    json_node_unref(qmp_execute_with_fd(vm->qmp, "add-fd", addfd, fd,
                                        EVENT_TIMEOUT_MS, &err));
    g_assert_no_error(err);
    close(fd);
    e3 = vm_qmp_error(vm, "vmfork", "{\"taps\": [{\"netdev\": \"n0\", "
                      "\"fds\": [\"/dev/fdset/3\"]}]}");
    g_assert_nonnull(e3);
    g_assert_nonnull(strstr(qmp_error_desc(e3), "fork() failed"));
    ifs2 = tap_ifaces(vm->pid);
    g_assert_nonnull(strstr(ifs2, "vmfgs0"));
    sets = vm_qmp(vm, "query-fdsets", NULL);
    g_assert_cmpuint(json_array_get_length(json_node_get_array(sets)), ==, 1);
    g_assert_cmpint(json_object_get_int_member(json_array_get_object_element(
        json_node_get_array(sets), 0), "fdset-id"), ==, 3);
    json_node_unref(sets);

    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A tap's down script is the parent's: a child that quits never runs it
 * (it has switched to a tap of its own), the parent runs it once at its
 * end, for its own interface.
 */
static void tiny_tap_downscript_parent_only(void)
{
    const char *extra[] = {
        "-netdev", "tap,id=n0,ifname=vmfdp0,script=no,"
                   "downscript=@DIR@/down.sh",
        "-device", "virtio-net-pci,netdev=n0", NULL
    };
    g_autofree char *dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_autofree char *script = g_build_filename(dir, "down.sh", NULL);
    g_autofree char *log = g_build_filename(dir, "down.log", NULL);
    g_autofree char *text = NULL, *want = NULL;
    VmOptions o = { .guest = GUEST_TINY, .extra = extra, .dir = dir };
    g_autoptr(JsonArray) c = NULL;
    Vm *vm, *child;
    pid_t pid;

    vm_register_dir(dir);
    if (tap_skip_or_enter_netns(&o)) {
        vm_cleanup_all();
        return;
    }
    text = g_strdup_printf("#!/bin/sh\necho \"$PPID $1\" >> %s\n", log);
    g_assert_true(g_file_set_contents(script, text, -1, NULL));
    g_assert_cmpint(chmod(script, 0755), ==, 0);
    vm = vm_start(&o);
    pid = vm->pid;
    c = vm_fork(vm, "{\"taps\": [{\"netdev\": \"n0\", "
                "\"ifname\": \"vmfdc%i\"}]}");
    child = vm_attach_child(vm, nth_child(c, 0));
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    vm_quit(child);
    g_assert_false(g_file_test(log, G_FILE_TEST_EXISTS));
    vm_quit(vm);
    g_clear_pointer(&text, g_free);
    g_assert_true(g_file_get_contents(log, &text, NULL, NULL));
    want = g_strdup_printf("%d vmfdp0\n", pid);
    g_test_message("down.log: %s", text);
    g_assert_cmpstr(text, ==, want);
    vm_cleanup_all();
}

/*
 * A new MAC for the NIC models a tap is used with (e1000e, e1000,
 * rtl8139 beside virtio-net): QEMU's NIC holds the child's address, and
 * the child's guest reads it when its driver probes the device again,
 * while the parent's guest keeps its own.  (e1000e and e1000 used to keep
 * the address they took at realize, in EEPROM and permanent_mac.)
 */
typedef struct NicModel {
    const char *device;         /* QEMU's */
    const char *driver;         /* Linux's */
    /*
     * Does Linux's driver see a link bounce at all?  Its e1000 driver
     * misses even a 500 ms 'set_link' off/on on a VM that never forked
     * (QEMU 10.0, Linux 6.1: no "Link is Down", carrier_changes flat),
     * so on e1000 a clone's guest is not told of its new MAC this way.
     */
    bool sees_bounce;
} NicModel;

static const NicModel nic_models[] = {
    { "e1000e", "e1000e", true }, { "e1000", "e1000", false },
    { "rtl8139", "8139cp", true },
};

/* The guest's address of its only NIC, after its driver probed it again */
static char *guest_mac_after_rebind(Vm *vm, const char *driver)
{
    char *mac = vm_sh(vm,
        "n=$(ls /sys/class/net | grep -v '^lo$'); "
        "pci=$(basename $(readlink /sys/class/net/$n/device)); "
        "echo $pci > /sys/bus/pci/drivers/%s/unbind; "
        "echo $pci > /sys/bus/pci/drivers/%s/bind; "
        "for i in $(seq 50); do n=$(ls /sys/class/net | grep -v '^lo$'); "
        "[ -n \"$n\" ] && break; sleep 0.1; done; "
        "cat /sys/class/net/$n/address", driver, driver);

    return g_strchomp(mac);
}

/* The guest's NIC (whatever its name): how often its carrier changed */
static guint64 nic_carrier_changes(Vm *vm)
{
    g_autofree char *r = vm_sh(vm, "n=$(ls /sys/class/net | grep -v '^lo$'); "
                               "cat /sys/class/net/$n/carrier_changes");

    return g_ascii_strtoull(r, NULL, 10);
}

/* ... wait until it is up with a carrier (10 s at most) */
static void nic_up(Vm *vm)
{
    g_free(vm_sh(vm, "n=$(ls /sys/class/net | grep -v '^lo$'); "
                 "ip link set $n up; for i in $(seq 100); do "
                 "[ \"$(cat /sys/class/net/$n/carrier)\" = 1 ] && exit 0; "
                 "sleep 0.1; done; exit 1"));
}

static char *qom_mac(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "qom-get", "{\"path\": \"/machine/peripheral/"
                         "nic0\", \"property\": \"mac\"}");
    char *mac = g_strdup(json_node_get_string(r));

    json_node_unref(r);
    return mac;
}

static void linux_fork_nic_model_new_mac(gconstpointer data)
{
    const NicModel *m = data;
    g_autofree char *dev = g_strdup_printf(
        "%s,netdev=n0,id=nic0,mac=52:54:00:12:34:56", m->device);
    const char *extra[] = {
        "-netdev", "tap,id=n0,ifname=vmftp0,script=no,downscript=no",
        "-device", dev, NULL
    };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autoptr(JsonArray) c = NULL;
    g_autofree char *before = NULL, *q_child = NULL, *q_parent = NULL;
    g_autofree char *g_child = NULL, *g_parent = NULL;
    guint64 carrier0;
    Vm *vm, *child;

    if (tap_skip_or_enter_netns(&o)) {
        return;
    }
    vm = vm_start(&o);
    g_free(vm_sh(vm, "modprobe %s", m->driver));
    before = guest_mac_after_rebind(vm, m->driver);
    g_assert_cmpstr(before, ==, "52:54:00:12:34:56");
    nic_up(vm);
    carrier0 = nic_carrier_changes(vm);

    c = vm_fork(vm, "{\"taps\": [{\"netdev\": \"n0\", "
                "\"ifname\": \"vmftc%i\"}]}");
    child = vm_attach_child(vm, nth_child(c, 0));

    /*
     * The link bounce without a guest acknowledgement (50 ms of guest
     * time): the child's driver sees the carrier go and come back, the
     * parent's nothing (e1000's driver sees no bounce, see nic_models)
     */
    for (int i = 0; i < 100 && nic_carrier_changes(child) < carrier0 + 2;
         i++) {
        g_usleep(50 * 1000);
    }
    if (!m->sees_bounce) {
        g_usleep(2 * G_USEC_PER_SEC);       /* its watchdog's period */
    }
    g_test_message("%s: carrier changes %" G_GUINT64_FORMAT " before the "
                   "fork; child %" G_GUINT64_FORMAT ", parent %"
                   G_GUINT64_FORMAT, m->device, carrier0,
                   nic_carrier_changes(child), nic_carrier_changes(vm));
    g_assert_cmpuint(nic_carrier_changes(child), ==,
                     carrier0 + (m->sees_bounce ? 2 : 0));
    g_assert_cmpuint(nic_carrier_changes(vm), ==, carrier0);
    q_child = qom_mac(child);
    q_parent = qom_mac(vm);
    g_child = guest_mac_after_rebind(child, m->driver);
    g_parent = guest_mac_after_rebind(vm, m->driver);
    g_test_message("%s: parent %s (guest %s), child %s (guest %s)",
                   m->device, q_parent, g_parent, q_child, g_child);
    g_assert_true(g_str_has_prefix(q_child, "02:fc:00:"));
    g_assert_cmpstr(g_child, ==, q_child);
    g_assert_cmpstr(q_parent, ==, "52:54:00:12:34:56");
    g_assert_cmpstr(g_parent, ==, "52:54:00:12:34:56");
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_data_func("/vmfork/linux/tcg/1cpu/memory-isolated",
                         GINT_TO_POINTER(1), linux_fork_isolates_memory);
    g_test_add_data_func("/vmfork/linux/tcg/2cpu/memory-isolated",
                         GINT_TO_POINTER(2), linux_fork_isolates_memory);
    g_test_add_func("/vmfork/linux/tcg/both-keep-running",
                    linux_fork_both_keep_running);
    g_test_add_func("/vmfork/linux/tcg/three-children",
                    linux_fork_three_children);
    g_test_add_func("/vmfork/linux/tcg/paused-template",
                    linux_fork_paused_template);
    g_test_add_func("/vmfork/linux/tcg/lifecycle", linux_fork_lifecycle);
    g_test_add_func("/vmfork/linux/tcg/child-killed-is-reaped",
                    linux_fork_child_killed_is_reaped);
    g_test_add_func("/vmfork/linux/tcg/fork-of-fork", linux_fork_of_fork);
    g_test_add_data_func("/vmfork/tiny/tcg/counter-and-memory", "tcg",
                         tiny_fork_counter_and_memory);
    g_test_add_data_func("/vmfork/tiny/kvm/counter-and-memory", "kvm",
                         tiny_fork_counter_and_memory);
    g_test_add_data_func("/vmfork/tiny/tcg/young-parent-clock", "tcg",
                         tiny_fork_young_parent_clock);
    g_test_add_data_func("/vmfork/tiny/kvm/young-parent-clock", "kvm",
                         tiny_fork_young_parent_clock);
    g_test_add_func("/vmfork/tiny/tcg/log-file", tiny_fork_log_file);
    g_test_add_func("/vmfork/tiny/tcg/stop-resume-events",
                    tiny_fork_stop_resume_events);
    g_test_add_func("/vmfork/tiny/tcg/stack-reuse-bound-before-fork",
                    tiny_fork_stack_reuse_bound);
    g_test_add_func("/vmfork/tiny/tcg/rtc-in-phase-with-host",
                    tiny_fork_rtc_in_phase);
    g_test_add_data_func("/vmfork/tiny/kvm/memslots-before-irqchip", "kvm",
                         tiny_fork_kvm_memslots_first);
    g_test_add_data_func("/vmfork/tiny/kvm/clock-ctrl-before-run", "kvm",
                         tiny_fork_kvm_clock_ctrl_before_run);
    g_test_add_data_func("/vmfork/tiny/tcg-single-thread/2cpu/"
                         "counter-and-memory", "tcg,thread=single,2",
                         tiny_fork_counter_and_memory);
    g_test_add_func("/vmfork/tiny/tcg/qmp-pipelined", qmp_pipelined_commands);
    g_test_add_func("/vmfork/tiny/tcg/qmp-stdio-commands-then-eof",
                    qmp_stdio_commands_then_eof);
    g_test_add_func("/vmfork/tiny/tcg/bad-arguments",
                    fork_bad_arguments_leave_parent_running);
    g_test_add_func("/vmfork/tiny/tcg/blockers", fork_blockers_refused);
    g_test_add_func("/vmfork/tiny/tcg/child-arguments-checked-up-front",
                    fork_child_arguments_checked_up_front);
    g_test_add_func("/vmfork/tiny/tcg/unclaimed-fd-refused",
                    fork_unclaimed_fd_refused);
    g_test_add_func("/vmfork/tiny/tcg/vnc-client-at-fork",
                    tiny_fork_vnc_with_client);
    g_test_add_func("/vmfork/linux/tcg/chardev-logs",
                    linux_fork_chardev_logs);
    g_test_add_func("/vmfork/tiny/tcg/chardev-log-pipe-refused",
                    tiny_fork_chardev_log_pipe_refused);
    g_test_add_func("/vmfork/tiny/tcg/chardev-log-fdset-pipe",
                    tiny_fork_chardev_log_fdset_pipe);
    g_test_add_func("/vmfork/linux/tcg/chardev-log-pipe-template",
                    linux_fork_chardev_log_pipe_template);
    g_test_add_func("/vmfork/tiny/tcg/chardev-template",
                    tiny_fork_chardev_template);
    g_test_add_func("/vmfork/tiny/tcg/daemonized", tiny_fork_daemonized);
    g_test_add_func("/vmfork/tiny/tcg/child-cpu-affinity",
                    tiny_fork_child_cpu_affinity);
    g_test_add_func("/vmfork/tiny/tcg/run-with-user",
                    tiny_fork_run_with_user);
    g_test_add_func("/vmfork/tiny/tcg/pinned-threads",
                    tiny_fork_pinned_threads);
    g_test_add_func("/vmfork/tiny/tcg/serial-template",
                    tiny_fork_serial_template);
    g_test_add_func("/vmfork/linux/tcg/new-identity", linux_fork_new_identity);
    g_test_add_func("/vmfork/linux/tcg/disks-are-private",
                    linux_fork_disks_are_private);
    g_test_add_func("/vmfork/linux/tcg/disk-writes-during-fork",
                    linux_fork_disk_writes_during_fork);
    g_test_add_func("/vmfork/linux/tcg/user-network", linux_fork_user_network);
    g_test_add_func("/vmfork/linux/tcg/no-hostfwd-without-offset",
                    linux_fork_no_hostfwd_without_offset);
    g_test_add_func("/vmfork/linux/tcg/vmgenid-guid-auto",
                    linux_vmgenid_guid_auto);
    g_test_add_func("/vmfork/linux/tcg/parent-warmed-once",
                    linux_parent_warmed_once);
    g_test_add_func("/vmfork/linux/tcg/tap", linux_fork_tap);
    g_test_add_data_func("/vmfork/tiny/tcg/tap", "tcg", tiny_fork_tap);
    for (guint i = 0; i < G_N_ELEMENTS(nic_models); i++) {
        g_autofree char *path = g_strdup_printf(
            "/vmfork/linux/tcg/tap-new-mac/%s", nic_models[i].device);

        g_test_add_data_func(path, &nic_models[i],
                             linux_fork_nic_model_new_mac);
    }
    g_test_add_data_func("/vmfork/tiny/kvm/tap", "kvm", tiny_fork_tap);
    g_test_add_func("/vmfork/tiny/tcg/tap-fds-after-failed-fork",
                    tiny_tap_fds_after_failed_fork);
    g_test_add_func("/vmfork/tiny/tcg/tap-downscript-parent-only",
                    tiny_tap_downscript_parent_only);
    g_test_add_func("/vmfork/tiny/tcg/siblings-own-generation-ids",
                    tiny_siblings_own_generation_ids);
    g_test_add_func("/vmfork/tiny/tcg/mem-lock", tiny_fork_mem_lock);
    g_test_add_func("/vmfork/tiny/tcg/no-vmgenid-warning",
                    fork_without_vmgenid_warns);
    g_test_add_data_func("/vmfork/tiny/tcg/shares-nothing", "tcg",
                         fork_shares_nothing);
    g_test_add_data_func("/vmfork/tiny/kvm/shares-nothing", "kvm",
                         fork_shares_nothing);
    return g_test_run();
}
