/*
 * vmfork: IOThreads and worker pools across fork()
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Only the forking thread exists in a child.  IOThreads (user-created
 * ones, and internal ones such as the monitor's) park at a clean point
 * once the guest is paused and block I/O is drained (vm_stop() needs them
 * running: a disk on an IOThread is drained in it).  Afterwards the same
 * threads go on in the parent, and each child starts new ones (patch
 * 0001).  The child's worker pools start empty.
 *
 * Parent and child start the user-created ones before their drained
 * section ends (a disk on an IOThread needs it for that), and the
 * monitor's once their guest runs: creating a thread before made the
 * child's start longer, and Linux lets a new thread take the CPU of the
 * thread that created it.
 *
 * Each AioContext also holds per-process state of its own, which a child
 * must not share: its worker pool (above); the Linux AIO context of the
 * disks with aio=native, which is the parent's kernel context (the
 * child's requests would fail) with a completion ring mapped shared with
 * the parent (the child would take the parent's completions); and the
 * io_uring of the disks with aio=io_uring, whose rings and fd the child
 * shares with the parent.  The child drops them before its IOThreads
 * start again (the parent's go on); its next request sets up its own.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "block/aio.h"
#include "block/thread-pool.h"
#include "system/iothread.h"
#include "vmfork-internal.h"

static bool iothreads_stopped;

static bool threads_paused(VmforkRequest *req, Error **errp)
{
    iothread_stop_all();
    iothreads_stopped = true;
    return true;
}

static bool threads_parent(VmforkRequest *req, Error **errp)
{
    iothread_restart_user();
    return true;
}

static void threads_abort(VmforkRequest *req)
{
    if (iothreads_stopped) {
        iothread_restart_user();
    }
}

static bool threads_resumed(VmforkRequest *req, Error **errp)
{
    if (iothreads_stopped) {
        iothread_restart_all();
        iothreads_stopped = false;
    }
    return true;
}

/*
 * Each AioContext of this process: the main loop's two (@iothread NULL),
 * and each IOThread's, user-created or internal (@iothread its id)
 */
typedef void AioContextFn(AioContext *ctx, const char *iothread,
                          void *opaque);

typedef struct ForeachIOThread {
    AioContextFn *fn;
    void *opaque;
} ForeachIOThread;

static int foreach_iothread(Object *obj, void *opaque)
{
    ForeachIOThread *f = opaque;
    IOThread *iothread = (IOThread *)object_dynamic_cast(obj, TYPE_IOTHREAD);

    if (iothread) {
        f->fn(iothread_get_aio_context(iothread),
              object_get_canonical_path_component(obj), f->opaque);
    }
    return 0;
}

static void foreach_aio_context(AioContextFn *fn, void *opaque)
{
    ForeachIOThread f = { fn, opaque };

    fn(qemu_get_aio_context(), NULL, opaque);
    fn(iohandler_get_aio_context(), NULL, opaque);
    object_child_foreach(object_get_objects_root(), foreach_iothread, &f);
    object_child_foreach(object_get_internal_root(), foreach_iothread, &f);
}

/* The io_uring of disks with aio=io_uring: the child drops its copy */
static void claim_io_uring(AioContext *ctx, const char *iothread,
                           void *opaque)
{
    int fd = aio_linux_io_uring_fd(ctx);

    if (fd < 0) {
        return;
    }
    if (iothread) {
        vmfork_check_claim_fd(opaque, fd, "the io_uring of IOThread '%s'",
                              iothread);
    } else {
        vmfork_check_claim_fd(opaque, fd, "the io_uring of the main loop");
    }
}

static void threads_check(VmforkCheck *chk)
{
    foreach_aio_context(claim_io_uring, chk);
}

/* What a child's AioContext must not share with the parent's */
static void reset_aio_context(AioContext *ctx, const char *iothread,
                              void *opaque)
{
    if (ctx->thread_pool) {
        thread_pool_reset_after_fork_aio(ctx->thread_pool);
    }
    aio_forget_linux_aio_after_fork(ctx);
    aio_forget_linux_io_uring_after_fork(ctx);
}

/* Before the IOThreads run again: those of the parent are gone */
static bool threads_child(VmforkRequest *req, int index, Error **errp)
{
    foreach_aio_context(reset_aio_context, NULL);
    iothread_restart_user();
    return true;
}

static const VmforkHandler threads_handler = {
    .name = "threads",
    .priority = VMFORK_PRIO_THREADS,
    .check = threads_check,
    .paused = threads_paused,
    .parent = threads_parent,
    .child = threads_child,
    .abort = threads_abort,
    .resumed = threads_resumed,
};

static void threads_register(void)
{
    vmfork_register_handler(&threads_handler);
}
type_init(threads_register);
