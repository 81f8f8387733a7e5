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
 * thread, so they would run where it runs, as it is scheduled and in its
 * cgroups.  A parent's may have CPUs, a policy and cgroups of their own:
 * libvirt's <vcpupin>, <iothreadpin> and <vcpusched> (or virsh vcpupin,
 * taskset, chrt) set the first two on each thread, and with cgroups
 * libvirt also puts each vCPU thread and IOThread in a cgroup of its own
 * (vcpu0, iothread1: cpuset, cpu quota), whose cpuset a thread left in
 * the main thread's cgroup could not even be given.  So the parent
 * records, before its pause, each such thread's CPU set, policy and the
 * cgroups where they differ from the forking thread's (a few system calls
 * a thread), and the child gives them to the thread that stands for it:
 * the cgroups first, then the CPUs.  What a child could not give (a
 * cgroup file this QEMU may not write, a real-time policy it may not
 * set) refuses the fork up front.
 */

#include "qemu/osdep.h"
#include <sched.h>
#include <sys/resource.h>
#include <linux/capability.h>
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
    GPtrArray *cgroups;         /* the files to write its thread ID to */
} VmforkPinned;

static void pinned_clear(gpointer p)
{
    g_clear_pointer(&((VmforkPinned *)p)->cgroups, g_ptr_array_unref);
}

/*
 * Where each cgroup hierarchy is mounted: "cpu,cpuacct" (cgroup v1, the
 * controllers as /proc/PID/cgroup names them) or "" (v2) -> the mount
 * point, for a hierarchy mounted at its root
 */
static GHashTable *cgroup_mounts(void)
{
    GHashTable *mounts = g_hash_table_new_full(g_str_hash, g_str_equal,
                                               g_free, g_free);
    g_auto(GStrv) lines = vmfork_read_lines("/proc/self/mountinfo");

    for (char **l = lines; l && *l; l++) {
        g_auto(GStrv) f = g_strsplit(*l, " ", -1);
        guint n = g_strv_length(f), sep;
        g_autoptr(GString) ctrl = g_string_new(NULL);
        g_auto(GStrv) opts = NULL;

        for (sep = 6; sep < n && strcmp(f[sep], "-"); sep++) {
            /* the optional fields end with "-" */
        }
        if (sep + 3 >= n || strcmp(f[3], "/")) {
            continue;
        }
        if (!strcmp(f[sep + 1], "cgroup2")) {
            g_hash_table_insert(mounts, g_strdup(""), g_strdup(f[4]));
            continue;
        }
        if (strcmp(f[sep + 1], "cgroup")) {
            continue;
        }
        /* Its controllers, in the super options, in the order named */
        opts = g_strsplit(f[sep + 3], ",", -1);
        for (char **o = opts; *o; o++) {
            if (strcmp(*o, "rw") && strcmp(*o, "ro") &&
                (!strchr(*o, '=') || g_str_has_prefix(*o, "name=")) &&
                strcmp(*o, "noprefix") && strcmp(*o, "clone_children") &&
                strcmp(*o, "xattr") && strcmp(*o, "cpuset_v2_mode")) {
                g_string_append_printf(ctrl, "%s%s", ctrl->len ? "," : "",
                                       *o);
            }
        }
        g_hash_table_insert(mounts, g_string_free(g_steal_pointer(&ctrl),
                                                  false), g_strdup(f[4]));
    }
    return mounts;
}

/* /proc/self/task/TID/cgroup: "controllers" -> path */
static GHashTable *thread_cgroups(int tid)
{
    GHashTable *cg = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                           g_free);
    g_autofree char *path = g_strdup_printf("/proc/self/task/%d/cgroup",
                                            tid);
    g_auto(GStrv) lines = vmfork_read_lines(path);

    for (char **l = lines; l && *l; l++) {
        g_auto(GStrv) f = g_strsplit(*l, ":", 3);

        if (g_strv_length(f) == 3) {
            g_hash_table_insert(cg, g_strdup(f[1]), g_strdup(f[2]));
        }
    }
    return cg;
}

/*
 * The cgroup files that would put a thread where thread @tid is, for each
 * hierarchy where it is not where @self's cgroups (the forking thread's)
 * are; NULL if none
 */
