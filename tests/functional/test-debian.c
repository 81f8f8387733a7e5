/*
 * The Debian guest (build/guest/debian) forked, and its guest tool
 * vmfork-guest (guest/vmfork-guest/) customising the clone: hostname,
 * machine-id, DHCP, clock and the drop-ins of /etc/vmfork/clone.d/.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "vmtest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define TIMEOUT_S 300

/*
 * A clock vmfork-guest set at the RTC's update interrupt is the host's,
 * but for the guest's latency from the interrupt to settimeofday() (a few
 * ms under TCG; this bound leaves room for a loaded host).  Before patch
 * 0022 the RTC ran up to a second behind the host.
 */
#define CLOCK_BOUND_S 0.25

static char *ssh_ok(Vm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static char *ssh_ok(Vm *vm, const char *fmt, ...)
{
    g_autofree char *cmd = NULL;
    va_list ap;
    int status;
    char *out;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    out = vm_ssh(vm, &status, cmd);
    if (status) {
        g_error("ssh -p %d '%s': status 0x%x, output: %s", vm->ssh_port, cmd,
                status, out);
    }
    return g_strchomp(out);
}

/* `systemctl is-system-running --wait`: running, or degraded with the
 * failed units printed */
static void assert_system_running(Vm *vm, const char *who)
{
    g_autofree char *cmd = g_strdup_printf("timeout %d systemctl "
                                           "is-system-running --wait", TIMEOUT_S);
    int status;
    g_autofree char *state = g_strchomp(vm_ssh(vm, &status, cmd));

    g_test_message("%s: systemctl is-system-running: %s", who, state);
    if (!g_str_equal(state, "running") && !g_str_equal(state, "degraded")) {
        /* still starting after TIMEOUT_S: what it waits for */
        g_autofree char *jobs = ssh_ok(vm, "systemctl list-jobs --no-pager; "
                                       "journalctl -b --no-pager | tail -n 40");

        g_test_message("%s: NOT UP, jobs and journal:\n%s", who, jobs);
    } else if (g_str_equal(state, "degraded")) {
        g_autofree char *failed = ssh_ok(vm, "systemctl --failed --no-legend "
                                         "--plain; journalctl -b -p err "
                                         "--no-pager | tail -n 20");

        g_test_message("%s: DEGRADED, failed units:\n%s", who, failed);
    }
    g_assert_true(g_str_equal(state, "running") ||
                  g_str_equal(state, "degraded"));
}

/* qemu-ga: COMMAND's return value as JSON (tests/guest/debian/qga.py) */
static char *qga(Vm *vm, const char *command)
{
    g_autofree char *errout = NULL;
    int status;
    char *out = vm_qga(vm, command, 60, &status, &errout);

    g_assert_nonnull(out);
    if (status) {
        g_error("qga %s %s: %s", vm->qga_path, command, errout);
    }
    return g_strchomp(out);
}

/* Run a host command, assert it exits 0, return its stdout */
static char *host_ok(const char *cmd)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *errout = NULL;
    char *out = NULL;
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, &out, &errout, &status, &err));
    if (status) {
        g_error("%s: status 0x%x\n%s%s", cmd, status, out, errout);
    }
    return out;
}

/* The filesystem in an overlay chain: converted to raw, e2fsck -fn must
 * find it clean; returns what /root/after-fork holds in it */
static char *fsck_image(const char *dir, const char *image)
{
    g_autofree char *raw = g_build_filename(dir, "fsck.raw", NULL);
    g_autofree char *conv = g_strdup_printf("%s convert -O raw %s %s",
                                            g_getenv("VMFORK_QEMU_IMG"),
                                            image, raw);
    g_autofree char *fsck = g_strdup_printf("e2fsck -fn %s", raw);
    g_autofree char *cat = g_strdup_printf("debugfs -R 'cat /root/after-fork' %s",
                                           raw);
    g_autofree char *o1 = NULL, *o2 = NULL;
    char *text;
    gint64 t = g_get_monotonic_time();

    g_free(host_ok(conv));
    o2 = host_ok(fsck);
    g_test_message("e2fsck -fn %s (%.1f s with the conversion):\n%s",
                   image, (g_get_monotonic_time() - t) / 1e6, o2);
    text = g_strchomp(host_ok(cat));
    unlink(raw);
    return text;
}

