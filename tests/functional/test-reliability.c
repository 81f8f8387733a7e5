/*
 * Reliability of vmfork, bounded for `make check`: fork storms leave the
 * parent as it was, children outlive a killed parent.  VMFORK_STORM sets
 * the number of forks (default 50; `make soak` runs more).
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE     /* unshare() */
#include "vmtest.h"
#include "audit.h"
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <unistd.h>

#define EVENT_TIMEOUT_MS 30000

/*
 * A VM's threads (vmtest names them: -name debug-threads=on), and in
 * @workers those of the block layer's thread pool: the pool starts them
 * as concurrent I/O needs them, up to 64, and each exits after 10 s idle,
 * so their number follows the guest's load, not the forks.
 *
 * QEMU names a thread from the thread itself, once it runs: until then it
 * bears the main thread's name.  Two threads keep that name for good, the
 * main thread and call_rcu, which a constructor starts before -name is
 * read.  A sample that holds a third (a worker the pool is starting for
 * the guest's writes) is taken again, for up to a second, so that a
 * newborn worker is not counted as a thread of another kind.
 */
#define UNNAMED_THREADS 2

static guint count_threads(pid_t pid, guint *workers)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/comm", pid);
    g_autofree char *main_comm = NULL;
    g_autoptr(GPtrArray) comms = NULL;
    guint unnamed = 0;

    g_assert_true(g_file_get_contents(path, &main_comm, NULL, NULL));
    for (int tries = 0; tries < 100; tries++) {
        g_clear_pointer(&comms, g_ptr_array_unref);
        comms = proc_threads_read(pid, "comm");
        unnamed = 0;
        for (guint i = 0; i < comms->len; i++) {
            unnamed += g_str_equal(comms->pdata[i], main_comm);
        }
        if (unnamed <= UNNAMED_THREADS) {
            break;
        }
        g_usleep(10 * 1000);
    }
    g_assert_cmpuint(unnamed, <=, UNNAMED_THREADS);
    *workers = 0;
    for (guint i = 0; i < comms->len; i++) {
        if (g_str_equal(g_strchomp(comms->pdata[i]), "worker")) {
            (*workers)++;
        }
    }
    return comms->len;
}

/*
 * The resident memory of QEMU itself: the process's RSS without its
 * mappings as large as guest RAM (@ram_mib) or larger, which are guest
 * RAM (what the guest touches, its page cache as it writes, is not QEMU's
 * to keep flat) and TCG's translation buffer (which fills as the guest
 * runs new code).
 */
static guint64 rss_kib(pid_t pid, guint64 ram_mib)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/smaps", pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    guint64 total = 0, size = 0, rss;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l; l++) {
        if (sscanf(*l, "Size: %" G_GUINT64_FORMAT " kB", &size) == 1) {
            continue;
        }
        if (sscanf(*l, "Rss: %" G_GUINT64_FORMAT " kB", &rss) == 1 &&
            size < ram_mib * 1024) {
            total += rss;
        }
    }
    return total;
}

/* The tiny guest of vm is running, and its counter advances */
static void assert_runs_on(Vm *vm)
{
    g_autofree char *state = vm_runstate(vm);

    g_assert_cmpstr(state, ==, "running");
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
}

/*
 * How much the parent's RSS may grow in a storm, in KiB.  Under ASan
 * (check-sanitize sets VMFORK_SANITIZED) the allocator's caches hold freed
 * memory for a while, and its quarantine up to 16 MiB of it
 * (quarantine_size_mb=16 in check-sanitize.sh), which a storm's frees
 * fill: a tiny guest's storm grew by 5 to 6 MiB there, before and after
 * this session's changes alike.  4 times the bound, and the quarantine.
 */
static guint64 rss_slack_kib(guint64 kib)
{
    return g_getenv("VMFORK_SANITIZED") ? 4 * kib + 16 * 1024 : kib;
}

/*
 * What a fork may leave in the parent's RSS, after the first ones warmed
 * up what later ones reuse: the record of an exited child that
 * query-vmfork keeps (well under 1 KiB), rounded up; and the noise of a
 * measure (malloc arenas, page tables, a GLib slice).
 */
#define STORM_RSS_PER_FORK_KIB 2
#define STORM_RSS_NOISE_KIB 128
/*
 * ... and under load, beyond the layer each fork adds to the disk: the
 * guest's writes fill the caches of the newest layers unevenly, and each
 * fork creates (opens, then closes) its children's images.  Measured
 * here: -11 to +30 KiB per fork over three runs of 50 forks (2026-12-04),
 * then 16 to 90 KiB over six (2026-12-05, three of them with the IOThread
 * restart of before, so not a change of QEMU), then 46 to 140 KiB over
 * nine (2026-12-06: three fresh-clone runs, 67, 135 and 140, and three
 * each of two builds of vmfork alternately, 46 to 81 and 83 to 127, the
 * forks themselves adding 6.5 to 7.0 MiB in all six): the layers' own cost,
 * measured once after the forks, varies from 3 to 12 MiB for 25 of them.
 * A leak that this bound misses is caught by the tiny storm's 2 KiB.
 */
#define LOAD_STORM_RSS_PER_FORK_KIB 256

static int storm_size(void)
{
    const char *v = g_getenv("VMFORK_STORM");

    return v ? atoi(v) : 50;
}

/* A snapshot of what the parent holds */
typedef struct Held {
    guint fds, threads, workers;
    guint64 rss_kib;
} Held;

static Held held_now(pid_t pid, guint64 ram_mib)
{
    Held h = { .fds = proc_count(pid, "fd"),
               .rss_kib = rss_kib(pid, ram_mib) };

    h.threads = count_threads(pid, &h.workers);
    return h;
}

/*
 * @n forks of a tiny VM whose children exit at once, half by a QMP quit
 * (a clean exit), half killed; returns when every exit was reported, with
 * its pid, and the child is reaped.
 */
static void storm_round(Vm *vm, int n)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash,
                                                  g_direct_equal);

    for (int i = 0; i < n; i++) {
        g_autoptr(JsonArray) c = vm_fork(vm, NULL);
        JsonObject *child = json_array_get_object_element(c, 0);
        pid_t pid = json_object_get_int_member(child, "pid");

        if (i % 2) {
            kill(pid, SIGKILL);
        } else {
            g_autoptr(GError) err = NULL;
            QmpClient *cq = NULL;

            for (int t = 0; t < 5000 && !cq; t++) {
                g_clear_error(&err);
                cq = qmp_connect_unix(json_object_get_string_member(child,
                                                                    "monitor"),
                                      EVENT_TIMEOUT_MS, &err);
                if (!cq) {
                    g_usleep(1000);
                }
            }
            g_assert_nonnull(cq);
            json_node_unref(qmp_execute(cq, "quit", NULL, EVENT_TIMEOUT_MS,
                                        NULL));
            qmp_close(cq);
        }
        g_hash_table_add(seen, GINT_TO_POINTER(pid));
    }
    for (int i = 0; i < n; i++) {
        g_autoptr(GError) err = NULL;
        JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                      EVENT_TIMEOUT_MS, &err);
        pid_t pid;

        g_assert_no_error(err);
        pid = json_object_get_int_member(qmp_event_data(ev), "pid");
        g_assert_true(g_hash_table_remove(seen, GINT_TO_POINTER(pid)));
        g_assert_true(pid_wait_gone(pid, 5000));
        json_node_unref(ev);
    }
    g_assert_cmpuint(g_hash_table_size(seen), ==, 0);
}

