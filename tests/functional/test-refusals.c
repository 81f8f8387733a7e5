/*
 * Functional tests of what vmfork refuses: every blocker the README lists
 * gets a VM of its own, and one VM has many of them at once.  For each,
 * the fork is refused with a GenericError that names the cause, nothing is
 * forked, and the guest runs on.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A row that needs what this host lacks (vhost-net, a device bound to
 * vfio-pci, a KVM capability) skips with the reason; so does a row whose
 * configuration QEMU itself refuses to start here, with QEMU's message.
 */

#define _GNU_SOURCE     /* unshare() */
#include "vmtest.h"
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <fcntl.h>
#include <pwd.h>
#include <linux/kvm.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

#define TIMEOUT_MS 30000

/* A QMP command run before the fork; "@DIR@" in args is the test dir */
typedef struct QmpStep {
    const char *command;
    const char *args;
} QmpStep;

typedef struct Refusal {
    const char *name;           /* /refusals/tiny/ACCEL/NAME */
    const char *accel;          /* -accel argument: "tcg", "kvm,..." */
    const char *const *extra;   /* QEMU arguments; "@DIR@": the test dir */
    /* Host setup before QEMU starts: NULL when ready, else why not (the
     * skip reason); it may add QEMU arguments */
    const char *(*setup)(const char *dir, GPtrArray *args);
    /* Whether QEMU may refuse this configuration on some hosts (a missing
     * capability): then the row skips with QEMU's message.  Elsewhere a
     * QEMU that does not start fails the row. */
    bool may_not_start;
    const QmpStep *steps;       /* before the fork, ending with { NULL } */
    /* Fork with an overlay-dir, so that a writable disk (which would be
     * refused without one) is not what the refusal is about */
    bool overlay_dir;
    /* Once QEMU runs, before the fork: its threads placed from outside,
     * as libvirt places them; NULL when done, else the skip reason */
    const char *(*placed)(Vm *vm);
    const char *const *want;    /* what the error must name, NULL-ended */
    void (*then)(Vm *vm);       /* after the refusal, with the VM running */
} Refusal;

/* ---- The QEMU under test, probed ---------------------------------------- */

static const char *qemu_path(void)
{
    const char *q = g_getenv("VMFORK_QEMU");

    return q && *q ? q : g_getenv("VMFORK_QEMU_BUILT");
}

/*
 * Start QEMU as vm_start() would, with these arguments, let the guest run
 * and quit: NULL if it did, else what QEMU said.  vm_start() aborts the
 * test program on a QEMU that does not start; this turns a capability
 * this host lacks into a skip that gives QEMU's own reason.
 */
static char *qemu_start_error(const char *accel, GPtrArray *args)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_autoptr(GSubprocess) p = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errout = NULL;
    g_auto(GStrv) lines = NULL;
    g_autoptr(GString) said = g_string_new(NULL);

    g_ptr_array_add(argv, (char *)qemu_path());
    g_ptr_array_add(argv, "-accel");
    g_ptr_array_add(argv, (char *)accel);
    g_ptr_array_add(argv, "-M");
    g_ptr_array_add(argv, "pc");
    g_ptr_array_add(argv, "-m");
    g_ptr_array_add(argv, "64");
    g_ptr_array_add(argv, "-nodefaults");
    g_ptr_array_add(argv, "-display");
    g_ptr_array_add(argv, "none");
    g_ptr_array_add(argv, "-S");
    g_ptr_array_add(argv, "-qmp");
    g_ptr_array_add(argv, "stdio");
    g_ptr_array_add(argv, "-kernel");
    g_ptr_array_add(argv, (char *)g_getenv("VMFORK_TINY"));
    for (guint i = 0; i < args->len; i++) {
        g_ptr_array_add(argv, args->pdata[i]);
    }
    g_ptr_array_add(argv, NULL);

    p = g_subprocess_newv((const char *const *)argv->pdata,
                          G_SUBPROCESS_FLAGS_STDIN_PIPE |
                          G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                          G_SUBPROCESS_FLAGS_STDERR_PIPE, &err);
    g_assert_no_error(err);
    g_subprocess_communicate_utf8(p, "{\"execute\": \"qmp_capabilities\"}\n"
                                  "{\"execute\": \"cont\"}\n"
                                  "{\"execute\": \"quit\"}\n", NULL,
                                  &out, &errout, &err);
    g_assert_no_error(err);
    if (g_subprocess_get_if_exited(p) &&
        g_subprocess_get_exit_status(p) == 0) {
        return NULL;
    }
    /*
     * One line, for the test's TAP "ok ... # SKIP" line; without the
     * sanitizers' "==PID==" notes (a sanitized QEMU warns at every start)
     */
    lines = g_strsplit(errout, "\n", -1);
    for (char **l = lines; *l; l++) {
        if (**l && !g_str_has_prefix(*l, "==")) {
            g_string_append_printf(said, "%s%s", said->len ? " " : "", *l);
        }
    }
    return g_strdup_printf("QEMU does not start with this configuration "
                           "here%s: %s", g_subprocess_get_if_signaled(p) ?
                           " (it crashed)" : "",
                           said->len ? said->str : "(no message)");
}

