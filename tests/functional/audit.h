/*
 * audit: what a forked child still shares with its parent, seen from the
 * host (kcmp(2) on every fd, /proc/PID/maps)
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef AUDIT_H
#define AUDIT_H

#include <glib.h>
#include <sys/types.h>
#include "vmtest.h"

typedef struct FdEntry {
    int fd;
    char *target;           /* readlink of /proc/PID/fd/N */
} FdEntry;

/* The open fds of a process, and how to free the list */
GArray *audit_list_fds(pid_t pid);
void audit_free_fds(GArray *fds);
/* How many fds of process @pid link to a file whose name ends in @suffix */
guint audit_count_fds(pid_t pid, const char *suffix);

/*
 * Compare every fd of @child with every fd of @parent with kcmp(2).
 * Asserts first that kcmp works on pairs with a known answer, and then
 * that no comparison fails.  A child fd that shares an open file
 * description with a parent fd is allowed only where sharing is harmless
 * by design: the inherited stdio (fds 0-2), regular
 * files opened read-only, /dev/null, /dev/zero, /dev/random and
 * /dev/urandom opened read-only, /dev/kvm, and under check-sanitize the
 * sanitizers' report files (as plugin/fdclaim.c allows them).  Returns how many child fds
 * break that rule (each logged), and in *@allowed how many shared as
 * allowed.  Both processes should be quiescent (VMs stopped): an fd that
 * closes during the audit fails it.
 */
guint audit_shared_fds(pid_t parent, pid_t child, guint *allowed);

/*
 * MAP_SHARED mappings the child has in common with the parent (files
 * told apart by device and inode), plus one if the child maps more
 * kvm_run pages than it has vCPU fds (one left from the parent).
 * Returns that count.  A caller asserts with
 * audit_count_shared_mappings() that the parent had something to leave
 * behind.
 */
guint audit_shared_mappings(pid_t parent, pid_t child);

/* How many of a process's MAP_SHARED mappings contain @needle
 * (" anon_inode:kvm-vcpu:", "/memfd:") */
guint audit_count_shared_mappings(pid_t pid, const char *needle);

/*
 * Both audits on a forked pair, with both VMs stopped while they run (and
 * let run again after, where they ran): asserts that nothing is shared
 * against the rules.  Returns how many fds were shared as allowed.
 */
guint audit_vm_pair(Vm *parent, Vm *child);

#endif
