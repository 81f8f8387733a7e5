/*
 * vmfork: netdevs, and user networking in a child
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Only netdevs with a rule fork: user networking (each child gets a stack
 * of its own, its host forwards moved by 'hostfwd-offset'), hubs, and
 * taps (tap.c).  Any other netdev type is refused by name.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-types-net.h"
#include "qemu/module.h"
#include "net/net.h"
#include "net/slirp.h"
#include "vmfork-internal.h"

#ifdef CONFIG_SLIRP
static void claim_slirp_socket(int fd, const char *netdev, void *opaque)
{
    vmfork_check_claim_fd(opaque, fd, "user netdev '%s'", netdev);
}
#endif

static void net_check(VmforkCheck *chk)
{
    NetClientState *ncs[MAX_QUEUE_NUM];
    int n = qemu_find_net_clients_except(NULL, ncs, NET_CLIENT_DRIVER_NIC,
                                         MAX_QUEUE_NUM);
#ifdef CONFIG_SLIRP
    Error *err = NULL;

    if (!net_slirp_can_fork(&err) ||
        !net_slirp_check_port_offset(chk->req->hostfwd_offset,
                                     chk->req->count, &err)) {
        vmfork_check_refuse(chk, "%s", error_get_pretty(err));
        error_free(err);
    }
    /* The child replaces each stack, its sockets with it */
    net_slirp_foreach_socket(claim_slirp_socket, chk);
#endif

    for (int i = 0; i < n; i++) {
        NetClientDriver type = ncs[i]->info->type;

        if (type != NET_CLIENT_DRIVER_USER &&
            type != NET_CLIENT_DRIVER_HUBPORT &&
            type != NET_CLIENT_DRIVER_TAP) {
            vmfork_check_refuse(chk, "netdev '%s' (%s) cannot be forked "
                                "(only user networking and taps can)",
                                ncs[i]->name, NetClientDriver_str(type));
        }
    }
}

static bool net_child(VmforkRequest *req, int index, Error **errp)
{
#ifdef CONFIG_SLIRP
    /* Its own user-mode network, host forwards moved by the offset */
    return net_slirp_rebuild_after_fork(req->hostfwd_offset * (index + 1),
                                        errp);
#else
    return true;
#endif
}

#ifdef CONFIG_SLIRP
static void add_hostfwd(const char *netdev, bool udp, const char *host_addr,
                        int host_port, int guest_port, void *opaque)
{
    VmforkHostfwdList ***tail = opaque;
    VmforkHostfwd *fwd = g_new0(VmforkHostfwd, 1);

    fwd->netdev = g_strdup(netdev);
    fwd->protocol = g_strdup(udp ? "udp" : "tcp");
    fwd->host_address = g_strdup(host_addr);
    fwd->host_port = host_port;
    fwd->guest_port = guest_port;
    QAPI_LIST_APPEND(*tail, fwd);
}
#endif

/* In the parent: where the host reaches child @index's guest */
static void net_child_info(VmforkRequest *req, int index, VmforkChild *info)
{
#ifdef CONFIG_SLIRP
    VmforkHostfwdList **tail = &info->hostfwds;

    if (req->hostfwd_offset) {
        net_slirp_foreach_hostfwd(req->hostfwd_offset * (index + 1),
                                  add_hostfwd, &tail);
        info->has_hostfwds = info->hostfwds != NULL;
    }
#endif
}

static const VmforkHandler net_handler = {
    .name = "net",
    .priority = VMFORK_PRIO_NET,
    .check = net_check,
    .child = net_child,
    .child_info = net_child_info,
};

static void net_register(void)
{
    vmfork_register_handler(&net_handler);
}
type_init(net_register);