/*
 * Fork storm: children that exit at once, one after the other.  Every
 * child's exit is reported, none is left a zombie, and the parent's fds
 * and threads are as they were.  Its memory is measured between the two
 * halves of the storm, after the first half has warmed up what forks
 * reuse: what the second half adds is what each fork leaves behind.
 */
static void storm_leaves_parent_flat(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    int n = 4 * storm_size();       /* a tiny guest forks in milliseconds */
    Held h0, h1, h2;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    h0 = held_now(vm->pid, 64);
    storm_round(vm, n / 2);
    h1 = held_now(vm->pid, 64);
    storm_round(vm, n - n / 2);
    h2 = held_now(vm->pid, 64);
    g_test_message("%d forks: fds %u -> %u -> %u, threads %u -> %u -> %u "
                   "(pool workers %u -> %u -> %u), RSS %" G_GUINT64_FORMAT
                   " -> %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT " KiB",
                   n, h0.fds, h1.fds, h2.fds, h0.threads, h1.threads,
                   h2.threads, h0.workers, h1.workers, h2.workers,
                   h0.rss_kib, h1.rss_kib, h2.rss_kib);
    g_assert_cmpuint(h2.fds, ==, h0.fds);
    g_assert_cmpuint(h2.threads, <=, h0.threads + 2);
    g_assert_cmpuint(h2.threads - h2.workers, ==, h0.threads - h0.workers);
    g_assert_cmpuint(h2.rss_kib, <=, h1.rss_kib +
                     rss_slack_kib(STORM_RSS_PER_FORK_KIB * (n - n / 2) +
                                   STORM_RSS_NOISE_KIB));
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A template that has had many children (a pool serving for months) keeps
 * records of the last 256 that exited only: 300 children of 3 commands,
 * killed, leave the 256 newest in query-vmfork, in fork order.
 */
static void exited_records_capped(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GArray) pids = g_array_new(false, false, sizeof(pid_t));
    g_autoptr(JsonNode) info = NULL;
    JsonArray *listed;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    for (int k = 0; k < 3; k++) {
        g_autofree char *args = g_strdup_printf(
            "{\"count\": 100, \"start\": false, \"monitor\": "
            "\"%s/cap-%d-%%i.sock\"}", vm->dir, k);
        g_autoptr(JsonArray) c = vm_fork(vm, args);

        for (guint i = 0; i < json_array_get_length(c); i++) {
            pid_t pid = json_object_get_int_member(
                json_array_get_object_element(c, i), "pid");

            g_array_append_val(pids, pid);
            kill(pid, SIGKILL);
        }
    }
    for (guint i = 0; i < pids->len; i++) {
        g_autoptr(GError) err = NULL;
        JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                      EVENT_TIMEOUT_MS, &err);

        g_assert_no_error(err);
        json_node_unref(ev);
    }
    info = vm_qmp(vm, "query-vmfork", NULL);
    listed = json_object_get_array_member(json_node_get_object(info),
                                          "children");
    g_assert_cmpuint(json_array_get_length(listed), ==, 256);
    for (guint i = 0; i < 256; i++) {
        JsonObject *c = json_array_get_object_element(listed, i);

        g_assert_cmpstr(json_object_get_string_member(c, "state"), ==,
                        "exited");
        g_assert_cmpint(json_object_get_int_member(c, "pid"), ==,
                        g_array_index(pids, pid_t, pids->len - 256 + i));
    }
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/* kill -9 the parent: its children run on and answer on their monitors */
static void children_outlive_killed_parent(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *status = NULL;
    gint64 a, b;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = vm_start(&o);
    children = vm_fork(parent, NULL);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    g_assert_cmpint(kill(parent->pid, SIGKILL), ==, 0);
    g_assert_cmpint(waitpid(parent->pid, NULL, 0), ==, parent->pid);

    status = vm_runstate(child);
    g_assert_cmpstr(status, ==, "running");
    a = vm_tiny_next_seq(child, 30000);
    b = vm_tiny_next_seq(child, 30000);
    g_assert_cmpint(b, ==, a + 1);
    vm_quit(child);     /* re-parented to us, the subreaper: reaped */
    vm_cleanup_all();
}

/* vmfork while a migration runs: refused, and the guest runs on */
static void fork_refused_during_migration(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GError) err = NULL;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    /* A migration that runs for long: 4 KiB/s for 64 MiB of RAM */
    json_node_unref(vm_qmp(vm, "migrate-set-parameters",
                           "{\"max-bandwidth\": 4096}"));
    json_node_unref(vm_qmp(vm, "migrate",
                           "{\"uri\": \"exec:cat >/dev/null\"}"));
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(qmp_error_desc(err), "migration is in progress"));
    json_node_unref(vm_qmp(vm, "migrate_cancel", NULL));
    assert_runs_on(vm);
    vm_quit(vm);
    vm_cleanup_all();
}

/* A VM waiting for an incoming migration is refused, naming its state */
static void fork_refused_during_incoming(void)
{
    const char *extra[] = { "-incoming", "defer", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra, .no_boot = true };
    g_autoptr(GError) err = NULL;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(qmp_error_desc(err), "inmigrate"));
    vm_quit(vm);
    vm_cleanup_all();
}

/* Bytes written to a unix socket that its peer has not read yet */
static int unread_bytes(QmpClient *qmp)
{
    int n = 0;

    g_assert_cmpint(ioctl(qmp_client_get_fd(qmp), SIOCOUTQ, &n), ==, 0);
    return n;
}

/*
 * Both requests are made to overlap for sure: QEMU is stopped (SIGSTOP)
 * while each monitor's client sends its vmfork, and continued once both
 * requests wait unread in its sockets.  Each gets a child of its own, and
 * both children run.
 */
