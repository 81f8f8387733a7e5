/*
 * Functional tests of the freeze point: the guest asks to be forked
 * through the vmfork-guest device (docs/guest-abi.md), and its request
 * returns as fork(2) does: 0 in the parent, its clone ID in each child.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The tiny guest makes the requests ("f", "b", "r N": tests/guest/README.md)
 * at the device's default port, as a freestanding guest does; under TCG
 * and under this machine's KVM.  The Debian guest's vmfork-guest tool is
 * tested in test-debian.c.
 */

#include "vmtest.h"
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define TIMEOUT_MS 30000

static const char *const guest_device[] = { "-device", "vmfork-guest,id=vg",
                                            NULL };

static JsonObject *nth_child(JsonArray *children, guint i)
{
    return json_array_get_object_element(children, i);
}

static JsonNode *guest_request_event(Vm *vm, const char *action)
{
    return vm_guest_request_event(vm, action, TIMEOUT_MS);
}

static void assert_no_guest_request_event(Vm *vm)
{
    g_autoptr(GError) err = NULL;
    JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_GUEST_REQUEST", 0, &err);

    g_assert_null(ev);
}

static void set_policy(Vm *vm, const char *args)
{
    json_node_unref(vm_qmp(vm, "vmfork-guest-policy", args));
}

static gint64 qom_count(Vm *vm, const char *name)
{
    g_autofree char *args = g_strdup_printf("{\"path\": \"vg\", "
                                            "\"property\": \"%s\"}", name);
    JsonNode *n = vm_qmp(vm, "qom-get", args);
    gint64 v = json_node_get_int(n);

    json_node_unref(n);
    return v;
}

static void assert_runstate(Vm *vm, const char *want)
{
    g_autofree char *state = vm_runstate(vm);

    g_assert_cmpstr(state, ==, want);
}

/*
 * A child forked with start false: attach and run it; its freeze returns
 * its clone ID, as the host was told
 */
static Vm *attach_and_run(Vm *parent, JsonObject *info)
{
    Vm *child = vm_attach_child(parent, info);
    g_autofree char *answer = NULL;
    g_autofree char *want = g_strdup_printf(
        "ok %" G_GINT64_FORMAT, json_object_get_int_member(info, "clone-id"));

    json_node_unref(vm_qmp(child, "cont", NULL));
    answer = vm_tiny_reply(child, 'F', TIMEOUT_MS);
    g_assert_cmpstr(answer, ==, want);
    return child;
}

/*
 * Policy wait: the VM pauses at the guest's request, a template; the host
 * forks it; the request returns the clone ID in each child and 0 in the
 * parent once it runs again.  Both go on counting.
 */
static void freeze_wait_then_fork(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_TINY, .accel = data,
                    .extra = guest_device };
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *parent_answer = NULL;
    Vm *parent, *child[2];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_test_message("guest: tiny, accel: %s", (const char *)data);
    parent = vm_start(&o);
    vm_tiny_next_seq(parent, TIMEOUT_MS);
    vm_tiny_send(parent, "f");
    json_node_unref(guest_request_event(parent, "wait"));
    assert_runstate(parent, "paused");

    children = vm_fork(parent, "{\"count\": 2, \"start\": false}");
    g_assert_cmpuint(json_array_get_length(children), ==, 2);
    for (guint i = 0; i < 2; i++) {
        child[i] = attach_and_run(parent, nth_child(children, i));
    }
    /* The template waits until the host lets it go */
    assert_runstate(parent, "paused");
    json_node_unref(vm_qmp(parent, "cont", NULL));
    parent_answer = vm_tiny_reply(parent, 'F', TIMEOUT_MS);
    g_assert_cmpstr(parent_answer, ==, "ok 0");

    /* Three VMs, each counting on from the freeze point */
    for (guint i = 0; i < 2; i++) {
        g_assert_cmpint(vm_tiny_next_seq(child[i], TIMEOUT_MS), >, 0);
        vm_quit(child[i]);
    }
    g_assert_cmpint(vm_tiny_next_seq(parent, TIMEOUT_MS), >, 0);
    g_assert_cmpint(qom_count(parent, "requests"), ==, 1);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * Policy fork: the VM forks at once, as the policy's arguments say, and
 * runs on; the policy serves one request, the next one waits.
 */
