/*
 * vmfork: the CPUs a new child first runs on
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Linux queues a child made by fork() on the CPU of the thread that
 * forked it, even when another CPU is idle.  There it waits until that
 * thread sleeps: here the parent's main loop, which first resumes its own
 * guest, about 0.3 ms after fork().  Measured on a 2-CPU host with the
 * other CPU idle, 34 of 40 children of a busy parent started on its CPU.
 *
 * So, during the pause, the parent counts the CPUs that will be busy when
 * its children start: its own, and one for each vCPU that was not halted
 * (a halted vCPU's thread sleeps).  If a CPU is left, each child is moved
 * there as it is forked, off the parent's CPU and off those vCPUs'; once
 * its guest may start, all its threads (the vCPU threads and IOThreads it
 * made meanwhile too) get the forking thread's CPU set back.  An idle
 * Linux guest's clone then ran 0.6 to 0.9 ms sooner (4 runs of 20).
 *
 * Otherwise (2 CPUs, a guest that does not halt) the child stays where
 * the kernel queued it, behind the parent's main loop, which sleeps first:
 * moved, it waited for the busy vCPU instead (tiny guest: 2.9 -> 6.2 ms).
 * So do the children of a command that makes more of them than there are
 * CPUs left: they would pile up there, while the parent's CPU, once its
 * main loop sleeps, had none of them (100 Linux children: all running
 * after 0.41 to 0.52 s, moved 0.43 to 1.07 s, 5 runs each).
 * Without sched_setaffinity() (-sandbox resourcecontrol=deny) the kernel
 * chooses as before.
 *
 * A child's vCPU threads and IOThreads are new threads, made by its main
 * thread, so they would run where it runs and as it is scheduled.  A
 * parent's may have CPUs and a policy of their own: libvirt's <vcpupin>,
 * <iothreadpin> and <vcpusched> (or virsh vcpupin, taskset, chrt) set
 * them on each thread.  So the parent records, in its pause, each such
 * thread's CPU set and policy where they differ from the forking
 * thread's (before the pause: a few system calls a thread), and the child
 * gives them to the thread that stands for it.
 */

#include "qemu/osdep.h"
#include <sched.h>
#include "qapi/error.h"
#include "hw/core/cpu.h"
#include "qemu/cutils.h"
#include "system/iothread.h"
#include "vmfork-internal.h"
#include "trace.h"

/* A thread whose CPUs or scheduling differ from the forking thread's */
typedef struct VmforkPinned {
    CPUState *cpu;              /* a vCPU's thread, or */
    IOThread *iothread;         /* an IOThread's */
    cpu_set_t cpus;
    int policy;
    struct sched_param param;
} VmforkPinned;

static QemuThread *pinned_thread(const VmforkPinned *p)
{
    return p->cpu ? p->cpu->thread : &p->iothread->thread;
}

static char *pinned_name(const VmforkPinned *p)
{
    return p->cpu ? g_strdup_printf("vCPU %d", p->cpu->cpu_index) :
        g_strdup_printf("IOThread '%s'", object_get_canonical_path_component(
                            OBJECT(p->iothread)));
}

/* Record @p's thread if it is not placed and scheduled as @self is */
static void record_thread(VmforkPlacement *pl, VmforkPinned *p,
                          const VmforkPinned *self)
{
    pthread_t t = pinned_thread(p)->thread;

    if (pthread_getaffinity_np(t, sizeof(p->cpus), &p->cpus) ||
        pthread_getschedparam(t, &p->policy, &p->param)) {
        return;                 /* a thread that is gone: nothing to copy */
    }
    if (CPU_EQUAL(&p->cpus, &self->cpus) && p->policy == self->policy &&
        p->param.sched_priority == self->param.sched_priority) {
        return;
    }
    g_array_append_val(pl->pinned, *p);
}

static int record_iothread(Object *obj, void *opaque)
{
    VmforkPlacement *pl = opaque;
    VmforkPinned p = {
        .iothread = (IOThread *)object_dynamic_cast(obj, TYPE_IOTHREAD),
    };
    VmforkPinned *self = &g_array_index(pl->pinned, VmforkPinned, 0);

    if (p.iothread && p.iothread->thread_id > 0) {
        record_thread(pl, &p, self);
    }
    return 0;
}