static void fork_from_two_monitors(void)
{
    const char *extra[] = {
        "-qmp", "unix:@DIR@/qmp2.sock,server=on,wait=off", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *second = NULL, *second_args = NULL;
    g_autoptr(GError) err = NULL;
    QmpClient *qmp[2];
    VmForkThread *t[2];
    Vm *vm, *child[2];
    int waited;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    second = g_strdup_printf("%s/qmp2.sock", vm->dir);
    qmp[0] = vm->qmp;
    qmp[1] = qmp_connect_unix(second, 30000, &err);
    g_assert_no_error(err);
    second_args = g_strdup_printf("{\"monitor\": \"%s/second-%%p.qmp\"}",
                                  vm->dir);

    g_assert_cmpint(kill(vm->pid, SIGSTOP), ==, 0);
    /* kill() returns before the threads stop: one could still read */
    g_assert_true(pid_wait_stopped(vm->pid, 30000));
    t[0] = vm_fork_thread_start(qmp[0], "{}");
    t[1] = vm_fork_thread_start(qmp[1], second_args);
    for (waited = 0; waited < 30000 && (!unread_bytes(qmp[0]) ||
                                        !unread_bytes(qmp[1])); waited++) {
        g_usleep(1000);
    }
    g_test_message("both requests unread in QEMU's sockets after %d ms: "
                   "%d and %d bytes", waited, unread_bytes(qmp[0]),
                   unread_bytes(qmp[1]));
    g_assert_cmpint(unread_bytes(qmp[0]), >, 0);
    g_assert_cmpint(unread_bytes(qmp[1]), >, 0);
    g_assert_cmpint(kill(vm->pid, SIGCONT), ==, 0);

    for (int i = 0; i < 2; i++) {
        g_autoptr(JsonNode) reply = vm_fork_thread_join(t[i], &err);
        JsonArray *c;

        g_assert_no_error(err);
        c = json_object_get_array_member(json_node_get_object(reply),
                                         "children");
        g_assert_cmpuint(json_array_get_length(c), ==, 1);
        child[i] = vm_attach_child(vm, json_array_get_object_element(c, 0));
    }
    g_test_message("children %d and %d", child[0]->pid, child[1]->pid);
    g_assert_cmpint(child[0]->pid, !=, child[1]->pid);
    for (int i = 0; i < 2; i++) {
        gint64 a = vm_tiny_next_seq(child[i], 30000);

        g_assert_cmpint(vm_tiny_next_seq(child[i], 30000), ==, a + 1);
    }
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    qmp_close(qmp[1]);
    vm_quit(child[1]);
    vm_quit(child[0]);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * While its children set up, the parent's main loop runs: a child held
 * in its set-up (VMFORK_FAULT stop-child: a host too busy to run it) does
 * not hold up the parent's devices.  The tiny guest answers a line on its
 * serial port, which only the main loop reads, while the command still
 * waits for the child; once the child goes on, the command answers and
 * the child runs.
 */
static void parent_serves_while_child_sets_up(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *tsc = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) reply = NULL;
    JsonArray *c;
    VmForkThread *t;
    pid_t pid;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_setenv("VMFORK_FAULT", "stop-child:devices", TRUE);
    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    t = vm_fork_thread_start(vm->qmp, "{}");
    pid = pid_wait_child(vm->pid, 0, 30000);
    g_assert_cmpint(pid, >, 0);
    g_assert_true(pid_wait_stopped(pid, 30000));
    g_test_message("child %d stopped in its set-up", (int)pid);

    vm_tiny_send(vm, "t");
    tsc = vm_tiny_reply(vm, 'T', 20000);
    g_test_message("the parent's guest answered meanwhile: TSC %s", tsc);
    g_assert_false(vm_fork_thread_answered(t));

    g_assert_cmpint(kill(pid, SIGCONT), ==, 0);
    reply = vm_fork_thread_join(t, &err);
    g_assert_no_error(err);
    c = json_object_get_array_member(json_node_get_object(reply),
                                     "children");
    g_assert_cmpuint(json_array_get_length(c), ==, 1);
    child = vm_attach_child(vm, json_array_get_object_element(c, 0));
    g_assert_cmpint(child->pid, ==, pid);
    g_assert_cmpint(vm_tiny_next_seq(child, 30000), >, 0);
    assert_runs_on(vm);
    vm_quit(child);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A child that never sets up (stopped for good, VMFORK_FAULT stop-child;
 * VMFORK_FAULT_SETUP_MS shortens the 30 s limit to 2 s): the command
 * fails once the limit has passed, the child is killed and reported, and
 * the parent runs on.  A QEMU told to quit while its command waits so
 * (SIGTERM: QMP's quit would wait behind the command) is gone within the
 * limit too, its child with it.
 */
static void child_never_sets_up(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GError) err = NULL, qerr = NULL, gone = NULL;
    g_autoptr(JsonNode) reply = NULL;
    gint64 t0;
    VmForkThread *t;
    JsonNode *ev;
    pid_t pid;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_setenv("VMFORK_FAULT", "stop-child:devices", TRUE);
    g_setenv("VMFORK_FAULT_SETUP_MS", "2000", TRUE);
    vm = vm_start(&o);
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, "did not set up within 2 s"));
    ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &qerr);
    g_assert_no_error(qerr);
    g_assert_cmpint(json_object_get_int_member(qmp_event_data(ev),
                                               "status"), ==, 128 + SIGKILL);
    json_node_unref(ev);
    assert_runs_on(vm);
    vm_quit(vm);

    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    g_unsetenv("VMFORK_FAULT_SETUP_MS");
    t = vm_fork_thread_start(vm->qmp, "{}");
    pid = pid_wait_child(vm->pid, 0, 30000);
    g_assert_cmpint(pid, >, 0);
    g_assert_true(pid_wait_stopped(pid, 30000));
    t0 = g_get_monotonic_time();
    g_assert_cmpint(kill(vm->pid, SIGTERM), ==, 0);
    g_assert_true(pid_wait_gone(vm->pid, 30000));
    g_test_message("QEMU gone %.1f s after SIGTERM",
                   (g_get_monotonic_time() - t0) / 1e6);
    g_assert_true(pid_wait_gone(pid, 30000));
    reply = vm_fork_thread_join(t, &gone);
    g_assert_null(reply);
    g_assert_nonnull(gone);
    vm_cleanup_all();
}

/*
 * An overlay directory that fills up: a clear error, no overlay left
 * behind, and the parent runs on with its disk as before.
 */
static void fork_overlay_dir_full(void)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-full-XXXXXX", NULL);
    g_autofree char *base = NULL, *drive = NULL, *args = NULL;
    g_autofree char *base_dir = NULL;
    const char *extra[] = { "-drive", NULL, NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autoptr(GError) err = NULL;
    g_autoptr(GDir) d = NULL;
    const char *name;
    guint left = 0;
    Vm *vm;

    if (geteuid() != 0) {
        g_test_skip("needs root to mount a small tmpfs");
        g_rmdir(dir);
        return;
    }
    if (vm_skip_if_missing(&o)) {
        g_rmdir(dir);
        return;
    }
    /*
     * Room for about two empty qcow2 overlays, not for six.  In a mount
     * namespace of this test program's own, so that the mount goes away
     * with it whatever happens.
     */
    vm_register_dir(dir);
    g_assert_cmpint(unshare(CLONE_NEWNS), ==, 0);
    g_assert_cmpint(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), ==, 0);
    g_assert_cmpint(mount("vmtest", dir, "tmpfs", 0, "size=512k"), ==, 0);
    base_dir = g_dir_make_tmp("vmtest-base-XXXXXX", NULL);
    vm_register_dir(base_dir);
    base = g_build_filename(base_dir, "base.raw", NULL);
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 1 << 20), ==, 0);
    drive = g_strdup_printf("file=%s,format=raw,if=virtio", base);
    extra[1] = drive;

    vm = vm_start(&o);
    args = g_strdup_printf("{\"count\": 5, \"overlay-dir\": \"%s\"}",
                           dir);
    err = vm_qmp_error(vm, "vmfork", args);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    g_assert_nonnull(strstr(qmp_error_desc(err), "virtio0"));

    d = g_dir_open(dir, 0, NULL);
    while ((name = g_dir_read_name(d))) {
        g_test_message("left behind: %s", name);
        left++;
    }
    g_assert_cmpuint(left, ==, 0);
    assert_runs_on(vm);
    vm_quit(vm);
    if (umount2(dir, MNT_DETACH) < 0) {
        g_test_message("umount %s: %s", dir, g_strerror(errno));
    }
    vm_cleanup_all();       /* removes base_dir and dir */
}

