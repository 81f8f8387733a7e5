/*
 * audit: what a forked child still shares with its parent
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/kcmp.h>

GArray *audit_list_fds(pid_t pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", pid);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    GArray *fds = g_array_new(false, false, sizeof(FdEntry));
    const char *name;

    g_assert_nonnull(d);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *link = g_build_filename(dir, name, NULL);
        FdEntry e = { .fd = atoi(name), .target = g_file_read_link(link, NULL) };

        if (e.target) {
            g_array_append_val(fds, e);
        }
    }
    return fds;
}

void audit_free_fds(GArray *fds)
{
    for (guint i = 0; i < fds->len; i++) {
        g_free(g_array_index(fds, FdEntry, i).target);
    }
    g_array_free(fds, true);
}

guint audit_count_fds(pid_t pid, const char *suffix)
{
    GArray *fds = audit_list_fds(pid);
    guint n = 0;

    for (guint i = 0; i < fds->len; i++) {
        n += g_str_has_suffix(g_array_index(fds, FdEntry, i).target, suffix);
    }
    audit_free_fds(fds);
    return n;
}

static int kcmp_file(pid_t a, pid_t b, int fa, int fb)
{
    return syscall(SYS_kcmp, a, b, KCMP_FILE, fa, fb);
}

/* kcmp answers 0 for one open file description, 1 or 2 for two, and
 * -1 where it cannot compare: prove it works before trusting a "not 0" */
static void assert_kcmp_works(pid_t parent, pid_t child)
{
    int a = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int b = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int a2 = dup(a);
    int r_same, r_other, r_stdio;

    g_assert_cmpint(a, >=, 0);
    g_assert_cmpint(b, >=, 0);
    g_assert_cmpint(a2, >=, 0);
    r_same = kcmp_file(getpid(), getpid(), a, a2);
    r_other = kcmp_file(getpid(), getpid(), a, b);
    if (r_same < 0) {
        g_error("kcmp(2) does not work here: %s", g_strerror(errno));
    }
    g_assert_cmpint(r_same, ==, 0);
    g_assert_cmpint(r_other, >, 0);
    close(a);
    close(a2);
    close(b);

    /* Across the two processes: the child inherits QEMU's stderr, one
     * open file description with the parent's */
    r_stdio = kcmp_file(parent, child, 2, 2);
    if (r_stdio < 0) {
        g_error("kcmp(%d, %d) failed: %s", parent, child, g_strerror(errno));
    }
    g_assert_cmpint(r_stdio, ==, 0);
}

static guint fd_flags(pid_t pid, int fd)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fdinfo/%d", pid, fd);
    g_autofree char *text = NULL;
    const char *f;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    f = strstr(text, "flags:");
    g_assert_nonnull(f);
    return strtoul(f + strlen("flags:"), NULL, 8);
}

/* A report file of ASan or UBSan under check-sanitize: log_path=PREFIX
 * gives PREFIX.PID, which a forked process reopens under its own pid */
static bool is_sanitizer_report(const char *target)
{
    static const char *const vars[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS" };

    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
        const char *opts = g_getenv(vars[i]);
        const char *p = opts ? strstr(opts, "log_path=") : NULL;
        g_autofree char *prefix = NULL;

        if (p) {
            p += strlen("log_path=");
            prefix = g_strndup(p, strcspn(p, ":"));
            if (*prefix && g_str_has_prefix(target, prefix) &&
                target[strlen(prefix)] == '.') {
                return true;
            }
        }
    }
    return false;
}

/* May this child fd share its open file description with the parent's? */
static const char *shared_is_allowed(pid_t child, const FdEntry *c,
                                     const FdEntry *p)
{
    static const char *const stateless[] = {
        "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", NULL
    };
    g_autofree char *link = g_strdup_printf("/proc/%d/fd/%d", child, c->fd);
    struct stat st;

    if (c->fd <= 2 && p->fd <= 2) {
        return "inherited stdio";       /* often one file, dup'd */
    }
    if (g_str_equal(c->target, "/dev/kvm")) {
        return "/dev/kvm (the system fd)";
    }
    if (is_sanitizer_report(c->target)) {
        return "a sanitizer's report file";
    }
    if (g_strv_contains(stateless, c->target) &&
        (fd_flags(child, c->fd) & O_ACCMODE) == O_RDONLY) {
        return "a stateless device opened read-only";
    }
    if (stat(link, &st) == 0 && S_ISREG(st.st_mode) &&
        (fd_flags(child, c->fd) & O_ACCMODE) == O_RDONLY) {
        return "a regular file opened read-only";
    }
    return NULL;
}