/* Is this device type in the QEMU under test? */
static bool qemu_has_device(const char *type)
{
    static char *help;
    g_autofree char *want = g_strdup_printf("name \"%s\"", type);

    if (!help) {
        const char *argv[] = { qemu_path(), "-device", "help", NULL };

        g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL,
                                   G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL,
                                   &help, NULL, NULL, NULL));
    }
    return strstr(help, want) != NULL;
}

/* The pids of a process's children, all its threads' ("": none) */
static char *process_children(pid_t pid)
{
    g_autoptr(GPtrArray) lists = proc_threads_read(pid, "children");

    g_ptr_array_add(lists, NULL);
    return g_strstrip(g_strjoinv("", (char **)lists->pdata));
}

static guint vmfork_children(Vm *vm)
{
    JsonNode *q = vm_qmp(vm, "query-vmfork", NULL);
    guint n = json_array_get_length(json_object_get_array_member(
        json_node_get_object(q), "children"));

    json_node_unref(q);
    return n;
}

static char *subst_dir(const char *text, const char *dir)
{
    g_autoptr(GString) s = g_string_new(text);

    g_string_replace(s, "@DIR@", dir, 0);
    return g_string_free(g_steal_pointer(&s), false);
}

/* ---- Host setup --------------------------------------------------------- */

/* A 1 MiB raw image in the test directory */
static void make_image(const char *dir, const char *name)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);

    g_assert_true(g_file_set_contents(path, "", 0, NULL));
    g_assert_cmpint(truncate(path, 1 << 20), ==, 0);
}

static const char *setup_disk(const char *dir, GPtrArray *args G_GNUC_UNUSED)
{
    make_image(dir, "disk.raw");
    return NULL;
}

/*
 * A tap that QEMU creates itself (ifname=, script=no) lives in a network
 * namespace of this program's own, entered once as root: the taps go away
 * with the program, and the host's network is never touched.
 */
static const char *setup_tap(const char *dir G_GNUC_UNUSED,
                             GPtrArray *args G_GNUC_UNUSED)
{
    static bool entered;
    int fd;

    if (entered) {
        return NULL;
    }
    if (geteuid() != 0) {
        return "tap needs root (CAP_NET_ADMIN) for a network namespace";
    }
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return "/dev/net/tun cannot be opened: no tap here";
    }
    close(fd);
    g_assert_cmpint(unshare(CLONE_NEWNET), ==, 0);
    entered = true;
    return NULL;
}

static const char *setup_vhost_tap(const char *dir, GPtrArray *args)
{
    if (access("/dev/vhost-net", R_OK | W_OK) < 0) {
        return "no /dev/vhost-net here (vhost_net not loaded): QEMU cannot "
               "start a tap with vhost=on";
    }
    return setup_tap(dir, args);
}

static const char *setup_vhost_vsock(const char *dir G_GNUC_UNUSED,
                                     GPtrArray *args G_GNUC_UNUSED)
{
    if (access("/dev/vhost-vsock", R_OK | W_OK) < 0) {
        return "no /dev/vhost-vsock here (vhost_vsock not loaded): QEMU "
               "cannot start a vhost-vsock device";
    }
    return NULL;
}

/*
 * vfio-pci needs a host PCI device that is bound to the vfio-pci driver,
 * and the VFIO container: the first such device is given to the guest.
 */
static const char *setup_vfio(const char *dir G_GNUC_UNUSED, GPtrArray *args)
{
    g_autoptr(GDir) d = NULL;
    const char *name;

    if (access("/dev/vfio/vfio", R_OK | W_OK) < 0) {
        return "no /dev/vfio/vfio here: vfio cannot be configured";
    }
    d = g_dir_open("/sys/bus/pci/drivers/vfio-pci", 0, NULL);
    while (d && (name = g_dir_read_name(d))) {
        unsigned dom, bus, slot, fn;

        if (sscanf(name, "%x:%x:%x.%x", &dom, &bus, &slot, &fn) == 4) {
            g_ptr_array_add(args, g_strdup("-device"));
            g_ptr_array_add(args,
                            g_strdup_printf("vfio-pci,host=%s,id=vf0", name));
            return NULL;
        }
    }
    return "no host PCI device is bound to vfio-pci here";
}