/* The read and write system calls a thread has made (/proc/.../io) */
static guint64 thread_syscalls(pid_t pid, gint64 tid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task/%" G_GINT64_FORMAT
                                            "/io", pid, tid);
    g_autofree char *text = NULL;
    const char *r, *w;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    r = strstr(text, "syscr:");
    w = strstr(text, "syscw:");
    g_assert_nonnull(r);
    g_assert_nonnull(w);
    return g_ascii_strtoull(r + 6, NULL, 10) + g_ascii_strtoull(w + 6, NULL,
                                                                10);
}

static gint64 iothread_tid(Vm *v)
{
    JsonNode *q = vm_qmp(v, "query-iothreads", NULL);
    JsonArray *threads = json_node_get_array(q);
    gint64 tid;

    g_assert_cmpuint(json_array_get_length(threads), ==, 1);
    tid = json_object_get_int_member(
        json_array_get_object_element(threads, 0), "thread-id");
    json_node_unref(q);
    return tid;
}

/*
 * A user IOThread serving a virtio-blk disk (as libvirt's <iothreads>
 * and <driver iothread='1'/> configure it): parked for the fork, then
 * in each VM it runs again, in that process, and serves that VM's disk:
 * the guest writes and reads its disk, and the IOThread's own system
 * calls (the disk's notifications, its completions) go up.  The parent's
 * is the thread it had before (parked, not ended and replaced), so it
 * keeps the CPUs that it was pinned to (libvirt's <iothreadpin>, `virsh
 * iothreadpin`, pins the thread ID from query-iothreads); the child's is
 * a new one of its own.
 */
static void fork_with_iothread(void)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-io-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *drive = g_strdup_printf(
        "file=%s,format=raw,if=none,id=d0", base);
    g_autofree char *args = g_strdup_printf("{\"overlay-dir\": \"%s\"}",
                                            dir);
    const char *extra[] = {
        "-object", "iothread,id=io0", "-drive", drive,
        "-device", "virtio-blk-pci,drive=d0,iothread=io0", NULL
    };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra, .dir = dir };
    g_autoptr(JsonArray) children = NULL;
    Vm *vm, *child;
    cpu_set_t pin;
    gint64 tid0;

    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        vm_cleanup_all();
        return;
    }
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 16 << 20), ==, 0);
    vm = vm_start(&o);
    tid0 = iothread_tid(vm);
    CPU_ZERO(&pin);
    CPU_SET(0, &pin);
    g_assert_cmpint(sched_setaffinity(tid0, sizeof(pin), &pin), ==, 0);
    children = vm_fork(vm, args);
    child = vm_attach_child(vm, json_array_get_object_element(children, 0));
    for (Vm *v = vm; v; v = v == vm ? child : NULL) {
        g_autofree char *text = g_strdup_printf("iothread-of-%d", v->pid);
        g_autofree char *task = NULL, *back = NULL;
        gint64 tid = iothread_tid(v);
        guint64 calls0, calls1;

        if (v == vm) {
            cpu_set_t now;

            g_assert_cmpint(tid, ==, tid0);
            g_assert_cmpint(sched_getaffinity(tid, sizeof(now), &now), ==, 0);
            g_assert_true(CPU_EQUAL(&now, &pin));
        } else {
            g_assert_cmpint(tid, !=, tid0);
        }
        /* the thread exists in this process */
        task = g_strdup_printf("/proc/%d/task/%" G_GINT64_FORMAT, v->pid, tid);
        g_assert_true(g_file_test(task, G_FILE_TEST_IS_DIR));

        calls0 = thread_syscalls(v->pid, tid);
        vm_disk_write(v, "vda", 300, text);
        back = vm_disk_read(v, "vda", 300);
        calls1 = thread_syscalls(v->pid, tid);
        g_test_message("%s %d: IOThread %" G_GINT64_FORMAT " made %"
                       G_GUINT64_FORMAT " read/write calls for the disk",
                       v == vm ? "parent" : "child", v->pid, tid,
                       calls1 - calls0);
        g_assert_cmpstr(back, ==, text);
        g_assert_cmpuint(calls1, >, calls0);
    }
    vm_quit(child);     /* joins the child's own IOThread: no hang */
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A child killed at each phase of its re-initialisation (VMFORK_FAULT,
 * plugin/fault.c): the parent reports each exit, reaps it, removes the
 * sockets it left (its monitor's, its serial port's), keeps no fd of it,
 * and its guest runs on.  A child that dies before it has set up fails
 * the command (and its sibling is killed: never half-forked); one that
 * dies later exits on its own.  The phases are the child's common steps
 * and then one per fork handler (plugin/handler.h), in their order.
 */
static const struct {
    const char *name;
    bool set_up;                /* the command has answered already */
} child_phases[] = {
    { "forked", false }, { "fds", false }, { "threads", false },
    { "block", false }, { "net", false }, { "tap", false },
    { "accel", false }, { "identity", false }, { "devices", false },
    { "tap-mac", false }, { "chardev", false }, { "started", true },
    { "monitor", true },
};

static void child_killed_at_each_phase(gconstpointer accel)
{
    for (guint p = 0; p < G_N_ELEMENTS(child_phases); p++) {
        VmOptions o = { .guest = GUEST_TINY, .accel = accel };
        g_autofree char *fault = g_strdup_printf("kill-child:%s",
                                                 child_phases[p].name);
        g_autoptr(GPtrArray) sockets = g_ptr_array_new_with_free_func(
            g_free);
        g_autoptr(JsonArray) children = NULL;
        g_autoptr(GError) none = NULL;
        JsonNode *q, *ready;
        guint fds0;
        Vm *vm;

        if (vm_skip_if_missing(&o)) {
            return;
        }
        g_setenv("VMFORK_FAULT", fault, TRUE);
        vm = vm_start(&o);
        g_unsetenv("VMFORK_FAULT");
        fds0 = proc_count(vm->pid, "fd");

        if (child_phases[p].set_up) {
            children = vm_fork(vm, "{\"count\": 2}");
            for (guint i = 0; i < 2; i++) {
                g_ptr_array_add(sockets, g_strdup(
                    json_object_get_string_member(
                        json_array_get_object_element(children, i),
                        "monitor")));
            }
        } else {
            g_autoptr(GError) err = vm_qmp_error(vm, "vmfork",
                                                 "{\"count\": 2}");

            g_assert_nonnull(err);
            g_test_message("%s: %s", fault, err->message);
            g_assert_nonnull(strstr(err->message, "failed to set up"));
        }
        for (guint i = 0; i < 2; i++) {
            g_autoptr(GError) err = NULL;
            JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                          EVENT_TIMEOUT_MS, &err);
            JsonObject *d;
            pid_t pid;

            g_assert_no_error(err);
            d = qmp_event_data(ev);
            pid = json_object_get_int_member(d, "pid");
            g_test_message("%s: child %d exit status %" G_GINT64_FORMAT,
                           fault, pid,
                           json_object_get_int_member(d, "status"));
            g_assert_cmpint(json_object_get_int_member(d, "status"), ==,
                            128 + SIGKILL);
            g_assert_true(pid_wait_gone(pid, 5000));
            if (!child_phases[p].set_up) {
                g_ptr_array_add(sockets, g_strdup_printf(
                    "%s.fork-%d", vm->qmp_path, pid));
            }
            /* The chardev's socket of the child (chardev.c's rule) */
            g_ptr_array_add(sockets, g_strdup_printf(
                "%s/serial.sock.fork-%d", vm->dir, pid));
            json_node_unref(ev);
        }
        /* None got as far as telling the parent it runs */
        ready = qmp_wait_event(vm->qmp, "VMFORK_CHILD_READY", 100, &none);
        g_assert_null(ready);
        for (guint i = 0; i < sockets->len; i++) {
            g_assert_false(g_file_test(sockets->pdata[i],
                                       G_FILE_TEST_EXISTS));
        }
        q = vm_qmp(vm, "query-vmfork", NULL);
        {
            JsonArray *c = json_object_get_array_member(
                json_node_get_object(q), "children");

            g_assert_cmpuint(json_array_get_length(c), ==, 2);
            for (guint i = 0; i < 2; i++) {
                JsonObject *ci = json_array_get_object_element(c, i);

                g_assert_cmpstr(json_object_get_string_member(ci, "state"),
                                ==, "exited");
            }
        }
        json_node_unref(q);
        g_assert_cmpuint(proc_count(vm->pid, "fd"), ==, fds0);
        assert_runs_on(vm);
        vm_quit(vm);
        vm_cleanup_all();
    }
}

