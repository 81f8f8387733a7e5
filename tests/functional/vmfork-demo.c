/*
 * vmfork-demo: boot a guest, fork it, and show that parent and children
 * run on their own.  Run by `make demo`: with the Debian guest where it is
 * built (`vmfork-demo debian`), else with the Linux test guest.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "vmtest.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ssh CMD in @vm, which must succeed: its output, without the newline */
static char *ssh_ok(Vm *vm, const char *cmd)
{
    int status;
    char *out = vm_ssh(vm, &status, cmd);

    if (status) {
        g_printerr("vmfork-demo: ssh -p %d '%s' failed\n", vm->ssh_port, cmd);
        exit(1);
    }
    return g_strchomp(out);
}

/* Until the clone's vmfork-guest has customised it (60 s at most) */
static char *wait_customised(Vm *vm)
{
    for (int i = 0; i < 300; i++) {
        int st;
        g_autofree char *out = vm_ssh(vm, &st, "grep '^total\\|^result' "
                                      "/run/vmfork/last-clone 2>/dev/null");

        if (st == 0 && strstr(out, "result")) {
            return g_strdelimit(g_strchomp(g_steal_pointer(&out)), "\n", ',');
        }
        g_usleep(200 * 1000);
    }
    return g_strdup("not customised after 60 s");
}

static void show_vm(Vm *vm, const char *name)
{
    g_autofree char *id = ssh_ok(vm, "hostname; ip -4 -o addr show dev ens3 "
                                 "| awk '{print $4}'; cut -c1-12 "
                                 "/etc/machine-id; cat /root/whoami "
                                 "2>/dev/null || echo -");
    g_auto(GStrv) f = g_strsplit(id, "\n", 4);

    printf("   %-8s ssh -p %-5d  %-22s %-14s %-13s %s\n", name, vm->ssh_port,
           f[0], f[1] ? f[1] : "", f[1] && f[2] ? f[2] : "",
           f[1] && f[2] && f[3] ? f[3] : "");
}

/*
 * The Debian guest: a real distribution, cloned three times; each clone
 * customises itself (vmfork-guest) and is reached over ssh on its own
 * forwarded port, with its own hostname, machine-id and disk.
 */
static int demo_debian(void)
{
    const char *const extra[] = { "-device", "vmgenid", NULL };
    VmOptions o = { .guest = GUEST_DEBIAN, .extra = extra };
    const char *why = vm_missing(GUEST_DEBIAN, "tcg");
    const int offset = 100, count = 3;
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *args = NULL;
    Vm *parent, *child[3];
    double cmd_ms;
    gint64 t0;

    if (why) {
        g_printerr("vmfork-demo: %s\n", why);
        return 1;
    }
    g_setenv("G_MESSAGES_DEBUG", "", true);
    o.ssh_port = vm_free_ports(offset, count + 1);
    printf("== 1. Boot the Debian guest (bookworm, systemd; %s, 512 MiB)\n",
           vm_describe(&o));
    t0 = g_get_monotonic_time();
    parent = vm_start(&o);
    vm_wait_ssh(parent, 300);
    printf("   QEMU pid %d, ssh answers after %.1f s\n", parent->pid,
           ms_since(t0) / 1000);
    g_free(ssh_ok(parent, "echo 'the parent, written before the fork' > "
                  "/root/whoami && sync"));
    printf("   %-8s %-13s %-22s %-14s %-13s %s\n", "VM", "reach it",
           "hostname", "address", "machine-id", "/root/whoami on its disk");
    show_vm(parent, "parent");

    printf("== 2. vmfork: %d clones, each with a disk overlay, its own user "
           "network\n   (host port + %d x N), and its own qemu-ga socket\n",
           count, offset);
    args = g_strdup_printf("{\"count\": %d, \"overlay-dir\": \"%s\", "
                           "\"hostfwd-offset\": %d, \"chardevs\": [{\"id\": "
                           "\"qga0\", \"path\": \"%s/qga-%%p.sock\"}]}",
                           count, parent->dir, offset, parent->dir);
    t0 = g_get_monotonic_time();
    children = vm_fork(parent, args);
    cmd_ms = ms_since(t0);
    printf("   command answered after %.1f ms; the clones run\n", cmd_ms);
    for (int i = 0; i < count; i++) {
        g_autofree char *custom = NULL;

        child[i] = vm_attach_child(parent,
                                   json_array_get_object_element(children, i));
        child[i]->ssh_port = parent->ssh_port + offset * (i + 1);
        vm_wait_ssh(child[i], 120);
        custom = wait_customised(child[i]);
        printf("   clone %d (pid %d): answers ssh %.1f s after the command; "
               "vmfork-guest: %s\n",
               i, child[i]->pid, ms_since(t0) / 1000, custom);
    }

    printf("== 3. Each writes its own disk; nobody sees another's file\n");
    for (int i = 0; i < count; i++) {
        g_autofree char *cmd = g_strdup_printf(
            "echo \"clone $(hostname), written after the fork\" > /root/whoami"
            " && sync");

        g_free(ssh_ok(child[i], cmd));
    }
    printf("   %-8s %-13s %-22s %-14s %-13s %s\n", "VM", "reach it",
           "hostname", "address", "machine-id", "/root/whoami on its disk");
    show_vm(parent, "parent");
    for (int i = 0; i < count; i++) {
        g_autofree char *name = g_strdup_printf("clone %d", i);

        show_vm(child[i], name);
    }
    printf("   (10.0.2.15 in each: every clone has a user-mode network of its "
           "own, behind its own NAT)\n");

    printf("== 4. Clean up: quit every VM, remove their overlays (%s)\n",
           parent->dir);
    for (int i = 0; i < count; i++) {
        vm_quit(child[i]);
    }
    vm_quit(parent);
    vm_cleanup_all();
    printf("   done\n");
    return 0;
}

/* The Linux test guest: memory copy-on-write, a paused template */
static int demo_linux(void)
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

int main(int argc, char **argv)
{
    if (argc == 2 && g_str_equal(argv[1], "debian")) {
        return demo_debian();
    }
    if (argc == 1 || (argc == 2 && g_str_equal(argv[1], "linux"))) {
        return demo_linux();
    }
    g_printerr("usage: vmfork-demo [linux | debian]\n");
    return 2;
}
