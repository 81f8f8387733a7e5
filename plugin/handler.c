/*
 * vmfork: the registry of fork handlers and the phases that run them
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * See handler.h for how a subsystem opts in.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-types-vmfork.h"
#include "vmfork-internal.h"
#include "trace.h"

static GSList *handlers;        /* of const VmforkHandler *, by priority */

static gint handler_cmp(gconstpointer a, gconstpointer b)
{
    const VmforkHandler *ha = a, *hb = b;

    return (int)ha->priority - (int)hb->priority;
}

void vmfork_register_handler(const VmforkHandler *handler)
{
    /* insert_sorted keeps registration order within one priority */
    handlers = g_slist_insert_sorted(handlers, (gpointer)handler,
                                     handler_cmp);
}

void vmfork_check_refuse(VmforkCheck *chk, const char *fmt, ...)
{
    va_list ap;

    g_string_append(chk->why, chk->why->len ? "; " : "");
    va_start(ap, fmt);
    g_string_append_vprintf(chk->why, fmt, ap);
    va_end(ap);
}

void vmfork_check_claim_fd(VmforkCheck *chk, int fd, const char *fmt, ...)
{
    va_list ap;

    if (fd < 0) {
        return;
    }
    va_start(ap, fmt);
    g_hash_table_replace(chk->fd_owner, GINT_TO_POINTER(fd),
                         g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

static void claim_fd_links(VmforkCheck *chk, const char *link, bool prefix,
                           const char *owner)
{
    GHashTableIter iter;
    gpointer fd, target;

    g_hash_table_iter_init(&iter, chk->fd_target);
    while (g_hash_table_iter_next(&iter, &fd, &target)) {
        if (prefix ? g_str_has_prefix(target, link)
                   : g_str_equal(target, link)) {
            vmfork_check_claim_fd(chk, GPOINTER_TO_INT(fd), "%s", owner);
        }
    }
}

void vmfork_check_claim_fd_path(VmforkCheck *chk, const char *path,
                                const char *owner)
{
    claim_fd_links(chk, path, false, owner);
}

void vmfork_check_claim_fd_prefix(VmforkCheck *chk, const char *prefix,
                                  const char *owner)
{
    claim_fd_links(chk, prefix, true, owner);
}

void vmfork_handlers_check(VmforkCheck *chk)
{
    for (GSList *l = handlers; l; l = l->next) {
        const VmforkHandler *h = l->data;

        if (h->check) {
            h->check(chk);
        }
    }
}

typedef bool (*VmforkPhase)(VmforkRequest *req, Error **errp);

/*
 * Run the phase at @offset in VmforkHandler (prepare, paused or parent)
 * of every handler of @order, stopping at the first error
 */
static bool run_phase(GSList *order, size_t offset, const char *phase,
                      VmforkRequest *req, Error **errp)
{
    for (GSList *l = order; l; l = l->next) {
        const VmforkHandler *h = l->data;
        VmforkPhase fn = *(const VmforkPhase *)((const char *)h + offset);

        int64_t t0;

        if (!fn) {
            continue;
        }
        t0 = g_get_monotonic_time();
        if (!fn(req, errp)) {
            trace_vmfork_handler_failed(h->name, phase);
            return false;
        }
        trace_vmfork_handler_done(h->name, phase,
                                  g_get_monotonic_time() - t0);
    }
    return true;
}

bool vmfork_handlers_prepare(VmforkRequest *req, Error **errp)
{
    return run_phase(handlers, offsetof(VmforkHandler, prepare), "prepare",
                     req, errp);
}

/*
 * In reverse order, as one leaves nested sections: the threads stop last,
 * after the other handlers have used them (a flush of a disk on an
 * IOThread needs that IOThread), and start first again in parent and child.
 */
bool vmfork_handlers_paused(VmforkRequest *req, Error **errp)
{
    g_autoptr(GSList) rev = g_slist_reverse(g_slist_copy(handlers));

    return run_phase(rev, offsetof(VmforkHandler, paused), "paused", req,
                     errp);
}

bool vmfork_handlers_parent(VmforkRequest *req, Error **errp)
{
    return run_phase(handlers, offsetof(VmforkHandler, parent), "parent",
                     req, errp);
}

bool vmfork_handlers_child(VmforkRequest *req, int index, Error **errp)
{
    for (GSList *l = handlers; l; l = l->next) {
        const VmforkHandler *h = l->data;

        if (!h->child) {
            continue;
        }
        if (!h->child(req, index, errp) ||
            vmfork_fault_child_fails(h->name, errp)) {
            trace_vmfork_handler_failed(h->name, "child");
            return false;
        }
        vmfork_child_phase_done(h->name);
    }
    return true;
}

void vmfork_handlers_abort(VmforkRequest *req)
{
    g_autoptr(GSList) rev = g_slist_reverse(g_slist_copy(handlers));

    for (GSList *l = rev; l; l = l->next) {
        const VmforkHandler *h = l->data;

        if (h->abort) {
            h->abort(req);
        }
    }
}

/*
 * Every handler's, even after an error: the first one is reported
 * (error_propagate() frees those that come after it)
 */
bool vmfork_handlers_resumed(VmforkRequest *req, Error **errp)
{
    bool ok = true;

    for (GSList *l = handlers; l; l = l->next) {
        const VmforkHandler *h = l->data;
        Error *err = NULL;

        if (h->resumed && !h->resumed(req, &err)) {
            trace_vmfork_handler_failed(h->name, "resumed");
            error_propagate(errp, err);
            ok = false;
        }
    }
    return ok;
}

void vmfork_handlers_child_info(VmforkRequest *req, int index,
                                VmforkChild *info)
{
    for (GSList *l = handlers; l; l = l->next) {
        const VmforkHandler *h = l->data;

        if (h->child_info) {
            h->child_info(req, index, info);
        }
    }
}

void vmfork_handlers_done(VmforkRequest *req)
{
    for (GSList *l = handlers; l; l = l->next) {
        const VmforkHandler *h = l->data;

        if (h->done) {
            h->done(req);
        }
    }
}