static const char *setup_ivshmem(const char *dir G_GNUC_UNUSED,
                                 GPtrArray *args G_GNUC_UNUSED)
{
    if (!qemu_has_device("ivshmem-plain")) {
        return "this QEMU has no ivshmem-plain device (CONFIG_IVSHMEM)";
    }
    return NULL;
}

/*
 * QEMU starts with hv-* CPU flags where KVM lacks KVM_CAP_HYPERV, but
 * leaves the enlightenments off (hyperv_enabled() is false): there is
 * nothing to refuse then.
 */
static const char *setup_hyperv(const char *dir G_GNUC_UNUSED,
                                GPtrArray *args G_GNUC_UNUSED)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int cap;

    if (fd < 0) {
        return "/dev/kvm is not usable";
    }
    cap = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_HYPERV);
    close(fd);
    if (cap <= 0) {
        return "KVM here has no KVM_CAP_HYPERV: QEMU starts with hv-* flags "
               "but keeps the Hyper-V enlightenments off";
    }
    return NULL;
}

/* A field of /proc/meminfo ("HugePages_Free"), 0 if it is not there */
static guint64 meminfo(const char *field)
{
    g_autofree char *text = NULL;
    g_autofree char *key = g_strdup_printf("\n%s:", field);
    const char *at;

    if (!g_file_get_contents("/proc/meminfo", &text, NULL, NULL) ||
        !(at = strstr(text, key))) {
        return 0;
    }
    return g_ascii_strtoull(at + strlen(key), NULL, 10);
}

/*
 * The guest's RAM on hugetlbfs, as libvirt gives it for <hugepages/>: a
 * private mapping of a file there.  The mount is in a mount namespace of
 * this program's own, entered once as root; the huge pages come from the
 * host's pool (vm.nr_hugepages, which .ci/run fills), 64 MiB of them.
 */
static const char *setup_hugetlbfs(const char *dir, GPtrArray *args)
{
    static bool entered;
    g_autofree char *mnt = g_build_filename(dir, "hugetlbfs", NULL);
    guint64 page_kib = meminfo("Hugepagesize");

    if (geteuid() != 0) {
        return "hugetlbfs needs root, to mount it";
    }
    if (!page_kib || meminfo("HugePages_Free") * page_kib < 64 * 1024) {
        return "fewer free huge pages than the guest's 64 MiB "
               "(vm.nr_hugepages)";
    }
    if (!entered) {
        g_assert_cmpint(unshare(CLONE_NEWNS), ==, 0);
        g_assert_cmpint(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL),
                        ==, 0);
        entered = true;
    }
    g_assert_cmpint(g_mkdir(mnt, 0700), ==, 0);
    if (mount("hugetlbfs", mnt, "hugetlbfs", 0, NULL) < 0) {
        return "hugetlbfs cannot be mounted here";
    }
    g_ptr_array_add(args, g_strdup("-object"));
    g_ptr_array_add(args, g_strdup_printf("memory-backend-file,id=hp,"
                                          "size=64M,mem-path=%s", mnt));
    g_ptr_array_add(args, g_strdup("-machine"));
    g_ptr_array_add(args, g_strdup("memory-backend=hp"));
    return NULL;
}

/*
 * QEMU as libvirt runs it, under a user of its own (here nobody), while
 * root places its threads: libvirt puts each vCPU thread in a cgroup of
 * its own and gives threads real-time policies (<vcpusched>), which such
 * a QEMU could not give a child's threads.
 */
static const char *setup_unprivileged(const char *dir, GPtrArray *args)
{
    struct passwd *nobody = getpwnam("nobody");

    if (geteuid() != 0) {
        return "needs root: QEMU runs as nobody, its threads placed by root";
    }
    if (!nobody) {
        return "no user 'nobody' to run QEMU as";
    }
    /* Its directory, where children's monitors go, as libvirt's is */
    g_assert_cmpint(chown(dir, nobody->pw_uid, nobody->pw_gid), ==, 0);
    g_ptr_array_add(args, g_strdup("-run-with"));
    g_ptr_array_add(args, g_strdup("user=nobody"));
    return NULL;
}

