/*
 * vmfork: clone a running VM by forking the QEMU process
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The parent's side: the QMP commands, the core sequence around fork()
 * and the bookkeeping of the children (events, reaping).  The core knows
 * no subsystem by name: what each one does to fork is in its fork handler
 * (handler.h), and what no handler claims is refused (fdclaim.c).  The
 * child's side is in child.c.
 */

#include "qemu/osdep.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "qapi/error.h"
#include "qapi/qapi-commands-vmfork.h"
#include "qapi/qapi-events-vmfork.h"
#include "qapi/qapi-visit-sockets.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-visit-vmfork.h"
#include "qapi/qobject-input-visitor.h"
#include "qapi/visitor.h"
#include "qemu/config-file.h"
#include "qemu/error-report.h"
#include "qemu/option.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/job.h"
#include "qom/object.h"
#include "qom/qom-qobject.h"
#include "qobject/qobject.h"
#include "block/block-global-state.h"
#include "chardev/char.h"
#include "chardev/char-fe.h"
#include "exec/cpu-common.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "monitor/monitor.h"
#include "monitor/monitor-internal.h"
#include "system/replay.h"
#include "system/runstate.h"
#include "system/system.h"
#include "system/vmfork.h"
#include "vmfork-internal.h"
#include "trace.h"

#define VMFORK_MAX_COUNT 256

typedef struct VmforkChildRecord {
    pid_t pid;
    int64_t clone_id;
    char *monitor;
    VmforkChardevList *chardevs;
    int pidfd;                  /* readable once the child has exited */
    int status_fd;              /* the child's messages, see STATUS_* */
    bool exited;
    int exit_status;
    char *reason;               /* why it failed, as it said */
    QTAILQ_ENTRY(VmforkChildRecord) next;
} VmforkChildRecord;

typedef struct VmforkState {
    int64_t clone_id;           /* 0: not a clone */
    int64_t generation;
    pid_t parent_pid;           /* 0: not a clone */
    bool in_child;
    QTAILQ_HEAD(, VmforkChildRecord) children;
    /* In a clone: the first of each ancestor's records (forget_children) */
    GSList *parents_children;
    GSList *blockers;           /* Error * reasons, see vmfork_add_blocker() */
    GArray *ancestors;          /* of pid_t: the QEMUs this one comes from */
} VmforkState;

static VmforkState vmfork_state = {
    .children = QTAILQ_HEAD_INITIALIZER(vmfork_state.children),
};

bool vmfork_in_child(void)
{
    return vmfork_state.in_child;
}

int64_t vmfork_clone_id(void)
{
    return vmfork_state.clone_id;
}

void vmfork_identity_migrated(int64_t clone_id, int64_t generation)
{
    vmfork_state.clone_id = clone_id;
    vmfork_state.generation = generation;
    vmfork_identity_set(clone_id, generation);
}

bool vmfork_pid_is_ours(pid_t pid)
{
    if (pid == getpid()) {
        return true;
    }
    for (guint i = 0; vmfork_state.ancestors &&
                      i < vmfork_state.ancestors->len; i++) {
        if (g_array_index(vmfork_state.ancestors, pid_t, i) == pid) {
            return true;
        }
    }
    return false;
}

char **vmfork_read_lines(const char *path)
{
    g_autofree char *text = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return NULL;
    }
    return g_strsplit(text, "\n", -1);
}

void vmfork_add_blocker(Error *reason)
{
    vmfork_state.blockers = g_slist_prepend(vmfork_state.blockers, reason);
}

void vmfork_del_blocker(Error *reason)
{
    vmfork_state.blockers = g_slist_remove(vmfork_state.blockers, reason);
}

char *vmfork_expand_template(const char *tmpl, int index, pid_t pid,
                             Error **errp)
{
    g_autoptr(GString) s = g_string_new(NULL);

    for (const char *p = tmpl; *p; p++) {
        if (*p != '%') {
            g_string_append_c(s, *p);
            continue;
        }
        switch (*++p) {
        case 'i':
            g_string_append_printf(s, "%d", index);
            break;
        case 'p':
            g_string_append_printf(s, "%d", (int)pid);
            break;
        case '%':
            g_string_append_c(s, '%');
            break;
        default:
            error_setg(errp, "vmfork: '%%%s' in template '%s' is not one of "
                       "%%i (child index), %%p (child pid), %%%%",
                       *p ? (char[]){ *p, 0 } : "", tmpl);
            return NULL;
        }
        if (!*p) {
            break;
        }
    }
    return g_string_free(g_steal_pointer(&s), false);
}

/* ---- Children of this VM ---------------------------------------------- */

/* A child just forked, until its record is made */
typedef struct VmforkForked {
    pid_t pid;
    int status_fd;              /* the read end of its status pipe */
} VmforkForked;

/*
 * What a child writes on its status pipe: STATUS_SET_UP once it has
 * re-created what it cannot share (the command waits for that), then
 * STATUS_READY once its monitor listens; or, instead of either,
 * STATUS_FAILED followed by its error message, before it exits.
 */
#define STATUS_SET_UP   'S'
#define STATUS_READY    'R'
#define STATUS_FAILED   'E'

static int child_status_fd = -1;       /* in a child: to its parent */