/*
 * A child that fails (its handler reports an error, VMFORK_FAULT
 * fail-child) says why: before it has set up, the command fails with its
 * reason; later, VMFORK_CHILD_EXITED and query-vmfork carry the reason.
 */
static void child_failure_says_why(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GError) err = NULL, qerr = NULL;
    g_autoptr(JsonArray) children = NULL;
    JsonNode *ev, *q;
    JsonObject *d, *ci;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    /* Before set-up: the command's error says which child and why */
    g_setenv("VMFORK_FAULT", "fail-child:chardev", TRUE);
    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, "failed to set up"));
    g_assert_nonnull(strstr(err->message, "failing at 'chardev'"));
    ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &qerr);
    g_assert_no_error(qerr);
    d = qmp_event_data(ev);
    g_assert_cmpint(json_object_get_int_member(d, "status"), ==, 1);
    g_assert_nonnull(strstr(json_object_get_string_member(d, "reason"),
                            "failing at 'chardev'"));
    json_node_unref(ev);
    assert_runs_on(vm);
    vm_quit(vm);
    vm_cleanup_all();

    /* After set-up: the command succeeded, the exit says why */
    g_setenv("VMFORK_FAULT", "fail-child:monitor", TRUE);
    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    children = vm_fork(vm, NULL);
    ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &qerr);
    g_assert_no_error(qerr);
    d = qmp_event_data(ev);
    g_assert_cmpint(json_object_get_int_member(d, "pid"), ==,
                    json_object_get_int_member(
                        json_array_get_object_element(children, 0), "pid"));
    g_assert_nonnull(strstr(json_object_get_string_member(d, "reason"),
                            "failing at 'monitor'"));
    json_node_unref(ev);
    q = vm_qmp(vm, "query-vmfork", NULL);
    ci = json_array_get_object_element(json_object_get_array_member(
        json_node_get_object(q), "children"), 0);
    g_assert_cmpstr(json_object_get_string_member(ci, "state"), ==,
                    "exited");
    g_assert_nonnull(strstr(json_object_get_string_member(ci, "reason"),
                            "failing at 'monitor'"));
    json_node_unref(q);
    assert_runs_on(vm);
    vm_quit(vm);
    vm_cleanup_all();
}

/* The parent's disk is the image it had, and the overlay dir is empty */
static void assert_disk_unchanged(Vm *vm, const char *image,
                                  const char *overlay_dir)
{
    g_autoptr(GDir) d = g_dir_open(overlay_dir, 0, NULL);
    JsonNode *q = vm_qmp(vm, "query-block", NULL);
    JsonObject *dev = json_array_get_object_element(json_node_get_array(q),
                                                    0);
    const char *file = json_object_get_string_member(
        json_object_get_object_member(dev, "inserted"), "file");
    const char *name;

    g_assert_cmpstr(file, ==, image);
    json_node_unref(q);
    while ((name = g_dir_read_name(d))) {
        g_test_message("left behind: %s", name);
        g_assert_not_reached();
    }
}

static char *tiny_disk(const char *dir)
{
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);

    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 1 << 20), ==, 0);
    return g_steal_pointer(&base);
}

/*
 * fork() fails for the second of three children (VMFORK_FAULT): a clear
 * error, the first child is killed and reaped, the overlays go and the
 * parent runs on with its disk as before.  Not half-forked.
 */
static void fork_failure_injected(void)
{
    const char *extra[] = { "-drive", NULL, NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *dir = g_dir_make_tmp("vmtest-fail-XXXXXX", NULL);
    g_autofree char *ovl = g_build_filename(dir, "overlays", NULL);
    g_autofree char *image = NULL, *drive = NULL, *args = NULL;
    g_autoptr(GError) err = NULL, evErr = NULL;
    JsonNode *ev;
    Vm *vm;

    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        vm_cleanup_all();
        return;
    }
    g_assert_cmpint(g_mkdir(ovl, 0700), ==, 0);
    image = tiny_disk(dir);
    drive = g_strdup_printf("file=%s,format=raw,if=virtio", image);
    extra[1] = drive;
    g_setenv("VMFORK_FAULT", "fail-fork:2", TRUE);
    vm = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");

    args = g_strdup_printf("{\"count\": 3, \"overlay-dir\": \"%s\"}", ovl);
    err = vm_qmp_error(vm, "vmfork", args);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    g_assert_nonnull(strstr(qmp_error_desc(err), "fork() failed"));
    g_assert_nonnull(strstr(qmp_error_desc(err), g_strerror(EAGAIN)));

    /* The one child that was forked is gone, and reported */
    ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED", EVENT_TIMEOUT_MS,
                        &evErr);
    g_assert_no_error(evErr);
    g_assert_true(pid_wait_gone(json_object_get_int_member(
        qmp_event_data(ev), "pid"), 5000));
    json_node_unref(ev);

    assert_disk_unchanged(vm, image, ovl);
    assert_runs_on(vm);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * fork() denied for real, by a seccomp filter as libvirt's sandbox sets
 * (spawn=deny): a clear error, and the parent runs on.
 */