/* The directory of the cgroup v1 "cpu" hierarchy that thread @tid is in */
static char *cpu_cgroup_dir(pid_t pid, pid_t tid)
{
    g_autofree char *mountinfo = NULL, *cgroups = NULL;
    g_autofree char *where = g_strdup_printf("/proc/%d/task/%d/cgroup", pid,
                                             tid);
    g_auto(GStrv) lines = NULL;
    const char *mnt = NULL, *in = NULL;

    if (!g_file_get_contents("/proc/self/mountinfo", &mountinfo, NULL,
                             NULL) ||
        !g_file_get_contents(where, &cgroups, NULL, NULL)) {
        return NULL;
    }
    /* "... /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu" */
    lines = g_strsplit(mountinfo, "\n", -1);
    for (char **l = lines; *l && !mnt; l++) {
        g_auto(GStrv) f = g_strsplit(*l, " ", -1);
        g_auto(GStrv) opts = NULL;
        char **dash = f;

        while (*dash && strcmp(*dash, "-")) {
            dash++;
        }
        if (g_strv_length(dash) < 4 || strcmp(dash[1], "cgroup")) {
            continue;
        }
        opts = g_strsplit(dash[3], ",", -1);
        if (g_strv_contains((const char *const *)opts, "cpu")) {
            mnt = g_intern_string(f[4]);
        }
    }
    g_strfreev(lines);
    /* "1:cpu:/PATH" or "2:cpu,cpuacct:/PATH" */
    lines = g_strsplit(cgroups, "\n", -1);
    for (char **l = lines; *l && !in; l++) {
        g_auto(GStrv) f = g_strsplit(*l, ":", 3);
        g_auto(GStrv) ctrl = NULL;

        if (g_strv_length(f) == 3) {
            ctrl = g_strsplit(f[1], ",", -1);
            if (g_strv_contains((const char *const *)ctrl, "cpu")) {
                in = g_intern_string(f[2]);
            }
        }
    }
    return mnt && in ? g_build_filename(mnt, in, NULL) : NULL;
}

static void write_tid(const char *dir, pid_t tid)
{
    g_autofree char *tasks = g_build_filename(dir, "tasks", NULL);
    g_autofree char *text = g_strdup_printf("%d", tid);
    g_autoptr(GError) err = NULL;

    g_file_set_contents_full(tasks, text, -1, G_FILE_SET_CONTENTS_NONE, 0,
                             &err);
    g_assert_no_error(err);
}

/* vCPU 0's thread in a cgroup of its own, as libvirt's vcpu0 */
static const char *vcpu_in_cgroup(Vm *vm)
{
    pid_t tid = vm_thread_id(vm, NULL);
    g_autofree char *parent = cpu_cgroup_dir(vm->pid, tid);
    g_autofree char *own = NULL;
    g_autoptr(GDir) dir = NULL;
    const char *name;

    if (!parent) {
        return "no cgroup v1 'cpu' hierarchy to put a thread in";
    }
    /* An earlier run's, left by a failure once its QEMU was gone */
    dir = g_dir_open(parent, 0, NULL);
    while (dir && (name = g_dir_read_name(dir))) {
        if (g_str_has_prefix(name, "vmfork-refusal-")) {
            g_autofree char *old = g_build_filename(parent, name, NULL);

            g_rmdir(old);       /* fails while a thread is in it */
        }
    }
    own = g_strdup_printf("%s/vmfork-refusal-%d", parent, (int)vm->pid);
    if (g_mkdir(own, 0755) < 0) {
        return "a cgroup cannot be made in the 'cpu' hierarchy here";
    }
    write_tid(own, tid);
    return NULL;
}

/* ... and back where it was, the cgroup removed */
static void vcpu_cgroup_removed(Vm *vm)
{
    pid_t tid = vm_thread_id(vm, NULL);
    g_autofree char *own = cpu_cgroup_dir(vm->pid, tid);
    g_autofree char *parent = g_path_get_dirname(own);

    write_tid(parent, tid);
    g_assert_cmpint(g_rmdir(own), ==, 0);
}

/* The IOThread with SCHED_FIFO, as <iothreadsched scheduler='fifo'> */
static const char *iothread_realtime(Vm *vm)
{
    struct sched_param prio = { .sched_priority = 1 };

    g_assert_cmpint(sched_setscheduler(vm_thread_id(vm, "io0"), SCHED_FIFO,
                                       &prio), ==, 0);
    return NULL;
}

static const char *setup_all(const char *dir, GPtrArray *args)
{
    const char *why = setup_ivshmem(dir, args);

    if (why) {
        return why;
    }
    make_image(dir, "disk.raw");
    make_image(dir, "disk2.raw");
    return NULL;
}

/* ---- After the refusal -------------------------------------------------- */

/* The hugetlbfs mount goes, once QEMU's file there is gone */
static void hugetlbfs_unmount(Vm *vm)
{
    g_autofree char *mnt = g_build_filename(vm->dir, "hugetlbfs", NULL);

    g_assert_cmpint(umount2(mnt, MNT_DETACH), ==, 0);
}

