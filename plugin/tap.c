/*
 * vmfork: a tap of its own for each child
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A tap netdev's fd crosses fork() with its open file: parent and child
 * would share one tap queue, each reading frames meant for the other.
 * The command names a tap for each child (@taps: fds passed with getfd
 * or add-fd, or an interface name template); a tap netdev without one is
 * a blocker.
 * The fds are taken from the monitor as the command is parsed (they are
 * the command's whatever happens next; the checks claim them), each child
 * switches to its own (tap_switch_after_fork()) and closes the others,
 * and the parent closes them all.  Its NIC gets a MAC address of its own
 * (qemu_nic_set_macaddr()); a NIC model that cannot change its address
 * is refused for new-mac.
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include "qapi/error.h"
#include "qapi/qapi-commands-net.h"
#include "qemu/module.h"
#include "qemu/timer.h"
#include "qapi/qapi-commands-misc.h"
#include "hw/virtio/virtio-net.h"
#include "monitor/monitor.h"
#include "net/net.h"
#include "net/tap.h"
#include "vmfork-internal.h"
#include "trace.h"

struct VmforkTapPlan {
    NetClientState *nc;
    bool new_mac;
    char *ifname_tmpl;          /* or: */
    char **fd_names;            /* one per child */
    int *fds;                   /* taken from the monitor, -1: not (any more) */
};

static void tap_plan_free(gpointer data)
{
    VmforkTapPlan *plan = data;

    for (int i = 0; plan->fds && plan->fd_names && plan->fd_names[i]; i++) {
        if (plan->fds[i] >= 0) {
            qemu_close(plan->fds[i]);
        }
    }
    g_free(plan->fds);
    g_strfreev(plan->fd_names);
    g_free(plan->ifname_tmpl);
    g_free(plan);
}

static bool is_tap(NetClientState *nc)
{
    return nc->info->type == NET_CLIENT_DRIVER_TAP;
}

static VmforkTapPlan *tap_plan_find(GPtrArray *taps, NetClientState *nc)
{
    for (guint i = 0; taps && i < taps->len; i++) {
        VmforkTapPlan *plan = g_ptr_array_index(taps, i);

        if (plan->nc == nc) {
            return plan;
        }
    }
    return NULL;
}

static bool take_fds(VmforkRequest *req, Error **errp);

bool vmfork_taps_parse(VmforkRequest *req, VmforkTapList *list,
                       Error **errp)
{
    req->taps = g_ptr_array_new_with_free_func(tap_plan_free);
    for (; list; list = list->next) {
        VmforkTap *t = list->value;
        NetClientState *ncs[MAX_QUEUE_NUM];
        int queues = qemu_find_net_clients_except(t->netdev, ncs,
                                                  NET_CLIENT_DRIVER_NIC,
                                                  MAX_QUEUE_NUM);
        VmforkTapPlan *plan;

        if (!queues || !is_tap(ncs[0])) {
            error_setg(errp, "vmfork: taps: '%s' is not a tap netdev",
                       t->netdev);
            return false;
        }
        if (tap_plan_find(req->taps, ncs[0])) {
            error_setg(errp, "vmfork: taps: netdev '%s' is named twice",
                       t->netdev);
            return false;
        }
        if (t->has_fds == !!t->ifname) {
            error_setg(errp, "vmfork: taps: give netdev '%s' either fds or "
                       "ifname", t->netdev);
            return false;
        }
        plan = g_new0(VmforkTapPlan, 1);
        plan->nc = ncs[0];
        plan->new_mac = !t->has_new_mac || t->new_mac;
        g_ptr_array_add(req->taps, plan);
        if (t->ifname) {
            /* the longest name: the last index, the largest pid */
            g_autofree char *name = vmfork_expand_template(
                t->ifname, req->count - 1, 4194304, errp);

            if (!name ||
                !vmfork_check_template_per_child("tap ifname", t->ifname,
                                                 req->count, errp)) {
                return false;
            }
            if (!*name || strlen(name) >= IFNAMSIZ) {
                error_setg(errp, "vmfork: taps: interface name '%s' must "
                           "have 1 to %d characters", name, IFNAMSIZ - 1);
                return false;
            }
            plan->ifname_tmpl = g_strdup(t->ifname);
        } else {
            strList *l;
            int n = 0;

            plan->fd_names = g_new0(char *, req->count + 1);
            for (l = t->fds; l; l = l->next, n++) {
                if (n < req->count) {
                    plan->fd_names[n] = g_strdup(l->value);
                }
            }
            if (n != req->count) {
                error_setg(errp, "vmfork: taps: netdev '%s' needs one fd "
                           "per child: %d, not %d", t->netdev, req->count, n);
                return false;
            }
        }
    }
    return take_fds(req, errp);
}

