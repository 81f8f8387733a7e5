/*
 * vmfork: a child's chardevs
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each chardev type has a rule; a type without one is refused:
 *
 * - unix socket server (a guest agent channel, a serial port on a
 *   socket): the child listens on the same path with ".fork-PID"
 *   appended, or where the command's 'chardevs' template says, listed
 *   in the reply and in query-vmfork;
 * - file: the child writes to the path with ".fork-PID" appended;
 * - pty, stdio: the child's is a null chardev;
 * - the first serial port follows the command's 'serial' template, if
 *   given;
 * - in-process ones (null, ringbuf, memory, mux, vc, msmouse, ...) are
 *   copied with the process and need nothing;
 * - a monitor's chardev stays as it is, detached: the child gets a
 *   monitor of its own (child.c);
 * - TCP servers, client sockets, pipes, host serial and parallel ports,
 *   UDP and SPICE channels are refused by name: a child cannot have one
 *   of its own without being told where.
 *
 * A chardev's log (logfile=) follows the same rule as a file: the child
 * logs to the path with ".fork-PID" appended (appending if the parent
 * does), or where the command's 'chardevs' says ('logfile', a template).
 * A log that is not a file, such as the pipe to virtlogd that libvirt
 * passes for a <log> with its default stdio_handler, needs that: vmfork
 * cannot get a child a pipe of its own from virtlogd, and refuses it by
 * name without.  The copies of that pipe in the monitor's fd sets become
 * /dev/null in the child, which holds nothing of the parent's log.
 *
 * A unix server listens on its new path in place, whatever its frontend
 * (qemu_chr_socket_listen_after_fork()); a chardev that needs a new
 * backend (file, null) and whose frontend cannot take one (only serial
 * ports and virtio-serial ports can) is refused.  The
 * parent's fds of every chardev are claimed here: the child detaches its
 * copies (fd.c) before anything reads them.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-char.h"
#include "qemu/module.h"
#include "chardev/char.h"
#include "chardev/char-fd.h"
#include "chardev/char-fe.h"
#include "chardev/char-socket.h"
#include "io/channel-file.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "monitor/monitor-internal.h"
#include "system/system.h"
#include "vmfork-internal.h"
#include "trace.h"

typedef enum ChardevRule {
    RULE_KEEP,                  /* in-process, or a monitor's */
    RULE_SERIAL_TEMPLATE,       /* serial0 with the 'serial' argument */
    RULE_UNIX_SERVER,           /* PATH.fork-PID */
    RULE_FILE,                  /* PATH.fork-PID */
    RULE_NULL,                  /* pty, stdio */
    RULE_REFUSE,
} ChardevRule;

typedef struct ChardevPlan {
    char *id;
    ChardevRule rule;
    char *path;                 /* unix server, file: the parent's path */
    char *log;                  /* its log file (logfile=), or NULL */
    char *log_tmpl;             /* or the template of the children's */
    bool log_append;
    bool log_not_file;          /* a pipe (virtlogd's): its device and */
    dev_t log_dev;              /* inode, for the copies in fd sets */
    ino_t log_ino;
} ChardevPlan;

static GPtrArray *plans;        /* of ChardevPlan, during one vmfork */

static void plan_free(gpointer p)
{
    ChardevPlan *plan = p;

    g_free(plan->id);
    g_free(plan->path);
    g_free(plan->log);
    g_free(plan->log_tmpl);
    g_free(plan);
}

static bool is_monitor(Chardev *chr)
{
    Monitor *mon;

    QTAILQ_FOREACH(mon, &mon_list, entry) {
        if (qemu_chr_fe_get_driver(&mon->chr) == chr) {
            return true;
        }
    }
    return false;
}

static bool is_type(Chardev *chr, const char *type)
{
    return object_dynamic_cast(OBJECT(chr), type) != NULL;
}

/* The path a file chardev writes to, from its fd */
static char *file_chardev_path(Chardev *chr)
{
    FDChardev *s = FD_CHARDEV(chr);

    if (!s->ioc_out || !object_dynamic_cast(OBJECT(s->ioc_out),
                                            TYPE_QIO_CHANNEL_FILE)) {
        return NULL;
    }
    return vmfork_fd_path(QIO_CHANNEL_FILE(s->ioc_out)->fd, NULL);
}