/* Its fds and their handlers go; the record itself is not written */
static void vmfork_child_record_close(const VmforkChildRecord *c)
{
    if (c->status_fd >= 0) {
        qemu_set_fd_handler(c->status_fd, NULL, NULL, NULL);
        close(c->status_fd);
    }
    if (c->pidfd >= 0) {
        qemu_set_fd_handler(c->pidfd, NULL, NULL, NULL);
        close(c->pidfd);
    }
}

static void vmfork_child_record_free(VmforkChildRecord *c)
{
    vmfork_child_record_close(c);
    qapi_free_VmforkChardevList(c->chardevs);
    g_free(c->monitor);
    g_free(c->reason);
    g_free(c);
}

/*
 * After STATUS_FAILED: the child's reason, @len bytes of it already read
 * at @start, the rest up to end of file (the child exits once it is sent)
 */
static void vmfork_child_read_reason(VmforkChildRecord *c, const char *start,
                                     size_t len)
{
    GString *reason = g_string_new_len(start, len);
    char buf[512];
    ssize_t n;

    while ((n = read(c->status_fd, buf, sizeof(buf))) > 0 ||
           (n < 0 && errno == EINTR)) {
        g_string_append_len(reason, buf, MAX(n, 0));
    }
    g_free(c->reason);
    c->reason = g_string_free(reason, false);
}

/* Read and act on what the child said; false once it has nothing more */
static bool vmfork_child_status_take(VmforkChildRecord *c)
{
    char buf[4096];
    ssize_t n = read(c->status_fd, buf, sizeof(buf));

    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return true;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == STATUS_READY) {
            trace_vmfork_child_ready(c->pid, c->clone_id);
            qapi_event_send_vmfork_child_ready(c->pid, c->clone_id,
                                               c->monitor);
        } else if (buf[i] == STATUS_FAILED) {
            vmfork_child_read_reason(c, buf + i + 1, n - i - 1);
            return false;       /* end of file was reached */
        }
    }
    return n > 0;
}

static void vmfork_child_status_read(void *opaque)
{
    VmforkChildRecord *c = opaque;

    if (!vmfork_child_status_take(c)) {
        /* end of file: the child exits (see its pidfd) */
        qemu_set_fd_handler(c->status_fd, NULL, NULL, NULL);
        close(c->status_fd);
        c->status_fd = -1;
    }
}

static void remove_if_socket(const char *path)
{
    struct stat st;

    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
}

/*
 * A child that was killed could not remove its sockets, its monitor's
 * and its chardevs': the parent that named the paths removes them (a
 * child that quits removes its own).  A chardev's file is its output,
 * and stays.
 */
static void vmfork_child_remove_sockets(VmforkChildRecord *c)
{
    remove_if_socket(c->monitor);
    for (VmforkChardevList *l = c->chardevs; l; l = l->next) {
        remove_if_socket(l->value->path);
    }
}

/*
 * A template that serves clones for months (vmfork pool) would otherwise
 * keep a record of every child it ever had: query-vmfork lists the running
 * children and the last VMFORK_EXITED_KEPT that exited.  The oldest go
 * first; children of a command that is still running are the newest.
 */
#define VMFORK_EXITED_KEPT 256

static void vmfork_forget_old_exited(void)
{
    VmforkChildRecord *c, *tmp;
    guint exited = 0;

    QTAILQ_FOREACH(c, &vmfork_state.children, next) {
        exited += c->exited;
    }
    QTAILQ_FOREACH_SAFE(c, &vmfork_state.children, next, tmp) {
        if (exited <= VMFORK_EXITED_KEPT) {
            break;
        }
        if (c->exited) {
            QTAILQ_REMOVE(&vmfork_state.children, c, next);
            vmfork_child_record_free(c);
            exited--;
        }
    }
}

static void vmfork_child_exit_read(void *opaque)
{
    VmforkChildRecord *c = opaque;
    int wstatus;
    pid_t r = waitpid(c->pid, &wstatus, WNOHANG);

    if (r == 0 || (r < 0 && errno == EINTR)) {
        return;
    }
    /* What is still in the pipe (ready, or why it failed) comes first */
    while (c->status_fd >= 0) {
        vmfork_child_status_read(c);
    }
    qemu_set_fd_handler(c->pidfd, NULL, NULL, NULL);
    close(c->pidfd);
    c->pidfd = -1;
    c->exited = true;
    if (r < 0) {
        c->exit_status = 255;
    } else if (WIFSIGNALED(wstatus)) {
        c->exit_status = 128 + WTERMSIG(wstatus);
    } else {
        c->exit_status = WEXITSTATUS(wstatus);
    }
    if (WIFSIGNALED(wstatus)) {
        vmfork_child_remove_sockets(c);
    }
    trace_vmfork_child_exited(c->pid, c->exit_status);
    qapi_event_send_vmfork_child_exited(c->pid, c->clone_id, c->exit_status,
                                        c->reason);
    vmfork_forget_old_exited();
}

static VmforkChildRecord *vmfork_child_record_new(const VmforkChild *vc,
                                                  int status_fd)
{
    VmforkChildRecord *c = g_new0(VmforkChildRecord, 1);

    c->pid = vc->pid;
    c->clone_id = vc->clone_id;
    c->monitor = g_strdup(vc->monitor);
    c->chardevs = QAPI_CLONE(VmforkChardevList, vc->chardevs);
    c->status_fd = status_fd;
    c->pidfd = syscall(SYS_pidfd_open, vc->pid, 0);
    QTAILQ_INSERT_TAIL(&vmfork_state.children, c, next);
    return c;
}

