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
 * Parent and child now start them once the command is over, with their
 * vCPUs running, and a guest that notifies a device meanwhile takes the
 * slower path through its notify region (virtio_pci_defer_ioeventfds()).
 * The stop stays in the pause: a child must not inherit ioeventfds and
 * irqfds that under KVM belong to its parent's VM.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "hw/virtio/virtio-pci.h"
#include "vmfork-internal.h"

/* parent and child: the VM start that follows leaves them off */
static bool virtio_defer(VmforkRequest *req, Error **errp)
{
    virtio_pci_defer_ioeventfds();
    return true;
}

static bool virtio_defer_child(VmforkRequest *req, int index, Error **errp)
{
    return virtio_defer(req, errp);
}

static void virtio_start_bh(void *opaque)
{
    virtio_pci_start_deferred_ioeventfds();
}

/*
 * Once the command is over: a vCPU thread that the VM start woke up needs
 * the BQL to run its guest, and the command holds it until it waits for
 * its children (parent) or returns (child).  Also when the VM stays
 * paused (a template, a child made with start: false) or the fork failed,
 * whose VM start may have left them off too.
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
    .parent = virtio_defer,
    .child = virtio_defer_child,
    .abort = virtio_abort,
    .resumed = virtio_resumed,
};

static void virtio_register(void)
{
    vmfork_register_handler(&virtio_handler);
}
type_init(virtio_register);