/* Is the log of @chr (logfile=) a regular file, where a child can have one
 * of its own?  If not, *what says what it is instead. */
static bool log_is_file(Chardev *chr, const char **what)
{
    struct stat st;

    if (fstat(chr->logfd, &st) < 0) {
        *what = "an fd that cannot be looked at";
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        *what = S_ISFIFO(st.st_mode) ? "a pipe" :
                S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file";
        return false;
    }
    return true;
}

static bool is_unix_server(Chardev *chr)
{
    SocketChardev *s = (SocketChardev *)object_dynamic_cast(
        OBJECT(chr), TYPE_CHARDEV_SOCKET);

    return s && s->is_listen && s->addr &&
           s->addr->type == SOCKET_ADDRESS_TYPE_UNIX &&
           !(s->addr->u.q_unix.has_abstract && s->addr->u.q_unix.abstract);
}

/* The rule for @chr; for RULE_REFUSE, *why says why */
static ChardevRule chardev_rule(const VmforkRequest *req, Chardev *chr,
                                char **path, const char **why)
{
    const char *type = object_get_typename(OBJECT(chr));

    if (is_monitor(chr)) {
        return RULE_KEEP;
    }
    if (chr == serial_hd(0) && req->serial_tmpl) {
        return RULE_SERIAL_TEMPLATE;
    }
    if (is_type(chr, TYPE_CHARDEV_SOCKET)) {
        SocketChardev *s = (SocketChardev *)chr;

        if (!s->is_listen) {
            *why = "it is a client socket, which a child cannot connect "
                   "again on its own";
            return RULE_REFUSE;
        }
        if (!is_unix_server(chr)) {
            *why = "it listens on a TCP port (or a passed fd or abstract "
                   "socket), which a child cannot have a copy of";
            return RULE_REFUSE;
        }
        *path = g_strdup(s->addr->u.q_unix.path);
        return RULE_UNIX_SERVER;
    }
    if (is_type(chr, TYPE_CHARDEV_FILE)) {
        *path = file_chardev_path(chr);
        if (!*path) {
            *why = "its file cannot be found";
            return RULE_REFUSE;
        }
        return RULE_FILE;
    }
    if (is_type(chr, TYPE_CHARDEV_PTY) || is_type(chr, TYPE_CHARDEV_STDIO)) {
        return RULE_NULL;
    }
    if (is_type(chr, TYPE_CHARDEV_NULL) || is_type(chr, TYPE_CHARDEV_RINGBUF) ||
        is_type(chr, TYPE_CHARDEV_MUX) || is_type(chr, TYPE_CHARDEV_HUB) ||
        g_str_equal(type, "chardev-vc") ||
        g_str_equal(type, "chardev-msmouse") ||
        g_str_equal(type, "chardev-wctablet") ||
        g_str_equal(type, "chardev-testdev")) {
        return RULE_KEEP;
    }
    *why = "vmfork has no rule for this kind of chardev (a pipe, a host "
           "device, UDP, SPICE)";
    return RULE_REFUSE;
}

bool vmfork_chardevs_parse(VmforkRequest *req,
                           VmforkChardevConfigList *list, Error **errp)
{
    g_autoptr(GHashTable) named = g_hash_table_new(g_str_hash, g_str_equal);

    req->chardev_tmpls = g_hash_table_new_full(g_str_hash, g_str_equal,
                                               g_free, g_free);
    req->chardev_log_tmpls = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                   g_free, g_free);
    for (; list; list = list->next) {
        VmforkChardevConfig *c = list->value;
        Chardev *chr = qemu_chr_find(c->id);

        if (!g_hash_table_add(named, c->id)) {
            error_setg(errp, "vmfork: chardevs: '%s' is named twice", c->id);
            return false;
        }
        if (!c->path && !c->logfile) {
            error_setg(errp, "vmfork: chardevs: '%s' has neither a path nor "
                       "a logfile", c->id);
            return false;
        }
        if (c->path) {
            g_autofree char *what = g_strdup_printf("chardev '%s'", c->id);

            if (!chr || !is_unix_server(chr) || is_monitor(chr)) {
                error_setg(errp, "vmfork: chardevs: '%s' is not a unix "
                           "socket server chardev (other than a monitor's)",
                           c->id);
                return false;
            }
            if (!vmfork_check_socket_template(what, c->path, req->count,
                                              errp)) {
                return false;
            }
            g_hash_table_insert(req->chardev_tmpls, g_strdup(c->id),
                                g_strdup(c->path));
        }
        if (c->logfile) {
            g_autofree char *what = g_strdup_printf("chardev '%s' log",
                                                    c->id);

            if (!chr || chr->logfd < 0 || is_monitor(chr)) {
                error_setg(errp, "vmfork: chardevs: '%s' is not a chardev "
                           "with a log (logfile=), other than a monitor's",
                           c->id);
                return false;
            }
            if (!vmfork_check_file_template(what, c->logfile, req->count,
                                            errp)) {
                return false;
            }
            g_hash_table_insert(req->chardev_log_tmpls, g_strdup(c->id),
                                g_strdup(c->logfile));
        }
    }
    return true;
}

