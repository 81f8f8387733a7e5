/*
 * vmfork: the child's side of a fork
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Runs in the child right after fork(), in the QMP handler of the vmfork
 * command (main loop thread, BQL held, VM paused).  The child has the
 * parent's memory, but of its threads only this one, and its file
 * descriptors share their open file descriptions with the parent's.
 * Each step below gives one kind of inherited state its fork rule.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-char.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "block/block-global-state.h"
#include "chardev/char.h"
#include "chardev/char-fd.h"
#include "chardev/char-fe.h"
#include "io/channel-file.h"
#include "monitor/monitor.h"
#include "net/slirp.h"
#include "system/iothread.h"
#include "system/system.h"
#include "ui/console.h"
#include "vmfork-internal.h"
#include "trace.h"

static int64_t child_t0;

static void phase_done(const char *phase)
{
    trace_vmfork_child_phase(phase, g_get_monotonic_time() - child_t0);
    vmfork_fault_child_phase(phase);
}

/* The child must never read the parent's standard input */
static bool detach_stdin(Error **errp)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    if (fd < 0 || dup2(fd, STDIN_FILENO) < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot redirect stdin");
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    close(fd);
    return true;
}

/* ---- Chardevs ---------------------------------------------------------- */

static ChardevBackend *backend_null(void)
{
    ChardevBackend *b = g_new0(ChardevBackend, 1);

    b->type = CHARDEV_BACKEND_KIND_NULL;
    b->u.null.data = g_new0(ChardevCommon, 1);
    return b;
}

static ChardevBackend *backend_file(const char *path)
{
    ChardevBackend *b = g_new0(ChardevBackend, 1);

    b->type = CHARDEV_BACKEND_KIND_FILE;
    b->u.file.data = g_new0(ChardevFile, 1);
    b->u.file.data->out = g_strdup(path);
    return b;
}

/* The path a file chardev writes to, from its fd */
static char *file_chardev_path(Chardev *chr)
{
    FDChardev *s = FD_CHARDEV(chr);
    g_autofree char *link = NULL;

    if (!s->ioc_out || !object_dynamic_cast(OBJECT(s->ioc_out),
                                            TYPE_QIO_CHANNEL_FILE)) {
        return NULL;
    }
    link = g_strdup_printf("/proc/self/fd/%d",
                           QIO_CHANNEL_FILE(s->ioc_out)->fd);
    return g_file_read_link(link, NULL);
}

typedef struct ChardevPlan {
    char *id;
    ChardevBackend *backend;
    const char *why;
} ChardevPlan;

typedef struct ChardevPlanner {
    const VmforkRequest *req;
    int index;
    Chardev *serial0;
    GSList *plans;
} ChardevPlanner;

/*
 * Decide what each chardev of the child becomes (the contract of
 * vmfork's 'serial' argument): the first serial port follows 'serial' if
 * given; sockets, ptys and stdio become null; files get ".fork-PID".
 * Chardevs whose user cannot switch backends (monitors) keep their
 * detached fds and are never read again.
 */
static int chardev_plan(Object *obj, void *opaque)
{
    ChardevPlanner *p = opaque;
    Chardev *chr = (Chardev *)object_dynamic_cast(obj, TYPE_CHARDEV);
    ChardevBackend *backend = NULL;
    const char *why = NULL;

    if (!chr || (chr->be && !chr->be->chr_be_change)) {
        return 0;
    }
    if (chr == p->serial0 && p->req->serial_tmpl) {
        g_autofree char *path = vmfork_expand_template(
            p->req->serial_tmpl, p->index, getpid(), &error_abort);

        backend = backend_file(path);
        why = "serial template";
    } else if (object_dynamic_cast(obj, TYPE_CHARDEV_SOCKET) ||
               object_dynamic_cast(obj, TYPE_CHARDEV_PTY) ||
               object_dynamic_cast(obj, TYPE_CHARDEV_STDIO)) {
        backend = backend_null();
        why = "null";
    } else if (object_dynamic_cast(obj, TYPE_CHARDEV_FILE)) {
        g_autofree char *path = file_chardev_path(chr);

        if (path) {
            g_autofree char *child_path =
                g_strdup_printf("%s.fork-%d", path, getpid());

            backend = backend_file(child_path);
            why = "file .fork-PID";
        }
    }
    if (backend) {
        ChardevPlan *plan = g_new0(ChardevPlan, 1);

        plan->id = g_strdup(chr->label);
        plan->backend = backend;
        plan->why = why;
        p->plans = g_slist_prepend(p->plans, plan);
    }
    return 0;
}

