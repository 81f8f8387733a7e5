/*
 * vmfork: forks the guest asks for (its freeze point)
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A guest asks to be forked through the vmfork-guest device (guest-port.c
 * carries the ABI).  A request is answered at once (accepted, denied, or
 * busy while an earlier one is not acknowledged), then it is pending until
 * the host acts as the policy (vmfork-guest-policy) says:
 *
 * - wait: the VM pauses, a template, and a "vmfork" command forks it;
 * - fork: the VM is forked at once, with the arguments of the policy;
 * - deny: the request is refused.
 *
 * Whichever fork serves a pending request completes it: the parent's
 * answer is 0, each child's its clone ID, as fork(2) returns.  A paused
 * VM that runs again without having been forked answers "cancelled".  The
 * guest spins on the status while its request is pending, for the few
 * microseconds until the VM pauses.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-commands-vmfork.h"
#include "qapi/qapi-events-vmfork.h"
#include "qapi/qapi-visit-vmfork.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qom/object.h"
#include "system/runstate.h"
#include "system/vmfork.h"
#include "vmfork-internal.h"
#include "trace.h"

typedef struct VmforkGuestPolicy {
    Object *dev;                /* the vmfork-guest device (one per VM) */
    VmforkGuest state;          /* what the guest sees, migrated with it */
    VmforkGuestAction action;
    VmforkArgs *fork;           /* for action fork */
    bool forking;               /* a fork for the guest is under way */
    bool served;                /* this fork's parent phase completed it */
    QEMUBH *bh;
    VMChangeStateEntry *vm_change;
} VmforkGuestPolicy;

static VmforkGuestPolicy guest;

static void guest_set_policy(VmforkGuestAction action, VmforkArgs *fork)
{
    qapi_free_VmforkArgs(guest.fork);
    guest.action = action;
    guest.fork = fork;
}

static void guest_complete(uint32_t status, uint32_t result)
{
    trace_vmfork_guest_complete(status, result);
    guest.state.status = status;
    guest.state.result = result;
}

/* In the vCPU thread that read the request register, with the BQL */
uint32_t vmfork_guest_request(void)
{
    guest.state.requests++;
    if (guest.state.status != VMFORK_GUEST_STATUS_IDLE) {
        return VMFORK_GUEST_BUSY;
    }
    if (guest.action == VMFORK_GUEST_ACTION_DENY) {
        guest.state.denied++;
        return VMFORK_GUEST_DENIED;
    }
    trace_vmfork_guest_request(VmforkGuestAction_str(guest.action));
    guest.state.status = VMFORK_GUEST_STATUS_PENDING;
    qemu_bh_schedule(guest.bh);
    return VMFORK_GUEST_OK;
}

/* The result register: reading it acknowledges a completed request */
uint32_t vmfork_guest_take_result(void)
{
    uint32_t result = guest.state.result;

    if (guest.state.status == VMFORK_GUEST_STATUS_DONE ||
        guest.state.status == VMFORK_GUEST_STATUS_FAILED) {
        guest.state.status = VMFORK_GUEST_STATUS_IDLE;
        guest.state.result = 0;
    }
    return result;
}

void vmfork_guest_reset(void)
{
    guest.state.status = VMFORK_GUEST_STATUS_IDLE;
    guest.state.result = 0;
}

VmforkGuest *vmfork_guest_state(void)
{
    return &guest.state;
}

static void coroutine_fn guest_fork(void *opaque)
{
    g_autoptr(VmforkArgs) a = guest.fork;
    pid_t self = getpid();
    VmforkResult *res;
    Error *err = NULL;

    /* One request only: a guest that asks again waits for the host */
    guest.fork = NULL;
    guest.action = VMFORK_GUEST_ACTION_WAIT;
    guest.forking = true;
    res = qmp_vmfork(a, &err);
    if (getpid() != self) {
        /* A new child: its child phase has completed the request */
        qapi_free_VmforkResult(res);
        return;
    }
    guest.forking = false;
    if (!res) {
        guest_complete(VMFORK_GUEST_STATUS_FAILED, VMFORK_GUEST_FORK_FAILED);
        qapi_event_send_vmfork_guest_request(VMFORK_GUEST_ACTION_FORK, false,
                                             NULL, error_get_pretty(err));
        error_report_err(err);
        return;
    }
    qapi_event_send_vmfork_guest_request(VMFORK_GUEST_ACTION_FORK, true,
                                         res->children, NULL);
    qapi_free_VmforkResult(res);
}