static void freeze_policy_fork(void)
{
    VmOptions o = { .guest = GUEST_TINY, .extra = guest_device };
    g_autofree char *answer = NULL, *policy = NULL, *cancelled = NULL;
    JsonArray *children;
    JsonNode *ev;
    Vm *parent, *child[2];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_test_message("guest: tiny, accel: tcg");
    parent = vm_start(&o);
    policy = g_strdup_printf("{\"action\": \"fork\", \"fork\": {\"count\": 2, "
                             "\"start\": false, \"monitor\": "
                             "\"%s/policy-%%i.qmp\"}}", parent->dir);
    set_policy(parent, policy);
    answer = vm_tiny_cmd(parent, "f");
    g_assert_cmpstr(answer, ==, "ok 0");
    assert_runstate(parent, "running");

    ev = guest_request_event(parent, "fork");
    children = json_object_get_array_member(qmp_event_data(ev), "children");
    g_assert_cmpuint(json_array_get_length(children), ==, 2);
    for (guint i = 0; i < 2; i++) {
        child[i] = attach_and_run(parent, nth_child(children, i));
        g_assert_true(g_str_has_prefix(
            json_object_get_string_member(nth_child(children, i), "monitor"),
            parent->dir));
    }
    json_node_unref(ev);

    /* One request served: the next one waits, and is cancelled by cont */
    vm_tiny_send(parent, "f");
    json_node_unref(guest_request_event(parent, "wait"));
    assert_runstate(parent, "paused");
    json_node_unref(vm_qmp(parent, "cont", NULL));
    cancelled = vm_tiny_reply(parent, 'F', TIMEOUT_MS);
    g_assert_cmpstr(cancelled, ==, "err 3");

    /* A child's own policy is wait, not its parent's */
    vm_tiny_send(child[0], "f");
    json_node_unref(guest_request_event(child[0], "wait"));
    for (guint i = 0; i < 2; i++) {
        vm_quit(child[i]);
    }
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * What an HMP command printed, up to the monitor's next prompt (the main
 * loop serves HMP, also while a QMP command waits)
 */
static char *hmp(int fd, const char *cmd)
{
    g_autoptr(GString) out = g_string_new(NULL);
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_MS * 1000LL;

    fd_write_all(fd, cmd);
    fd_write_all(fd, "\n");
    while (!g_str_has_suffix(out->str, "(qemu) ") ||
           !strstr(out->str, "\r\n")) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char buf[256];
        ssize_t n;

        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        if (poll(&pfd, 1, 100) <= 0) {
            continue;
        }
        n = read(fd, buf, sizeof(buf));
        g_assert_cmpint(n, >, 0);
        g_string_append_len(out, buf, n);
    }
    return g_string_free(g_steal_pointer(&out), false);
}

/* The HMP monitor's banner and first prompt */
static void hmp_greeting(int fd)
{
    g_autoptr(GString) out = g_string_new(NULL);

    while (!g_str_has_suffix(out->str, "(qemu) ")) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char buf[256];
        ssize_t n;

        g_assert_cmpint(poll(&pfd, 1, TIMEOUT_MS), ==, 1);
        n = read(fd, buf, sizeof(buf));
        g_assert_cmpint(n, >, 0);
        g_string_append_len(out, buf, n);
    }
}

/*
 * A request that comes while a vmfork command waits for its children (the
 * guest runs meanwhile; VMFORK_FAULT holds the child in its set-up) is
 * not served by that command, nor refused as busy: the policy's fork
 * follows once the command is over.  The HMP monitor shows the request
 * made, and the VM running, while the command still waits.
 */