/*
 * A block job refuses the fork only while it exists: once it is
 * cancelled (and gone), the same VM forks, and the child runs.
 */
static void block_job_cancelled_then_forks(Vm *vm)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_MS * 1000LL;
    g_autofree char *args = g_strdup_printf("{\"overlay-dir\": \"%s\"}",
                                            vm->dir);
    g_autoptr(JsonArray) children = NULL;
    Vm *child;

    json_node_unref(vm_qmp(vm, "block-job-cancel",
                           "{\"device\": \"mirror0\", \"force\": true}"));
    for (;;) {
        JsonNode *jobs = vm_qmp(vm, "query-jobs", NULL);
        guint n = json_array_get_length(json_node_get_array(jobs));

        json_node_unref(jobs);
        if (!n) {
            break;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(20000);
    }
    children = vm_fork(vm, args);
    g_assert_cmpuint(json_array_get_length(children), ==, 1);
    child = vm_attach_child(vm, json_array_get_object_element(children, 0));
    g_assert_cmpint(vm_tiny_next_seq(child, TIMEOUT_MS), >=, 0);
    g_assert_cmpint(vm_tiny_next_seq(vm, TIMEOUT_MS), >=, 0);
    vm_quit(child);
}

/* ---- The rows ----------------------------------------------------------- */

static const char *const snapshot_args[] = {
    "-drive", "file=@DIR@/disk.raw,format=raw,if=virtio,snapshot=on", NULL
};
static const char *const snapshot_want[] = { "uses snapshot=on", NULL };

static const char *const vhost_args[] = {
    "-netdev", "tap,id=n0,ifname=vmfr0,script=no,downscript=no,vhost=on",
    "-device", "virtio-net-pci,netdev=n0", NULL
};
static const char *const vhost_want[] = {
    "tap netdev 'n0' uses vhost-net", NULL
};

static const char *const multiqueue_args[] = {
    "-netdev", "tap,id=n0,ifname=vmfr1,script=no,downscript=no,queues=2",
    "-device", "virtio-net-pci,netdev=n0,mq=on", NULL
};
static const char *const multiqueue_want[] = {
    "tap netdev 'n0' has several queues", NULL
};

/* Both forms of a guestfwd rule: a command run per connection, and a
 * chardev (the null one, which needs nothing on the host) */
static const char *const guestfwd_cmd_args[] = {
    "-netdev", "user,id=u0,guestfwd=tcp:10.0.2.100:1234-cmd:cat",
    "-device", "virtio-net-pci,netdev=u0", NULL
};
static const char *const guestfwd_chardev_args[] = {
    "-netdev", "user,id=u0,guestfwd=tcp:10.0.2.100:1234-null",
    "-device", "virtio-net-pci,netdev=u0", NULL
};
static const char *const user_u0_want[] = {
    "netdev 'u0' (user) has guestfwd or smb rules", NULL
};

/* A build without slirp_smbd takes smb= and starts no smbd: the rule is
 * there all the same, and is refused */
static const char *const smb_args[] = {
    "-netdev", "user,id=u0,smb=@DIR@",
    "-device", "virtio-net-pci,netdev=u0", NULL
};

/* Two user netdevs with rules: each is a cause of its own */
static const char *const two_user_args[] = {
    "-netdev", "user,id=u0,guestfwd=tcp:10.0.2.100:1234-null",
    "-netdev", "user,id=u1,smb=@DIR@", NULL
};
static const char *const two_user_want[] = {
    "netdev 'u0' (user) has guestfwd or smb rules",
    "netdev 'u1' (user) has guestfwd or smb rules", NULL
};

static const char *const vfio_want[] = {
    "device 'vf0' (vfio-pci) owns host resources", NULL
};

static const char *const vsock_args[] = {
    "-device", "vhost-vsock-pci,id=vs0,guest-cid=3", NULL
};
static const char *const vsock_want[] = {
    "device 'vs0' (vhost-vsock-pci) owns host resources", NULL
};

static const char *const ivshmem_args[] = {
    "-object", "memory-backend-file,id=shm0,size=1M,share=on,"
    "mem-path=@DIR@/ivshmem",
    "-device", "ivshmem-plain,id=iv0,memdev=shm0", NULL
};
static const char *const ivshmem_want[] = {
    "device 'iv0' (ivshmem-plain) owns host resources", NULL
};