static void claim_socket_fds(VmforkCheck *chk, SocketChardev *s,
                             const char *id)
{
    if (s->listener) {
        for (size_t i = 0; i < s->listener->nsioc; i++) {
            vmfork_check_claim_fd(chk, s->listener->sioc[i]->fd,
                                  "chardev '%s'", id);
        }
    }
    if (s->sioc) {
        vmfork_check_claim_fd(chk, s->sioc->fd, "chardev '%s'", id);
    }
}

static void claim_fd_chardev_fds(VmforkCheck *chk, FDChardev *s,
                                 const char *id)
{
    QIOChannel *iocs[] = { s->ioc_in, s->ioc_out };

    for (size_t i = 0; i < ARRAY_SIZE(iocs); i++) {
        if (iocs[i] && object_dynamic_cast(OBJECT(iocs[i]),
                                           TYPE_QIO_CHANNEL_FILE)) {
            vmfork_check_claim_fd(chk, QIO_CHANNEL_FILE(iocs[i])->fd,
                                  "chardev '%s'", id);
        }
    }
}

typedef struct ChardevWalk {
    VmforkCheck *chk;           /* check: refuse and claim */
    const VmforkRequest *req;
    GPtrArray *plans;           /* prepare: the plans */
} ChardevWalk;

static int chardev_walk(Object *obj, void *opaque)
{
    ChardevWalk *w = opaque;
    Chardev *chr = (Chardev *)object_dynamic_cast(obj, TYPE_CHARDEV);
    g_autofree char *path = NULL;
    const char *why = NULL;
    ChardevRule rule;

    if (!chr) {
        return 0;
    }
    rule = chardev_rule(w->req, chr, &path, &why);
    if (w->chk) {
        if (rule == RULE_REFUSE) {
            vmfork_check_refuse(w->chk, "chardev '%s' (%s): %s", chr->label,
                                object_get_typename(obj), why);
        } else if ((rule == RULE_FILE || rule == RULE_NULL ||
                    rule == RULE_SERIAL_TEMPLATE) && chr->be &&
                   !chr->be->chr_be_change && (chr->be->chr_read ||
                                               chr->be->chr_event)) {
            vmfork_check_refuse(w->chk, "chardev '%s' (%s) needs a backend "
                                "of its own in a child, and its user cannot "
                                "take a new one", chr->label,
                                object_get_typename(obj));
        }
        if (chr->logfd >= 0) {
            const char *what;

            if (!log_is_file(chr, &what) &&
                !g_hash_table_contains(w->req->chardev_log_tmpls,
                                       chr->label)) {
                vmfork_check_refuse(w->chk, "chardev '%s' (%s): its log "
                                    "(logfile=) is %s, as libvirt's to "
                                    "virtlogd: a child could only share it "
                                    "(give the children's log files: "
                                    "chardevs [{\"id\": \"%s\", "
                                    "\"logfile\": TEMPLATE}])",
                                    chr->label, object_get_typename(obj),
                                    what, chr->label);
            }
            vmfork_check_claim_fd(w->chk, chr->logfd, "chardev '%s' log",
                                  chr->label);
        }
        if (is_type(chr, TYPE_CHARDEV_SOCKET)) {
            claim_socket_fds(w->chk, (SocketChardev *)chr, chr->label);
        } else if (is_type(chr, TYPE_CHARDEV_FD)) {
            claim_fd_chardev_fds(w->chk, FD_CHARDEV(chr), chr->label);
        } else if (is_type(chr, TYPE_CHARDEV_PTY)) {
            vmfork_check_claim_fd_path(w->chk, "/dev/ptmx", "a pty chardev");
        }
    }
    if (w->plans && rule != RULE_REFUSE &&
        (rule != RULE_KEEP || chr->logfd >= 0)) {
        ChardevPlan *plan = g_new0(ChardevPlan, 1);

        plan->id = g_strdup(chr->label);
        plan->rule = rule;
        plan->path = g_steal_pointer(&path);
        if (chr->logfd >= 0) {
            const char *tmpl = g_hash_table_lookup(w->req->chardev_log_tmpls,
                                                   chr->label);
            struct stat st;

            plan->log = tmpl ? NULL : vmfork_fd_path(chr->logfd, NULL);
            plan->log_tmpl = g_strdup(tmpl);
            plan->log_append = fcntl(chr->logfd, F_GETFL) & O_APPEND;
            if (fstat(chr->logfd, &st) == 0 && !S_ISREG(st.st_mode)) {
                plan->log_not_file = true;
                plan->log_dev = st.st_dev;
                plan->log_ino = st.st_ino;
            }
        }
        g_ptr_array_add(w->plans, plan);
    }
    return 0;
}