static void freeze_request_during_command(void)
{
    const char *extra[] = {
        "-device", "vmfork-guest,id=vg",
        "-monitor", "unix:@DIR@/hmp.sock,server=on,wait=off", NULL
    };
    VmOptions o = { .guest = GUEST_TINY, .extra = extra };
    g_autofree char *policy = NULL, *path = NULL, *answer = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) reply = NULL;
    JsonArray *children;
    pid_t first, second;
    VmForkThread *t;
    JsonNode *ev;
    Vm *parent;
    int fd;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_test_message("guest: tiny, accel: tcg");
    g_setenv("VMFORK_FAULT", "stop-child:devices", TRUE);
    parent = vm_start(&o);
    g_unsetenv("VMFORK_FAULT");
    policy = g_strdup_printf("{\"action\": \"fork\", \"fork\": {\"monitor\": "
                             "\"%s/policy-%%i.qmp\"}}", parent->dir);
    set_policy(parent, policy);
    path = g_build_filename(parent->dir, "hmp.sock", NULL);
    fd = vm_unix_connect(parent->pid, path, TIMEOUT_MS);
    g_assert_cmpint(fd, >=, 0);
    hmp_greeting(fd);

    t = vm_fork_thread_start(parent->qmp, NULL);
    first = pid_wait_child(parent->pid, 0, TIMEOUT_MS);
    g_assert_cmpint(first, >, 0);
    g_assert_true(pid_wait_stopped(first, TIMEOUT_MS));
    vm_tiny_send(parent, "f");
    for (int i = 0;; i++) {
        g_autofree char *out = hmp(fd, "qom-get vg requests");

        if (strstr(out, "\r\n1\r\n")) {
            break;
        }
        g_assert_cmpint(i, <, TIMEOUT_MS / 10);
        g_usleep(10000);
    }
    /* A main loop iteration more: the request's bottom half has run */
    {
        g_autofree char *out = hmp(fd, "info status");

        g_test_message("while the command waits: %s", out);
        g_assert_nonnull(strstr(out, "VM status: running"));
    }
    g_assert_false(vm_fork_thread_answered(t));
    g_assert_cmpint(pid_wait_child(parent->pid, first, 100), ==, 0);

    g_assert_cmpint(kill(first, SIGCONT), ==, 0);
    reply = vm_fork_thread_join(t, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(json_array_get_length(json_object_get_array_member(
        json_node_get_object(reply), "children")), ==, 1);
    /* Then the guest's own fork, whose child stops likewise */
    second = pid_wait_child(parent->pid, first, TIMEOUT_MS);
    g_assert_cmpint(second, >, 0);
    g_assert_true(pid_wait_stopped(second, TIMEOUT_MS));
    g_assert_cmpint(kill(second, SIGCONT), ==, 0);
    answer = vm_tiny_reply(parent, 'F', TIMEOUT_MS);
    g_assert_cmpstr(answer, ==, "ok 0");
    ev = guest_request_event(parent, "fork");
    children = json_object_get_array_member(qmp_event_data(ev), "children");
    g_assert_cmpuint(json_array_get_length(children), ==, 1);
    g_assert_cmpint(json_object_get_int_member(nth_child(children, 0), "pid"),
                    ==, second);
    json_node_unref(ev);
    close(fd);
    vm_quit(parent);
    vm_cleanup_all();
}

/*
 * A fork that fails at the guest's request: the guest is told, the host
 * gets the reason in the event, and the VM runs on.
 */
