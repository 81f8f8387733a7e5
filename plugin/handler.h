/*
 * vmfork: fork handlers, the way a subsystem takes part in a fork
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A subsystem that owns host resources (threads, fds, files, sockets,
 * shared mappings) opts in to vmfork by registering a VmforkHandler from
 * its own file, with the phases it needs, as devices register VMState and
 * SaveVMHandlers:
 *
 *     static const VmforkHandler chardev_handler = {
 *         .name = "chardev",
 *         .priority = VMFORK_PRIO_CHARDEV,
 *         .check = chardev_check,
 *         .child = chardev_child,
 *     };
 *
 *     static void chardev_register(void)
 *     {
 *         vmfork_register_handler(&chardev_handler);
 *     }
 *     type_init(chardev_register);
 *
 * The core (vmfork.c) knows no subsystem by name: it runs each phase of
 * every handler, in the order of their priorities.  The default is deny:
 *
 * - check runs before anything changes.  A handler refuses what it cannot
 *   fork (vmfork_check_refuse(), naming the object) and claims the fds it
 *   owns and knows how to fork (vmfork_check_claim_fd()).  Then the fd
 *   safety net (fdclaim.c) goes over every fd of the process: an fd that
 *   no handler claimed and that is not of a kind harmless to share (a
 *   file open for writing, a socket, a device node, a pipe, an io_uring)
 *   refuses the fork, naming its path and, where known, its owner.  So a
 *   backend that holds an fd and has no handler cannot be forked by
 *   accident.
 * - prepare runs before the guest pauses (it may create files); abort
 *   undoes it when a later step fails.
 * - paused runs with the guest paused and block I/O drained, just before
 *   fork(), in reverse priority order (IOThreads stop last); parent runs
 *   in the parent after the last fork(), before its guest resumes; child
 *   runs in each child before its guest starts.  Block I/O stays drained
 *   until the resumed phases are over, in parent and child.
 * - resumed runs once the VM has started (or stays paused as asked): in
 *   the parent once its pause is over, whether the fork succeeded or not,
 *   and in each child before its monitor starts.  What can wait until
 *   then, out of fork()'s way: the guest's clock runs again, but its
 *   vCPU threads need the BQL to leave their wait, which the command
 *   holds until it returns to the main loop to wait for its children
 *   (parent) or returns (child), so the guest runs no sooner; and its
 *   block requests wait, even those that an IOThread takes, so no device
 *   is used before the phase ends.  What can wait longer goes to a bottom
 *   half, which the main loop runs while the children set up (virtio.c).
 *   An
 *   error there fails the command as a child that cannot
 *   set up does: the children go, and the handler undoes its own part
 *   (abort does not run: the other handlers' parts are done).  In a child
 *   it ends the child.
 * - child_info runs in the parent once its guest runs again, for each
 *   child: what the reply says of it.  Then done runs, in the parent of
 *   a fork that succeeded, to free what the command needed.  They come
 *   after the pause because each page that the parent writes after
 *   fork() is a copy-on-write fault.
 * - abort runs in reverse order after a failure in any phase of the
 *   parent, for every handler (whether its own phases ran or not).
 *
 * Handlers keep what one command needs in their own file; the request
 * (the command's validated arguments) is passed to every phase.
 */

#ifndef VMFORK_HANDLER_H
#define VMFORK_HANDLER_H

typedef struct VmforkRequest VmforkRequest;
typedef struct VmforkChild VmforkChild;

/* The order of the phases between handlers; the child's needs most */
typedef enum VmforkPriority {
    VMFORK_PRIO_THREADS,        /* IOThreads and worker pools */
    VMFORK_PRIO_BLOCK,          /* disks: overlays */
    VMFORK_PRIO_NET,            /* netdevs: user networking, taps */
    VMFORK_PRIO_ACCEL,          /* vCPUs, and under KVM a new VM */
    VMFORK_PRIO_DEVICES,        /* identity, MACs, display surfaces */
    VMFORK_PRIO_CHARDEV,        /* chardevs, last: nothing else uses them */
} VmforkPriority;

/* What the check phase of one command collects */
typedef struct VmforkCheck {
    const VmforkRequest *req;
    GString *why;               /* every reason to refuse, "; "-separated */
    GHashTable *fd_owner;       /* fd number -> owner (char *) */
    GHashTable *fd_target;      /* fd number -> its /proc/self/fd link */
} VmforkCheck;

typedef struct VmforkHandler {
    const char *name;
    VmforkPriority priority;
    void (*check)(VmforkCheck *chk);
    bool (*prepare)(VmforkRequest *req, Error **errp);
    bool (*paused)(VmforkRequest *req, Error **errp);
    bool (*parent)(VmforkRequest *req, Error **errp);
    bool (*child)(VmforkRequest *req, int index, Error **errp);
    void (*abort)(VmforkRequest *req);
    bool (*resumed)(VmforkRequest *req, Error **errp);
    /* in the parent: what the reply says of child @index (@info->pid) */
    void (*child_info)(VmforkRequest *req, int index, VmforkChild *info);
    void (*done)(VmforkRequest *req);
} VmforkHandler;

void vmfork_register_handler(const VmforkHandler *handler);

/* check: refuse the fork, saying why (name the object) */
void vmfork_check_refuse(VmforkCheck *chk, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
/* check: fd @fd belongs to @owner, which forks it (or refuses) */
void vmfork_check_claim_fd(VmforkCheck *chk, int fd, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/* check: every fd whose /proc/self/fd link is @path */
void vmfork_check_claim_fd_path(VmforkCheck *chk, const char *path,
                                const char *owner);
/* check: every fd whose /proc/self/fd link starts with @prefix */
void vmfork_check_claim_fd_prefix(VmforkCheck *chk, const char *prefix,
                                  const char *owner);

/* The phases, for the core (the order as above) */
void vmfork_handlers_check(VmforkCheck *chk);
bool vmfork_handlers_prepare(VmforkRequest *req, Error **errp);
bool vmfork_handlers_paused(VmforkRequest *req, Error **errp);
bool vmfork_handlers_parent(VmforkRequest *req, Error **errp);
bool vmfork_handlers_child(VmforkRequest *req, int index, Error **errp);
void vmfork_handlers_abort(VmforkRequest *req);
bool vmfork_handlers_resumed(VmforkRequest *req, Error **errp);
void vmfork_handlers_child_info(VmforkRequest *req, int index,
                                VmforkChild *info);
void vmfork_handlers_done(VmforkRequest *req);

/* fdclaim.c: the safety net, after every handler's check */
void vmfork_fd_safety_net(VmforkCheck *chk);

#endif
