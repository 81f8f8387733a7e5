/*
 * vmfork-demo: boot the Linux test guest, fork it, and show that parent
 * and children run on their own.  Run by `make demo`.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "vmtest.h"
#include <stdio.h>
#include <stdlib.h>

static double ms_since(gint64 t0)
{
    return (g_get_monotonic_time() - t0) / 1000.0;
}

static double wait_ready(Vm *parent, gint64 t0)
{
    g_autoptr(GError) err = NULL;
    JsonNode *ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_READY", 30000,
                                  &err);

    if (!ev) {
        g_printerr("no VMFORK_CHILD_READY: %s\n", err->message);
        exit(1);
    }
    json_node_unref(ev);
    return ms_since(t0);
}

int main(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    const char *why = vm_missing(GUEST_LINUX, "tcg");
    g_autofree char *h0 = NULL, *hc = NULL, *hp1 = NULL, *hc1 = NULL;
    g_autofree char *hp2 = NULL, *args = NULL, *tp = NULL, *tc = NULL;
    g_autoptr(JsonArray) children = NULL;
    double cmd_ms, ready_ms;
    gint64 t0;
    Vm *parent, *child;

    if (why) {
        g_printerr("vmfork-demo: %s\n", why);
        return 1;
    }
    g_setenv("G_MESSAGES_DEBUG", "", true);

    printf("== 1. Boot the Linux test guest (%s, 512 MiB)\n",
           vm_describe(&o));
    t0 = g_get_monotonic_time();
    parent = vm_start(&o);
    printf("   QEMU pid %d, guest agent ready after %.0f ms\n",
           parent->pid, ms_since(t0));
    h0 = vm_agent(parent, "fill c0ffee");
    printf("   parent fills a 16 MiB buffer: hash %s\n", h0);

    printf("== 2. vmfork: pause, fork() QEMU, resume the parent\n");
    t0 = g_get_monotonic_time();
    children = vm_fork(parent, NULL);
    cmd_ms = ms_since(t0);
    ready_ms = wait_ready(parent, t0);
    printf("   command answered after %.2f ms, child ready (running, own "
           "monitor) after %.2f ms\n", cmd_ms, ready_ms);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    printf("   child pid %d, monitor %s\n", child->pid, child->qmp_path);

    printf("== 3. The child starts with the parent's memory, copy-on-write\n");
    hc = vm_agent(child, "hash");
    printf("   child's buffer hash %s (%s)\n", hc,
           g_str_equal(hc, h0) ? "same as the parent's at the fork" :
           "DIFFERENT: bug");
    hp1 = vm_agent(parent, "fill 1111");
    hc1 = vm_agent(child, "hash");
    printf("   parent writes a new pattern (%s); the child still has %s\n",
           hp1, hc1);
    g_free(vm_agent(child, "fill 2222"));
    hp2 = vm_agent(parent, "hash");
    printf("   child writes its own; the parent still has %s\n", hp2);
    tp = vm_agent(parent, "time");
    tc = vm_agent(child, "time");
    printf("   both guests run: parent clock %s, child clock %s\n", tp, tc);

    printf("== 4. A paused template: four children from one frozen state\n");
    args = g_strdup_printf("{\"count\": 4, \"parent\": \"paused\", "
                           "\"monitor\": \"%s/template-child-%%i.qmp\"}",
                           parent->dir);
    t0 = g_get_monotonic_time();
    json_array_unref(vm_fork(parent, args));
    cmd_ms = ms_since(t0);
    for (int i = 0; i < 4; i++) {
        ready_ms = wait_ready(parent, t0);
    }
    printf("   4 children forked in %.2f ms, all ready after %.2f ms\n",
           cmd_ms, ready_ms);
    {
        g_autofree char *s = vm_runstate(parent);
        JsonNode *q = vm_qmp(parent, "query-vmfork", NULL);
        JsonGenerator *gen = json_generator_new();
        g_autofree char *text = NULL;

        json_generator_set_root(gen, q);
        json_generator_set_pretty(gen, true);
        text = json_generator_to_data(gen, NULL);
        printf("   the parent is %s; query-vmfork on it says:\n%s\n", s, text);
        g_object_unref(gen);
        json_node_unref(q);
    }

    printf("== 5. Clean up: 'quit' on the first child's monitor, then kill "
           "the parent's process group\n");
    vm_quit(child);
    vm_cleanup_all();
    printf("   done\n");
    return 0;
}