static GPtrArray *cgroups_apart(int tid, GHashTable *self,
                                GHashTable **mounts)
{
    g_autoptr(GHashTable) cg = thread_cgroups(tid);
    GPtrArray *files = NULL;
    GHashTableIter iter;
    gpointer ctrl, path;

    g_hash_table_iter_init(&iter, cg);
    while (g_hash_table_iter_next(&iter, &ctrl, &path)) {
        const char *mnt;

        if (!g_strcmp0(g_hash_table_lookup(self, ctrl), path)) {
            continue;
        }
        if (!*mounts) {
            *mounts = cgroup_mounts();
        }
        mnt = g_hash_table_lookup(*mounts, ctrl);
        if (!mnt) {
            continue;           /* not mounted here: nothing to write */
        }
        if (!files) {
            files = g_ptr_array_new_with_free_func(g_free);
        }
        g_ptr_array_add(files, g_strdup_printf("%s%s/%s", mnt,
                                               (char *)path,
                                               *(char *)ctrl ?
                                               "tasks" : "cgroup.threads"));
    }
    return files;
}

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

typedef struct PinRecord {
    VmforkPlacement *pl;
    VmforkPinned self;          /* the forking thread's */
    GHashTable *self_cgroups;
    GHashTable *mounts;         /* cgroup_mounts(), once needed */
} PinRecord;

/* Record @p's thread, @tid, if it is not placed as the forking thread */
static void record_thread(PinRecord *r, VmforkPinned *p, int tid)
{
    pthread_t t = pinned_thread(p)->thread;

    if (pthread_getaffinity_np(t, sizeof(p->cpus), &p->cpus) ||
        pthread_getschedparam(t, &p->policy, &p->param)) {
        return;                 /* a thread that is gone: nothing to copy */
    }
    p->cgroups = cgroups_apart(tid, r->self_cgroups, &r->mounts);
    if (!p->cgroups && CPU_EQUAL(&p->cpus, &r->self.cpus) &&
        p->policy == r->self.policy &&
        p->param.sched_priority == r->self.param.sched_priority) {
        return;
    }
    g_array_append_val(r->pl->pinned, *p);
}

static int record_iothread(Object *obj, void *opaque)
{
    VmforkPinned p = {
        .iothread = (IOThread *)object_dynamic_cast(obj, TYPE_IOTHREAD),
    };

    if (p.iothread && p.iothread->thread_id > 0) {
        record_thread(opaque, &p, p.iothread->thread_id);
    }
    return 0;
}

/* The parent's vCPU threads and IOThreads placed apart */
void vmfork_placement_record(VmforkPlacement *pl)
{
    PinRecord r = { .pl = pl };
    CPUState *cpu;

    pl->pinned = g_array_new(false, false, sizeof(VmforkPinned));
    g_array_set_clear_func(pl->pinned, pinned_clear);
    if (pthread_getaffinity_np(pthread_self(), sizeof(r.self.cpus),
                               &r.self.cpus) ||
        pthread_getschedparam(pthread_self(), &r.self.policy,
                              &r.self.param)) {
        return;
    }
    r.self_cgroups = thread_cgroups(qemu_get_thread_id());
    CPU_FOREACH(cpu) {
        VmforkPinned p = { .cpu = cpu };

        if (cpu->thread && cpu->thread_id > 0) {
            record_thread(&r, &p, cpu->thread_id);
        }
    }
    object_child_foreach(object_get_objects_root(), record_iothread, &r);
    g_hash_table_unref(r.self_cgroups);
    g_clear_pointer(&r.mounts, g_hash_table_unref);
}

/* The thread ID of the child's thread for @p, once it has one */
static int pinned_tid(const VmforkPinned *p)
{
    if (p->cpu) {
        return p->cpu->thread_id;
    }
    /* A new IOThread says its ID when it starts (iothread.c) */
    while (qatomic_read(&p->iothread->thread_id) == -1) {
        qemu_sem_wait(&p->iothread->init_done_sem);
    }
    return p->iothread->thread_id;
}

/* Put the child's thread for @p in the cgroups of the parent's */
static bool join_cgroups(const VmforkPinned *p, Error **errp)
{
    g_autofree char *tid = NULL;

    for (guint i = 0; p->cgroups && i < p->cgroups->len; i++) {
        g_autoptr(GError) err = NULL;

        if (!tid) {
            tid = g_strdup_printf("%d", pinned_tid(p));
        }
        if (!g_file_set_contents_full(p->cgroups->pdata[i], tid, -1,
                                      G_FILE_SET_CONTENTS_NONE, 0, &err)) {
            error_setg(errp, "%s", err->message);
            return false;
        }
    }
    return true;
}

