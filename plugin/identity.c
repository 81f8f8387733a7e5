/*
 * vmfork: the identity a guest sees, new in each clone
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The VM generation ID changes in each child (a vmgenid device notifies
 * the guest: Linux reseeds its RNG), and the fw_cfg file
 * opt/vmfork/clone-id tells the guest its clone id and generation.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qom/object.h"
#include "hw/nvram/fw_cfg.h"
#include "system/system.h"
#include "vmfork-internal.h"

/*
 * fw_cfg file opt/vmfork/clone-id: "CLONE-ID GENERATION\n" as zero-padded
 * decimals.  Its size is fixed (a guest lists fw_cfg files once), its
 * contents are read from this buffer at the time of each guest read.
 */
#define VMFORK_FW_CFG_FILE "opt/vmfork/clone-id"
static char vmfork_fw_cfg_id[32 + 1];

void vmfork_identity_set(int64_t clone_id, int64_t generation)
{
    snprintf(vmfork_fw_cfg_id, sizeof(vmfork_fw_cfg_id),
             "%020" PRId64 " %010" PRId64 "\n", clone_id, generation);
}

static void identity_machine_done(Notifier *n, void *opaque)
{
    FWCfgState *fw_cfg = fw_cfg_find();

    if (fw_cfg) {
        vmfork_identity_set(0, 0);
        fw_cfg_add_file(fw_cfg, VMFORK_FW_CFG_FILE, vmfork_fw_cfg_id,
                        sizeof(vmfork_fw_cfg_id) - 1);
    }
}

static Notifier identity_machine_done_notifier = {
    .notify = identity_machine_done,
};

static bool identity_child(VmforkRequest *req, int index, Error **errp)
{
    Object *vmgenid = object_resolve_path_type("", "vmgenid", NULL);

    return !vmgenid || object_property_set_str(vmgenid, "guid", "auto", errp);
}

static const VmforkHandler identity_handler = {
    .name = "identity",
    .priority = VMFORK_PRIO_DEVICES,
    .child = identity_child,
};

static void identity_register(void)
{
    qemu_add_machine_init_done_notifier(&identity_machine_done_notifier);
    vmfork_register_handler(&identity_handler);
}
type_init(identity_register);