static Object *chardevs_root(void)
{
    return object_resolve_path_component(object_get_root(), "chardevs");
}

static void chardev_check(VmforkCheck *chk)
{
    ChardevWalk w = { .chk = chk, .req = chk->req };

    object_child_foreach(chardevs_root(), chardev_walk, &w);
}

static void chardev_abort(VmforkRequest *req)
{
    g_clear_pointer(&plans, g_ptr_array_unref);
}

/* Does a child have a log of its own for @plan's chardev? */
static bool has_log(const ChardevPlan *plan)
{
    return plan->log || plan->log_tmpl;
}

/* The log file of child number @index, @pid, for @plan's chardev */
static char *child_log(const ChardevPlan *plan, int index, pid_t pid)
{
    if (plan->log_tmpl) {
        return vmfork_expand_template(plan->log_tmpl, index, pid,
                                      &error_abort);
    }
    return g_strdup_printf("%s.fork-%d", plan->log, (int)pid);
}

static bool chardev_prepare(VmforkRequest *req, Error **errp)
{
    ChardevWalk w = { .req = req };

    assert(!plans);
    plans = w.plans = g_ptr_array_new_with_free_func(plan_free);
    object_child_foreach(chardevs_root(), chardev_walk, &w);
    for (guint i = 0; i < plans->len; i++) {
        ChardevPlan *plan = plans->pdata[i];

        if (qemu_chr_find(plan->id)->logfd >= 0 && !has_log(plan)) {
            error_setg(errp, "vmfork: chardev '%s': the path of its log file "
                       "cannot be found", plan->id);
            chardev_abort(req);
            return false;
        }
    }
    return true;
}

/* Once the reply has each child's chardevs (chardev_child_info) */
static void chardev_done(VmforkRequest *req)
{
    chardev_abort(req);
}

/* Where child number @index, @pid, has the chardev of @plan */
static char *child_path(const VmforkRequest *req, const ChardevPlan *plan,
                        int index, pid_t pid)
{
    const char *tmpl = plan->rule == RULE_UNIX_SERVER ?
        g_hash_table_lookup(req->chardev_tmpls, plan->id) : NULL;

    if (tmpl) {
        return vmfork_expand_template(tmpl, index, pid, &error_abort);
    }
    return g_strdup_printf("%s.fork-%d", plan->path, (int)pid);
}

static void chardev_child_info(VmforkRequest *req, int index,
                               VmforkChild *info)
{
    VmforkChardevList **tail = &info->chardevs;

    for (guint i = 0; plans && i < plans->len; i++) {
        ChardevPlan *plan = plans->pdata[i];
        VmforkChardev *c;

        if (plan->rule != RULE_UNIX_SERVER) {
            continue;
        }
        c = g_new0(VmforkChardev, 1);
        c->id = g_strdup(plan->id);
        c->path = child_path(req, plan, index, info->pid);
        QAPI_LIST_APPEND(tail, c);
    }
}