/* The fds of fd set @path ("/dev/fdset/N"), which the set keeps */
static void claim_fdset(VmforkCheck *chk, const char *path, int child)
{
    int64_t id = g_ascii_strtoll(path + strlen("/dev/fdset/"), NULL, 10);
    FdsetInfoList *sets = qmp_query_fdsets(NULL);

    for (FdsetInfoList *l = sets; l; l = l->next) {
        for (FdsetFdInfoList *f = l->value->fds;
             l->value->fdset_id == id && f; f = f->next) {
            vmfork_check_claim_fd(chk, f->value->fd, "the tap of child %d "
                                  "(fd set %" PRId64 ")", child, id);
        }
    }
    qapi_free_FdsetInfoList(sets);
}

static void tap_check(VmforkCheck *chk)
{
    const VmforkRequest *req = chk->req;
    NetClientState *ncs[MAX_QUEUE_NUM];
    int n = qemu_find_net_clients_except(NULL, ncs, NET_CLIENT_DRIVER_NIC,
                                         MAX_QUEUE_NUM);

    for (int i = 0; i < n; i++) {
        NetClientState *others[MAX_QUEUE_NUM];
        VmforkTapPlan *plan;

        if (!is_tap(ncs[i])) {
            continue;
        }
        /* The parent's taps (every queue) are the parent's: the child
         * switches away, or the fork is refused below, by netdev */
        vmfork_check_claim_fd(chk, tap_get_fd(ncs[i]), "tap netdev '%s'",
                              ncs[i]->name);
        if (ncs[i]->queue_index) {
            continue;
        }
        plan = tap_plan_find(req->taps, ncs[i]);
        if (tap_get_vhost_net(ncs[i])) {
            vmfork_check_refuse(chk, "tap netdev '%s' uses vhost-net, which "
                                "a child cannot take over", ncs[i]->name);
        } else if (qemu_find_net_clients_except(ncs[i]->name, others,
                                                NET_CLIENT_DRIVER_NIC,
                                                MAX_QUEUE_NUM) > 1) {
            vmfork_check_refuse(chk, "tap netdev '%s' has several queues; "
                                "only single-queue taps can be forked",
                                ncs[i]->name);
        } else if (!plan) {
            vmfork_check_refuse(chk, "tap netdev '%s' would be shared with "
                                "the children: give them taps of their own "
                                "('taps')", ncs[i]->name);
        } else if (plan->new_mac && ncs[i]->peer &&
                   !ncs[i]->peer->info->set_macaddr) {
            vmfork_check_refuse(chk, "NIC '%s' (%s) on tap netdev '%s' "
                                "cannot change its MAC address: pass "
                                "new-mac false for it", ncs[i]->peer->name,
                                ncs[i]->peer->model, ncs[i]->name);
        }
        for (int c = 0; plan && plan->fds && c < req->count; c++) {
            vmfork_check_claim_fd(chk, plan->fds[c], "the tap of child %d",
                                  c);
            if (g_str_has_prefix(plan->fd_names[c], "/dev/fdset/")) {
                claim_fdset(chk, plan->fd_names[c], c);
            }
        }
    }
}

/* Take the fds named in 'taps' (taken over whatever happens next) */
static bool take_fds(VmforkRequest *req, Error **errp)
{
    for (guint i = 0; i < req->taps->len; i++) {
        VmforkTapPlan *plan = g_ptr_array_index(req->taps, i);

        if (!plan->fd_names) {
            continue;
        }
        plan->fds = g_new(int, req->count);
        for (int c = 0; c < req->count; c++) {
            plan->fds[c] = -1;
        }
        for (int c = 0; c < req->count; c++) {
            const char *name = plan->fd_names[c];

            /* an fd of an fdset (add-fd) is duplicated, one of getfd taken */
            plan->fds[c] = g_str_has_prefix(name, "/dev/fdset/")
                           ? qemu_open(name, O_RDWR, errp)
                           : monitor_get_fd(monitor_cur(), name, errp);
            if (plan->fds[c] < 0) {
                error_prepend(errp, "vmfork: taps: netdev '%s': ",
                              plan->nc->name);
                return false;
            }
        }
    }
    return true;
}

/* ---- The child's MAC address ------------------------------------------ */

/*
 * The guest must see the link down before it comes up again, or it never
 * sees a change: Linux's virtio-net reads the link status in a worker,
 * and a worker that runs after a quick up reads "up" as it was before.
 * A virtio-net guest that negotiated VIRTIO_NET_F_GUEST_ANNOUNCE tells us
 * when it has read the status: it acknowledges the announce bit that we
 * raise with the link down (the read that sees the bit sees the link
 * down).  Other guests get the link back after LINK_BOUNCE_MS.
 */
#define LINK_BOUNCE_MS      50          /* guests that cannot acknowledge */
#define LINK_ACK_MAX_MS     2000        /* guests that could, but did not */
#define LINK_POLL_MS        2

typedef struct LinkBounce {
    char *netdev;
    VirtIONet *ack_from;        /* NULL: no acknowledgement to wait for */
    int64_t down_ms;            /* QEMU_CLOCK_VIRTUAL */
    QEMUTimer *timer;
} LinkBounce;