static void freeze_fork_fails(void)
{
    VmOptions o = { .guest = GUEST_TINY, .extra = guest_device };
    g_autofree char *answer = NULL, *policy = NULL, *sub = NULL;
    const char *error;
    JsonNode *ev;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    sub = g_build_filename(vm->dir, "gone", NULL);
    g_assert_cmpint(g_mkdir(sub, 0700), ==, 0);
    policy = g_strdup_printf("{\"action\": \"fork\", \"fork\": {\"monitor\": "
                             "\"%s/child.qmp\"}}", sub);
    set_policy(vm, policy);
    /* The children's monitor directory goes after the policy was checked */
    g_assert_cmpint(rmdir(sub), ==, 0);
    answer = vm_tiny_cmd(vm, "f");
    g_assert_cmpstr(answer, ==, "err 4");
    ev = guest_request_event(vm, "fork");
    error = json_object_get_string_member(qmp_event_data(ev), "error");
    g_test_message("the fork failed: %s", error);
    g_assert_nonnull(strstr(error, "vmfork:"));
    json_node_unref(ev);
    assert_runstate(vm, "running");
    g_assert_cmpint(vm_tiny_next_seq(vm, TIMEOUT_MS), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

/*
 * What must fail, fail clearly: no device, a second request before the
 * first was acknowledged, a guest that floods the device while denied,
 * and policies that cannot be.
 */
static void freeze_bad_cases(void)
{
    VmOptions plain = { .guest = GUEST_TINY };
    VmOptions o = { .guest = GUEST_TINY, .extra = guest_device };
    const struct {
        const char *args;
        const char *desc;
    } bad_policies[] = {
        { "{\"action\": \"fork\", \"fork\": {\"count\": 257}}",
          "count must be between 1 and 256" },
        { "{\"action\": \"fork\", \"fork\": {\"count\": 0}}",
          "count must be between 1 and 256" },
        { "{\"action\": \"wait\", \"fork\": {\"count\": 2}}",
          "only for action 'fork'" },
        { "{\"action\": \"fork\", \"fork\": {\"overlay-dir\": \"/nonexistent\"}}",
          "is not a directory" },
        { "{\"action\": \"sleep\"}", "sleep" },
    };
    g_autofree char *none = NULL, *denied = NULL, *flood = NULL, *busy = NULL;
    g_autoptr(GError) err = NULL;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    /* Without the device: the guest reads no signature, the host is told */
    vm = vm_start(&plain);
    none = vm_tiny_cmd(vm, "f");
    g_assert_cmpstr(none, ==, "none");
    err = vm_qmp_error(vm, "vmfork-guest-policy", "{\"action\": \"deny\"}");
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "has no vmfork-guest device"));
    g_clear_error(&err);
    vm_quit(vm);

    vm = vm_start(&o);
    for (guint i = 0; i < G_N_ELEMENTS(bad_policies); i++) {
        err = vm_qmp_error(vm, "vmfork-guest-policy", bad_policies[i].args);
        g_assert_nonnull(err);
        g_test_message("%s: %s", bad_policies[i].args, err->message);
        g_assert_nonnull(strstr(err->message, bad_policies[i].desc));
        g_clear_error(&err);
    }
    set_policy(vm, "{\"action\": \"deny\"}");
    denied = vm_tiny_cmd(vm, "f");
    g_assert_cmpstr(denied, ==, "err 1");
    /* 10000 requests in a row: each denied at once, no event, no pause */
    flood = vm_tiny_cmd(vm, "r 2710");
    g_assert_cmpstr(flood, ==, "0 10000 0 0");
    g_assert_cmpint(qom_count(vm, "denied"), ==, 10001);
    assert_no_guest_request_event(vm);
    assert_runstate(vm, "running");

    /* A second request while the first is not acknowledged: busy */
    set_policy(vm, "{\"action\": \"wait\"}");
    vm_tiny_send(vm, "b");
    json_node_unref(guest_request_event(vm, "wait"));
    json_node_unref(vm_qmp(vm, "cont", NULL));
    busy = vm_tiny_reply(vm, 'B', TIMEOUT_MS);
    /* second answer busy (2); the first: failed (3), cancelled (3) */
    g_assert_cmpstr(busy, ==, "2 3 3");
    vm_quit(vm);
    vm_cleanup_all();
}

/* One device per VM: a second one is refused when QEMU starts */
static void freeze_one_device_per_vm(void)
{
    const char *argv[] = { vm_qemu_binary(), "-M", "pc", "-S", "-nodefaults",
                           "-display", "none", "-device", "vmfork-guest",
                           "-device", "vmfork-guest,iobase=0x5e0", NULL };
    g_autofree char *out = NULL, *errout = NULL;
    g_autoptr(GError) err = NULL;
    int status;

    if (vm_missing(GUEST_TINY, "tcg")) {
        g_test_skip(vm_missing(GUEST_TINY, "tcg"));
        return;
    }
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT,
                               NULL, NULL, &out, &errout, &status, &err));
    g_test_message("QEMU: %s", errout);
    g_assert_false(g_spawn_check_wait_status(status, NULL));
    g_assert_nonnull(strstr(errout, "already a vmfork-guest device"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_data_func("/freeze/tiny/tcg/wait-then-fork", "tcg",
                         freeze_wait_then_fork);
    g_test_add_data_func("/freeze/tiny/kvm/wait-then-fork", "kvm",
                         freeze_wait_then_fork);
    g_test_add_func("/freeze/tiny/tcg/policy-fork", freeze_policy_fork);
    g_test_add_func("/freeze/tiny/tcg/request-during-command",
                    freeze_request_during_command);
    g_test_add_func("/freeze/tiny/tcg/fork-fails", freeze_fork_fails);
    g_test_add_func("/freeze/tiny/tcg/bad-cases", freeze_bad_cases);
    g_test_add_func("/freeze/tcg/one-device-per-vm", freeze_one_device_per_vm);
    return g_test_run();
}