/* Watch the child from the main loop: its messages, and its exit */
static void vmfork_child_record_watch(VmforkChildRecord *c)
{
    if (c->status_fd >= 0) {
        qemu_set_fd_handler(c->status_fd, vmfork_child_status_read, NULL, c);
    }
    if (c->pidfd >= 0) {
        qemu_set_fd_handler(c->pidfd, vmfork_child_exit_read, NULL, c);
    }
}

/*
 * In the child: the parent's children are not ours.  Their fds go (which
 * only drops this process's reference), their records stay as they are:
 * freeing them would write to pages that the child shares with its
 * parent, a copy-on-write fault each before the child's guest runs, for
 * up to VMFORK_EXITED_KEPT records and the running ones.  Left linked
 * as they are, they cost nothing.
 */
static void vmfork_forget_children(void)
{
    VmforkChildRecord *c;

    QTAILQ_FOREACH(c, &vmfork_state.children, next) {
        vmfork_child_record_close(c);
    }
    if (!QTAILQ_EMPTY(&vmfork_state.children)) {
        vmfork_state.parents_children =
            g_slist_prepend(vmfork_state.parents_children,
                            QTAILQ_FIRST(&vmfork_state.children));
        QTAILQ_INIT(&vmfork_state.children);
    }
}

VmforkInfo *qmp_query_vmfork(Error **errp)
{
    VmforkInfo *info = g_new0(VmforkInfo, 1);
    VmforkChildInfoList **tail = &info->children;
    VmforkChildRecord *c;

    info->clone_id = vmfork_state.clone_id;
    info->generation = vmfork_state.generation;
    info->parent_pid = vmfork_state.parent_pid;
    QTAILQ_FOREACH(c, &vmfork_state.children, next) {
        VmforkChildInfo *ci = g_new0(VmforkChildInfo, 1);

        ci->pid = c->pid;
        ci->monitor = g_strdup(c->monitor);
        ci->clone_id = c->clone_id;
        ci->chardevs = QAPI_CLONE(VmforkChardevList, c->chardevs);
        ci->state = c->exited ? VMFORK_CHILD_STATE_EXITED
                              : VMFORK_CHILD_STATE_RUNNING;
        ci->has_exit_status = c->exited;
        ci->exit_status = c->exit_status;
        ci->reason = g_strdup(c->reason);
        QAPI_LIST_APPEND(tail, ci);
    }
    return info;
}

/* ---- Checks: what cannot be forked is refused before anything happens - */

#ifdef CONFIG_SECCOMP
/* -sandbox spawn=deny (libvirt's default) makes fork() fail with EPERM */
static int check_sandbox(void *opaque, QemuOpts *opts, Error **errp)
{
    if (qemu_opt_get_bool(opts, "enable", false) &&
        !g_strcmp0(qemu_opt_get(opts, "spawn"), "deny")) {
        vmfork_check_refuse(opaque, "the seccomp sandbox denies fork() "
                            "(-sandbox spawn=deny, which libvirt sets "
                            "unless seccomp_sandbox = 0 in qemu.conf)");
    }
    return 0;
}
#endif

/*
 * Everything that refuses the fork, in one error before any side effect:
 * the state of the VM, the blockers that devices registered, each fork
 * handler's check, and the fd safety net.
 */
static bool vmfork_check(const VmforkRequest *req, Error **errp)
{
    g_autoptr(GString) why = g_string_new(NULL);
    g_autoptr(GHashTable) fd_owner = g_hash_table_new_full(NULL, NULL, NULL,
                                                           g_free);
    g_autoptr(GHashTable) fd_target = vmfork_fd_targets(errp);
    VmforkCheck chk = {
        .req = req, .why = why, .fd_owner = fd_owner, .fd_target = fd_target,
    };
    RunState state = runstate_get();
    VmforkChildRecord *c;

    if (!fd_target) {
        return false;
    }
    for (GSList *l = vmfork_state.blockers; l; l = l->next) {
        vmfork_check_refuse(&chk, "%s", error_get_pretty(l->data));
    }
    if (state != RUN_STATE_RUNNING && state != RUN_STATE_PAUSED) {
        vmfork_check_refuse(&chk, "the VM is in state '%s' (it must be "
                            "running or paused)", RunState_str(state));
    }
    if (migration_is_running()) {
        vmfork_check_refuse(&chk, "a migration is in progress");
    }
    WITH_JOB_LOCK_GUARD() {
        Job *job = job_next_locked(NULL);

        if (job) {
            vmfork_check_refuse(&chk, "job '%s' is running",
                                job->id ? job->id : "");
        }
    }
    if (replay_mode != REPLAY_MODE_NONE) {
        vmfork_check_refuse(&chk, "record/replay is active");
    }
#ifdef CONFIG_SECCOMP
    if (qemu_find_opts_err("sandbox", NULL)) {
        qemu_opts_foreach(qemu_find_opts("sandbox"), check_sandbox, &chk,
                          NULL);
    }
#endif
    vmfork_fd_claim_detached(&chk);
    /* Our own: the children's exit and status fds */
    QTAILQ_FOREACH(c, &vmfork_state.children, next) {
        vmfork_check_claim_fd(&chk, c->pidfd, "vmfork");
        vmfork_check_claim_fd(&chk, c->status_fd, "vmfork");
    }

    vmfork_placement_check(&req->placement, &chk);
    vmfork_handlers_check(&chk);
    vmfork_fd_safety_net(&chk);

    if (why->len) {
        error_setg(errp, "vmfork: this VM cannot be forked: %s", why->str);
        return false;
    }
    return true;
}