static void fork_denied_by_seccomp(void)
{
    const char *wrapper[] = { g_getenv("VMFORK_NOFORK_EXEC"), NULL };
    VmOptions o = { .guest = GUEST_TINY, .wrapper = wrapper };
    g_autoptr(GError) err = NULL;
    JsonNode *q;
    Vm *vm;

    if (!wrapper[0] || !g_file_test(wrapper[0], G_FILE_TEST_IS_EXECUTABLE)) {
        g_test_skip("nofork-exec not built (VMFORK_NOFORK_EXEC)");
        return;
    }
    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(qmp_error_desc(err), "fork() failed"));
    g_assert_nonnull(strstr(qmp_error_desc(err), g_strerror(EPERM)));
    q = vm_qmp(vm, "query-vmfork", NULL);
    g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
        json_node_get_object(q), "children")), ==, 0);
    json_node_unref(q);
    assert_runs_on(vm);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * Directories that cannot be written, for the overlays and for the
 * child's monitor: root ignores permission bits, so a read-only bind mount
 * (in a mount namespace of this test program's own) stands for them.
 */
static void fork_into_unwritable_dirs(void)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-ro-XXXXXX", NULL);
    g_autofree char *ro = g_build_filename(dir, "ro", NULL);
    g_autofree char *image = NULL, *drive = NULL, *args_ovl = NULL;
    g_autofree char *args_mon = NULL;
    const char *extra[] = { "-drive", NULL, NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autoptr(GError) e1 = NULL, e2 = NULL;
    Vm *vm;

    vm_register_dir(dir);
    if (geteuid() != 0) {
        g_test_skip("needs root for a read-only bind mount");
        vm_cleanup_all();
        return;
    }
    if (vm_skip_if_missing(&o)) {
        vm_cleanup_all();
        return;
    }
    g_assert_cmpint(g_mkdir(ro, 0755), ==, 0);
    g_assert_cmpint(unshare(CLONE_NEWNS), ==, 0);
    g_assert_cmpint(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), ==, 0);
    g_assert_cmpint(mount(ro, ro, NULL, MS_BIND, NULL), ==, 0);
    g_assert_cmpint(mount(NULL, ro, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY,
                          NULL), ==, 0);
    image = tiny_disk(dir);
    drive = g_strdup_printf("file=%s,format=raw,if=virtio", image);
    extra[1] = drive;
    vm = vm_start(&o);

    args_ovl = g_strdup_printf("{\"overlay-dir\": \"%s\"}", ro);
    e1 = vm_qmp_error(vm, "vmfork", args_ovl);
    g_assert_nonnull(e1);
    g_test_message("%s", e1->message);
    g_assert_nonnull(strstr(qmp_error_desc(e1), "cannot create overlays"));
    g_assert_nonnull(strstr(qmp_error_desc(e1), g_strerror(EROFS)));

    args_mon = g_strdup_printf("{\"overlay-dir\": \"%s\", "
                               "\"monitor\": \"%s/child-%%p.qmp\"}", dir, ro);
    e2 = vm_qmp_error(vm, "vmfork", args_mon);
    g_assert_nonnull(e2);
    g_test_message("%s", e2->message);
    g_assert_nonnull(strstr(qmp_error_desc(e2), "cannot create monitor"));

    assert_disk_unchanged(vm, image, ro);
    assert_runs_on(vm);
    vm_quit(vm);
    umount2(ro, MNT_DETACH);
    vm_cleanup_all();
}

/* After a migration completed the source is paused as "postmigrate":
 * refused, naming the state, and it can be continued */
static void fork_refused_after_migration(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autoptr(GError) err = NULL;
    g_autofree char *state = NULL;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    json_node_unref(vm_qmp(vm, "migrate",
                           "{\"uri\": \"exec:cat >/dev/null\"}"));
    for (int i = 0; i < 30000; i++) {
        g_free(state);
        state = vm_runstate(vm);
        if (g_str_equal(state, "postmigrate")) {
            break;
        }
        g_usleep(1000);
    }
    g_assert_cmpstr(state, ==, "postmigrate");
    err = vm_qmp_error(vm, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(qmp_error_desc(err), "postmigrate"));
    json_node_unref(vm_qmp(vm, "cont", NULL));
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

static int data_forks(void)
{
    const char *v = g_getenv("VMFORK_DATA_FORKS");

    return v ? atoi(v) : 50;
}

/* A Linux VM with a 64 MiB disk, overlays in the same directory */
static Vm *linux_with_disk(char **dir_out, char **fork_args)
{
    g_autofree char *dir = g_dir_make_tmp("vmtest-data-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *drive = g_strdup_printf(
        "file=%s,format=raw,if=virtio,cache=writeback", base);
    const char *extra[] = { "-drive", drive, NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };

    vm_register_dir(dir);
    if (vm_skip_if_missing(&o)) {
        return NULL;
    }
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, 64 << 20), ==, 0);
    *fork_args = g_strdup_printf("\"overlay-dir\": \"%s\"", dir);
    *dir_out = g_steal_pointer(&dir);
    return vm_start(&o);
}

/*
 * Do the runs of clone ids that the writer found on a disk
 * ("ID:COUNT[,ID:COUNT]...", "-" for none) say that only @before wrote
 * there, then only @after (either may be missing, @after NULL: none may
 * follow)?  *@n_before is the count of @before's run.
 */
static bool runs_belong_to(const char *runs, const char *before,
                           const char *after, guint64 *n_before)
{
    g_auto(GStrv) r = g_strsplit(runs, ",", -1);
    guint i = 0;

    *n_before = 0;
    if (g_str_equal(runs, "-")) {
        return true;
    }
    if (r[i] && g_str_has_prefix(r[i], before) &&
        r[i][strlen(before)] == ':') {
        *n_before = g_ascii_strtoull(r[i] + strlen(before) + 1, NULL, 10);
        i++;
    }
    if (r[i] && after && g_str_has_prefix(r[i], after) &&
        r[i][strlen(after)] == ':') {
        i++;
    }
    return r[i] == NULL;
}

/* runs_belong_to() itself tells a wrong writer, or a wrong order */
static void assert_runs_checker_works(void)
{
    guint64 n;

    g_assert_true(runs_belong_to("p:5,c:3", "p", "c", &n) && n == 5);
    g_assert_true(runs_belong_to("c:3", "p", "c", &n) && n == 0);
    g_assert_true(runs_belong_to("p:7", "p", NULL, &n) && n == 7);
    g_assert_false(runs_belong_to("p:5,x:3", "p", "c", &n));
    g_assert_false(runs_belong_to("p:5,c:3,p:1", "p", "c", &n));
    g_assert_false(runs_belong_to("c:3,p:5", "p", "c", &n));
    g_assert_false(runs_belong_to("p:5,c:3", "p", NULL, &n));
    g_assert_false(runs_belong_to("p:50", "p5", NULL, &n));
}

/*
 * A guest fsyncs numbered records without a break while it is forked again
 * and again: the parent loses no acknowledged write and its disk holds
 * only its own records, and every child's disk holds exactly the records
 * its own RAM says were acknowledged: the parent's up to the fork (never
 * fewer than at an earlier fork), then its own, with its clone id.
 */
static void fsync_writes_across_forks(void)
{
    g_autofree char *dir = NULL, *fork_args = NULL, *args = NULL;
    g_autofree char *id_p = NULL, *runs = NULL;
    int n = data_forks();
    guint64 last_prefix = 0, acked, n_parent;
    Vm *parent;

    assert_runs_checker_works();
    parent = linux_with_disk(&dir, &fork_args);
    if (!parent) {
        vm_cleanup_all();
        return;
    }
    id_p = vm_clone_id_word(parent);
    vm_writer_start(parent, "/dev/vda 2000");
    args = g_strdup_printf("{%s}", fork_args);
    g_usleep(200 * 1000);

    for (int i = 0; i < n; i++) {
        g_autoptr(JsonArray) c = vm_fork(parent, args);
        Vm *child = vm_attach_child(parent,
                                    json_array_get_object_element(c, 0));
        g_autofree char *runs_c = NULL, *id_c = NULL;
        guint64 from_parent;

        acked = vm_writer_stop(child);
        id_c = vm_clone_id_word(child);
        g_assert_cmpstr(id_c, !=, id_p);
        runs_c = vm_writer_check(child, "/dev/vda", acked);
        if (!runs_belong_to(runs_c, id_p, id_c, &from_parent)) {
            g_error("fork %d: the child's disk holds %s; only %s (the "
                    "parent) then %s (the child) may have written it", i,
                    runs_c, id_p, id_c);
        }
        g_assert_cmpuint(from_parent, >=, last_prefix);
        last_prefix = from_parent;
        vm_quit(child);
    }
    acked = vm_writer_stop(parent);
    runs = vm_writer_check(parent, "/dev/vda", acked);
    if (!runs_belong_to(runs, id_p, NULL, &n_parent) || n_parent < acked) {
        g_error("the parent's disk holds %s: %" G_GUINT64_FORMAT " records "
                "of %s (the parent) and nothing else were acknowledged",
                runs, acked, id_p);
    }
    g_assert_cmpuint(acked, >=, last_prefix);
    g_test_message("%d forks, %" G_GUINT64_FORMAT " records acknowledged "
                   "by the parent", n, acked);
    vm_quit(parent);
    vm_qemu_img_check_dir(dir, false);
    vm_cleanup_all();
}

