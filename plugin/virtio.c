/*
 * vmfork: virtio-pci devices' ioeventfds
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A VM stop turns the ioeventfds of virtio-pci devices off and a VM start
 * turns them on again, and for a device with an IOThread (virtio-blk and
 * virtio-scsi as libvirt writes them) that is the longest part of the
 * parent's pause: starting moves the device's notifiers and its disk's
 * nodes to the IOThread and commits a memory transaction, right after
 * fork(), when every page that it writes is a copy-on-write fault.
 * The parent now starts them from a bottom half: its vCPU threads need
 * the BQL to leave their wait, so its guest runs only once the command
 * lets the BQL go, returning to the main loop to wait for the children,
 * where the bottom half runs; a guest that notifies a device meanwhile
 * takes the slower path through its notify region
 * (virtio_pci_defer_ioeventfds()).  A child starts them as before:
 * its command holds the BQL until it returns, and its first main loop
 * iteration would run a bottom half before its vCPU threads could take
 * the BQL.  The stop stays in the pause: a child must not inherit
 * ioeventfds and irqfds that under KVM belong to its parent's VM.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "hw/virtio/virtio-pci.h"
#include "vmfork-internal.h"

/* The parent's VM start that follows leaves them off */
static bool virtio_parent(VmforkRequest *req, Error **errp)
{
    virtio_pci_defer_ioeventfds();
    return true;
}

static void virtio_start_bh(void *opaque)
{
    virtio_pci_start_deferred_ioeventfds();
}

/*
 * Once the command is back in the main loop (its wait for the children
 * is a coroutine's: vmfork.c), after a poll.  Also when
 * the parent stays paused (a template) or the fork failed, whose VM start
 * may have left them off too.  (In a child there is nothing to start.)
 */
static bool virtio_resumed(VmforkRequest *req, Error **errp)
{
    aio_bh_schedule_oneshot(qemu_get_aio_context(), virtio_start_bh, NULL);
    return true;
}

static void virtio_abort(VmforkRequest *req)
{
    virtio_pci_start_deferred_ioeventfds();
}

static const VmforkHandler virtio_handler = {
    .name = "virtio",
    .priority = VMFORK_PRIO_DEVICES,
    .parent = virtio_parent,
    .abort = virtio_abort,
    .resumed = virtio_resumed,
};

static void virtio_register(void)
{
    vmfork_register_handler(&virtio_handler);
}
type_init(virtio_register);
