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
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <unistd.h>

#define EVENT_TIMEOUT_MS 30000

static guint count_dir(const char *fmt, pid_t pid)
{
    g_autofree char *path = g_strdup_printf(fmt, pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    guint n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    return n;
}

/*
 * A VM's threads (vmtest names them: -name debug-threads=on), and in
 * @workers those of the block layer's thread pool: the pool starts them
 * as concurrent I/O needs them, up to 64, and each exits after 10 s idle,
 * so their number follows the guest's load, not the forks.
 */
static guint count_threads(pid_t pid, guint *workers)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task", pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    const char *tid;
    guint n = 0;

    g_assert_nonnull(d);
    *workers = 0;
    while ((tid = g_dir_read_name(d))) {
        g_autofree char *comm_path = g_strdup_printf("%s/%s/comm", path, tid);
        g_autofree char *comm = NULL;

        n++;
        if (g_file_get_contents(comm_path, &comm, NULL, NULL) &&
            g_str_equal(g_strchomp(comm), "worker")) {
            (*workers)++;
        }
    }
    return n;
}

static guint64 rss_kib(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", pid);
    g_autofree char *text = NULL;
    const char *p;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    p = strstr(text, "VmRSS:");
    g_assert_nonnull(p);
    return g_ascii_strtoull(p + 6, NULL, 10);
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
 * (check-sanitize sets VMFORK_SANITIZED) the allocator's quarantine and
 * caches hold freed memory for a while: 4 times the bound.
 */
static guint64 rss_slack_kib(guint64 kib)
{
    return g_getenv("VMFORK_SANITIZED") ? 4 * kib : kib;
}

static int storm_size(void)
{
    const char *v = g_getenv("VMFORK_STORM");

    return v ? atoi(v) : 50;
}

/*
 * Fork storm: children that exit at once, one after the other.  Every
 * child's exit is reported, none is left a zombie, and the parent's fds,
 * threads and memory stay flat.
 */
static void storm_leaves_parent_flat(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    int n = storm_size();
    guint fds0, threads0, fds1, threads1, workers0, workers1;
    guint64 rss0, rss1;
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash,
                                                  g_direct_equal);
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    /* Warm up: the first fork allocates what later ones reuse */
    for (int i = 0; i < 2; i++) {
        g_autoptr(JsonArray) c = vm_fork(vm, NULL);
        pid_t pid = json_object_get_int_member(
            json_array_get_object_element(c, 0), "pid");
        g_autoptr(GError) err = NULL;

        kill(pid, SIGKILL);
        json_node_unref(qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                       EVENT_TIMEOUT_MS, &err));
        g_assert_no_error(err);
    }
    fds0 = count_dir("/proc/%d/fd", vm->pid);
    threads0 = count_threads(vm->pid, &workers0);
    rss0 = rss_kib(vm->pid);

    for (int i = 0; i < n; i++) {
        g_autoptr(JsonArray) c = vm_fork(vm, NULL);
        pid_t pid = json_object_get_int_member(
            json_array_get_object_element(c, 0), "pid");

        /* Half quit by QMP (a clean exit), half are killed */
        if (i % 2) {
            kill(pid, SIGKILL);
        } else {
            JsonObject *child = json_array_get_object_element(c, 0);
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
    /* Every child's exit is reported, with its status */
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

    fds1 = count_dir("/proc/%d/fd", vm->pid);
    threads1 = count_threads(vm->pid, &workers1);
    rss1 = rss_kib(vm->pid);
    g_test_message("%d forks: fds %u -> %u, threads %u -> %u, "
                   "RSS %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT " KiB",
                   n, fds0, fds1, threads0, threads1, rss0, rss1);
    g_assert_cmpuint(fds1, ==, fds0);
    g_assert_cmpuint(threads1 - workers1, ==, threads0 - workers0);
    /* Bounded: the record of each exited child is kept for query-vmfork */
    g_assert_cmpuint(rss1, <, rss0 + rss_slack_kib(8 * 1024));
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

/* Two monitors asking at once: both forks happen, one after the other */
typedef struct SecondFork {
    QmpClient *qmp;
    char *args;
    JsonNode *reply;
    GError *err;
} SecondFork;

static gpointer second_fork(gpointer data)
{
    SecondFork *f = data;

    f->reply = qmp_execute_json(f->qmp, "vmfork", f->args, 30000, &f->err);
    return NULL;
}

static void fork_from_two_monitors(void)
{
    const char *extra[] = {
        "-qmp", "unix:@DIR@/qmp2.sock,server=on,wait=off", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *second = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonArray) c1 = NULL;
    SecondFork f = { 0 };
    GThread *t;
    Vm *vm;
    pid_t p1, p2;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    second = g_strdup_printf("%s/qmp2.sock", vm->dir);
    f.qmp = qmp_connect_unix(second, 30000, &err);
    g_assert_no_error(err);
    f.args = g_strdup_printf("{\"monitor\": \"%s/second-%%p.qmp\"}",
                             vm->dir);
    t = g_thread_new("second-monitor", second_fork, &f);
    c1 = vm_fork(vm, NULL);
    g_thread_join(t);
    g_assert_no_error(f.err);
    p1 = json_object_get_int_member(json_array_get_object_element(c1, 0),
                                    "pid");
    p2 = json_object_get_int_member(json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(f.reply),
                                     "children"), 0), "pid");
    g_test_message("children %d and %d", p1, p2);
    g_assert_cmpint(p1, !=, p2);
    json_node_unref(f.reply);
    g_free(f.args);
    qmp_close(f.qmp);
    g_assert_cmpint(vm_tiny_next_seq(vm, 30000), >, 0);
    vm_quit(vm);
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

/* A user IOThread: stopped for the fork, running again in both VMs */
static void fork_with_iothread(void)
{
    const char *extra[] = { "-object", "iothread,id=io0", NULL };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autoptr(JsonArray) children = NULL;
    JsonNode *q;
    Vm *vm, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    children = vm_fork(vm, NULL);
    child = vm_attach_child(vm, json_array_get_object_element(children, 0));
    for (Vm *v = vm; v; v = v == vm ? child : NULL) {
        JsonArray *threads;

        q = vm_qmp(v, "query-iothreads", NULL);
        threads = json_node_get_array(q);
        g_assert_cmpuint(json_array_get_length(threads), ==, 1);
        g_assert_cmpint(json_object_get_int_member(
            json_array_get_object_element(threads, 0), "thread-id"), >, 0);
        /* the thread exists in this process */
        {
            g_autofree char *task = g_strdup_printf(
                "/proc/%d/task/%" G_GINT64_FORMAT, v->pid,
                json_object_get_int_member(
                    json_array_get_object_element(threads, 0), "thread-id"));

            g_assert_true(g_file_test(task, G_FILE_TEST_IS_DIR));
        }
        json_node_unref(q);
        g_assert_cmpint(vm_tiny_next_seq(v, 30000), >, 0);
    }
    vm_quit(child);     /* joins the child's own IOThread: no hang */
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * A child killed at each phase of its re-initialisation (VMFORK_FAULT,
 * plugin/fault.c): the parent reports each exit, reaps it, removes the
 * monitor socket it left, keeps no fd of it, and its guest runs on.  A
 * child that dies before it has set up fails the command (and its
 * sibling is killed: never half-forked); one that dies later exits on
 * its own.  The phases are the child's common steps and then one per
 * fork handler (plugin/handler.h), in their order.
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
        g_autoptr(GPtrArray) monitors = g_ptr_array_new_with_free_func(
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
        fds0 = count_dir("/proc/%d/fd", vm->pid);

        if (child_phases[p].set_up) {
            children = vm_fork(vm, "{\"count\": 2}");
            for (guint i = 0; i < 2; i++) {
                g_ptr_array_add(monitors, g_strdup(
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
                g_ptr_array_add(monitors, g_strdup_printf(
                    "%s.fork-%d", vm->qmp_path, pid));
            }
            json_node_unref(ev);
        }
        /* None got as far as telling the parent it runs */
        ready = qmp_wait_event(vm->qmp, "VMFORK_CHILD_READY", 100, &none);
        g_assert_null(ready);
        for (guint i = 0; i < monitors->len; i++) {
            g_assert_false(g_file_test(monitors->pdata[i],
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
        g_assert_cmpuint(count_dir("/proc/%d/fd", vm->pid), ==, fds0);
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
 * A guest fsyncs numbered records without a break while it is forked again
 * and again: the parent loses no acknowledged write, and every child's
 * disk holds exactly the records its own RAM says were acknowledged (a
 * prefix from the parent, then its own), never a write of another VM.
 */
static void fsync_writes_across_forks(void)
{
    g_autofree char *dir = NULL, *fork_args = NULL, *args = NULL;
    g_autofree char *id_p = NULL, *runs = NULL, *want = NULL;
    int n = data_forks();
    guint64 last_prefix = 0, acked;
    Vm *parent = linux_with_disk(&dir, &fork_args);

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
        g_autofree char *runs_c = NULL;
        g_auto(GStrv) r = NULL;
        guint64 from_parent;

        acked = vm_writer_stop(child);
        runs_c = vm_writer_check(child, "/dev/vda", acked);
        r = g_strsplit_set(runs_c, ":,", -1);
        /* the parent's records up to the fork, then maybe its own */
        g_assert_cmpuint(g_strv_length(r), <=, 4);
        if (g_str_equal(r[0], id_p)) {
            from_parent = g_ascii_strtoull(r[1], NULL, 10);
            g_assert_true(!r[2] || !g_str_equal(r[2], id_p));
        } else {
            from_parent = 0;        /* the "-" of an empty disk, or its own */
            g_assert_null(r[2]);
        }
        g_assert_cmpuint(from_parent, >=, last_prefix);
        last_prefix = from_parent;
        vm_quit(child);
    }
    acked = vm_writer_stop(parent);
    runs = vm_writer_check(parent, "/dev/vda", acked);
    g_assert_cmpuint(acked, >=, last_prefix);
    want = g_strdup_printf("%s:%s", id_p, strchr(runs, ':') + 1);
    g_assert_cmpstr(runs, ==, want);
    g_test_message("%d forks, %" G_GUINT64_FORMAT " records acknowledged "
                   "by the parent", n, acked);
    vm_quit(parent);
    vm_qemu_img_check_dir(dir, false);
    vm_cleanup_all();
}

/*
 * Fork storm while the guest keeps a vCPU busy and writes to its disk:
 * half the children quit at once, half live on (paused) to the end.  The
 * parent holds one pidfd per living child and one backing image (fd and
 * caches) per fork, nothing else grows, and no write was lost.
 */
static void storm_under_load(void)
{
    g_autofree char *dir = NULL, *fork_args = NULL;
    g_autofree char *args_quit = NULL, *args_live = NULL, *runs = NULL;
    g_autoptr(GArray) living = g_array_new(FALSE, FALSE, sizeof(pid_t));
    int n = storm_size();
    guint fds0, threads0, fds1, threads1, fds2, workers0, workers1;
    guint64 rss0, rss1, acked;
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
    for (int i = 0; i < 2; i++) {
        g_autoptr(JsonArray) c = vm_fork(vm, args_quit);
        g_autoptr(GError) err = NULL;

        kill(json_object_get_int_member(json_array_get_object_element(c, 0),
                                        "pid"), SIGKILL);
        json_node_unref(qmp_wait_event(vm->qmp, "VMFORK_CHILD_EXITED",
                                       EVENT_TIMEOUT_MS, &err));
        g_assert_no_error(err);
    }
    fds0 = count_dir("/proc/%d/fd", vm->pid);
    threads0 = count_threads(vm->pid, &workers0);
    rss0 = rss_kib(vm->pid);

    for (int i = 0; i < n; i++) {
        bool live = i % 2;
        g_autoptr(JsonArray) c = vm_fork(vm, live ? args_live : args_quit);
        JsonObject *child = json_array_get_object_element(c, 0);
        pid_t pid = json_object_get_int_member(child, "pid");

        if (live) {
            g_array_append_val(living, pid);
        } else {
            Vm *cv = vm_attach_child(vm, child);

            vm_quit(cv);
        }
    }
    for (int i = 0; i < n - (int)living->len; i++) {
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
    fds1 = count_dir("/proc/%d/fd", vm->pid);
    threads1 = count_threads(vm->pid, &workers1);
    rss1 = rss_kib(vm->pid);
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
    fds2 = count_dir("/proc/%d/fd", vm->pid);
    g_test_message("%d forks under load, %u living on: fds %u -> %u -> %u, "
                   "threads %u -> %u (pool workers %u -> %u), RSS %"
                   G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT " KiB", n,
                   living->len, fds0, fds1, fds2, threads0, threads1,
                   workers0, workers1, rss0, rss1);
    /*
     * Each fork gives the parent's disk a new active layer and keeps the
     * one before as its backing image (the children's too): one image fd
     * per fork and writable disk, by design.  Beyond that, one pidfd per
     * living child, and nothing that grows with the forks (2 fds of slack
     * for one that comes and goes, as a worker thread's).
     */
    g_assert_cmpuint(fds1, >=, fds0 + n + living->len);
    g_assert_cmpuint(fds1, <=, fds0 + n + living->len + 2);
    g_assert_cmpuint(fds2, >=, fds0 + n);
    g_assert_cmpuint(fds2, <=, fds0 + n + 2);
    /* the pool's workers come and go with the disk load, up to 64 */
    g_assert_cmpuint(threads1 - workers1, ==, threads0 - workers0);
    g_assert_cmpuint(workers1, <=, 64);
    /*
     * The memory grows with the backing chain too: each layer is an open
     * qcow2 image with its metadata caches (about 400 KiB here).  Bounded:
     * 512 KiB per fork and writable disk, plus 16 MiB.
     */
    g_assert_cmpuint(rss1, <, rss0 + rss_slack_kib(16 * 1024 + n * 512));

    acked = vm_writer_stop(vm);
    runs = vm_writer_check(vm, "/dev/vda", acked);
    g_assert_null(strchr(runs, ','));       /* its own records only */
    vm_quit(vm);
    /* the warm-up children, killed while their guests wrote, may leak */
    vm_qemu_img_check_dir(dir, true);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/reliability/tiny/tcg/storm-leaves-parent-flat",
                    storm_leaves_parent_flat);
    g_test_add_func("/reliability/tiny/tcg/children-outlive-killed-parent",
                    children_outlive_killed_parent);
    g_test_add_func("/reliability/tiny/tcg/refused-during-migration",
                    fork_refused_during_migration);
    g_test_add_func("/reliability/tiny/tcg/refused-during-incoming",
                    fork_refused_during_incoming);
    g_test_add_func("/reliability/tiny/tcg/two-monitors-at-once",
                    fork_from_two_monitors);
    g_test_add_func("/reliability/tiny/tcg/unwritable-dirs",
                    fork_into_unwritable_dirs);
    g_test_add_func("/reliability/tiny/tcg/refused-after-migration",
                    fork_refused_after_migration);
    g_test_add_func("/reliability/tiny/tcg/overlay-dir-full",
                    fork_overlay_dir_full);
    g_test_add_func("/reliability/tiny/tcg/iothread", fork_with_iothread);
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
