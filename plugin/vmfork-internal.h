/*
 * vmfork: internal interfaces between the files of the subsystem
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef VMFORK_INTERNAL_H
#define VMFORK_INTERNAL_H

#include <sched.h>
#include "qapi/qapi-types-vmfork.h"
#include "handler.h"

typedef struct VmforkTapPlan VmforkTapPlan;

/* placement.c: the CPUs a new child first runs on */
typedef struct VmforkPlacement {
    bool steer;                 /* false: where the kernel queues it */
    cpu_set_t all;              /* the forking thread's */
    cpu_set_t first;            /* ... less those busy when children start */
    GArray *pinned;             /* of VmforkPinned (placement.c) */
} VmforkPlacement;

/* In the parent, before its checks: the threads placed apart */
void vmfork_placement_record(VmforkPlacement *pl);
/* ... refused if a child could not place its threads so */
void vmfork_placement_check(const VmforkPlacement *pl, VmforkCheck *chk);
/*
 * In the parent, paused; @parent_runs: its guest resumes after the fork,
 * @children: how many this command makes
 */
void vmfork_placement_prepare(VmforkPlacement *pl, bool parent_runs,
                              int children);
/* ... and right after each fork() */
void vmfork_placement_forked(const VmforkPlacement *pl, pid_t child);
/* In the child, before its guest starts: all its threads get @all back */
void vmfork_placement_release(const VmforkPlacement *pl);
/*
 * In the child, once its vCPU threads and IOThreads exist: each gets the
 * CPUs and scheduling policy of the parent's thread it stands for
 */
bool vmfork_placement_pin_threads(const VmforkPlacement *pl, Error **errp);
void vmfork_placement_free(VmforkPlacement *pl);

/* One vmfork command, as validated in the parent before anything happens */
struct VmforkRequest {
    int count;
    char *monitor_tmpl;         /* never NULL once validated */
    char *serial_tmpl;          /* NULL: default rules for serial0 */
    bool start;
    bool parent_stays_paused;
    bool was_running;           /* the guest ran when the command came */
    char *overlay_dir;          /* NULL: no writable disk allowed */
    int64_t hostfwd_offset;     /* 0: children get no host forwards */
    GPtrArray *taps;            /* of VmforkTapPlan: tap.c */
    GHashTable *chardev_tmpls;  /* chardev id -> child path template */
    GHashTable *chardev_log_tmpls; /* chardev id -> child log template */
    VmforkPlacement placement;
};

/* tap.c: the command's 'taps' argument */
bool vmfork_taps_parse(VmforkRequest *req, VmforkTapList *taps,
                       Error **errp);
void vmfork_taps_free(VmforkRequest *req);

/* chardev.c: the command's 'chardevs' argument */
bool vmfork_chardevs_parse(VmforkRequest *req,
                           VmforkChardevConfigList *list, Error **errp);

/* A template of children's unix socket paths: valid, free, short enough */
bool vmfork_check_socket_template(const char *what, const char *tmpl,
                                  int count, Error **errp);

/* With several children, a template must give each its own name */
bool vmfork_check_template_per_child(const char *what, const char *tmpl,
                                     int count, Error **errp);
/* A template of the files of @count children: each one can be created */
bool vmfork_check_file_template(const char *what, const char *tmpl,
                                int count, Error **errp);

/* Expand "%i", "%p" and "%%" in a path template */
char *vmfork_expand_template(const char *tmpl, int index, pid_t pid,
                             Error **errp);

/* fd.c: every fd of the process and its /proc/self/fd link, read once */
GHashTable *vmfork_fd_targets(Error **errp);
/* ... make every inherited kernel object that is shared by fd private */
bool vmfork_fd_make_private(Error **errp);
/* ... and the fds that doing so left us with are ours */
void vmfork_fd_claim_detached(VmforkCheck *chk);
/* ... give each writable fd of the files at @paths an open file
 * description of our own, read-only (same number, O_DIRECT kept): one
 * pass over the fds for all of them */
bool vmfork_fd_reopen_readonly(GPtrArray *paths, Error **errp);
/* ... the path of the file open on @fd (its link there), or NULL */
char *vmfork_fd_path(int fd, GError **err);
/* ... the fds of the monitor's fd sets (add-fd) open on the pipe or socket
 * @dev/@ino keep their numbers, on /dev/null */
bool vmfork_fd_release_fdset_copies(dev_t dev, ino_t ino, Error **errp);
/* fdclaim.c: is @fd a pidfile of this process or of an ancestor? */
bool vmfork_fd_is_own_pidfile(int fd);

/* child.c: the child's side of the command; false: the child must exit */
bool vmfork_child_setup(VmforkRequest *req, int index, Error **errp);
/* ... and once its guest runs (or may run): its monitor */
bool vmfork_child_start_monitor(const VmforkRequest *req, int index,
                                Error **errp);
/* ... trace the end of a step of the child's setup */
void vmfork_child_phase_done(const char *phase);

/* vmfork.c: the pid of this process, or of a QEMU it was forked from */
bool vmfork_pid_is_ours(pid_t pid);
/* ... the lines of a (/proc) file, or NULL if it cannot be read */
char **vmfork_read_lines(const char *path);
int64_t vmfork_clone_id(void);
bool vmfork_args_check(VmforkArgs *args, Error **errp);
/* ... is a vmfork command under way (its children setting up)? */
bool vmfork_command_running(void);

/*
 * guest.c: the guest's requests to be forked (its freeze point), for the
 * device that carries them (guest-port.c).  Status and answer codes are
 * the guest ABI (docs/guest-abi.md).
 */
#define VMFORK_GUEST_STATUS_IDLE        0
#define VMFORK_GUEST_STATUS_PENDING     1
#define VMFORK_GUEST_STATUS_DONE        2
#define VMFORK_GUEST_STATUS_FAILED      3

#define VMFORK_GUEST_OK                 0
#define VMFORK_GUEST_DENIED             1
#define VMFORK_GUEST_BUSY               2
#define VMFORK_GUEST_CANCELLED          3
#define VMFORK_GUEST_FORK_FAILED        4

typedef struct VmforkGuest {
    uint32_t status;            /* VMFORK_GUEST_STATUS_* */
    uint32_t result;            /* DONE: clone ID (0: parent); FAILED: why */
    uint64_t requests;          /* every request, answered or not */
    uint64_t denied;
} VmforkGuest;

bool vmfork_guest_attach(Object *dev, Error **errp);
void vmfork_guest_detach(Object *dev);
VmforkGuest *vmfork_guest_state(void);
uint32_t vmfork_guest_request(void);
uint32_t vmfork_guest_take_result(void);
void vmfork_guest_reset(void);
/* ... a vmfork command ended: a request that came meanwhile is served */
void vmfork_guest_command_done(void);

/* identity.c: the clone id and generation the guest reads */
void vmfork_identity_set(int64_t clone_id, int64_t generation);
bool vmfork_identity_has_vmgenid(void);
/* vmfork.c: a clone migrated here is that clone (its id and generation,
 * also what the guest reads) */
void vmfork_identity_migrated(int64_t clone_id, int64_t generation);

/* fault.c: the faults VMFORK_FAULT asks for (reliability tests) */
void vmfork_fault_child_phase(const char *phase);
bool vmfork_fault_fork_fails(int index);
bool vmfork_fault_child_fails(const char *phase, Error **errp);
bool vmfork_fault_parent_fails(const char *handler, Error **errp);
int vmfork_fault_setup_ms(int normal_ms);

#endif
