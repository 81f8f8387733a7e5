/*
 * vmfork: fault injection for the reliability tests
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A child can die at any point of its re-initialisation, and fork() can
 * fail; the parent must stay unaffected either way.  The tests cannot
 * time a kill -9 into a window of a few hundred microseconds, nor make
 * fork() fail for root without also failing the thread creation around
 * it, so QEMU's environment can ask for the fault:
 *
 *   VMFORK_FAULT=kill-child:PHASE   each child kills itself with SIGKILL
 *                                   when it reaches PHASE: "forked",
 *                                   "fds", the name of a fork handler
 *                                   (handler.h: "threads", "block", ...),
 *                                   "started" or "monitor"
 *   VMFORK_FAULT=fail-child:PHASE   each child fails there with an error,
 *                                   as a handler that cannot do its job
 *   VMFORK_FAULT=stop-child:PHASE   each child stops itself (SIGSTOP) at
 *                                   PHASE, for as long as a slow host
 *                                   would take, until SIGCONT
 *   VMFORK_FAULT=fail-fork:N        the Nth fork() of each command (from
 *                                   1) fails with EAGAIN
 *   VMFORK_FAULT=fail-parent:NAME   the parent's handler NAME fails where
 *                                   its part ends, once the guest runs
 *                                   ("block": instead of putting the new
 *                                   layers on the parent's disks)
 *
 * and, with stop-child, for a child that never sets up:
 *
 *   VMFORK_FAULT_SETUP_MS=N         the command waits N ms, not 30 s, for
 *                                   its children to set up
 *
 * Read at each use, never cached: a debugging aid with no cost when unset.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "vmfork-internal.h"
#include "trace.h"

static const char *fault_arg(const char *kind)
{
    const char *v = g_getenv("VMFORK_FAULT");
    const char *rest;

    if (v && strstart(v, kind, &rest) && *rest == ':') {
        return rest + 1;
    }
    return NULL;
}

void vmfork_fault_child_phase(const char *phase)
{
    const char *at = fault_arg("kill-child");

    if (at && !strcmp(at, phase)) {
        trace_vmfork_fault_kill_child(phase);
        raise(SIGKILL);
    }
    at = fault_arg("stop-child");
    if (at && !strcmp(at, phase)) {
        trace_vmfork_fault_stop_child(phase);
        raise(SIGSTOP);
    }
}

bool vmfork_fault_child_fails(const char *phase, Error **errp)
{
    const char *at = fault_arg("fail-child");

    if (at && !strcmp(at, phase)) {
        error_setg(errp, "vmfork: VMFORK_FAULT: failing at '%s'", phase);
        return true;
    }
    return false;
}

bool vmfork_fault_fork_fails(int index)
{
    const char *n = fault_arg("fail-fork");
    int nth;

    if (n && !qemu_strtoi(n, NULL, 10, &nth) && nth == index + 1) {
        trace_vmfork_fault_fail_fork(index);
        errno = EAGAIN;
        return true;
    }
    return false;
}

bool vmfork_fault_parent_fails(const char *handler, Error **errp)
{
    const char *at = fault_arg("fail-parent");

    if (at && !strcmp(at, handler)) {
        error_setg(errp, "vmfork: VMFORK_FAULT: the parent's '%s' fails",
                   handler);
        return true;
    }
    return false;
}

int vmfork_fault_setup_ms(int normal_ms)
{
    const char *v = g_getenv("VMFORK_FAULT_SETUP_MS");
    int ms;

    return v && !qemu_strtoi(v, NULL, 10, &ms) && ms > 0 ? ms : normal_ms;
}