/* The same device hot-plugged: devices.c learns of it as it is realized */
static const char *const ivshmem_backend_args[] = {
    "-object", "memory-backend-file,id=shm0,size=1M,share=on,"
    "mem-path=@DIR@/ivshmem", NULL
};
static const QmpStep ivshmem_plug_steps[] = {
    { "device_add", "{\"driver\": \"ivshmem-plain\", \"id\": \"iv1\", "
      "\"memdev\": \"shm0\"}" },
    { NULL }
};
static const char *const ivshmem_plugged_want[] = {
    "device 'iv1' (ivshmem-plain) owns host resources", NULL
};

/* With "speed" at 1 byte/s the mirror stays running until cancelled */
static const char *const job_args[] = {
    "-drive", "file=@DIR@/disk.raw,format=raw,if=virtio,id=d0", NULL
};
static const QmpStep job_steps[] = {
    { "drive-mirror", "{\"job-id\": \"mirror0\", \"device\": \"d0\", "
      "\"target\": \"@DIR@/mirror.raw\", \"format\": \"raw\", "
      "\"sync\": \"full\", \"speed\": 1}" },
    { NULL }
};
static const char *const job_want[] = { "job 'mirror0' is running", NULL };

static const char *const replay_args[] = {
    "-icount", "shift=auto,rr=record,rrfile=@DIR@/replay.bin", NULL
};
static const char *const replay_want[] = { "record/replay is active", NULL };

static const char *const split_wx_want[] = {
    "TCG split-wx maps the code buffer shared", NULL
};

static const char *const dirty_ring_want[] = {
    "the KVM dirty ring is enabled", NULL
};

static const char *const hyperv_args[] = {
    "-cpu", "qemu64,hv-relaxed,hv-vpindex,hv-time", NULL
};
static const char *const hugetlbfs_want[] = {
    "RAM block 'hp' is on hugetlbfs (2048 KiB pages)", NULL
};

static const char *const vcpu_cgroup_want[] = {
    "the vCPU 0 thread is in a cgroup of its own", "/vmfork-refusal-",
    "/tasks: Permission denied", NULL
};

static const char *const iothread_args[] = {
    "-object", "iothread,id=io0", NULL
};
static const char *const realtime_want[] = {
    "the IOThread 'io0' thread runs with real-time priority 1", NULL
};

static const char *const hyperv_want[] = {
    "Hyper-V enlightenments cannot be forked", NULL
};

static const char *const rapl_want[] = {
    "KVM RAPL energy MSRs (rapl=on)", NULL
};

static const char *const xen_want[] = {
    "Xen emulation cannot be forked", NULL
};

/* AMD SEV: QEMU checks the host's support as KVM starts */
static const char *const sev_args[] = {
    "-object", "sev-guest,id=sev0,cbitpos=47,reduced-phys-bits=1",
    "-machine", "confidential-guest-support=sev0", NULL
};
static const char *const sev_want[] = {
    "confidential guests cannot be forked", NULL
};

/*
 * Many causes in one VM, each from another check: the one error names
 * all of them (a user fixes everything in one go, not one per try).  No
 * overlay-dir: the writable disk without one is a cause too.
 */
static const char *const all_tcg_args[] = {
    "-drive", "file=@DIR@/disk.raw,format=raw,if=virtio,id=d0",
    "-drive", "file=@DIR@/disk2.raw,format=raw,if=virtio,snapshot=on",
    "-netdev", "user,id=u0,guestfwd=tcp:10.0.2.100:1234-null",
    "-device", "virtio-net-pci,netdev=u0",
    "-netdev", "socket,id=s0,udp=127.0.0.1:1,localaddr=127.0.0.1:0",
    "-object", "memory-backend-memfd,id=mem0,size=64M,share=on",
    "-machine", "memory-backend=mem0",
    "-object", "memory-backend-file,id=shm0,size=1M,share=on,"
    "mem-path=@DIR@/ivshmem",
    "-device", "ivshmem-plain,id=iv0,memdev=shm0",
    "-chardev", "socket,id=c0,host=127.0.0.1,port=0,server=on,wait=off",
    "-icount", "shift=auto,rr=record,rrfile=@DIR@/replay.bin",
    "-sandbox", "on,spawn=deny", NULL
};
static const char *const all_tcg_want[] = {
    "disk 'd0' is writable: pass 'overlay-dir'",
    "uses snapshot=on",
    "netdev 'u0' (user) has guestfwd or smb rules",
    "netdev 's0' (socket) cannot be forked",
    "is shared memory",
    "device 'iv0' (ivshmem-plain) owns host resources",
    "chardev 'c0'",
    "job 'mirror0' is running",
    "record/replay is active",
    "the seccomp sandbox denies fork()",
    "TCG split-wx maps the code buffer shared",
    NULL
};

