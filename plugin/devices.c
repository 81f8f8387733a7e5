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
 * host TPM) that parent and child would share.  Display surfaces are
 * shared memory by design
 * (qemu_pixman_image_new_shareable()): each child gets private copies.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "exec/cpu-common.h"
#include "qom/object.h"
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
    } else {
        /* A private mapping of a file or memfd: copied on write */
        vmfork_check_claim_fd(chk, qemu_ram_get_fd(rb), "RAM block '%s'",
                              qemu_ram_get_idstr(rb));
    }
    return 0;
}

static int check_device(Object *obj, void *opaque)
{
    VmforkCheck *chk = opaque;
    const char *type = object_get_typename(obj);

    if (!object_dynamic_cast(obj, "device")) {
        return 0;
    }
    if (g_str_has_prefix(type, "vfio") || g_str_has_prefix(type, "vhost-") ||
        g_str_has_prefix(type, "ivshmem") || !strcmp(type, "usb-host")) {
        vmfork_check_refuse(chk, "device '%s' (%s) owns host resources that "
                            "a child cannot share or re-create",
                            object_get_canonical_path_component(obj), type);
    }
    if (g_str_has_prefix(type, "qxl")) {
        vmfork_check_refuse(chk, "device '%s' (%s) is a SPICE display, "
                            "whose worker threads a child cannot re-create "
                            "(use VNC)",
                            object_get_canonical_path_component(obj), type);
    }
    return 0;
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

static void devices_check(VmforkCheck *chk)
{
    check_tpms(chk);
    qemu_ram_foreach_block(check_ram_block, chk);
    object_child_foreach_recursive(object_get_root(), check_device, chk);
    /* qemu_create_displaysurface(): the child copies them (below) */
    vmfork_check_claim_fd_prefix(chk, "/memfd:displaysurface",
                                 "display surfaces");
}

static bool devices_child(VmforkRequest *req, int index, Error **errp)
{
    return qemu_console_unshare_surfaces_after_fork(errp);
}

static const VmforkHandler devices_handler = {
    .name = "devices",
    .priority = VMFORK_PRIO_DEVICES,
    .check = devices_check,
    .child = devices_child,
};

static void devices_register(void)
{
    vmfork_register_handler(&devices_handler);
}
type_init(devices_register);