guint audit_shared_fds(pid_t parent, pid_t child, guint *allowed)
{
    GArray *pfds, *cfds;
    guint bad = 0, ok = 0, compared = 0;

    assert_kcmp_works(parent, child);
    pfds = audit_list_fds(parent);
    cfds = audit_list_fds(child);
    for (guint i = 0; i < cfds->len; i++) {
        FdEntry *c = &g_array_index(cfds, FdEntry, i);

        for (guint j = 0; j < pfds->len; j++) {
            FdEntry *p = &g_array_index(pfds, FdEntry, j);
            int r = kcmp_file(parent, child, p->fd, c->fd);
            const char *why;

            if (r < 0) {
                g_error("kcmp(parent %d fd %d %s, child %d fd %d %s): %s",
                        parent, p->fd, p->target, child, c->fd, c->target,
                        g_strerror(errno));
            }
            compared++;
            if (r != 0) {
                continue;
            }
            why = shared_is_allowed(child, c, p);
            if (why) {
                g_test_message("shared as allowed (%s): child fd %d, parent "
                               "fd %d: %s", why, c->fd, p->fd, c->target);
                ok++;
            } else {
                g_test_message("SHARED: child fd %d and parent fd %d: %s",
                               c->fd, p->fd, c->target);
                bad++;
            }
        }
    }
    g_test_message("fd audit: %u child fds against %u parent fds (%u "
                   "comparisons): %u shared as allowed, %u shared against "
                   "the rules", cfds->len, pfds->len, compared, ok, bad);
    g_assert_cmpuint(compared, ==, cfds->len * pfds->len);
    audit_free_fds(pfds);
    audit_free_fds(cfds);
    if (allowed) {
        *allowed = ok;
    }
    return bad;
}

/* The MAP_SHARED mappings of a process: "dev inode name" per mapping */
static GPtrArray *shared_mappings(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/maps", pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    GPtrArray *maps = g_ptr_array_new_with_free_func(g_free);

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l && **l; l++) {
        char perms[8], dev[16], name[512] = "";
        unsigned long inode;

        if (sscanf(*l, "%*s %7s %*s %15s %lu %511[^\n]", perms, dev, &inode,
                   name) >= 3 && perms[3] == 's') {
            g_ptr_array_add(maps, g_strdup_printf("%s %lu %s", dev, inode,
                                                  g_strstrip(name)));
        }
    }
    return maps;
}

static guint count_matching(GPtrArray *strs, const char *needle)
{
    guint n = 0;

    for (guint i = 0; i < strs->len; i++) {
        n += strstr(strs->pdata[i], needle) != NULL;
    }
    return n;
}

guint audit_count_shared_mappings(pid_t pid, const char *needle)
{
    g_autoptr(GPtrArray) m = shared_mappings(pid);

    return count_matching(m, needle);
}

/*
 * Anonymous-inode files (kvm_run pages of vCPU fds) all have one inode:
 * for them, the child must have exactly one mapping per vCPU fd of its
 * own (which audit_shared_fds() proves private), so a kvm_run page left
 * over from the parent would be one too many.
 */
guint audit_shared_mappings(pid_t parent, pid_t child)
{
    g_autoptr(GPtrArray) pm = shared_mappings(parent);
    g_autoptr(GPtrArray) cm = shared_mappings(child);
    GArray *cfds = audit_list_fds(child);
    guint common = 0, vcpu_fds = 0, vcpu_maps;

    for (guint i = 0; i < cm->len; i++) {
        const char *m = cm->pdata[i];

        if (strstr(m, " anon_inode:")) {
            continue;
        }
        for (guint j = 0; j < pm->len; j++) {
            if (g_str_equal(m, pm->pdata[j])) {
                g_test_message("shared mapping in common: %s", m);
                common++;
            }
        }
    }
    for (guint i = 0; i < cfds->len; i++) {
        vcpu_fds += g_str_has_prefix(g_array_index(cfds, FdEntry, i).target,
                                     "anon_inode:kvm-vcpu:");
    }
    audit_free_fds(cfds);
    vcpu_maps = count_matching(cm, " anon_inode:kvm-vcpu:");
    g_test_message("mapping audit: parent %u, child %u MAP_SHARED mappings; "
                   "the child maps %u kvm_run pages for %u vCPU fds",
                   pm->len, cm->len, vcpu_maps, vcpu_fds);
    if (vcpu_maps != vcpu_fds) {
        g_test_message("a kvm_run page of the parent is still mapped");
        common++;
    }
    return common;
}

static bool stop_if_running(Vm *vm)
{
    g_autofree char *state = vm_runstate(vm);

    if (!g_str_equal(state, "running")) {
        return false;
    }
    json_node_unref(vm_qmp(vm, "stop", NULL));
    return true;
}

guint audit_vm_pair(Vm *parent, Vm *child)
{
    bool ran_p = stop_if_running(parent), ran_c = stop_if_running(child);
    guint allowed;

    g_test_message("audit of child %d against parent %d", child->pid,
                   parent->pid);
    g_assert_cmpuint(audit_shared_fds(parent->pid, child->pid, &allowed),
                     ==, 0);
    g_assert_cmpuint(audit_shared_mappings(parent->pid, child->pid),
                     ==, 0);
    if (ran_p) {
        json_node_unref(vm_qmp(parent, "cont", NULL));
    }
    if (ran_c) {
        json_node_unref(vm_qmp(child, "cont", NULL));
    }
    return allowed;
}