static const char *const all_kvm_args[] = {
    "-drive", "file=@DIR@/disk.raw,format=raw,if=virtio,snapshot=on",
    "-netdev", "user,id=u0,guestfwd=tcp:10.0.2.100:1234-null",
    "-device", "virtio-net-pci,netdev=u0",
    "-netdev", "socket,id=s0,udp=127.0.0.1:1,localaddr=127.0.0.1:0",
    "-object", "memory-backend-file,id=shm0,size=1M,share=on,"
    "mem-path=@DIR@/ivshmem",
    "-device", "ivshmem-plain,id=iv0,memdev=shm0", NULL
};
static const char *const all_kvm_want[] = {
    "the KVM dirty ring is enabled",
    "uses snapshot=on",
    "netdev 'u0' (user) has guestfwd or smb rules",
    "netdev 's0' (socket) cannot be forked",
    "device 'iv0' (ivshmem-plain) owns host resources",
    NULL
};

/* QEMU's log in a file per thread: a child's threads are new */
static const char *const log_tid_args[] = {
    "-D", "@DIR@/qemu-%d.log", "-d", "tid,guest_errors", NULL
};
static const char *const log_tid_want[] = { "(-d tid)", NULL };

static const Refusal rows[] = {
    { .name = "snapshot-on", .accel = "tcg", .extra = snapshot_args,
      .setup = setup_disk, .overlay_dir = true, .want = snapshot_want },
    { .name = "log-file-per-thread", .accel = "tcg", .extra = log_tid_args,
      .want = log_tid_want },
    { .name = "tap-vhost", .accel = "tcg", .extra = vhost_args,
      .setup = setup_vhost_tap, .want = vhost_want },
    { .name = "tap-multiqueue", .accel = "tcg", .extra = multiqueue_args,
      .setup = setup_tap, .want = multiqueue_want },
    { .name = "user-guestfwd-cmd", .accel = "tcg",
      .extra = guestfwd_cmd_args, .want = user_u0_want },
    { .name = "user-guestfwd-chardev", .accel = "tcg",
      .extra = guestfwd_chardev_args, .want = user_u0_want },
    { .name = "user-smb", .accel = "tcg", .extra = smb_args,
      .may_not_start = true, .want = user_u0_want },
    { .name = "user-two-netdevs-each-named", .accel = "tcg",
      .extra = two_user_args, .may_not_start = true, .want = two_user_want },
    { .name = "vfio", .accel = "tcg", .setup = setup_vfio,
      .may_not_start = true, .want = vfio_want },
    { .name = "vhost-vsock", .accel = "tcg", .extra = vsock_args,
      .setup = setup_vhost_vsock, .may_not_start = true,
      .want = vsock_want },
    { .name = "ivshmem", .accel = "tcg", .extra = ivshmem_args,
      .setup = setup_ivshmem, .want = ivshmem_want },
    { .name = "ivshmem-hot-plugged", .accel = "tcg",
      .extra = ivshmem_backend_args, .setup = setup_ivshmem,
      .steps = ivshmem_plug_steps, .want = ivshmem_plugged_want },
    { .name = "hugetlbfs", .accel = "tcg", .setup = setup_hugetlbfs,
      .want = hugetlbfs_want, .then = hugetlbfs_unmount },
    { .name = "vcpu-cgroup-unwritable", .accel = "tcg",
      .setup = setup_unprivileged, .placed = vcpu_in_cgroup,
      .want = vcpu_cgroup_want, .then = vcpu_cgroup_removed },
    { .name = "realtime-iothread-unprivileged", .accel = "tcg",
      .extra = iothread_args, .setup = setup_unprivileged,
      .placed = iothread_realtime, .want = realtime_want },
    { .name = "block-job", .accel = "tcg", .extra = job_args,
      .setup = setup_disk, .steps = job_steps, .overlay_dir = true,
      .want = job_want, .then = block_job_cancelled_then_forks },
    { .name = "record-replay", .accel = "tcg", .extra = replay_args,
      .may_not_start = true, .want = replay_want },
    { .name = "split-wx", .accel = "tcg,split-wx=on",
      .want = split_wx_want },
    { .name = "dirty-ring", .accel = "kvm,dirty-ring-size=4096",
      .may_not_start = true, .want = dirty_ring_want },
    { .name = "hyperv", .accel = "kvm", .extra = hyperv_args,
      .setup = setup_hyperv, .may_not_start = true, .want = hyperv_want },
    { .name = "rapl", .accel = "kvm,rapl=on", .may_not_start = true,
      .want = rapl_want },
    { .name = "xen", .accel = "kvm,xen-version=0x4000a,kernel-irqchip=split",
      .may_not_start = true, .want = xen_want },
    { .name = "confidential-guest", .accel = "kvm", .extra = sev_args,
      .may_not_start = true, .want = sev_want },
    { .name = "all-at-once", .accel = "tcg,split-wx=on",
      .extra = all_tcg_args, .setup = setup_all, .steps = job_steps,
      .want = all_tcg_want },
    { .name = "all-at-once", .accel = "kvm,dirty-ring-size=4096",
      .extra = all_kvm_args, .setup = setup_all, .may_not_start = true,
      .overlay_dir = true, .want = all_kvm_want },
};