/* A status file line "KEY VALUE..." : VALUE... */
static const char *status_get(GStrv lines, const char *key)
{
    size_t n = strlen(key);

    for (char **l = lines; *l; l++) {
        if (!strncmp(*l, key, n) && (*l)[n] == ' ') {
            return *l + n + 1;
        }
    }
    return NULL;
}

/*
 * Boot the Debian guest, fork it, and check the clone customised itself
 * and the parent did not.  @vmgenid: with -device vmgenid (the daemon
 * wakes on the VM generation ID change) or without (it polls fw_cfg).
 */
static void debian_fork_customizes_the_clone(gconstpointer data)
{
    bool vmgenid = GPOINTER_TO_INT(data);
    const char *const extra[] = { "-device", "vmgenid", NULL };
    /*
     * Without vmgenid, systemd also prints each unit's status on the
     * console: far more than a console that nobody reads could take if it
     * were a socket (vmtest.c), which then stalled the boot.
     */
    VmOptions o = { .guest = GUEST_DEBIAN, .extra = vmgenid ? extra : NULL,
                    .kernel_args = vmgenid ? NULL : "systemd.show_status=1" };
    const int offset = 100;
    gint64 t0 = g_get_monotonic_time();
    g_autoptr(JsonArray) children = NULL;
    g_autofree char *args = NULL, *watching = NULL, *p_host = NULL,
        *p_mid = NULL, *c_host = NULL, *c_mid = NULL, *status_text = NULL,
        *marker = NULL, *p_marker = NULL, *c_ip = NULL, *p_ga = NULL,
        *c_ga = NULL, *p_name = NULL, *c_name = NULL, *reseed = NULL,
        *want_host = NULL, *want_marker = NULL, *p_file = NULL,
        *c_file = NULL, *p_status = NULL, *c_overlay = NULL,
        *p_overlay = NULL;
    g_auto(GStrv) lines = NULL;
    JsonObject *cj;
    gint64 clone_id;
    Vm *parent, *child;
    const char *steps[] = { "rng", "hostname", "machine-id", "network", "time",
                            "clone.d/50-test-marker", NULL };

    if (vm_skip_if_missing(&o)) {
        return;
    }
    for (const char *const *p = (const char *const[]){ "ssh", "python3",
         "e2fsck", "debugfs", NULL }; *p; p++) {
        g_autofree char *path = g_find_program_in_path(*p);

        if (!path) {
            g_autofree char *why = g_strdup_printf("%s is not installed", *p);

            g_test_skip(why);
            return;
        }
    }
    o.ssh_port = vm_free_ports(offset, 2);
    parent = vm_start(&o);
    vm_wait_ssh(parent, TIMEOUT_S);
    g_test_message("parent: ssh on port %d after %.1f s", parent->ssh_port,
                   (g_get_monotonic_time() - t0) / 1e6);
    assert_system_running(parent, "parent");
    if (!vmgenid) {
        g_autofree char *console = NULL;
        gsize len = 0;

        g_assert_true(g_file_get_contents(parent->console_path, &console,
                                          &len, NULL));
        g_test_message("parent: %zu bytes on its console", len);
        g_assert_cmpuint(len, >, 4096);
    }

    /* The daemon watches, by kretprobe (Linux 6.1 sends no uevent) */
    watching = ssh_ok(parent, "systemctl is-active vmfork-guest.service && "
                      "cat /run/vmfork/watching");
    g_test_message("parent: vmfork-guest: %s", watching);
    g_assert_nonnull(strstr(watching, vmgenid ?
                            "clone-id 0 generation 0 vmgenid yes kretprobe yes" :
                            "clone-id 0 generation 0 vmgenid no kretprobe no"));
    g_assert_nonnull(strstr(watching, vmgenid ? "poll-ms 60000" :
                            "poll-ms 250"));
    /* a drop-in that leaves a marker; the parent's state before the fork */
    g_free(ssh_ok(parent, "printf '#!/bin/sh\\necho \"$VMFORK_CLONE_ID "
                  "$VMFORK_GENERATION $(hostname)\" > /root/clone-marker\\n' "
                  "> /etc/vmfork/clone.d/50-test-marker && "
                  "chmod 755 /etc/vmfork/clone.d/50-test-marker && sync"));
    p_host = ssh_ok(parent, "hostname");
    p_mid = ssh_ok(parent, "cat /etc/machine-id");
    {
        g_autofree char *bench = ssh_ok(parent, "vmfork-guest id-bench 20");

        g_test_message("parent: %s (the cost of the fallback poll)", bench);
    }
    g_assert_cmpstr(p_host, ==, "vmfork-template");
    g_assert_cmpuint(strlen(p_mid), ==, 32);
    {
        /* This VM has no vmfork-guest device: freeze says so (exit 3) */
        g_autofree char *freeze = ssh_ok(parent, "vmfork-guest freeze 2>&1; "
                                         "echo rc=$?");

        g_test_message("parent without the device: %s", freeze);
        g_assert_nonnull(strstr(freeze, "no vmfork-guest device"));
        g_assert_true(g_str_has_suffix(freeze, "rc=3"));
    }

    /* Without vmgenid the child also starts paused and stays so for a few
     * seconds: its guest clock (which stands still while it is paused, under
     * TCG) is then late, and vmfork-guest sets it from the RTC */
    args = g_strdup_printf("{\"overlay-dir\": \"%s\", \"hostfwd-offset\": %d, "
                           "\"chardevs\": [{\"id\": \"qga0\", \"path\": "
                           "\"%s/qga-%%p.sock\"}]%s}", parent->dir, offset,
                           parent->dir, vmgenid ? "" : ", \"start\": false");
    children = vm_fork(parent, args);
    g_assert_cmpuint(json_array_get_length(children), ==, 1);
    cj = json_array_get_object_element(children, 0);
    clone_id = json_object_get_int_member(cj, "clone-id");
    child = vm_attach_child(parent, cj);
    child->ssh_port = parent->ssh_port + offset;
    g_assert_nonnull(child->qga_path);
    if (!vmgenid) {
        g_usleep(4 * G_USEC_PER_SEC);
        json_node_unref(vm_qmp(child, "cont", NULL));
    }
    g_test_message("forked: child %d (clone id %" G_GINT64_FORMAT "), ssh on "
                   "port %d, qemu-ga on %s", child->pid, clone_id,
                   child->ssh_port, child->qga_path);

    /* The child customises itself */
    vm_wait_ssh(child, TIMEOUT_S);
    {
        gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;

        for (;;) {
            int st;

            g_free(status_text);
            status_text = vm_ssh(child, &st,
                                  "cat /run/vmfork/last-clone 2>/dev/null");
            if (st == 0 && strstr(status_text, "\nresult ")) {
                break;
            }
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            g_usleep(200 * 1000);
        }
    }
    g_test_message("child: /run/vmfork/last-clone:\n%s", status_text);
    lines = g_strsplit(status_text, "\n", -1);
    g_assert_cmpint(g_ascii_strtoll(status_get(lines, "clone-id"), NULL, 10), ==,
                    clone_id);
    g_assert_cmpstr(status_get(lines, "generation"), ==, "1");
    g_assert_cmpstr(status_get(lines, "trigger"), ==,
                    vmgenid ? "vmgenid-kretprobe" : "poll");
    for (int i = 0; steps[i]; i++) {
        g_autofree char *key = g_strdup_printf("step %s", steps[i]);
        const char *v = status_get(lines, key);

        g_assert_nonnull(v);
        /* "0 12.345 ms ...": succeeded, and timed */
        g_assert_true(g_str_has_prefix(v, "0 "));
        g_assert_nonnull(strstr(v, " ms"));
    }
    g_assert_nonnull(status_get(lines, "total"));
    g_assert_cmpstr(status_get(lines, "result"), ==, "ok");
    if (!vmgenid) {
        /* the clock was 4 s late: stepped from the RTC, then set at the
         * RTC's second edge, which is the host's (patch 0022) */
        double err, off;

        g_assert_nonnull(strstr(status_get(lines, "step time"), "stepped"));
        g_assert_nonnull(status_get(lines, "step time-edge"));
        g_assert_true(g_str_has_prefix(status_get(lines, "step time-edge"), "0 "));
        off = vm_ssh_clock_offset(child, &err);
        g_test_message("child: clock %+.3f s (+-%.3f s) from the host's",
                       off, err);
        g_assert_cmpfloat(ABS(off), <, CLOCK_BOUND_S + err);
    }
    if (vmgenid) {
        reseed = ssh_ok(child, "dmesg | grep 'crng reseeded due to virtual "
                        "machine fork' | tail -n 1");
        g_test_message("child: the kernel's reseed (printk clock), to compare "
                       "with start-monotonic-ms: %s", reseed);
    }

    /* Identity: the child's is new, the parent's as it was */
    want_host = g_strdup_printf("vmfork-%" G_GINT64_FORMAT, clone_id);
    c_host = ssh_ok(child, "hostname; cat /etc/hostname");
    {
        g_autofree char *expect = g_strdup_printf("%s\n%s", want_host, want_host);

        g_assert_cmpstr(c_host, ==, expect);
    }
    c_mid = ssh_ok(child, "cat /etc/machine-id");
    g_assert_cmpuint(strlen(c_mid), ==, 32);
    g_assert_cmpstr(c_mid, !=, p_mid);
    g_assert_nonnull(strstr(status_get(lines, "step machine-id"), c_mid));
    marker = ssh_ok(child, "cat /root/clone-marker");
    want_marker = g_strdup_printf("%" G_GINT64_FORMAT " 1 %s", clone_id, want_host);
    g_assert_cmpstr(marker, ==, want_marker);
    c_ip = ssh_ok(child, "ip -4 -o addr show dev ens3");
    g_assert_nonnull(strstr(c_ip, "inet 10.0.2.15/"));
    g_assert_nonnull(strstr(c_ip, "dynamic"));

    g_free(p_host);
    p_host = ssh_ok(parent, "hostname");
    g_assert_cmpstr(p_host, ==, "vmfork-template");
    g_free(p_mid);
    p_mid = ssh_ok(parent, "cat /etc/machine-id");
    g_assert_cmpstr(p_mid, !=, c_mid);
    p_marker = ssh_ok(parent, "test ! -e /root/clone-marker && "
                      "test ! -e /run/vmfork/last-clone && echo untouched");
    g_assert_cmpstr(p_marker, ==, "untouched");
    p_status = ssh_ok(parent, "vmfork-guest id; cat /run/vmfork/handled");
    g_assert_cmpstr(p_status, ==, "0 0\n0 0");

    assert_system_running(child, "child");
    assert_system_running(parent, "parent");

    /* Each guest agent on its own socket, with its own name */
    p_ga = qga(parent, "guest-ping");
    c_ga = qga(child, "guest-ping");
    g_assert_cmpstr(p_ga, ==, "{}");
    g_assert_cmpstr(c_ga, ==, "{}");
    p_name = qga(parent, "guest-get-host-name");
    c_name = qga(child, "guest-get-host-name");
    g_test_message("qemu-ga: parent %s, child %s", p_name, c_name);
    g_assert_nonnull(strstr(p_name, "\"vmfork-template\""));
    g_assert_nonnull(strstr(c_name, want_host));

    /* `vmfork-guest customize` runs the steps again (the same hostname, a
     * new machine id): their times with the child's TCG code cache warm */
    {
        g_autofree char *again = ssh_ok(child, "vmfork-guest customize "
                                        "2>/dev/null && cat /run/vmfork/last-clone");

        g_test_message("child: vmfork-guest customize, run again:\n%s", again);
        g_assert_nonnull(strstr(again, "\ntrigger manual\n"));
        g_assert_nonnull(strstr(again, "\nresult ok"));
    }

    /* Each writes a file of its own, then powers off */
    g_free(ssh_ok(parent, "echo parent > /root/after-fork && sync"));
    g_free(ssh_ok(child, "echo child-%" G_GINT64_FORMAT " > /root/after-fork "
                  "&& sync", clone_id));
    {
        int st;

        g_free(vm_ssh(child, &st, "systemctl poweroff"));
        g_free(vm_ssh(parent, &st, "systemctl poweroff"));
    }
    g_assert_true(pid_wait_gone(child->pid, 120 * 1000));
    g_assert_true(pid_wait_gone(parent->pid, 120 * 1000));
    g_test_message("both powered off");

    /* Each filesystem is clean, and holds its own file */
    g_assert_cmpuint(vm_qemu_img_check_dir(parent->dir, false), ==, 3);
    {
        g_autoptr(GDir) d = g_dir_open(parent->dir, 0, NULL);
        const char *name;

        while ((name = g_dir_read_name(d))) {
            g_autofree char *path = NULL, *info = NULL, *cmd = NULL;

            if (!g_str_has_suffix(name, ".qcow2") ||
                g_str_equal(name, "debian.qcow2")) {
                continue;       /* the base at the fork: the others' backing */
            }
            path = g_build_filename(parent->dir, name, NULL);
            cmd = g_strdup_printf("%s info --backing-chain %s",
                                  g_getenv("VMFORK_QEMU_IMG"), path);
            info = host_ok(cmd);
            g_test_message("overlay %s:\n%s", name, info);
            /* vmfork names them NODE-PID-N-parent.qcow2, ...-child0.qcow2 */
            if (g_str_has_suffix(name, "-child0.qcow2")) {
                g_assert_null(c_overlay);
                c_overlay = g_steal_pointer(&path);
            } else {
                g_assert_null(p_overlay);
                p_overlay = g_steal_pointer(&path);
            }
        }
    }
    g_assert_nonnull(c_overlay);
    g_assert_nonnull(p_overlay);
    p_file = fsck_image(parent->dir, p_overlay);
    c_file = fsck_image(parent->dir, c_overlay);
    g_assert_cmpstr(p_file, ==, "parent");
    {
        g_autofree char *want_c = g_strdup_printf("child-%" G_GINT64_FORMAT,
                                                  clone_id);

        g_assert_cmpstr(c_file, ==, want_c);
    }
    g_test_message("test took %.1f s", (g_get_monotonic_time() - t0) / 1e6);
    vm_cleanup_all();
}