/* The path of the unix socket of the monitor running this command */
static char *monitor_socket_path(void)
{
    Monitor *mon = monitor_cur();
    Chardev *chr = mon ? qemu_chr_fe_get_driver(&mon->chr) : NULL;
    g_autoptr(SocketAddress) addr = NULL;
    QObject *qobj;
    Visitor *v;

    if (!chr || !object_dynamic_cast(OBJECT(chr), TYPE_CHARDEV_SOCKET)) {
        return NULL;
    }
    qobj = object_property_get_qobject(OBJECT(chr), "addr", NULL);
    if (!qobj) {
        return NULL;
    }
    v = qobject_input_visitor_new(qobj);
    visit_type_SocketAddress(v, NULL, &addr, NULL);
    visit_free(v);
    qobject_unref(qobj);
    if (!addr || addr->type != SOCKET_ADDRESS_TYPE_UNIX ||
        (addr->u.q_unix.has_abstract && addr->u.q_unix.abstract)) {
        return NULL;
    }
    return g_strdup(addr->u.q_unix.path);
}

/* The default of @monitor: the calling monitor's socket path + ".fork-%p" */
static char *default_monitor_template(void)
{
    g_autofree char *path = monitor_socket_path();

    return path ? g_strconcat(path, ".fork-%p", NULL) : NULL;
}

/* With several children, a template must give each its own path */
bool vmfork_check_template_per_child(const char *what, const char *tmpl,
                                     int count, Error **errp)
{
    if (count > 1 && !strstr(tmpl, "%i") && !strstr(tmpl, "%p")) {
        error_setg(errp, "vmfork: with count > 1, the %s template "
                   "needs %%i or %%p", what);
        return false;
    }
    return true;
}

/*
 * Child @index's path from a template, at its longest (PID_MAX_LIMIT is
 * 2^22), in a directory where we can create @kind (sockets, files)
 */
static char *child_path_checked(const char *what, const char *kind,
                                const char *tmpl, int index, Error **errp)
{
    g_autofree char *path = vmfork_expand_template(tmpl, index, 4194304,
                                                   errp);
    g_autofree char *dir = NULL;

    if (!path) {
        return NULL;
    }
    dir = g_path_get_dirname(path);
    if (access(dir, W_OK | X_OK) < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot create %s %s in '%s'",
                         what, kind, dir);
        return NULL;
    }
    return g_steal_pointer(&path);
}

/* A child's socket path: not in use, and short enough for sun_path */
bool vmfork_check_socket_template(const char *what, const char *tmpl,
                                  int count, Error **errp)
{
    struct sockaddr_un sun;

    if (!vmfork_check_template_per_child(what, tmpl, count, errp)) {
        return false;
    }
    for (int i = 0; i < count; i++) {
        g_autofree char *path = child_path_checked(what, "sockets", tmpl, i,
                                                   errp);

        if (!path) {
            return false;
        }
        if (strlen(path) >= sizeof(sun.sun_path)) {
            error_setg(errp, "vmfork: %s path '%s' is longer than a unix "
                       "socket path can be (%zu bytes)", what, path,
                       sizeof(sun.sun_path) - 1);
            return false;
        }
        if (!strstr(tmpl, "%p") && access(path, F_OK) == 0) {
            error_setg(errp, "vmfork: %s path '%s' exists; a child would "
                       "replace it", what, path);
            return false;
        }
    }
    return true;
}

static void vmfork_request_free(VmforkRequest *req)
{
    g_free(req->monitor_tmpl);
    g_free(req->serial_tmpl);
    g_free(req->overlay_dir);
    vmfork_taps_free(req);
    g_clear_pointer(&req->chardev_tmpls, g_hash_table_unref);
    g_clear_pointer(&req->chardev_log_tmpls, g_hash_table_unref);
    vmfork_placement_free(&req->placement);
}

/*
 * The children's serial files: each a file that can be created, not a
 * directory (a child that could not open its file would exit at once)
 */
bool vmfork_check_file_template(const char *what, const char *tmpl,
                                int count, Error **errp)
{
    if (!vmfork_check_template_per_child(what, tmpl, count, errp)) {
        return false;
    }
    for (int i = 0; i < count; i++) {
        g_autofree char *path = child_path_checked(what, "files", tmpl, i,
                                                   errp);

        if (!path) {
            return false;
        }
        if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
            error_setg(errp, "vmfork: %s path '%s' is a directory", what,
                       path);
            return false;
        }
    }
    return true;
}

