/*
 * vmfork: the identity a guest sees, new in each clone
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The VM generation ID changes in each child (a vmgenid device notifies
 * the guest: Linux reseeds its RNG), and the fw_cfg file
 * opt/vmfork/clone-id tells the guest its clone id and generation.  A
 * migrated clone keeps all three.
 *
 * A child inherits its parent's pseudo-random generators too.  Its GUID
 * comes from the kernel's (getrandom()), not from the vmgenid device's
 * "auto", which draws from GLib's global PRNG: with its parent's state,
 * every child of a parent had the same GUID, and their guests reseeded
 * their RNGs with the same input.  GLib's PRNG is reseeded as well, for
 * whatever else draws from it in the child ("auto" later on, generated
 * ids).
 *
 * Under TCG a child runs on the code its parent translated, and translates
 * whatever guest code its parent never ran.  The first thing a clone's
 * guest does is to handle its VM generation ID notification (the ACPI GPE,
 * the AML method that notifies the device, the guest's driver): code that
 * a parent never ran, about 1.4 ms of translation in each Linux child, a
 * fifth of its clone latency.  So a parent that runs on after its first
 * fork is sent one notification with its GUID unchanged, as a "qom-set"
 * of the unchanged guid property would: its guest runs that code once
 * (Linux and Windows compare the GUID and change nothing), and the later
 * children find it translated.  A paused template is not warmed: its guest
 * does not run before its children.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "qemu/uuid.h"
#include "crypto/random.h"
#include "qom/object.h"
#include "migration/vmstate.h"
#include "hw/nvram/fw_cfg.h"
#include "system/system.h"
#include "system/tcg.h"
#include "vmfork-internal.h"

/*
 * fw_cfg file opt/vmfork/clone-id: "CLONE-ID GENERATION\n" as zero-padded
 * decimals.  Its size is fixed (a guest lists fw_cfg files once), its
 * contents are read from this buffer at the time of each guest read.
 */
#define VMFORK_FW_CFG_FILE "opt/vmfork/clone-id"
static char vmfork_fw_cfg_id[32 + 1];

/*
 * What a clone's identity is: it moves with the clone when the clone is
 * migrated (the section "vmfork-identity", sent by clones only), so that
 * on another host it has the same clone id, generation and VM generation
 * ID.  The destination QEMU runs the same command line, whose vmgenid
 * GUID is its own until the clone's arrives.
 */
typedef struct VmforkIdentity {
    int64_t clone_id;
    int64_t generation;
    uint8_t guid[UUID_STR_LEN];         /* "" without a vmgenid device */
} VmforkIdentity;

static VmforkIdentity identity;

/* The vmgenid device (not hot-pluggable: set once the machine is made) */
static Object *vmgenid;

/* This guest has handled a VM generation ID notification (see above) */
static bool vmgenid_warm;

void vmfork_identity_set(int64_t clone_id, int64_t generation)
{
    identity.clone_id = clone_id;
    identity.generation = generation;
    snprintf(vmfork_fw_cfg_id, sizeof(vmfork_fw_cfg_id),
             "%020" PRId64 " %010" PRId64 "\n", clone_id, generation);
}

bool vmfork_identity_has_vmgenid(void)
{
    return vmgenid;
}

static bool identity_needed(void *opaque)
{
    return identity.clone_id != 0;
}

static int identity_pre_save(void *opaque)
{
    g_autofree char *guid = vmgenid ?
        object_property_get_str(vmgenid, "guid", NULL) : NULL;

    memset(identity.guid, 0, sizeof(identity.guid));
    if (guid) {
        pstrcpy((char *)identity.guid, sizeof(identity.guid), guid);
    }
    return 0;
}

/*
 * The clone arrived: take its identity.  Its guest already holds its GUID
 * (in its RAM); setting the property makes vmgenid write the same value,
 * whichever of the two sections loads first, so the guest sees no change.
 */
static int identity_post_load(void *opaque, int version_id)
{
    Error *err = NULL;

    identity.guid[sizeof(identity.guid) - 1] = 0;
    vmgenid_warm = true;        /* its guest is notified below */
    vmfork_identity_migrated(identity.clone_id, identity.generation);
    if (vmgenid && identity.guid[0] &&
        !object_property_set_str(vmgenid, "guid", (char *)identity.guid,
                                 &err)) {
        error_report_err(err);
        return -EINVAL;
    }
    return 0;
}

static const VMStateDescription vmstate_vmfork_identity = {
    .name = "vmfork-identity",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = identity_needed,
    .pre_save = identity_pre_save,
    .post_load = identity_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_INT64(clone_id, VmforkIdentity),
        VMSTATE_INT64(generation, VmforkIdentity),
        VMSTATE_BUFFER(guid, VmforkIdentity),
        VMSTATE_END_OF_LIST()
    },
};

static void identity_machine_done(Notifier *n, void *opaque)
{
    FWCfgState *fw_cfg = fw_cfg_find();

    vmfork_identity_set(0, 0);
    vmgenid = object_resolve_path_type("", "vmgenid", NULL);
    if (fw_cfg) {
        fw_cfg_add_file(fw_cfg, VMFORK_FW_CFG_FILE, vmfork_fw_cfg_id,
                        sizeof(vmfork_fw_cfg_id) - 1);
    }
    vmstate_register(NULL, 0, &vmstate_vmfork_identity, &identity);
}

static Notifier identity_machine_done_notifier = {
    .notify = identity_machine_done,
};

static bool identity_child(VmforkRequest *req, int index, Error **errp)
{
    QemuUUID uuid;
    guint32 seed;
    g_autofree char *guid = NULL;

    if (qcrypto_random_bytes(&seed, sizeof(seed), errp) < 0) {
        return false;
    }
    g_random_set_seed(seed);
    vmgenid_warm = true;        /* it handles its own notification */
    if (!vmgenid) {
        return true;
    }
    if (qcrypto_random_bytes(uuid.data, sizeof(uuid.data), errp) < 0) {
        return false;
    }
    /* A random (version 4) UUID, as qemu_uuid_generate() makes one */
    uuid.data[6] = (uuid.data[6] & 0x0f) | 0x40;
    uuid.data[8] = (uuid.data[8] & 0x3f) | 0x80;
    guid = qemu_uuid_unparse_strdup(&uuid);
    return object_property_set_str(vmgenid, "guid", guid, errp);
}

/* After the first fork of a parent that runs on: warm its guest (above) */
static bool identity_parent(VmforkRequest *req, Error **errp)
{
    g_autofree char *guid = NULL;

    if (vmgenid_warm || !vmgenid || !tcg_enabled() ||
        !req->was_running || req->parent_stays_paused) {
        return true;
    }
    vmgenid_warm = true;
    guid = object_property_get_str(vmgenid, "guid", &error_abort);
    object_property_set_str(vmgenid, "guid", guid, &error_abort);
    return true;
}

static const VmforkHandler identity_handler = {
    .name = "identity",
    .priority = VMFORK_PRIO_DEVICES,
    .parent = identity_parent,
    .child = identity_child,
};

static void identity_register(void)
{
    qemu_add_machine_init_done_notifier(&identity_machine_done_notifier);
    vmfork_register_handler(&identity_handler);
}
type_init(identity_register);