/* Whether this process may give a thread a real-time policy at @prio */
static bool may_set_realtime(int prio)
{
    g_autofree char *status = NULL;
    const char *caps;
    struct rlimit rt;
    guint64 eff;

    if (!getrlimit(RLIMIT_RTPRIO, &rt) &&
        (rt.rlim_cur == RLIM_INFINITY || rt.rlim_cur >= (rlim_t)prio)) {
        return true;
    }
    /* ... or it has CAP_SYS_NICE */
    if (!g_file_get_contents("/proc/self/status", &status, NULL, NULL)) {
        return false;
    }
    caps = g_strstr_len(status, -1, "\nCapEff:");
    return caps && !qemu_strtou64(caps + strlen("\nCapEff:"), NULL, 16,
                                  &eff) &&
           (eff & (1ULL << CAP_SYS_NICE));
}

/*
 * Refuse up front a thread that a child could not place as the parent's:
 * one in a cgroup this QEMU may not put a thread in (libvirt runs QEMU as
 * a user of its own, and the per-vCPU cgroups it makes are root's), with
 * a real-time policy it may not set, or one that cannot be set per thread
 */
void vmfork_placement_check(const VmforkPlacement *pl, VmforkCheck *chk)
{
    for (guint i = 0; pl->pinned && i < pl->pinned->len; i++) {
        const VmforkPinned *p = &g_array_index(pl->pinned, VmforkPinned, i);
        g_autofree char *name = pinned_name(p);

        for (guint j = 0; p->cgroups && j < p->cgroups->len; j++) {
            const char *file = p->cgroups->pdata[j];

            if (faccessat(AT_FDCWD, file, W_OK, AT_EACCESS) < 0) {
                vmfork_check_refuse(chk, "the %s thread is in a cgroup of "
                                    "its own, and a child's could not "
                                    "join it: %s: %s", name, file,
                                    g_strerror(errno));
            }
        }
        switch (p->policy) {
        case SCHED_OTHER:
        case SCHED_BATCH:
        case SCHED_IDLE:
            break;
        case SCHED_FIFO:
        case SCHED_RR:
            if (!may_set_realtime(p->param.sched_priority)) {
                vmfork_check_refuse(chk, "the %s thread runs with real-time "
                                    "priority %d, which this QEMU may not "
                                    "give a child's (no CAP_SYS_NICE, "
                                    "RLIMIT_RTPRIO below it)", name,
                                    p->param.sched_priority);
            }
            break;
        default:
            vmfork_check_refuse(chk, "the %s thread has scheduling policy "
                                "%d, which a child's thread cannot be given",
                                name, p->policy);
        }
    }
}

/* Give the child's thread for @p the parent's thread's CPUs and policy */
static int pin_thread(const VmforkPinned *p)
{
    pthread_t t = pinned_thread(p)->thread;
    int err = pthread_setaffinity_np(t, sizeof(p->cpus), &p->cpus);

    return err ? err : pthread_setschedparam(t, p->policy, &p->param);
}

bool vmfork_placement_pin_threads(const VmforkPlacement *pl, Error **errp)
{
    for (guint i = 0; pl->pinned && i < pl->pinned->len; i++) {
        const VmforkPinned *p = &g_array_index(pl->pinned, VmforkPinned, i);
        Error *local_err = NULL;
        int err;

        if (join_cgroups(p, &local_err)) {
            err = pin_thread(p);
            if (err) {
                error_setg_errno(&local_err, err, "its CPUs and scheduling");
            }
        }
        if (local_err) {
            g_autofree char *name = pinned_name(p);

            error_propagate_prepend(errp, local_err, "vmfork: the child's "
                                    "%s thread cannot be placed as the "
                                    "parent's: ", name);
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
    /* The pinned ones: done once already, the same calls on each */
    for (guint i = 0; pl->pinned && i < pl->pinned->len; i++) {
        pin_thread(&g_array_index(pl->pinned, VmforkPinned, i));
    }
}