static bool vmfork_parse_request(VmforkRequest *req, const VmforkArgs *args,
                                 Error **errp)
{
    const char *monitor = args->monitor, *serial = args->serial;

    req->count = args->has_count ? args->count : 1;
    if (args->has_count &&
        (args->count < 1 || args->count > VMFORK_MAX_COUNT)) {
        error_setg(errp, "vmfork: count must be between 1 and %d",
                   VMFORK_MAX_COUNT);
        return false;
    }
    req->start = args->has_start ? args->start : true;
    req->parent_stays_paused = args->has_parent &&
                               args->parent == VMFORK_PARENT_STATE_PAUSED;
    if (monitor) {
        if (!*monitor) {
            error_setg(errp, "vmfork: monitor must not be empty");
            return false;
        }
        req->monitor_tmpl = g_strdup(monitor);
    } else {
        req->monitor_tmpl = default_monitor_template();
        if (!req->monitor_tmpl) {
            error_setg(errp, "vmfork: the monitor running this command is "
                       "not a unix socket, so there is no default for the "
                       "children's monitors; pass 'monitor'");
            return false;
        }
    }
    if (!vmfork_check_socket_template("monitor", req->monitor_tmpl,
                                      req->count, errp)) {
        return false;
    }
    if (args->has_hostfwd_offset) {
        if (args->hostfwd_offset < -65535 || args->hostfwd_offset > 65535) {
            error_setg(errp, "vmfork: hostfwd-offset must be between "
                       "-65535 and 65535");
            return false;
        }
        req->hostfwd_offset = args->hostfwd_offset;
    }
    if (args->overlay_dir) {
        if (!g_file_test(args->overlay_dir, G_FILE_TEST_IS_DIR)) {
            error_setg(errp, "vmfork: overlay-dir '%s' is not a directory",
                       args->overlay_dir);
            return false;
        }
        if (access(args->overlay_dir, W_OK | X_OK) < 0) {
            error_setg_errno(errp, errno, "vmfork: cannot create overlays "
                             "in '%s'", args->overlay_dir);
            return false;
        }
        req->overlay_dir = g_strdup(args->overlay_dir);
    }
    if (serial) {
        g_autofree char *path = vmfork_expand_template(serial, 0, 1, errp);

        if (!path) {
            return false;
        }
        if (!serial_hd(0)) {
            error_setg(errp, "vmfork: serial given, but the VM has no "
                       "serial port");
            return false;
        }
        if (!vmfork_check_file_template("serial", serial, req->count,
                                        errp)) {
            return false;
        }
        req->serial_tmpl = g_strdup(serial);
    }
    return vmfork_chardevs_parse(req, args->chardevs, errp) &&
           vmfork_taps_parse(req, args->taps, errp);
}

/*
 * For the forks that a guest asks for (guest.c): check @args as vmfork
 * would, now, and fill in the default of @monitor while the monitor that
 * runs the command is known.
 */
bool vmfork_args_check(VmforkArgs *args, Error **errp)
{
    VmforkRequest req = { 0 };
    bool ok;

    if (!args->monitor) {
        args->monitor = default_monitor_template();
    }
    ok = vmfork_parse_request(&req, args, errp);
    vmfork_request_free(&req);
    return ok;
}

/* ---- The fork --------------------------------------------------------- */

/*
 * Guest RAM is MADV_DONTFORK (physmem.c), so that QEMU's helper processes
 * (tap scripts, exec: migration) do not copy its page tables.  For vmfork
 * the child must inherit it, copy-on-write.
 */
static int ram_block_set_fork(RAMBlock *rb, void *opaque)
{
    int advice = *(int *)opaque;
    void *host = qemu_ram_get_host_addr(rb);

    if (host) {
        madvise(host, qemu_ram_get_max_length(rb), advice);
    }
    return 0;
}

static void ram_set_fork(int advice)
{
    qemu_ram_foreach_block(ram_block_set_fork, &advice);
}

/*
 * fork() copies a page-table entry for each resident page of the heap.
 * Half of a freshly started QEMU's heap is free memory that its start-up
 * left behind (9 MiB resident, 4 MiB once trimmed: 1200 entries fewer, in
 * every fork of this process).  Trimming takes 0.1 ms, too much for each
 * fork, so a process does it once, before its first.
 */