/* The parent's vCPU threads and IOThreads placed apart; [0] is its own */
void vmfork_placement_record(VmforkPlacement *pl)
{
    VmforkPinned self = { 0 };
    CPUState *cpu;

    pl->pinned = g_array_new(false, false, sizeof(VmforkPinned));
    if (pthread_getaffinity_np(pthread_self(), sizeof(self.cpus),
                               &self.cpus) ||
        pthread_getschedparam(pthread_self(), &self.policy, &self.param)) {
        return;
    }
    g_array_append_val(pl->pinned, self);
    CPU_FOREACH(cpu) {
        VmforkPinned p = { .cpu = cpu };

        if (cpu->thread) {
            record_thread(pl, &p, &g_array_index(pl->pinned, VmforkPinned,
                                                 0));
        }
    }
    object_child_foreach(object_get_objects_root(), record_iothread, pl);
}

bool vmfork_placement_pin_threads(const VmforkPlacement *pl, Error **errp)
{
    for (guint i = 1; pl->pinned && i < pl->pinned->len; i++) {
        const VmforkPinned *p = &g_array_index(pl->pinned, VmforkPinned, i);
        pthread_t t = pinned_thread(p)->thread;
        int err = pthread_setaffinity_np(t, sizeof(p->cpus), &p->cpus);

        if (!err) {
            err = pthread_setschedparam(t, p->policy, &p->param);
        }
        if (err) {
            g_autofree char *name = pinned_name(p);

            error_setg_errno(errp, err, "vmfork: cannot give the child's %s "
                             "thread the CPUs and scheduling of the "
                             "parent's", name);
            return false;
        }
    }
    return true;
}

void vmfork_placement_free(VmforkPlacement *pl)
{
    g_clear_pointer(&pl->pinned, g_array_unref);
}

/* The CPU the thread @tid last ran on, or -1 */
static int thread_last_cpu(int tid)
{
    g_autofree char *path = g_strdup_printf("/proc/self/task/%d/stat", tid);
    g_autofree char *stat = NULL;
    g_auto(GStrv) fields = NULL;
    const char *after_comm;
    int cpu;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return -1;
    }
    after_comm = strrchr(stat, ')');
    if (!after_comm) {
        return -1;
    }
    /* Fields from the 3rd (the state) on; the 39th is the CPU */
    fields = g_strsplit(after_comm + 2, " ", 38);
    if (g_strv_length(fields) < 38 ||
        qemu_strtoi(fields[36], NULL, 10, &cpu) < 0) {
        return -1;
    }
    return cpu;
}

void vmfork_placement_prepare(VmforkPlacement *pl, bool parent_runs,
                              int children)
{
    CPUState *cpu;
    int here = sched_getcpu();
    int busy = 0;

    pl->steer = false;
    if (here < 0 || sched_getaffinity(0, sizeof(pl->all), &pl->all) < 0) {
        return;
    }
    if (parent_runs) {
        CPU_FOREACH(cpu) {
            busy += !cpu->halted;
        }
    }
    if (CPU_COUNT(&pl->all) < busy + 2) {
        trace_vmfork_placement(here, CPU_COUNT(&pl->all), busy, children, 0);
        return;
    }
    pl->first = pl->all;
    CPU_CLR(here, &pl->first);
    if (busy) {
        CPU_FOREACH(cpu) {
            int last = cpu->halted ? -1 : thread_last_cpu(cpu->thread_id);

            if (last >= 0 && last < CPU_SETSIZE) {
                CPU_CLR(last, &pl->first);
            }
        }
    }
    pl->steer = CPU_COUNT(&pl->first) >= children;
    trace_vmfork_placement(here, CPU_COUNT(&pl->all), busy, children,
                           pl->steer ? CPU_COUNT(&pl->first) : 0);
}

void vmfork_placement_forked(const VmforkPlacement *pl, pid_t child)
{
    if (pl->steer) {
        /* Failing, the child runs where the kernel put it */
        sched_setaffinity(child, sizeof(pl->first), &pl->first);
    }
}

/* In the child, before its guest starts: the threads it made since, too */
void vmfork_placement_release(const VmforkPlacement *pl)
{
    g_autoptr(GDir) dir = NULL;
    const char *name;

    if (!pl->steer) {
        return;
    }
    dir = g_dir_open("/proc/self/task", 0, NULL);
    if (!dir) {
        return;
    }
    while ((name = g_dir_read_name(dir))) {
        int tid;

        if (qemu_strtoi(name, NULL, 10, &tid) == 0) {
            sched_setaffinity(tid, sizeof(pl->all), &pl->all);
        }
    }
    /* Done once already: the same calls, on the same threads */
    vmfork_placement_pin_threads(pl, NULL);
}
