/*
 * vmfork: guest memory and devices
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Guest RAM is inherited copy-on-write; RAM that is shared memory would
 * be written by parent and children alike and is refused.  Devices that
 * drive host hardware or kernel backends directly are refused by type
 * (they hold fds the safety net would refuse too, but this names the
 * device).  A TPM is refused: its state lives in a swtpm process (or a
 * host TPM) that parent and child would share.  Shareable images
 * (qemu_pixman_image_new_shareable(): display surfaces, virtio-gpu
 * resources) are shared memory by design: each child gets private
 * copies.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "exec/cpu-common.h"
#include "qom/object.h"
#include "hw/qdev-core.h"
#include "system/system.h"
#include "ui/console.h"
#ifdef CONFIG_TPM
#include "qapi/qapi-commands-tpm.h"
#endif
#include "vmfork-internal.h"

static int check_ram_block(RAMBlock *rb, void *opaque)
{
    VmforkCheck *chk = opaque;

    if (qemu_ram_is_shared(rb)) {
        vmfork_check_refuse(chk, "RAM block '%s' is shared memory, which "
                            "parent and child would both write (use a "
                            "private memory backend)",
                            qemu_ram_get_idstr(rb));
    } else if (qemu_ram_pagesize(rb) > qemu_real_host_page_size()) {
        /*
         * A private hugetlbfs mapping: the parent owns the pool's
         * reservation, and when a copy-on-write finds the pool empty the
         * kernel takes the page from the children (unmap_ref_private()),
         * which die of SIGBUS on their next access, or kills the child
         * that wrote.  A fork would run only as long as the pool lasts.
         */
        vmfork_check_refuse(chk, "RAM block '%s' is on hugetlbfs (%zu KiB "
                            "pages): each page that a child or its parent "
                            "writes after the fork takes a huge page from "
                            "the host's pool, and once the pool is empty "
                            "the kernel kills children with SIGBUS (use "
                            "anonymous memory: transparent huge pages fork "
                            "well)", qemu_ram_get_idstr(rb),
                            qemu_ram_pagesize(rb) >> 10);
    }
    /* A private mapping of a file or memfd is copied on write */
    vmfork_check_claim_fd(chk, qemu_ram_get_fd(rb), "RAM block '%s'",
                          qemu_ram_get_idstr(rb));
    return 0;
}

/*
 * The devices refused by type, kept up to date as devices are realized
 * and unrealized (hot-plug included), so that a check does not walk the
 * whole QOM tree (0.15 ms of each command, about a thousand objects).
 */
static GPtrArray *refused_devices;

static const char *device_refusal(DeviceState *dev)
{
    const char *type = object_get_typename(OBJECT(dev));

    if (g_str_has_prefix(type, "vfio") || g_str_has_prefix(type, "vhost-") ||
        g_str_has_prefix(type, "ivshmem") || !strcmp(type, "usb-host")) {
        return "owns host resources that a child cannot share or re-create";
    }
    if (g_str_has_prefix(type, "qxl")) {
        return "is a SPICE display, whose worker threads a child cannot "
               "re-create (use VNC)";
    }
    return NULL;
}

static void devices_realize(DeviceListener *listener, DeviceState *dev)
{
    if (device_refusal(dev)) {
        g_ptr_array_add(refused_devices, dev);
    }
}

static void devices_unrealize(DeviceListener *listener, DeviceState *dev)
{
    g_ptr_array_remove(refused_devices, dev);
}

static DeviceListener devices_listener = {
    .realize = devices_realize,
    .unrealize = devices_unrealize,
};

/* Once the machine is made: it replays the devices realized so far */
static void devices_machine_done(Notifier *n, void *opaque)
{
    refused_devices = g_ptr_array_new();
    device_listener_register(&devices_listener);
}

static Notifier devices_machine_done_notifier = {
    .notify = devices_machine_done,
};

static void check_devices(VmforkCheck *chk)
{
    for (guint i = 0; i < refused_devices->len; i++) {
        DeviceState *dev = refused_devices->pdata[i];

        vmfork_check_refuse(chk, "device '%s' (%s) %s",
                            object_get_canonical_path_component(OBJECT(dev)),
                            object_get_typename(OBJECT(dev)),
                            device_refusal(dev));
    }
}

static void check_tpms(VmforkCheck *chk)
{
#ifdef CONFIG_TPM
    TPMInfoList *tpms = qmp_query_tpm(NULL);

    for (TPMInfoList *l = tpms; l; l = l->next) {
        vmfork_check_refuse(chk, "TPM '%s' (%s, %s backend) keeps its state "
                            "outside QEMU, which a child would share with "
                            "the parent", l->value->id,
                            TpmModel_str(l->value->model),
                            TpmType_str(l->value->options->type));
    }
    qapi_free_TPMInfoList(tpms);
#endif
}

static void claim_shareable_image(int fd, void *opaque)
{
    vmfork_check_claim_fd(opaque, fd, "a shareable image (display memory)");
}

static void devices_check(VmforkCheck *chk)
{
    check_tpms(chk);
    qemu_ram_foreach_block(check_ram_block, chk);
    check_devices(chk);
    /* The child copies them (below) */
    qemu_pixman_shareable_foreach(claim_shareable_image, chk);
}

/*
 * -overcommit mem-lock (libvirt's <locked/>): a child does not inherit
 * its parent's memory locks (mlockall(2)), so it takes them again.  On
 * fault, whatever the option says: MCL_CURRENT alone populates a private
 * writable mapping with write faults, which would copy into the child all
 * of the guest RAM it shares with its parent; with MCL_ONFAULT the pages
 * it has are locked, shared ones included, and so is each page it faults
 * in later.
 */
static bool relock_memory(Error **errp)
{
    if (should_mlock(mlock_state) &&
        mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot lock the child's "
                         "memory as -overcommit mem-lock asks");
        return false;
    }
    return true;
}

static bool devices_child(VmforkRequest *req, int index, Error **errp)
{
    return relock_memory(errp) && qemu_pixman_unshare_after_fork(errp);
}

static const VmforkHandler devices_handler = {
    .name = "devices",
    .priority = VMFORK_PRIO_DEVICES,
    .check = devices_check,
    .child = devices_child,
};

static void devices_register(void)
{
    qemu_add_machine_init_done_notifier(&devices_machine_done_notifier);
    vmfork_register_handler(&devices_handler);
}
type_init(devices_register);
