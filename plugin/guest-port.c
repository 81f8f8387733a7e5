/*
 * vmfork-guest: the device through which a guest asks to be forked
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An ISA device of 16 I/O ports at @iobase (default 0x5f0), four 32-bit
 * registers.  A guest finds the port in the fw_cfg file
 * opt/vmfork/guest-port (little-endian 16 bits, as pvpanic's
 * etc/pvpanic-port), an OS driver through the DSDT's device VMF0001; a
 * freestanding guest may use the default.  The ABI (the contract with
 * guests: docs/guest-abi.md):
 *
 *   +0x0  SIGNATURE  read: 0x4b524f46, "FORK" in memory order
 *   +0x4  REQUEST    read: ask to be forked; the value is the answer:
 *                    0 accepted (now pending), 1 denied, 2 busy (an
 *                    earlier request is pending or not acknowledged)
 *   +0x8  STATUS     read: 0 idle, 1 pending, 2 done, 3 failed
 *   +0xc  RESULT     read: done: 0 in the parent, the clone ID in a
 *                    child; failed: 3 cancelled (the VM ran again
 *                    without a fork), 4 the fork failed.  Reading it
 *                    when done or failed acknowledges: the status is
 *                    idle again.
 *
 * Only aligned 32-bit reads are defined: other sizes read 0 (the memory
 * core refuses them), writes are ignored.  A read, not a write, makes the
 * request, so that each of several vCPUs gets its own answer.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qemu/module.h"
#include "hw/isa/isa.h"
#include "hw/qdev-properties.h"
#include "hw/acpi/acpi_aml_interface.h"
#include "hw/nvram/fw_cfg.h"
#include "migration/vmstate.h"
#include "qom/object.h"
#include "vmfork-internal.h"

#define TYPE_VMFORK_GUEST "vmfork-guest"
OBJECT_DECLARE_SIMPLE_TYPE(VmforkGuestDevice, VMFORK_GUEST)

#define VMFORK_GUEST_SIGNATURE  0x4b524f46
#define VMFORK_GUEST_IO_SIZE    16

enum {
    REG_SIGNATURE = 0x0,
    REG_REQUEST = 0x4,
    REG_STATUS = 0x8,
    REG_RESULT = 0xc,
};

struct VmforkGuestDevice {
    ISADevice parent_obj;
    MemoryRegion io;
    uint16_t iobase;
};

static uint64_t vmfork_guest_read(void *opaque, hwaddr addr, unsigned size)
{
    switch (addr) {
    case REG_SIGNATURE:
        return VMFORK_GUEST_SIGNATURE;
    case REG_REQUEST:
        return vmfork_guest_request();
    case REG_STATUS:
        return vmfork_guest_state()->status;
    case REG_RESULT:
        return vmfork_guest_take_result();
    }
    return UINT32_MAX;
}

static void vmfork_guest_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
}

static const MemoryRegionOps vmfork_guest_ops = {
    .read = vmfork_guest_read,
    .write = vmfork_guest_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
    .impl = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

static const VMStateDescription vmstate_vmfork_guest = {
    .name = "vmfork-guest",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(status, VmforkGuest),
        VMSTATE_UINT32(result, VmforkGuest),
        VMSTATE_END_OF_LIST()
    },
};

static void vmfork_guest_realize(DeviceState *dev, Error **errp)
{
    VmforkGuestDevice *s = VMFORK_GUEST(dev);
    FWCfgState *fw_cfg = fw_cfg_find();

    if (!vmfork_guest_attach(OBJECT(dev), errp)) {
        return;
    }
    if (fw_cfg) {
        uint16_t *port = g_new(uint16_t, 1);

        *port = cpu_to_le16(s->iobase);
        fw_cfg_add_file(fw_cfg, "opt/vmfork/guest-port", port, sizeof(*port));
    }
    memory_region_init_io(&s->io, OBJECT(dev), &vmfork_guest_ops, s,
                          "vmfork-guest", VMFORK_GUEST_IO_SIZE);
    isa_register_ioport(ISA_DEVICE(dev), &s->io, s->iobase);
    vmstate_register_any(VMSTATE_IF(dev), &vmstate_vmfork_guest,
                         vmfork_guest_state());
}

static void vmfork_guest_unrealize(DeviceState *dev)
{
    vmstate_unregister(VMSTATE_IF(dev), &vmstate_vmfork_guest,
                       vmfork_guest_state());
    vmfork_guest_detach(OBJECT(dev));
}

static void vmfork_guest_device_reset(DeviceState *dev)
{
    vmfork_guest_reset();
}

static void vmfork_guest_get_count(Object *obj, Visitor *v, const char *name,
                                   void *opaque, Error **errp)
{
    uint64_t value = *(uint64_t *)opaque;

    visit_type_uint64(v, name, &value, errp);
}

static void vmfork_guest_init(Object *obj)
{
    VmforkGuest *st = vmfork_guest_state();

    object_property_add(obj, "requests", "uint64", vmfork_guest_get_count,
                        NULL, NULL, &st->requests);
    object_property_add(obj, "denied", "uint64", vmfork_guest_get_count,
                        NULL, NULL, &st->denied);
}

static void vmfork_guest_build_aml(AcpiDevAmlIf *adev, Aml *scope)
{
    VmforkGuestDevice *s = VMFORK_GUEST(adev);
    Aml *dev = aml_device("VMFK");
    Aml *crs = aml_resource_template();

    aml_append(dev, aml_name_decl("_HID", aml_string("VMF0001")));
    aml_append(crs, aml_io(AML_DECODE16, s->iobase, s->iobase, 1,
                           VMFORK_GUEST_IO_SIZE));
    aml_append(dev, aml_name_decl("_CRS", crs));
    aml_append(dev, aml_name_decl("_STA", aml_int(0xF)));
    aml_append(scope, dev);
}

static const Property vmfork_guest_properties[] = {
    DEFINE_PROP_UINT16("iobase", VmforkGuestDevice, iobase, 0x5f0),
};

static void vmfork_guest_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    AcpiDevAmlIfClass *adevc = ACPI_DEV_AML_IF_CLASS(klass);

    dc->desc = "lets the guest ask to be forked (vmfork)";
    dc->realize = vmfork_guest_realize;
    dc->unrealize = vmfork_guest_unrealize;
    device_class_set_legacy_reset(dc, vmfork_guest_device_reset);
    device_class_set_props(dc, vmfork_guest_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
    adevc->build_dev_aml = vmfork_guest_build_aml;
}

static const TypeInfo vmfork_guest_info = {
    .name = TYPE_VMFORK_GUEST,
    .parent = TYPE_ISA_DEVICE,
    .instance_size = sizeof(VmforkGuestDevice),
    .instance_init = vmfork_guest_init,
    .class_init = vmfork_guest_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_ACPI_DEV_AML_IF },
        { },
    },
};

static void vmfork_guest_register_types(void)
{
    type_register_static(&vmfork_guest_info);
}
type_init(vmfork_guest_register_types)