/* ---- The test ----------------------------------------------------------- */

static void refusal_test(gconstpointer data)
{
    const Refusal *r = data;
    g_autofree char *base = g_strndup(r->accel, strcspn(r->accel, ","));
    VmOptions o = { .guest = GUEST_TINY, .accel = r->accel };
    g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GString) missing = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *dir = NULL, *fork_args = NULL, *before = NULL;
    g_autofree char *after = NULL, *state = NULL;
    const char *why = vm_missing(GUEST_TINY, base);
    Vm *vm;
    gint64 a, b;

    if (why) {
        g_test_skip(why);
        return;
    }
    dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_assert_nonnull(dir);
    vm_register_dir(dir);
    o.dir = dir;
    for (const char *const *e = r->extra; e && *e; e++) {
        g_ptr_array_add(args, subst_dir(*e, dir));
    }
    why = r->setup ? r->setup(dir, args) : NULL;
    if (why) {
        g_test_skip(why);
        vm_cleanup_all();
        return;
    }
    if (r->may_not_start) {
        g_autofree char *no = qemu_start_error(r->accel, args);

        if (no) {
            g_test_skip(no);
            vm_cleanup_all();
            return;
        }
    }
    g_ptr_array_add(args, NULL);
    o.extra = (const char *const *)args->pdata;
    g_test_message("running: %s", vm_describe(&o));
    vm = vm_start(&o);

    for (const QmpStep *s = r->steps; s && s->command; s++) {
        g_autofree char *step = subst_dir(s->args, dir);

        json_node_unref(vm_qmp(vm, s->command, step));
    }
    why = r->placed ? r->placed(vm) : NULL;
    if (why) {
        g_test_skip(why);
        vm_cleanup_all();
        return;
    }
    before = process_children(vm->pid);
    fork_args = r->overlay_dir ?
        g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir) : NULL;
    err = vm_qmp_error(vm, "vmfork", fork_args);
    if (!err) {
        g_test_fail_printf("the fork of %s succeeded", r->name);
        vm_cleanup_all();
        return;
    }
    g_test_message("%s", err->message);
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    /* Every cause, each checked: report all that are missing at once */
    for (const char *const *w = r->want; *w; w++) {
        if (!strstr(qmp_error_desc(err), *w)) {
            g_string_append_printf(missing, "%s'%s'", missing->len ? ", " :
                                   "", *w);
        }
    }
    if (missing->len) {
        g_test_fail_printf("the refusal does not name %s", missing->str);
    }

    /* Nothing was forked: none listed, no process under QEMU */
    g_assert_cmpuint(vmfork_children(vm), ==, 0);
    after = process_children(vm->pid);
    g_assert_cmpstr(after, ==, before);
    g_assert_cmpstr(after, ==, "");

    /* The parent runs on untouched */
    state = vm_runstate(vm);
    g_assert_cmpstr(state, ==, "running");
    a = vm_tiny_next_seq(vm, TIMEOUT_MS);
    b = vm_tiny_next_seq(vm, TIMEOUT_MS);
    g_assert_cmpint(a, >=, 0);
    g_assert_cmpint(b, ==, a + 1);

    if (r->then) {
        r->then(vm);
    }
    vm_quit(vm);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    /*
     * Each row is a VM of its own, removed whatever happened: one whose
     * refusal is wrong fails, and the rows after it still run (GTest
     * would stop at the first failure), so one run reports every gap.
     */
    g_autofree char **args = g_new0(char *, argc + 2);
    int n = argc + 1;

    memcpy(args, argv, argc * sizeof(*argv));
    args[argc] = (char *)"--keep-going";
    g_test_init(&n, &args, NULL);
    for (guint i = 0; i < G_N_ELEMENTS(rows); i++) {
        g_autofree char *base = g_strndup(rows[i].accel,
                                          strcspn(rows[i].accel, ","));
        g_autofree char *path = g_strdup_printf("/refusals/tiny/%s/%s", base,
                                                rows[i].name);

        g_test_add_data_func(path, &rows[i], refusal_test);
    }
    return g_test_run();
}
