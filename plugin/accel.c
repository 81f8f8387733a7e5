/*
 * vmfork: the accelerator in a child: vCPU threads, and under KVM a new VM
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The child has none of the parent's vCPU threads: it creates them again
 * (under TCG they adopt the parent's translation contexts).  Under KVM the
 * parent's VM cannot be used from the child at all (the kernel ties it to
 * the parent's mm): the child builds a new one on the inherited /dev/kvm
 * fd and loads into it the state that lives in the kernel.  The KVM fds
 * are this handler's.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/units.h"
#include "exec/memory.h"
#include "io/channel-buffer.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "qom/object.h"
#include "system/accel-ops.h"
#include "system/cpus.h"
#include "system/kvm.h"
#include "system/tcg.h"
#include "vmfork-internal.h"

/*
 * Under KVM some of the VM's state lives in the kernel, in a VM that the
 * child cannot use: the vCPU registers and the in-kernel LAPIC, PIC and
 * IOAPIC.  The parent saves just these sections into memory, which the
 * child inherits and loads into its new VM.  (The in-kernel PIT and the
 * clock are saved by vm_stop() and restored by vm_start() already.)
 * Everything else the child has in its copy of the heap, as under TCG.
 */
static const char *const kvm_kernel_state_sections[] = {
    "cpu", "apic", "i8259", "ioapic", "kvm-tpr-opt", NULL
};

static struct {
    QIOChannelBuffer *bioc;
    QEMUFile *out;              /* closing it would free bioc's data */
} kernel_state;

static void accel_check(VmforkCheck *chk)
{
    if (kvm_enabled()) {
        Error *err = NULL;

        if (!kvm_can_fork(&err)) {
            vmfork_check_refuse(chk, "%s", error_get_pretty(err));
            error_free(err);
        }
        vmfork_check_claim_fd_path(chk, "/dev/kvm", "KVM");
        vmfork_check_claim_fd_prefix(chk, "anon_inode:kvm-", "KVM");
    } else if (!tcg_enabled()) {
        vmfork_check_refuse(chk, "only the KVM and TCG accelerators can be "
                            "forked");
    } else if (object_property_find(OBJECT(current_accel()), "split-wx") &&
               object_property_get_bool(OBJECT(current_accel()), "split-wx",
                                        NULL)) {
        vmfork_check_refuse(chk, "TCG split-wx maps the code buffer shared, "
                            "so parent and child would translate into one "
                            "buffer");
    }
}

static bool accel_paused(VmforkRequest *req, Error **errp)
{
    int ret;

    if (!kvm_enabled()) {
        return true;
    }
    kernel_state.bioc = qio_channel_buffer_new(64 * KiB);
    kernel_state.out = qemu_file_new_output(QIO_CHANNEL(kernel_state.bioc));
    ret = qemu_save_device_state_subset(kernel_state.out,
                                        kvm_kernel_state_sections);
    if (ret >= 0) {
        ret = qemu_fflush(kernel_state.out);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vmfork: cannot save the KVM state");
        return false;
    }
    return true;
}

static void accel_abort(VmforkRequest *req)
{
    if (kernel_state.out) {
        qemu_fclose(kernel_state.out);
    }
    kernel_state.out = NULL;
    kernel_state.bioc = NULL;
}

static bool accel_parent(VmforkRequest *req, Error **errp)
{
    accel_abort(req);
    return true;
}

static bool accel_child(VmforkRequest *req, int index, Error **errp)
{
    QEMUFile *f;
    int ret;

    if (!kernel_state.bioc) {
        cpus_restart_vcpus_after_fork();
        return true;
    }
    if (!kvm_rebuild_after_fork(errp)) {
        return false;
    }
    cpus_restart_vcpus_after_fork();
    qio_channel_io_seek(QIO_CHANNEL(kernel_state.bioc), 0, SEEK_SET,
                        &error_abort);
    f = qemu_file_new_input(QIO_CHANNEL(kernel_state.bioc));
    /*
     * One memory transaction: loading kvm-tpr-opt maps the vapic option
     * ROM out and back in, which would delete and re-create memory slots
     * of the new VM (milliseconds each under some hypervisors) only to
     * end where it started.
     */
    memory_region_transaction_begin();
    ret = qemu_load_device_state(f);
    memory_region_transaction_commit();
    qemu_fclose(f);
    accel_abort(req);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vmfork: cannot load the KVM state");
        return false;
    }
    return true;
}

static const VmforkHandler accel_handler = {
    .name = "accel",
    .priority = VMFORK_PRIO_ACCEL,
    .check = accel_check,
    .paused = accel_paused,
    .parent = accel_parent,
    .child = accel_child,
    .abort = accel_abort,
};

static void accel_register(void)
{
    vmfork_register_handler(&accel_handler);
}
type_init(accel_register);