/* `cat FILE` in @vm once FILE exists (60 s at most) */
static char *wait_file(Vm *vm, const char *file)
{
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    g_autofree char *cmd = g_strdup_printf("cat %s 2>/dev/null", file);

    for (;;) {
        int st;
        char *out = vm_ssh(vm, &st, cmd);

        if (st == 0) {
            return g_strchomp(out);
        }
        g_free(out);
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(200 * 1000);
    }
}

/*
 * The freeze point in a real guest: a script warms up, runs
 * `vmfork-guest freeze` and branches on its output.  With the host's
 * policy "fork 2", the branch runs once in each of three VMs: 0 in the
 * parent, its clone id in each child, which is already customised (its
 * own hostname) when the branch runs.  The device's port is found in
 * fw_cfg (it is not at the default here), and ACPI lists the device.  Then
 * the clock of a template that waited, paused, for 60 s.
 */
static void debian_freeze_from_a_script(void)
{
    const char *const extra[] = { "-device", "vmgenid", "-device",
                                  "vmfork-guest,iobase=0x5e0", NULL };
    VmOptions o = { .guest = GUEST_DEBIAN, .extra = extra };
    const int offset = 100;
    g_autofree char *pnp = NULL, *policy = NULL, *p_branch = NULL,
        *denied = NULL;
    gint64 t0 = g_get_monotonic_time();
    JsonArray *children;
    JsonNode *ev;
    Vm *parent, *child[2];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    if (!g_find_program_in_path("ssh")) {
        g_test_skip("ssh is not installed");
        return;
    }
    o.ssh_port = vm_free_ports(offset, 3);
    parent = vm_start(&o);
    vm_wait_ssh(parent, TIMEOUT_S);
    /* Not at the default port: vmfork-guest finds it in fw_cfg */
    pnp = ssh_ok(parent, "cat /sys/bus/acpi/devices/VMF0001:00/hid; "
                 "modprobe qemu_fw_cfg; od -An -tx2 /sys/firmware/qemu_fw_cfg/"
                 "by_name/opt/vmfork/guest-port/raw");
    g_test_message("parent: ACPI device and fw_cfg port: %s", pnp);
    g_assert_cmpstr(pnp, ==, "VMF0001\n 05e0");

    policy = g_strdup_printf("{\"action\": \"fork\", \"fork\": {\"count\": 2, "
                             "\"overlay-dir\": \"%s\", \"hostfwd-offset\": %d, "
                             "\"chardevs\": [{\"id\": \"qga0\", \"path\": "
                             "\"%s/qga-%%p.sock\"}]}}", parent->dir, offset,
                             parent->dir);
    json_node_unref(vm_qmp(parent, "vmfork-guest-policy", policy));
    /* The script: warm-up, freeze, a branch that records what it got */
    g_free(ssh_ok(parent, "cat > /root/freeze.sh <<'EOF'\n"
                  "echo warm > /run/warm-up\n"
                  "id=$(vmfork-guest freeze)\n"
                  "rc=$?\n"
                  "if [ \"$id\" = 0 ]; then role=parent; else role=child; fi\n"
                  "echo \"$rc $id $role $(hostname) $(cat /run/warm-up)\" "
                  ">> /root/branch\n"
                  "sync\n"
                  "EOF\n"
                  "setsid sh /root/freeze.sh </dev/null >/dev/null 2>&1 &"));
    ev = vm_guest_request_event(parent, "fork", 120 * 1000);
    children = json_object_get_array_member(qmp_event_data(ev), "children");
    g_assert_cmpuint(json_array_get_length(children), ==, 2);

    p_branch = wait_file(parent, "/root/branch");
    g_test_message("parent's branch: %s", p_branch);
    g_assert_cmpstr(p_branch, ==, "0 0 parent vmfork-template warm");
    for (guint i = 0; i < 2; i++) {
        JsonObject *cj = json_array_get_object_element(children, i);
        gint64 id = json_object_get_int_member(cj, "clone-id");
        g_autofree char *want = g_strdup_printf(
            "0 %" G_GINT64_FORMAT " child vmfork-%" G_GINT64_FORMAT " warm",
            id, id);
        g_autofree char *branch = NULL;

        child[i] = vm_attach_child(parent, cj);
        child[i]->ssh_port = parent->ssh_port + offset * (i + 1);
        vm_wait_ssh(child[i], TIMEOUT_S);
        branch = wait_file(child[i], "/root/branch");
        g_test_message("child %u's branch: %s", i, branch);
        /* once, with its id, customised */
        g_assert_cmpstr(branch, ==, want);
    }

    /* The policy served one request; the host now denies: exit 4 */
    json_node_unref(vm_qmp(parent, "vmfork-guest-policy",
                           "{\"action\": \"deny\"}"));
    denied = ssh_ok(parent, "vmfork-guest freeze 2>&1; echo rc=$?");
    g_test_message("parent, denied: %s", denied);
    g_assert_nonnull(strstr(denied, "denied"));
    g_assert_true(g_str_has_suffix(denied, "rc=4"));

    json_node_unref(ev);
    for (guint i = 0; i < 2; i++) {
        vm_quit(child[i]);
    }

    /*
     * The clock: the VM waits, paused as a template, for 60 s; its guest
     * clock stands still meanwhile (TCG).  The child that the host then
     * forks, and the parent once it runs again, have the host's time
     * (within CLOCK_BOUND_S) when their branch runs: vmfork-guest sets it
     * at the RTC's second edge, and QEMU keeps the RTC at the host's time.
     */
    json_node_unref(vm_qmp(parent, "vmfork-guest-policy",
                           "{\"action\": \"wait\"}"));
    g_free(ssh_ok(parent, "rm /root/branch; cat > /root/freeze.sh <<'EOF'\n"
                  "id=$(vmfork-guest freeze)\n"
                  "echo \"$? $id $(date +%%s.%%N)\" > /root/branch\n"
                  "EOF\n"
                  "setsid sh /root/freeze.sh </dev/null >/dev/null 2>&1 &"));
    json_node_unref(vm_guest_request_event(parent, "wait", 120 * 1000));
    g_test_message("the template waits, paused, for 60 s");
    g_usleep(60 * G_USEC_PER_SEC);
    {
        g_autofree char *args = g_strdup_printf(
            "{\"overlay-dir\": \"%s\", \"hostfwd-offset\": %d, "
            "\"chardevs\": [{\"id\": \"qga0\", \"path\": "
            "\"%s/qga2-%%p.sock\"}]}", parent->dir, offset, parent->dir);
        g_autoptr(JsonArray) late = vm_fork(parent, args);

        child[0] = vm_attach_child(parent, json_array_get_object_element(late, 0));
        child[0]->ssh_port = parent->ssh_port + offset;
    }
    json_node_unref(vm_qmp(parent, "cont", NULL));
    for (guint i = 0; i < 2; i++) {
        Vm *vm = i ? parent : child[0];
        g_autofree char *branch = NULL;
        g_auto(GStrv) f = NULL;
        double off, err_bound;

        vm_wait_ssh(vm, TIMEOUT_S);
        branch = wait_file(vm, "/root/branch");
        f = g_strsplit(branch, " ", 3);
        g_assert_cmpstr(f[0], ==, "0");
        g_assert_cmpstr(f[1], !=, i ? "" : "0");
        off = vm_ssh_clock_offset(vm, &err_bound);
        g_test_message("%s after 60 s paused: branch %s, clock %+.3f s "
                       "(+-%.3f s) from the host's", i ? "parent" : "child",
                       branch, off, err_bound);
        g_assert_cmpfloat(ABS(off), <, CLOCK_BOUND_S + err_bound);
    }
    vm_quit(child[0]);
    vm_quit(parent);
    g_test_message("test took %.1f s", (g_get_monotonic_time() - t0) / 1e6);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_data_func("/debian/tcg/vmgenid/fork-customizes-the-clone",
                         GINT_TO_POINTER(true), debian_fork_customizes_the_clone);
    g_test_add_data_func("/debian/tcg/no-vmgenid/fork-customizes-the-clone",
                         GINT_TO_POINTER(false), debian_fork_customizes_the_clone);
    g_test_add_func("/debian/tcg/freeze-from-a-script-then-clock-after-60s-paused",
                    debian_freeze_from_a_script);
    return g_test_run();
}