static void link_bounce_poll(void *opaque)
{
    LinkBounce *b = opaque;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_VIRTUAL);
    bool waiting;

    if (b->ack_from) {
        waiting = (b->ack_from->status & VIRTIO_NET_S_ANNOUNCE) &&
                  now - b->down_ms < LINK_ACK_MAX_MS;
    } else {
        waiting = now - b->down_ms < LINK_BOUNCE_MS;
    }
    if (waiting) {
        timer_mod(b->timer, now + LINK_POLL_MS);
        return;
    }
    trace_vmfork_child_link_up(b->netdev, now - b->down_ms,
                               b->ack_from &&
                               !(b->ack_from->status & VIRTIO_NET_S_ANNOUNCE));
    qmp_set_link(b->netdev, true, &error_warn);
    timer_free(b->timer);
    g_free(b->netdev);
    g_free(b);
}

/*
 * The NIC on tap netdev number @nr gets 02:fc:NN:CC:CC:CC.  Its link goes
 * down now and up once the guest has seen it down, so that the guest sees
 * a carrier change and can take the address up.
 */
static bool new_mac(NetClientState *nc, int nr, Error **errp)
{
    NICState *nic = nc->peer ? qemu_get_nic(nc->peer) : NULL;
    uint32_t id = getpid();
    MACAddr mac = { .a = { 0x02, 0xfc, nr, id >> 16, id >> 8, id } };
    LinkBounce *b;
    void *dev;

    if (!nic) {
        return true;            /* no guest NIC on it */
    }
    b = g_new0(LinkBounce, 1);
    b->netdev = g_strdup(nc->name);
    dev = qemu_get_nic_opaque(nc->peer);
    if (object_dynamic_cast(OBJECT(dev), TYPE_VIRTIO_NET)) {
        VirtIONet *n = VIRTIO_NET(dev);
        /* an announcement of the parent's: its ack says nothing of ours */
        bool pending = n->status & VIRTIO_NET_S_ANNOUNCE;

        /* sets VIRTIO_NET_S_ANNOUNCE where the guest can acknowledge it */
        nc->peer->info->announce(nc->peer);
        if (!pending && (n->status & VIRTIO_NET_S_ANNOUNCE)) {
            b->ack_from = n;
        }
    }
    qmp_set_link(nc->name, false, &error_abort);
    /* every copy the NIC keeps: filter, EEPROM, config space, reset */
    if (!qemu_nic_set_macaddr(nic, &mac, errp)) {
        g_free(b->netdev);
        g_free(b);
        return false;
    }
    trace_vmfork_child_mac(nc->name, nc->peer->name, nc->peer->info_str);

    b->down_ms = qemu_clock_get_ms(QEMU_CLOCK_VIRTUAL);
    b->timer = timer_new_ms(QEMU_CLOCK_VIRTUAL, link_bounce_poll, b);
    timer_mod(b->timer, b->down_ms + LINK_POLL_MS);
    return true;
}

static bool tap_child(VmforkRequest *req, int index, Error **errp)
{
    for (guint i = 0; req->taps && i < req->taps->len; i++) {
        VmforkTapPlan *plan = g_ptr_array_index(req->taps, i);
        g_autofree char *ifname = NULL;
        int fd = -1;

        if (plan->fds) {
            /* ours is taken over; the other children's are not ours */
            fd = plan->fds[index];
            plan->fds[index] = -1;
            for (int c = 0; c < req->count; c++) {
                if (plan->fds[c] >= 0) {
                    qemu_close(plan->fds[c]);
                    plan->fds[c] = -1;
                }
            }
        } else {
            ifname = vmfork_expand_template(plan->ifname_tmpl, index,
                                            getpid(), &error_abort);
        }
        trace_vmfork_child_tap(plan->nc->name, fd, ifname ? ifname : "");
        if (!tap_switch_after_fork(plan->nc, fd, ifname, errp)) {
            error_prepend(errp, "vmfork: netdev '%s': ", plan->nc->name);
            return false;
        }

    }
    return true;
}

/* After the accelerator is back: the link change interrupts the guest */
static bool tap_mac_child(VmforkRequest *req, int index, Error **errp)
{
    for (guint i = 0; req->taps && i < req->taps->len; i++) {
        VmforkTapPlan *plan = g_ptr_array_index(req->taps, i);

        if (plan->new_mac && !new_mac(plan->nc, i, errp)) {
            return false;
        }
    }
    return true;
}

void vmfork_taps_free(VmforkRequest *req)
{
    if (req->taps) {
        g_ptr_array_free(req->taps, true);      /* closes the fds left */
        req->taps = NULL;
    }
}

static const VmforkHandler tap_handler = {
    .name = "tap",
    .priority = VMFORK_PRIO_NET,
    .check = tap_check,
    .child = tap_child,
};

static const VmforkHandler tap_mac_handler = {
    .name = "tap-mac",
    .priority = VMFORK_PRIO_DEVICES,
    .child = tap_mac_child,
};

static void tap_register(void)
{
    vmfork_register_handler(&tap_handler);
    vmfork_register_handler(&tap_mac_handler);
}
type_init(tap_register);
