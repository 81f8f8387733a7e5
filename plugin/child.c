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
 * What every child does whatever the VM holds is here; the rest is done
 * by the fork handlers of the subsystems (handler.h).
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-char.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "chardev/char.h"
#include "monitor/monitor.h"
#include "system/system.h"
#include "vmfork-internal.h"
#include "trace.h"

static int64_t child_t0;

void vmfork_child_phase_done(const char *phase)
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

bool vmfork_child_setup(VmforkRequest *req, int index, Error **errp)
{
    child_t0 = g_get_monotonic_time();
    vmfork_fault_child_phase("forked");

    /* Exit paths must not touch the parent's pidfile or standard input */
    qemu_forget_pidfile();
    if (!detach_stdin(errp)) {
        return false;
    }

    /* Wakeups, poll sets and connections: private before anything polls */
    if (!vmfork_fd_make_private(errp)) {
        return false;
    }
    monitor_qmp_forget_clients_after_fork();
    vmfork_child_phase_done("fds");

    /* Then every subsystem that opted in, in its order (handler.h) */
    return vmfork_handlers_child(req, index, errp);
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
    vmfork_child_phase_done("monitor");
    return true;
}