/* The log of child @index for @plan's chardev, in a new backend's @common */
static void backend_log(ChardevCommon *common, const ChardevPlan *plan,
                        int index)
{
    if (has_log(plan)) {
        common->logfile = child_log(plan, index, getpid());
        common->has_logappend = true;
        common->logappend = plan->log_append;
    }
}

/*
 * The log of child @index for @plan's chardev @chr, which the child keeps:
 * its own file on the same fd, opened as char.c opens a log
 */
static bool log_in_place(Chardev *chr, const ChardevPlan *plan, int index,
                         Error **errp)
{
    g_autofree char *path = child_log(plan, index, getpid());
    int fd = qemu_create(path, O_WRONLY | (plan->log_append ? O_APPEND :
                                           O_TRUNC), 0666, errp);

    if (fd < 0) {
        return false;
    }
    if (dup3(fd, chr->logfd, O_CLOEXEC) < 0) {
        error_setg_errno(errp, errno, "cannot move the log to '%s'", path);
        close(fd);
        return false;
    }
    close(fd);
    return true;
}

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

static bool chardev_child(VmforkRequest *req, int index, Error **errp)
{
    for (guint i = 0; plans && i < plans->len; i++) {
        ChardevPlan *plan = plans->pdata[i];
        g_autofree char *path = NULL;
        ChardevBackend *backend;
        ChardevReturn *ret;

        switch (plan->rule) {
        case RULE_KEEP:
        case RULE_UNIX_SERVER:
            /* The same chardev: its log, and a unix server's socket */
            if (has_log(plan) && !log_in_place(qemu_chr_find(plan->id),
                                               plan, index, errp)) {
                error_prepend(errp, "vmfork: chardev '%s': ", plan->id);
                return false;
            }
            if (plan->rule == RULE_KEEP) {
                continue;
            }
            /* Listening elsewhere: any frontend */
            path = child_path(req, plan, index, getpid());
            trace_vmfork_child_chardev(plan->id, path);
            if (!qemu_chr_socket_listen_after_fork(
                    qemu_chr_find(plan->id), path, errp)) {
                error_prepend(errp, "vmfork: chardev '%s': ", plan->id);
                return false;
            }
            continue;
        case RULE_SERIAL_TEMPLATE:
            path = vmfork_expand_template(req->serial_tmpl, index, getpid(),
                                          &error_abort);
            backend = backend_file(path);
            backend_log(qapi_ChardevFile_base(backend->u.file.data), plan,
                        index);
            break;
        case RULE_FILE:
            path = child_path(req, plan, index, getpid());
            backend = backend_file(path);
            backend_log(qapi_ChardevFile_base(backend->u.file.data), plan,
                        index);
            break;
        default:
            backend = backend_null();
            backend_log(backend->u.null.data, plan, index);
            break;
        }
        trace_vmfork_child_chardev(plan->id, path ? path : "null");
        ret = qmp_chardev_change(plan->id, backend, errp);
        qapi_free_ChardevBackend(backend);
        if (!ret) {
            error_prepend(errp, "vmfork: chardev '%s': ", plan->id);
            return false;
        }
        qapi_free_ChardevReturn(ret);
    }
    /*
     * A log that is not a file came in an fd set (libvirt's /dev/fdset/N
     * to virtlogd), whose own copy of the pipe the child must not keep
     * either: virtlogd would see the end of the parent's log only once
     * every child had exited
     */
    for (guint i = 0; plans && i < plans->len; i++) {
        ChardevPlan *plan = plans->pdata[i];

        if (plan->log_not_file &&
            !vmfork_fd_release_fdset_copies(plan->log_dev, plan->log_ino,
                                            errp)) {
            error_prepend(errp, "vmfork: chardev '%s': ", plan->id);
            return false;
        }
    }
    g_clear_pointer(&plans, g_ptr_array_unref);
    return true;
}

static const VmforkHandler chardev_handler = {
    .name = "chardev",
    .priority = VMFORK_PRIO_CHARDEV,
    .check = chardev_check,
    .prepare = chardev_prepare,
    .child = chardev_child,
    .abort = chardev_abort,
    .child_info = chardev_child_info,
    .done = chardev_done,
};

static void chardev_register(void)
{
    vmfork_register_handler(&chardev_handler);
}
type_init(chardev_register);
