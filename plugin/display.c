/*
 * vmfork: displays in a child
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * VNC: the child's displays drop the parent's clients and listeners
 * (never a hang on a client connected at the fork: the child starts an
 * encoding worker of its own) and listen nowhere until display-update
 * gives them an address on the child's monitor.
 *
 * SPICE is refused: its server runs a worker thread per display that a
 * child can neither re-create nor do without (libspice-server has no way
 * to start one again).
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qom/object.h"
#include "ui/console.h"
#include "ui/qemu-spice-module.h"
#include "vmfork-internal.h"

#ifdef CONFIG_VNC
static void claim_vnc_socket(int fd, const char *id, void *opaque)
{
    vmfork_check_claim_fd(opaque, fd, "VNC display '%s'", id);
}
#endif

static void display_check(VmforkCheck *chk)
{
    /* A qxl device is refused by name with the devices (devices.c) */
    if (using_spice) {
        vmfork_check_refuse(chk, "the SPICE server (-spice) runs worker "
                            "threads that a child cannot re-create (use "
                            "VNC)");
    }
#ifdef CONFIG_VNC
    vnc_display_foreach_socket(claim_vnc_socket, chk);
#endif
}

static bool display_child(VmforkRequest *req, int index, Error **errp)
{
#ifdef CONFIG_VNC
    vnc_display_forget_after_fork();
#endif
    return true;
}

static const VmforkHandler display_handler = {
    .name = "display",
    .priority = VMFORK_PRIO_DEVICES,
    .check = display_check,
    .child = display_child,
};

static void display_register(void)
{
    vmfork_register_handler(&display_handler);
}
type_init(display_register);