static bool switch_chardevs(const VmforkRequest *req, int index, Error **errp)
{
    ChardevPlanner p = { .req = req, .index = index, .serial0 = serial_hd(0) };
    Object *root = object_resolve_path_component(object_get_root(),
                                                 "chardevs");
    bool ok = true;

    /* Plan first: changing a chardev changes the container being walked */
    object_child_foreach(root, chardev_plan, &p);
    for (GSList *l = p.plans; l; l = l->next) {
        ChardevPlan *plan = l->data;

        if (ok) {
            ChardevReturn *ret = qmp_chardev_change(plan->id, plan->backend,
                                                    errp);

            trace_vmfork_child_chardev(plan->id, plan->why);
            ok = ret != NULL;
            qapi_free_ChardevReturn(ret);
        }
        qapi_free_ChardevBackend(plan->backend);
        g_free(plan->id);
        g_free(plan);
    }
    g_slist_free(p.plans);
    return ok;
}

/* ---- The child's own monitor ------------------------------------------ */

static bool start_monitor(const VmforkRequest *req, int index, Error **errp)
{
    ERRP_GUARD();
    g_autofree char *path = vmfork_expand_template(req->monitor_tmpl, index,
                                                   getpid(), errp);
    g_autofree char *id = g_strdup_printf("vmfork-monitor-%d", getpid());
    ChardevBackend *backend;
    ChardevSocket *sock;
    Chardev *chr;

    if (!path) {
        return false;
    }
    backend = g_new0(ChardevBackend, 1);
    backend->type = CHARDEV_BACKEND_KIND_SOCKET;
    sock = backend->u.socket.data = g_new0(ChardevSocket, 1);
    sock->addr = g_new0(SocketAddressLegacy, 1);
    sock->addr->type = SOCKET_ADDRESS_TYPE_UNIX;
    sock->addr->u.q_unix.data = g_new0(UnixSocketAddress, 1);
    sock->addr->u.q_unix.data->path = g_strdup(path);
    sock->has_server = true;
    sock->server = true;
    sock->has_wait = true;
    sock->wait = false;

    chr = qemu_chardev_new(id, TYPE_CHARDEV_SOCKET, backend, NULL, errp);
    qapi_free_ChardevBackend(backend);
    if (!chr) {
        return false;
    }
    monitor_init_qmp(chr, false, errp);
    return !*errp;
}

bool vmfork_child_setup(const VmforkRequest *req, int index,
                        QIOChannelBuffer *kvm_state, Error **errp)
{
    child_t0 = g_get_monotonic_time();
    vmfork_fault_child_phase("forked");

    /* Exit paths and permission changes must not touch the parent's */
    qemu_forget_pidfile();
    bdrv_file_forget_locks_after_fork();
    if (!detach_stdin(errp)) {
        return false;
    }

    /* Wakeups, poll sets and connections: private before anything polls */
    if (!vmfork_fd_make_private(errp)) {
        return false;
    }
    monitor_qmp_forget_clients_after_fork();
    phase_done("fds");

    /* Threads: IOThreads (incl. the monitor's), worker pools, vCPUs */
    iothread_restart_all();
    vmfork_reset_thread_pools();
    phase_done("threads");
    if (!vmfork_disks_child_switch(index, errp)) {
        return false;
    }
#ifdef CONFIG_SLIRP
    /* Its own user-mode network, host forwards moved by the offset */
    if (!net_slirp_rebuild_after_fork(req->hostfwd_offset * (index + 1),
                                      errp)) {
        return false;
    }
#endif
    if (!vmfork_taps_child_switch(req, index, errp)) {
        return false;
    }
    phase_done("io");
    if (!vmfork_accel_child(kvm_state, errp)) {
        return false;
    }
    phase_done("accel");
    if (!vmfork_child_new_identity(errp)) {
        return false;
    }
    vmfork_taps_child_new_macs(req);

    /* Memory shared with the parent by design: display surfaces */
    if (!qemu_console_unshare_surfaces_after_fork(errp)) {
        return false;
    }
    if (!switch_chardevs(req, index, errp)) {
        return false;
    }
    phase_done("devices");
    return true;
}

/*
 * Once the guest runs: the child's own monitor.  Nothing the guest sees
 * depends on it, so the guest does not wait for it.
 */
bool vmfork_child_start_monitor(const VmforkRequest *req, int index,
                                Error **errp)
{
    if (!start_monitor(req, index, errp)) {
        return false;
    }
    phase_done("monitor");
    return true;
}
