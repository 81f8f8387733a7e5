/*
 * vmfork: QEMU's log (-D)
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A log that goes to a file (-D PATH with -d or -trace) is the parent's
 * to write on; each child writes PATH.fork-PID from its first steps on,
 * as a file chardev's child does (chardev.c).  A log on stderr stays
 * there, with the rest of the child's stderr.  Per-thread files (-d tid)
 * are refused: each thread opened its own, and a child's threads are new.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/log.h"
#include "qemu/module.h"
#include "vmfork-internal.h"

/* Whether @path, the log file's fd read back, can name a child's log */
static bool log_path_ok(const char *path, Error **errp)
{
    /* A '%' would be a template to qemu_set_log_filename() */
    if (path[0] != '/' || g_str_has_suffix(path, " (deleted)") ||
        strchr(path, '%')) {
        error_setg(errp, "the log file %s (-D) has no name that a child's "
                   "log could be named after", path);
        return false;
    }
    return true;
}

static void log_check(VmforkCheck *chk)
{
    int fd = qemu_log_file_fd();
    const char *path;
    Error *err = NULL;

    if (fd == -2) {
        vmfork_check_refuse(chk, "the log writes a file for each thread "
                            "(-d tid), which a child's new threads could "
                            "not take over");
        return;
    }
    if (fd < 0) {
        return;
    }
    path = g_hash_table_lookup(chk->fd_target, GINT_TO_POINTER(fd));
    if (!path) {
        vmfork_check_refuse(chk, "the log file (-D, fd %d) is not open", fd);
        return;
    }
    if (!log_path_ok(path, &err)) {
        vmfork_check_refuse(chk, "%s", error_get_pretty(err));
        error_free(err);
        return;
    }
    vmfork_check_claim_fd(chk, fd, "the log (-D %s)", path);
}

static bool log_child(VmforkRequest *req, int index, Error **errp)
{
    int fd = qemu_log_file_fd();
    g_autofree char *path = NULL, *own = NULL;
    g_autoptr(GError) err = NULL;

    if (fd < 0) {
        return true;
    }
    path = vmfork_fd_path(fd, &err);
    if (!path) {
        error_setg(errp, "vmfork: the log file (-D, fd %d) cannot be read "
                   "back: %s", fd, err->message);
        return false;
    }
    if (!log_path_ok(path, errp)) {
        return false;
    }
    /* The parent's file is closed once no thread writes to it (RCU) */
    own = g_strdup_printf("%s.fork-%d", path, (int)getpid());
    return qemu_set_log_filename(own, errp);
}

static const VmforkHandler log_handler = {
    .name = "log",
    .priority = VMFORK_PRIO_THREADS,
    .check = log_check,
    .child = log_child,
};

static void log_register(void)
{
    vmfork_register_handler(&log_handler);
}
type_init(log_register);
