/*
 * Functional tests of the foundation: the test guests boot in the patched
 * QEMU and answer, and QMP works through libqmp.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "vmtest.h"
#include <string.h>

static void linux_guest_boots_and_answers(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autofree char *pong = NULL, *h1 = NULL, *h2 = NULL, *t = NULL;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    pong = vm_agent(vm, "ping");
    g_assert_cmpstr(pong, ==, "pong");
    h1 = vm_agent(vm, "fill 1234");
    h2 = vm_agent(vm, "hash");
    g_assert_cmpstr(h1, ==, h2);
    g_assert_cmpuint(strlen(h2), ==, 16);
    t = vm_agent(vm, "time");
    g_assert_cmpuint(g_ascii_strtoull(t, NULL, 10), >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

static void tiny_guest_counter_advances(gconstpointer data)
{
    VmOptions o = { .guest = GUEST_TINY, .accel = data };
    gint64 a, b;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    a = vm_tiny_next_seq(vm, 60000);
    b = vm_tiny_next_seq(vm, 60000);
    g_assert_cmpint(a, >=, 0);
    g_assert_cmpint(b, ==, a + 1);
    vm_quit(vm);
    vm_cleanup_all();
}

static void qmp_stop_and_cont_work(void)
{
    VmOptions o = { .guest = GUEST_TINY };
    g_autofree char *s1 = NULL, *s2 = NULL, *s3 = NULL;
    gint64 seq;
    Vm *vm;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    vm = vm_start(&o);
    s1 = vm_runstate(vm);
    g_assert_cmpstr(s1, ==, "running");
    json_node_unref(vm_qmp(vm, "stop", NULL));
    s2 = vm_runstate(vm);
    g_assert_cmpstr(s2, ==, "paused");
    /* Drain what was printed before the stop, then silence */
    while (vm_tiny_next_seq(vm, 300) >= 0) {
    }
    g_assert_cmpint(vm_tiny_next_seq(vm, 500), ==, -1);
    json_node_unref(vm_qmp(vm, "cont", NULL));
    s3 = vm_runstate(vm);
    g_assert_cmpstr(s3, ==, "running");
    seq = vm_tiny_next_seq(vm, 30000);
    g_assert_cmpint(seq, >, 0);
    vm_quit(vm);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/boot/linux/tcg/agent-answers",
                    linux_guest_boots_and_answers);
    g_test_add_data_func("/boot/tiny/tcg/counter-advances", "tcg",
                         tiny_guest_counter_advances);
    g_test_add_data_func("/boot/tiny/kvm/counter-advances", "kvm",
                         tiny_guest_counter_advances);
    g_test_add_func("/boot/tiny/tcg/qmp-stop-cont", qmp_stop_and_cont_work);
    return g_test_run();
}