static void vmfork_trim_heap(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/*
 * A child's first new thread takes one of the stacks that its parent's
 * threads left it (glibc keeps them as cached stacks), and glibc
 * initialises a cached stack's TLS through a call into the dynamic linker
 * (_dl_allocate_tls_init()) that is bound lazily.  A parent that never
 * reused a stack has not bound it yet, so each child looked the symbol up
 * in every loaded library: about 15 page faults of its set-up, on library
 * pages that fork() does not map.  A process binds it once, before its
 * first fork, by starting a thread twice (the second on the first's
 * stack).
 */
static void *vmfork_no_work(void *opaque)
{
    return NULL;
}

static void vmfork_bind_stack_reuse(void)
{
    sigset_t all, old;
    pthread_t t;

    /* As qemu_thread_create(), but a failure only leaves it to the child */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&t, NULL, vmfork_no_work, NULL) == 0) {
            pthread_join(t, NULL);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* What a process does once, before its first fork (see each step) */
static void vmfork_before_first_fork(void)
{
    static bool done;

    if (!done) {
        done = true;
        vmfork_trim_heap();
        vmfork_bind_stack_reuse();
    }
}

/*
 * A child shares its parent's heap and thread arenas copy-on-write, so
 * each page that its malloc() writes becomes a page of its own.  glibc
 * keeps freed chunks of up to 128 bytes unmerged in "fastbins", and an
 * arena's next request for a large chunk merges them all first
 * (malloc_consolidate()), writing to each.  In a child that happens once
 * in its main thread and once in each thread it re-creates, which takes
 * over an arena that one of the parent's threads filled: about 25 pages a
 * Linux child, 100 KiB of its 1.3 MiB (a script reading its smaps and
 * minflt 1 s after the fork).  Without fastbins a small chunk is merged
 * when it is freed, as larger ones always are; each thread's tcache still
 * takes the small frees first.  This runs before main(), while QEMU has
 * allocated next to nothing.  A glibc.malloc.mxfast tunable that the user
 * set in GLIBC_TUNABLES wins.
 */
static void __attribute__((__constructor__)) vmfork_malloc_init(void)
{
#ifdef __GLIBC__
    const char *tunables = getenv("GLIBC_TUNABLES");

    if (!tunables || !strstr(tunables, "glibc.malloc.mxfast")) {
        mallopt(M_MXFAST, 0);
    }
#endif
}

/* In a child: tell the parent, and go */
static void vmfork_child_failed(Error *err)
{
    g_autofree char *msg = g_strdup_printf("%c%s", STATUS_FAILED,
                                           error_get_pretty(err));

    error_report_err(err);
    if (child_status_fd >= 0 &&
        write(child_status_fd, msg, MIN(strlen(msg), PIPE_BUF)) < 0) {
        /* the parent is gone: nobody to tell */
    }
    /* No exit notifiers or atexit handlers: they belong to the parent */
    _exit(1);
}

static void vmfork_child_tell(char what)
{
    if (write(child_status_fd, &what, 1) != 1) {
        /* The parent is gone: nobody to tell, run anyway */
    }
}

/*
 * The child's side, from fork() on.  Returns to the QMP dispatcher, whose
 * reply goes to the parent's client connection, detached.
 */
static void vmfork_in_new_child(VmforkRequest *req, int index, int gate,
                                int status, const VmforkForked *siblings)
{
    Error *err = NULL;
    char byte;

    /* The status pipes of the children forked before this one */
    for (int i = 0; i < index; i++) {
        close(siblings[i].status_fd);
    }
    child_status_fd = status;
    vmfork_state.in_child = true;
    vmfork_state.generation++;
    vmfork_state.parent_pid = getppid();
    vmfork_state.clone_id = getpid();
    vmfork_identity_set(vmfork_state.clone_id, vmfork_state.generation);
    vmfork_forget_children();
    if (!vmfork_state.ancestors) {
        vmfork_state.ancestors = g_array_new(false, false, sizeof(pid_t));
    }
    g_array_append_val(vmfork_state.ancestors, vmfork_state.parent_pid);
    ram_set_fork(MADV_DONTFORK);
    if (!vmfork_child_setup(req, index, &err) ||
        !vmfork_placement_pin_threads(&req->placement, &err)) {
        vmfork_child_failed(err);
    }
    vmfork_child_tell(STATUS_SET_UP);
    while (read(gate, &byte, 1) < 0 && errno == EINTR) {
        /* until the parent's end is closed */
    }
    close(gate);
    vmfork_placement_release(&req->placement);
    if (req->start) {
        vm_start_vcpus_first();
    }
    if (!vmfork_handlers_resumed(req, &err)) {
        vmfork_child_failed(err);
    }
    /* Until here the guest's block requests wait (handler.h) */
    bdrv_drain_all_end();
    vmfork_fault_child_phase("started");
    if (!vmfork_child_start_monitor(req, index, &err) ||
        vmfork_fault_child_fails("monitor", &err)) {
        vmfork_child_failed(err);
    }
    vmfork_child_tell(STATUS_READY);
    close(status);
    child_status_fd = -1;
}

/*
 * The command answers once every child has re-created what it cannot
 * share, or with the reason of the first that could not.  Meanwhile its
 * coroutine waits and the parent's main loop runs: its guest's timers,
 * devices and network go on (the vCPU threads alone would run guest code,
 * but serve nothing that the main loop serves), and so do its monitors,
 * whose commands wait for this one (QMP runs one at a time).
 */
#define VMFORK_SETUP_TIMEOUT_MS 30000

typedef struct VmforkSetUpWait {
    Coroutine *co;
    GPtrArray *records;         /* of VmforkChildRecord */
    guint waiting;
    VmforkChildRecord *failed;  /* the first child that could not */
    bool timed_out;
} VmforkSetUpWait;

static VmforkSetUpWait *set_up_wait;

/*
 * The wait's handlers are in the context where the command's coroutine
 * runs, which QEMU also polls while it quits (monitor_cleanup() waits for
 * the command there): the time limit holds then too
 */
static void vmfork_set_up_watch(VmforkChildRecord *c, IOHandler *read)
{
    aio_set_fd_handler(qemu_get_aio_context(), c->status_fd, read, NULL,
                       NULL, NULL, c);
}

static void vmfork_set_up_wait_end(VmforkSetUpWait *w)
{
    for (guint i = 0; i < w->records->len; i++) {
        vmfork_set_up_watch(w->records->pdata[i], NULL);
    }
    set_up_wait = NULL;
    aio_co_wake(w->co);
}

static void vmfork_set_up_read(void *opaque)
{
    VmforkChildRecord *c = opaque;
    VmforkSetUpWait *w = set_up_wait;
    char byte;
    ssize_t r = read(c->status_fd, &byte, 1);

    if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    if (r == 1 && byte == STATUS_SET_UP) {
        vmfork_set_up_watch(c, NULL);
        if (--w->waiting) {
            return;
        }
    } else {
        if (r == 1 && byte == STATUS_FAILED) {
            vmfork_child_read_reason(c, NULL, 0);
        }
        w->failed = c;
    }
    vmfork_set_up_wait_end(w);
}

static void vmfork_set_up_timeout(void *opaque)
{
    VmforkSetUpWait *w = opaque;

    w->timed_out = true;
    vmfork_set_up_wait_end(w);
}

static bool coroutine_fn vmfork_co_wait_set_up(GPtrArray *records,
                                               Error **errp)
{
    VmforkSetUpWait w = {
        .co = qemu_coroutine_self(),
        .records = records,
        .waiting = records->len,
    };
    int limit_ms = vmfork_fault_setup_ms(VMFORK_SETUP_TIMEOUT_MS);
    QEMUTimer *timer = aio_timer_new(qemu_get_aio_context(),
                                     QEMU_CLOCK_REALTIME, SCALE_MS,
                                     vmfork_set_up_timeout, &w);

    timer_mod(timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + limit_ms);
    for (guint i = 0; i < records->len; i++) {
        vmfork_set_up_watch(records->pdata[i], vmfork_set_up_read);
    }
    set_up_wait = &w;
    qemu_coroutine_yield();
    timer_free(timer);
    if (w.timed_out) {
        error_setg(errp, "vmfork: a child did not set up within %g s",
                   limit_ms / 1000.0);
        return false;
    }
    if (w.failed) {
        error_setg(errp, "vmfork: child %d failed to set up: %s",
                   (int)w.failed->pid, w.failed->reason ? w.failed->reason :
                   "it ended without saying why (killed?)");
        return false;
    }
    return true;
}

/*
 * One vmfork command, from its coroutine (the QMP dispatcher's, or the
 * guest's request's: guest.c) to the bottom half that forks and back
 */
typedef struct VmforkCommand {
    const VmforkArgs *args;
    Coroutine *co;
    Monitor *mon;               /* the one running the command, or NULL */
    VmforkRequest req;
    VmforkResult *result;
    GPtrArray *records;         /* of this command's children */
    bool prepared;              /* the handlers must hear of an abort */
    bool ok;                    /* forked; the children still set up */
    bool in_child;
    Error *err;
} VmforkCommand;

/* The command that runs now, if one does: one at a time */
static VmforkCommand *vmfork_command;

bool vmfork_command_running(void)
{
    return vmfork_command != NULL;
}

/*
 * The fork, outside coroutine context, as a command without a coroutine
 * would run: nothing in it may yield (a drain, a block graph change), and
 * the main loop does not run between the guest's stop and the end of the
 * drained section.  Returns false after an error that left no child.
 */
static bool vmfork_fork(VmforkCommand *cmd, Error **errp)
{
    VmforkRequest *req = &cmd->req;
    VmforkChildList **tail = &cmd->result->children;
    g_autofree VmforkForked *forked = NULL;
    int64_t t0 = g_get_monotonic_time(), t_stop;
    int gate[2] = { -1, -1 };
    bool ok, resumed_ok;
    int i = 0;

    req->was_running = runstate_is_running();
    if (!vmfork_parse_request(req, cmd->args, errp)) {
        return false;
    }
    vmfork_placement_record(&req->placement);
    if (!vmfork_check(req, errp)) {
        return false;
    }
    cmd->prepared = true;
    if (!vmfork_handlers_prepare(req, errp)) {
        return false;
    }
    trace_vmfork_start(req->count, req->start, req->parent_stays_paused);

    /* 1. Guest RAM must be inherited; nothing buffered may be written twice */
    forked = g_new(VmforkForked, req->count);
    ram_set_fork(MADV_DOFORK);
    fflush(NULL);
    vmfork_before_first_fork();

    /*
     * 2. The guest's pause: vCPUs stopped, block I/O drained (IOThreads
     * still run: a disk on an IOThread drains in it), then the handlers'
     * last steps before fork(), the IOThreads' stop among them.
     */
    t_stop = g_get_monotonic_time();
    if (req->was_running) {
        global_state_store();
        vm_stop(RUN_STATE_PAUSED);
    }
    bdrv_drain_all_begin();
    if (!vmfork_handlers_paused(req, errp)) {
        goto resume;
    }
    vmfork_placement_prepare(&req->placement,
                             req->was_running && !req->parent_stays_paused,
                             req->count);
    trace_vmfork_parent_paused(g_get_monotonic_time() - t0);

    /*
     * The children's guests start together, once the last one is forked:
     * each waits for end of file on this pipe, which comes when the parent
     * closes its end after the loop (or dies).  Otherwise the guests of
     * the first children would take the CPUs from the forks of the others.
     */
    if (pipe2(gate, O_CLOEXEC) < 0) {
        error_setg_errno(errp, errno, "vmfork: pipe2() failed");
        goto resume;
    }

    for (i = 0; i < req->count; i++) {
        int status[2];
        pid_t pid;

        if (pipe2(status, O_CLOEXEC) < 0) {
            error_setg_errno(errp, errno, "vmfork: pipe2() failed");
            break;
        }
        rcu_enable_atfork();
        pid = vmfork_fault_fork_fails(i) ? -1 : fork();
        rcu_disable_atfork();
        if (pid < 0) {
            error_setg_errno(errp, errno, "vmfork: fork() failed");
            error_append_hint(errp, "A seccomp sandbox with spawn=deny, "
                              "RLIMIT_NPROC or a memory limit can make "
                              "fork() fail.\n");
            close(status[0]);
            close(status[1]);
            break;
        }
        if (pid == 0) {
            close(gate[1]);
            close(status[0]);
            vmfork_in_new_child(req, i, gate[0], status[1], forked);
            cmd->in_child = true;
            return true;
        }
        vmfork_placement_forked(&req->placement, pid);
        close(status[1]);
        forked[i] = (VmforkForked) { .pid = pid, .status_fd = status[0] };
        trace_vmfork_parent_forked(i, pid, g_get_monotonic_time() - t0);
    }

resume:
    /*
     * 3. The children start; the parent goes on: the handlers' parent
     * phases, its guest, then what can wait until the guest runs (the
     * resumed phases: its disks' new layers among them), and only then
     * the end of the drained section, so that no request of its guest
     * reaches a disk before that disk has its new layer
     */
    if (gate[0] >= 0) {
        close(gate[1]);
        close(gate[0]);
    }
    ok = i == req->count && vmfork_handlers_parent(req, errp);
    if (!ok) {
        vmfork_handlers_abort(req);
    }
    trace_vmfork_parent_phase("handlers", g_get_monotonic_time() - t0);
    /* After an error the parent runs as before, template or not */
    if (req->was_running && (!req->parent_stays_paused || !ok)) {
        vm_start_vcpus_first();
    }
    trace_vmfork_parent_resumed(g_get_monotonic_time() - t_stop);
    ram_set_fork(MADV_DONTFORK);
    resumed_ok = vmfork_handlers_resumed(req, ok ? errp : NULL);
    /* Until here the guest's block requests wait (handler.h) */
    bdrv_drain_all_end();
    trace_vmfork_parent_phase("drain-end", g_get_monotonic_time() - t0);
    if (ok && !resumed_ok && req->was_running && req->parent_stays_paused) {
        vm_start();     /* as after any error: the parent runs as before */
    }

    /*
     * What the command answers and the records of the children, made once
     * the guest runs: each page that the parent writes after fork() is a
     * copy-on-write fault (handler.h)
     */
    for (int j = 0; j < i; j++) {
        VmforkChild *vc = g_new0(VmforkChild, 1);

        vc->pid = forked[j].pid;
        vc->monitor = vmfork_expand_template(req->monitor_tmpl, j, vc->pid,
                                             &error_abort);
        vc->clone_id = vc->pid;
        vmfork_handlers_child_info(req, j, vc);
        QAPI_LIST_APPEND(tail, vc);
        g_ptr_array_add(cmd->records,
                        vmfork_child_record_new(vc, forked[j].status_fd));
    }
    if (ok) {
        vmfork_handlers_done(req);
    }

    /*
     * Only now can its guest run: a vCPU thread that the VM start woke up
     * takes the BQL to leave its wait, and the command lets the BQL go
     * when it leaves the main loop to run while it waits for the children
     */
    trace_vmfork_parent_unlocked(g_get_monotonic_time() - t_stop);
    cmd->ok = ok && resumed_ok;
    return true;
}

static void vmfork_fork_bh(void *opaque)
{
    VmforkCommand *cmd = opaque;
    Monitor *old = monitor_set_cur(qemu_coroutine_self(), cmd->mon);
    Error *err = NULL;

    if (!vmfork_fork(cmd, &err) && cmd->prepared) {
        vmfork_handlers_abort(&cmd->req);
    }
    error_propagate(&cmd->err, err);
    monitor_set_cur(qemu_coroutine_self(), old);
    aio_co_wake(cmd->co);
}

/*
 * The parent's end of a command that forked: the wait for the children,
 * then their watch; false (and cmd->err) if one could not set up, after
 * which none of them is left
 */
static bool coroutine_fn vmfork_co_parent_end(VmforkCommand *cmd)
{
    bool ok = cmd->ok && !cmd->err &&
              vmfork_co_wait_set_up(cmd->records, &cmd->err);

    for (guint j = 0; j < cmd->records->len; j++) {
        VmforkChildRecord *c = cmd->records->pdata[j];

        /* Not half-forked: on error the children made so far go */
        if (!ok) {
            kill(c->pid, SIGKILL);
        }
        vmfork_child_record_watch(c);
    }
    if (ok && !vmfork_identity_has_vmgenid()) {
        cmd->result->warning = g_strdup("the VM has no vmgenid device, so "
                                        "the children share the parent's "
                                        "guest RNG state (add -device "
                                        "vmgenid)");
    }
    return ok;
}

VmforkResult *coroutine_fn qmp_vmfork(VmforkArgs *args, Error **errp)
{
    g_autoptr(GPtrArray) records = g_ptr_array_new();
    VmforkCommand cmd = {
        .args = args,
        .co = qemu_coroutine_self(),
        .mon = monitor_cur(),
        .result = g_new0(VmforkResult, 1),
        .records = records,
    };
    bool ok;

    if (vmfork_command) {
        error_setg(errp, "vmfork: another vmfork command is still waiting "
                   "for its children");
        qapi_free_VmforkResult(cmd.result);
        return NULL;
    }
    vmfork_command = &cmd;
    aio_bh_schedule_oneshot(iohandler_get_aio_context(), vmfork_fork_bh,
                            &cmd);
    qemu_coroutine_yield();
    /* A new child's reply goes to the parent's client connection, detached */
    ok = cmd.in_child || vmfork_co_parent_end(&cmd);
    vmfork_request_free(&cmd.req);
    vmfork_command = NULL;
    vmfork_guest_command_done();
    if (!ok) {
        error_propagate(errp, cmd.err);
        qapi_free_VmforkResult(cmd.result);
        return NULL;
    }
    return cmd.result;
}