/*
 * One round of the storm under load: @n forks, the odd ones living on
 * (paused, pids appended to @living), the others quitting at once; returns
 * when every child has come up and every quitter's exit was reported.
 */
static void load_storm_round(Vm *vm, int n, const char *args_quit,
                             const char *args_live, GArray *living)
{
    int quitting = 0;

    for (int i = 0; i < n; i++) {
        bool live = i % 2;
        g_autoptr(JsonArray) c = vm_fork(vm, live ? args_live : args_quit);
        JsonObject *child = json_array_get_object_element(c, 0);
        pid_t pid = json_object_get_int_member(child, "pid");

        if (live) {
            g_array_append_val(living, pid);
        } else {
            vm_quit(vm_attach_child(vm, child));
            quitting++;
        }
    }
    for (int i = 0; i < quitting; i++) {
        g_autoptr(GError) err = NULL;

        json_node_unref(qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                       EVENT_TIMEOUT_MS, &err));
        g_assert_no_error(err);
    }
    /* Every child came up (its status pipe is closed) */
    for (int i = 0; i < n; i++) {
        g_autoptr(GError) err = NULL;

        json_node_unref(qmp_wait_event(vm->qmp, "VMFORK_CHILD_READY",
                                       EVENT_TIMEOUT_MS, &err));
        g_assert_no_error(err);
    }
}

static guint count_pipes(pid_t pid)
{
    GArray *fds = audit_list_fds(pid);
    guint n = 0;

    for (guint i = 0; i < fds->len; i++) {
        n += g_str_has_prefix(g_array_index(fds, FdEntry, i).target, "pipe:");
    }
    audit_free_fds(fds);
    return n;
}

/* What an fd is, for comparing two listings: its path, or its kind
 * ("pipe", "socket", "anon_inode:[eventfd]") where the kernel numbers
 * each new one (a VM's ioeventfds are made anew at each stop and cont) */
static char *fd_kind(const char *target)
{
    if (g_str_has_prefix(target, "pipe:") ||
        g_str_has_prefix(target, "socket:")) {
        return g_strndup(target, strcspn(target, ":"));
    }
    return g_strdup(target);
}

/*
 * The fds the parent holds now and did not before, by kind: each must be
 * one of its own overlays (in @dir, "...-parent.qcow2") or a pidfd (of a
 * living child), and none of the others may be gone.  Returns how many
 * kinds break that rule (logged with @log), and how many overlays and
 * pidfds there are.
 */
static guint fds_beyond_overlays(GArray *before, pid_t pid, const char *dir,
                                 bool log, guint *overlays, guint *pidfds)
{
    GArray *now = audit_list_fds(pid);
    g_autoptr(GHashTable) count = g_hash_table_new_full(g_str_hash,
                                                        g_str_equal, g_free,
                                                        NULL);
    g_autofree char *prefix = g_strdup_printf("%s/", dir);
    GHashTableIter iter;
    gpointer kind, n;
    guint wrong = 0;

    /* kind -> fds now minus fds before */
    for (guint i = 0; i < now->len; i++) {
        char *k = fd_kind(g_array_index(now, FdEntry, i).target);

        g_hash_table_insert(count, k, GINT_TO_POINTER(GPOINTER_TO_INT(
            g_hash_table_lookup(count, k)) + 1));
    }
    for (guint i = 0; i < before->len; i++) {
        char *k = fd_kind(g_array_index(before, FdEntry, i).target);

        g_hash_table_insert(count, k, GINT_TO_POINTER(GPOINTER_TO_INT(
            g_hash_table_lookup(count, k)) - 1));
    }
    *overlays = *pidfds = 0;
    g_hash_table_iter_init(&iter, count);
    while (g_hash_table_iter_next(&iter, &kind, &n)) {
        int d = GPOINTER_TO_INT(n);

        if (d == 0) {
            continue;
        } else if (d > 0 && g_str_equal(kind, "anon_inode:[pidfd]")) {
            *pidfds += d;
        } else if (d == 1 && g_str_has_prefix(kind, prefix) &&
                   g_str_has_suffix(kind, "-parent.qcow2")) {
            (*overlays)++;
        } else {
            if (log) {
                g_test_message("the parent holds %+d fds of %s: neither its "
                               "overlays nor pidfds", d, (char *)kind);
            }
            wrong++;
        }
    }
    audit_free_fds(now);
    return wrong;
}

/* ... asserting that none does, once a child's status pipe, which the
 * parent closes when it reads the end of it, is closed (1 s at most) */
static void new_fds_are_overlays(GArray *before, pid_t pid, const char *dir,
                                 guint *overlays, guint *pidfds)
{
    for (int i = 0; i < 100 &&
         fds_beyond_overlays(before, pid, dir, false, overlays, pidfds); i++) {
        g_usleep(10 * 1000);
    }
    g_assert_cmpuint(fds_beyond_overlays(before, pid, dir, true, overlays,
                                         pidfds), ==, 0);
}

/* Wait up to 30 s for the block layer's idle pool workers to exit (after
 * 10 s without work), down to @max */
static Held held_when_workers_idle(pid_t pid, guint max)
{
    Held h = held_now(pid, 512);

    for (int i = 0; i < 300 && h.workers > max; i++) {
        g_usleep(100 * 1000);
        h = held_now(pid, 512);
    }
    return h;
}

/*
 * Fork storm while the guest keeps a vCPU busy and writes to its disk:
 * half the children quit at once, half live on (paused) to the end.
 *
 * Each fork gives the parent's disk a new layer, by design: its overlay
 * (one fd, qcow2 caches), the layer before kept as backing.  So the
 * parent's new fds must be exactly its overlays plus one pidfd per living
 * child (seen with readlink), and its memory, measured between the two
 * halves of the storm, may grow by what the same number of layers costs
 * without a fork (measured after the storm with blockdev-snapshot-sync,
 * which adds a layer as a fork does), and by little more.  Its threads are
 * as they were once the block layer's idle pool workers have exited.  No
 * acknowledged write is lost, and the disk holds only its own records.
 */