/* The main loop's side of a request just accepted */
static void guest_request_bh(void *opaque)
{
    if (guest.state.status != VMFORK_GUEST_STATUS_PENDING) {
        return;                 /* a vmfork command served it already */
    }
    if (vmfork_command_running()) {
        return;                 /* vmfork_guest_command_done() calls again */
    }
    if (guest.action == VMFORK_GUEST_ACTION_FORK) {
        /* The command waits for the children without blocking the loop */
        qemu_coroutine_enter(qemu_coroutine_create(guest_fork, NULL));
        return;
    }
    if (runstate_is_running()) {
        vm_stop(RUN_STATE_PAUSED);
    }
    qapi_event_send_vmfork_guest_request(VMFORK_GUEST_ACTION_WAIT, false,
                                         NULL, NULL);
}

/*
 * A request that came while a vmfork command ran (its guest runs while
 * the children set up) is the next one's
 */
void vmfork_guest_command_done(void)
{
    if (guest.bh && guest.state.status == VMFORK_GUEST_STATUS_PENDING) {
        qemu_bh_schedule(guest.bh);
    }
}

/* A paused request that runs again unforked is cancelled */
static void guest_vm_change(void *opaque, bool running, RunState state)
{
    if (running && !guest.forking &&
        guest.state.status == VMFORK_GUEST_STATUS_PENDING) {
        guest_complete(VMFORK_GUEST_STATUS_FAILED, VMFORK_GUEST_CANCELLED);
    }
}

bool vmfork_guest_attach(Object *dev, Error **errp)
{
    if (guest.dev) {
        g_autofree char *path = object_get_canonical_path(guest.dev);

        error_setg(errp, "vmfork: there is already a vmfork-guest device, "
                   "%s", path);
        return false;
    }
    guest.dev = dev;
    guest.bh = qemu_bh_new(guest_request_bh, NULL);
    guest.vm_change = qemu_add_vm_change_state_handler(guest_vm_change,
                                                       NULL);
    guest_set_policy(VMFORK_GUEST_ACTION_WAIT, NULL);
    vmfork_guest_reset();
    return true;
}

void vmfork_guest_detach(Object *dev)
{
    if (guest.dev != dev) {
        return;
    }
    qemu_del_vm_change_state_handler(guest.vm_change);
    qemu_bh_delete(guest.bh);
    guest_set_policy(VMFORK_GUEST_ACTION_WAIT, NULL);
    guest.dev = NULL;
}

void qmp_vmfork_guest_policy(VmforkGuestAction action, VmforkArgs *fork,
                             Error **errp)
{
    VmforkArgs *args = NULL;

    if (!guest.dev) {
        error_setg(errp, "vmfork: the VM has no vmfork-guest device");
        error_append_hint(errp, "Add -device vmfork-guest.\n");
        return;
    }
    if (fork && action != VMFORK_GUEST_ACTION_FORK) {
        error_setg(errp, "vmfork: 'fork' is only for action 'fork'");
        return;
    }
    if (action == VMFORK_GUEST_ACTION_FORK) {
        args = fork ? QAPI_CLONE(VmforkArgs, fork) : g_new0(VmforkArgs, 1);
        if (!vmfork_args_check(args, errp)) {
            qapi_free_VmforkArgs(args);
            return;
        }
    }
    trace_vmfork_guest_policy(VmforkGuestAction_str(action));
    guest_set_policy(action, args);
}

/* ---- Fork handler: whichever fork comes completes a pending request -- */

static void guest_check(VmforkCheck *chk)
{
    guest.served = false;       /* a new command: nothing to undo yet */
}

static bool guest_parent(VmforkRequest *req, Error **errp)
{
    guest.served = guest.state.status == VMFORK_GUEST_STATUS_PENDING;
    if (guest.served) {
        guest_complete(VMFORK_GUEST_STATUS_DONE, 0);
    }
    return true;
}

static void guest_abort(VmforkRequest *req)
{
    if (guest.served) {
        guest.state.status = VMFORK_GUEST_STATUS_PENDING;
        guest.served = false;
    }
}

static bool guest_child(VmforkRequest *req, int index, Error **errp)
{
    /* A new VM: its own policy, its own counts */
    guest_set_policy(VMFORK_GUEST_ACTION_WAIT, NULL);
    guest.forking = false;
    guest.served = false;
    guest.state.requests = 0;
    guest.state.denied = 0;
    if (guest.state.status == VMFORK_GUEST_STATUS_PENDING) {
        guest_complete(VMFORK_GUEST_STATUS_DONE, (uint32_t)vmfork_clone_id());
    }
    return true;
}

static const VmforkHandler guest_handler = {
    .name = "guest",
    .priority = VMFORK_PRIO_DEVICES,
    .check = guest_check,
    .parent = guest_parent,
    .child = guest_child,
    .abort = guest_abort,
};

static void guest_register(void)
{
    vmfork_register_handler(&guest_handler);
}
type_init(guest_register);
