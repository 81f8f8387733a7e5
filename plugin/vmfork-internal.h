/*
 * vmfork: internal interfaces between the files of the subsystem
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef VMFORK_INTERNAL_H
#define VMFORK_INTERNAL_H

#include "qapi/qapi-types-vmfork.h"
#include "io/channel-buffer.h"

typedef struct VmforkTapPlan VmforkTapPlan;

/* One vmfork command, as validated in the parent before anything happens */
typedef struct VmforkRequest {
    int count;
    char *monitor_tmpl;         /* never NULL once validated */
    char *serial_tmpl;          /* NULL: default rules for serial0 */
    bool start;
    bool parent_stays_paused;
    char *overlay_dir;          /* NULL: no writable disk allowed */
    int64_t hostfwd_offset;     /* 0: children get no host forwards */
    GPtrArray *taps;            /* of VmforkTapPlan: tap.c */
} VmforkRequest;

/* Add a reason why the VM cannot be forked to a list of them */
void vmfork_blocker_add(GString *why, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

/* block.c: a writable overlay for the parent and each child */
void vmfork_disks_check(const char *overlay_dir, GString *why);
bool vmfork_disks_prepare(const VmforkRequest *req, Error **errp);
bool vmfork_disks_parent_switch(Error **errp);
bool vmfork_disks_child_switch(int index, Error **errp);
void vmfork_disks_abort(void);

/* tap.c: a tap of its own for each child */
bool vmfork_taps_parse(VmforkRequest *req, VmforkTapList *taps,
                       Error **errp);
void vmfork_taps_check(const VmforkRequest *req, GString *why);
bool vmfork_taps_take_fds(VmforkRequest *req, Error **errp);
bool vmfork_taps_child_switch(const VmforkRequest *req, int index,
                              Error **errp);
void vmfork_taps_child_new_macs(const VmforkRequest *req);

/* With several children, a template must give each its own name */
bool vmfork_check_template_per_child(const char *what, const char *tmpl,
                                     int count, Error **errp);

/* Expand "%i", "%p" and "%%" in a path template */
char *vmfork_expand_template(const char *tmpl, int index, pid_t pid,
                             Error **errp);

/* fd.c: make every inherited kernel object that is shared by fd private */
bool vmfork_fd_make_private(Error **errp);

/* child.c: the child's side of the command; false: the child must exit */
bool vmfork_child_setup(const VmforkRequest *req, int index,
                        QIOChannelBuffer *kvm_state, Error **errp);
/* ... and once its guest runs (or may run): its monitor */
bool vmfork_child_start_monitor(const VmforkRequest *req, int index,
                                Error **errp);

/* vmfork.c: new vCPU threads, and under KVM a new VM with the saved state */
bool vmfork_accel_child(QIOChannelBuffer *kvm_state, Error **errp);

/* vmfork.c: a new VM generation ID and clone id for the guest */
bool vmfork_child_new_identity(Error **errp);

/* vmfork.c: fresh worker pools for every AioContext of the child */
void vmfork_reset_thread_pools(void);

/* fault.c: the faults VMFORK_FAULT asks for (reliability tests) */
void vmfork_fault_child_phase(const char *phase);
bool vmfork_fault_fork_fails(int index);

#endif