static void storm_under_load(void)
{
    g_autofree char *dir = NULL, *fork_args = NULL;
    g_autofree char *args_quit = NULL, *args_live = NULL, *runs = NULL;
    g_autofree char *id = NULL;
    g_autoptr(GArray) living = g_array_new(FALSE, FALSE, sizeof(pid_t));
    int n = storm_size(), k;
    guint overlays, pidfds, living0;
    guint64 acked, own, fork_growth, layer_growth;
    GArray *fds0;
    Held h0, h1, h2, h3, h4;
    Vm *vm = linux_with_disk(&dir, &fork_args);

    if (!vm) {
        vm_cleanup_all();
        return;
    }
    vm_writer_start(vm, "/dev/vda 1000");
    g_free(vm_agent(vm, "sh nohup sh -c 'while :; do :; done' "
                    ">/dev/null 2>&1 &"));
    args_quit = g_strdup_printf("{%s}", fork_args);
    args_live = g_strdup_printf("{%s, \"start\": false}", fork_args);
    /* Warm up: the first forks allocate what later ones reuse */
    load_storm_round(vm, 2, args_quit, args_live, living);
    for (int i = 0; i < 100 && count_pipes(vm->pid) > 0; i++) {
        g_usleep(10 * 1000);    /* the last child's status pipe: closing */
    }
    h0 = held_now(vm->pid, 512);
    fds0 = audit_list_fds(vm->pid);
    living0 = living->len;

    load_storm_round(vm, n / 2, args_quit, args_live, living);
    h1 = held_now(vm->pid, 512);
    k = n - n / 2;
    load_storm_round(vm, k, args_quit, args_live, living);
    h2 = held_now(vm->pid, 512);
    new_fds_are_overlays(fds0, vm->pid, dir, &overlays, &pidfds);
    g_test_message("new fds of the parent: %u overlays, %u pidfds", overlays,
                   pidfds);
    g_assert_cmpuint(overlays, ==, n);
    g_assert_cmpuint(pidfds, ==, living->len - living0);

    /* The same number of layers, without a fork */
    for (int i = 0; i < k; i++) {
        g_autofree char *args = g_strdup_printf(
            "{\"device\": \"virtio0\", \"format\": \"qcow2\", "
            "\"snapshot-file\": \"%s/layer-%d.qcow2\"}", dir, i);

        json_node_unref(vm_qmp(vm, "blockdev-snapshot-sync", args));
    }
    h3 = held_now(vm->pid, 512);
    fork_growth = h2.rss_kib - MIN(h1.rss_kib, h2.rss_kib);
    layer_growth = h3.rss_kib - MIN(h2.rss_kib, h3.rss_kib);

    for (guint i = 0; i < living->len; i++) {
        g_assert_cmpint(kill(g_array_index(living, pid_t, i), SIGKILL), ==,
                        0);
    }
    for (guint i = 0; i < living->len; i++) {
        g_autoptr(GError) err = NULL;
        JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                      EVENT_TIMEOUT_MS, &err);

        g_assert_no_error(err);
        g_assert_true(pid_wait_gone(json_object_get_int_member(
            qmp_event_data(ev), "pid"), 5000));
        json_node_unref(ev);
    }
    acked = vm_writer_stop(vm);
    h4 = held_when_workers_idle(vm->pid, h0.workers);
    g_test_message("%d forks under load, %u living on: fds %u -> %u -> %u "
                   "(+%d layers: %u; children gone: %u), threads %u -> %u -> "
                   "%u (pool workers %u -> %u -> %u, idle: %u of %u), RSS %"
                   G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT " -> %"
                   G_GUINT64_FORMAT " KiB (+%d layers: %" G_GUINT64_FORMAT
                   " KiB)", n, living->len, h0.fds, h1.fds, h2.fds, k,
                   h3.fds, h4.fds, h0.threads, h1.threads, h2.threads,
                   h0.workers, h1.workers, h2.workers, h4.workers,
                   h4.threads, h0.rss_kib, h1.rss_kib, h2.rss_kib, k,
                   h3.rss_kib);
    /* the living children's pidfds are gone with them */
    g_assert_cmpuint(h4.fds, ==, h0.fds + n + k - living0);
    g_assert_cmpuint(h4.workers, <=, h0.workers);
    g_assert_cmpuint(h4.threads - h4.workers, ==, h0.threads - h0.workers);
    g_test_message("RSS: %d forks add %" G_GUINT64_FORMAT " KiB, %d layers "
                   "without a fork %" G_GUINT64_FORMAT " KiB", k, fork_growth,
                   k, layer_growth);
    g_assert_cmpuint(fork_growth, <=, layer_growth + rss_slack_kib(
                     LOAD_STORM_RSS_PER_FORK_KIB * k + STORM_RSS_NOISE_KIB));

    runs = vm_writer_check(vm, "/dev/vda", acked);
    id = vm_clone_id_word(vm);
    if (!runs_belong_to(runs, id, NULL, &own) || own < acked) {
        g_error("the parent's disk holds %s: %" G_GUINT64_FORMAT " records "
                "of %s (the parent) and nothing else were acknowledged",
                runs, acked, id);
    }
    vm_quit(vm);
    audit_free_fds(fds0);
    /* the warm-up children, killed while their guests wrote, may leak */
    vm_qemu_img_check_dir(dir, true);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/reliability/tiny/tcg/storm-leaves-parent-flat",
                    storm_leaves_parent_flat);
    g_test_add_func("/reliability/tiny/tcg/exited-records-capped",
                    exited_records_capped);
    g_test_add_func("/reliability/tiny/tcg/children-outlive-killed-parent",
                    children_outlive_killed_parent);
    g_test_add_func("/reliability/tiny/tcg/refused-during-migration",
                    fork_refused_during_migration);
    g_test_add_func("/reliability/tiny/tcg/refused-during-incoming",
                    fork_refused_during_incoming);
    g_test_add_func("/reliability/tiny/tcg/two-monitors-at-once",
                    fork_from_two_monitors);
    g_test_add_func("/reliability/tiny/tcg/parent-serves-while-child-sets-up",
                    parent_serves_while_child_sets_up);
    g_test_add_func("/reliability/tiny/tcg/child-never-sets-up",
                    child_never_sets_up);
    g_test_add_func("/reliability/tiny/tcg/unwritable-dirs",
                    fork_into_unwritable_dirs);
    g_test_add_func("/reliability/tiny/tcg/refused-after-migration",
                    fork_refused_after_migration);
    g_test_add_func("/reliability/tiny/tcg/overlay-dir-full",
                    fork_overlay_dir_full);
    g_test_add_func("/reliability/linux/tcg/iothread", fork_with_iothread);
    g_test_add_data_func("/reliability/tiny/tcg/child-killed-at-each-phase",
                         "tcg", child_killed_at_each_phase);
    g_test_add_data_func("/reliability/tiny/kvm/child-killed-at-each-phase",
                         "kvm", child_killed_at_each_phase);
    g_test_add_func("/reliability/tiny/tcg/child-failure-says-why",
                    child_failure_says_why);
    g_test_add_func("/reliability/tiny/tcg/fork-failure-injected",
                    fork_failure_injected);
    g_test_add_func("/reliability/tiny/tcg/fork-denied-by-seccomp",
                    fork_denied_by_seccomp);
    g_test_add_func("/reliability/linux/tcg/fsync-writes-across-forks",
                    fsync_writes_across_forks);
    g_test_add_func("/reliability/linux/tcg/storm-under-load",
                    storm_under_load);
    return g_test_run();
}
