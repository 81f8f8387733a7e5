/*
 * vmtest: boot the test guests in the patched QEMU and talk to them
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE     /* close_range() */
#include "vmtest.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib/gstdio.h>

#define QMP_TIMEOUT_MS 30000
#define BOOT_TIMEOUT_MS 120000

/* ---- What must be killed and removed, also from a signal handler ------ */

#define MAX_GROUPS 64
#define MAX_DIRS 16

static volatile pid_t groups[MAX_GROUPS];
static char dirs[MAX_DIRS][256];
static GPtrArray *all_vms;

static void kill_groups(int sig)
{
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] > 0) {
            kill(-groups[i], sig);
        }
    }
}

/* Remove a test directory: only sockets, logs, images and directories
 * of those (a test's overlay directory) live in it; links are not
 * followed */
static void remove_dir(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        struct stat st;

        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            remove_dir(p);
        } else {
            g_unlink(p);
        }
    }
    g_rmdir(dir);
}

static void on_abort(int sig)
{
    /* VMTEST_KEEP_DIRS=1: the logs of a failed test, for a post-mortem */
    bool keep = g_getenv("VMTEST_KEEP_DIRS") != NULL;

    kill_groups(SIGKILL);
    /* Sockets first: they are what a later run would trip over */
    for (int i = 0; i < MAX_DIRS; i++) {
        if (!dirs[i][0]) {
            continue;
        }
        if (keep) {
            fprintf(stderr, "vmtest: kept %s\n", dirs[i]);
        } else {
            remove_dir(dirs[i]);
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void harness_init(void)
{
    static bool done;

    if (done) {
        return;
    }
    done = true;
    /* Children of a QEMU that dies are reparented to us, and reaped here */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGABRT, on_abort);
    signal(SIGTRAP, on_abort);      /* g_error() under GTest */
    signal(SIGSEGV, on_abort);
    signal(SIGTERM, on_abort);
    signal(SIGINT, on_abort);
    signal(SIGPIPE, SIG_IGN);
    all_vms = g_ptr_array_new();
}

static void register_group(pid_t pgid)
{
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] <= 0) {
            groups[i] = pgid;
            return;
        }
    }
    g_error("vmtest: too many QEMU process groups");
}

void vm_register_dir(const char *dir)
{
    harness_init();
    for (int i = 0; i < MAX_DIRS; i++) {
        if (!dirs[i][0]) {
            g_strlcpy(dirs[i], dir, sizeof(dirs[i]));
            return;
        }
    }
    g_error("vmtest: too many test directories");
}

/* ---- Processes ---------------------------------------------------------- */

guint proc_count(pid_t pid, const char *what)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/%s", pid, what);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    guint n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    return n;
}

GPtrArray *proc_threads_read(pid_t pid, const char *file)
{
    g_autofree char *task = g_strdup_printf("/proc/%d/task", pid);
    g_autoptr(GDir) d = g_dir_open(task, 0, NULL);
    GPtrArray *texts = g_ptr_array_new_with_free_func(g_free);
    const char *tid;

    g_assert_nonnull(d);
    while ((tid = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(task, tid, file, NULL);
        char *text;

        if (g_file_get_contents(path, &text, NULL, NULL)) {
            g_ptr_array_add(texts, text);
        }
    }
    return texts;
}

char *proc_status_value(const char *status, const char *field)
{
    g_autofree char *key = g_strdup_printf("%s:", field);
    const char *line = status;

    /* At the start of a line */
    while (line && !g_str_has_prefix(line, key)) {
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    g_assert_nonnull(line);
    line += strlen(key);
    return g_strstrip(g_strndup(line, strcspn(line, "\n")));
}

/*
 * The state letter of a /proc stat file ("R", "S", "T", "Z", ...): 0 if
 * it cannot be read (the process or thread is gone), '?' if it is not
 * in the format
 */
static char proc_stat_state(const char *path)
{
    g_autofree char *stat = NULL;
    const char *p;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return 0;
    }
    p = strrchr(stat, ')');
    return p && p[1] == ' ' && p[2] ? p[2] : '?';
}

bool pid_gone(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    char state = proc_stat_state(path);

    /* A zombie that is ours (re-parented to this subreaper): reap it */
    return !state || (state == 'Z' && waitpid(pid, NULL, WNOHANG) == pid);
}

/* Is every thread of @pid stopped (a stop signal taken)? */
static bool pid_stopped(pid_t pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/task", pid);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *tid;

    if (!d) {
        return false;
    }
    while ((tid = g_dir_read_name(d))) {
        g_autofree char *path = g_strdup_printf("%s/%s/stat", dir, tid);
        char state = proc_stat_state(path);

        /* 0: a thread that ended */
        if (state && state != 'T' && state != 't') {
            return false;
        }
    }
    return true;
}

/* Poll @done(@pid) every @poll_us until it holds or @timeout_ms pass */
static bool pid_wait(bool (*done)(pid_t pid), pid_t pid, int timeout_ms,
                     gulong poll_us)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;

    while (!done(pid)) {
        if (g_get_monotonic_time() > deadline) {
            return false;
        }
        g_usleep(poll_us);
    }
    return true;
}

bool pid_wait_stopped(pid_t pid, int timeout_ms)
{
    return pid_wait(pid_stopped, pid, timeout_ms, 1000);
}

pid_t pid_wait_child(pid_t pid, pid_t not, int timeout_ms)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task/%d/children",
                                            (int)pid, (int)pid);

    for (int waited = 0; waited < timeout_ms; waited++) {
        g_autofree char *text = NULL;
        g_auto(GStrv) pids = NULL;

        if (g_file_get_contents(path, &text, NULL, NULL)) {
            pids = g_strsplit(g_strstrip(text), " ", -1);
            for (guint i = 0; pids[i]; i++) {
                if (*pids[i] && atoi(pids[i]) != not) {
                    return atoi(pids[i]);
                }
            }
        }
        g_usleep(1000);
    }
    return 0;
}

bool pid_wait_gone(pid_t pid, int timeout_ms)
{
    return pid_wait(pid_gone, pid, timeout_ms, 2000);
}

static const char *env_path(const char *var)
{
    const char *v = g_getenv(var);

    return v && *v ? v : NULL;
}

/* The QEMU under test: $VMFORK_QEMU (such as the sanitizer build), else
 * the one meson names */
static const char *qemu_binary(void)
{
    const char *qemu = env_path("VMFORK_QEMU");

    return qemu ? qemu : env_path("VMFORK_QEMU_BUILT");
}

const char *vm_qemu_binary(void)
{
    return qemu_binary();
}

const char *vm_missing(GuestKind guest, const char *accel)
{
    const char *qemu = qemu_binary();

    if (!qemu || !g_file_test(qemu, G_FILE_TEST_IS_EXECUTABLE)) {
        return "patched QEMU not built (VMFORK_QEMU)";
    }
    if (guest == GUEST_LINUX &&
        (!env_path("VMFORK_LINUX_KERNEL") || !env_path("VMFORK_LINUX_INITRD") ||
         !g_file_test(g_getenv("VMFORK_LINUX_KERNEL"), G_FILE_TEST_EXISTS) ||
         !g_file_test(g_getenv("VMFORK_LINUX_INITRD"), G_FILE_TEST_EXISTS))) {
        return "Linux test guest not built (VMFORK_LINUX_KERNEL/INITRD)";
    }
    if (guest == GUEST_DEBIAN) {
        static char why[512];
        const char *d = env_path("VMFORK_DEBIAN_DIR");
        const char *need[] = { "debian.qcow2", "vmlinux", "initrd.img",
                               "cmdline", "id_ed25519", NULL };

        if (!d) {
            return "Debian test guest not built (VMFORK_DEBIAN_DIR)";
        }
        for (int i = 0; need[i]; i++) {
            g_autofree char *f = g_build_filename(d, need[i], NULL);

            if (!g_file_test(f, G_FILE_TEST_EXISTS)) {
                snprintf(why, sizeof(why), "Debian test guest not built: "
                         "%s missing (scripts/build-guest-debian.sh)", f);
                return why;
            }
        }
        if (!env_path("VMFORK_QEMU_IMG") ||
            !g_file_test(g_getenv("VMFORK_QEMU_IMG"), G_FILE_TEST_IS_EXECUTABLE)) {
            return "qemu-img not built (VMFORK_QEMU_IMG)";
        }
    }
    if (guest == GUEST_TINY && (!env_path("VMFORK_TINY") ||
        !g_file_test(g_getenv("VMFORK_TINY"), G_FILE_TEST_EXISTS))) {
        return "tiny test guest not built (VMFORK_TINY)";
    }
    if (accel && g_str_has_prefix(accel, "kvm")) {
        int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

        if (fd < 0) {
            return "/dev/kvm is not usable";
        }
        close(fd);
        if ((guest == GUEST_LINUX || guest == GUEST_DEBIAN) &&
            g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_EXISTS)) {
            return "KVM here is kvm_pvm (software), which cannot run a "
                   "stock Linux kernel";
        }
    }
    return NULL;
}

const char *vm_describe(const VmOptions *o)
{
    static char buf[128];
    const char *accel = o->accel ? o->accel : "tcg";

    snprintf(buf, sizeof(buf), "%s guest under %s%s, %d vCPU(s)",
             o->guest == GUEST_LINUX ? "Linux" :
             o->guest == GUEST_DEBIAN ? "Debian" : "tiny", accel,
             g_str_equal(accel, "kvm") &&
             g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_EXISTS) ?
             " (kvm_pvm, software)" : "", o->smp ? o->smp : 1);
    return buf;
}

bool vm_skip_if_missing(const VmOptions *o)
{
    const char *why = vm_missing(o->guest, o->accel);

    if (why) {
        g_test_skip(why);
        return true;
    }
    g_test_message("running: %s", vm_describe(o));
    return false;
}

static pid_t spawn(GPtrArray *argv, const char *log)
{
    pid_t pid;

    g_assert_null(argv->pdata[argv->len - 1]);
    pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);

        setsid();
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        /* QEMU gets stdio and nothing else we have or inherited (vmfork's
         * fd safety net refuses a fork over an fd of unknown owner) */
        close_range(3, ~0U, 0);
        execv(argv->pdata[0], (char **)argv->pdata);
        _exit(127);
    }
    return pid;
}

pid_t vm_spawn(const char *const *argv, const char *log)
{
    g_autoptr(GPtrArray) args = g_ptr_array_new();
    pid_t pid;

    harness_init();
    for (const char *const *a = argv; *a; a++) {
        g_ptr_array_add(args, (gpointer)*a);
    }
    g_ptr_array_add(args, NULL);
    pid = spawn(args, log);
    register_group(pid);
    return pid;
}

static int unix_connect(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

int vm_unix_connect(pid_t pid, const char *path, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;
    int fd;

    while ((fd = unix_connect(path)) < 0) {
        if (g_get_monotonic_time() > deadline || pid_gone(pid)) {
            return -1;
        }
        g_usleep(2000);
    }
    return fd;
}

char *fd_read_line(int fd, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;
    g_autoptr(GString) line = g_string_new(NULL);

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        char c;
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, left) <= 0) {
            return NULL;
        }
        n = read(fd, &c, 1);
        if (n == 0) {
            return NULL;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            return NULL;
        }
        if (c == '\n') {
            return g_string_free(g_steal_pointer(&line), false);
        }
        g_string_append_c(line, c);
    }
}

static QmpClient *qmp_vm_unix_connect(pid_t pid, const char *path)
{
    gint64 deadline = g_get_monotonic_time() + QMP_TIMEOUT_MS * 1000LL;

    for (;;) {
        g_autoptr(GError) err = NULL;
        QmpClient *c = qmp_connect_unix(path, QMP_TIMEOUT_MS, &err);

        if (c) {
            return c;
        }
        if (g_get_monotonic_time() > deadline || pid_gone(pid)) {
            g_test_message("QMP %s: %s", path, err->message);
            return NULL;
        }
        g_usleep(2000);
    }
}

static void dump_log(Vm *vm, const char *name)
{
    g_autofree char *path = g_build_filename(vm->dir, name, NULL);
    g_autofree char *text = NULL;

    if (g_file_get_contents(path, &text, NULL, NULL) && *text) {
        g_test_message("--- %s ---\n%s", path, text);
    }
}

/*
 * What the guest printed on its first serial port and nobody read, or its
 * console file (Debian): the last 8 KiB, for a guest that did not come up.
 * The port is not read again afterwards.
 */
static void dump_serial_tail(Vm *vm)
{
    g_autoptr(GString) all = g_string_new(vm->serial_buf->str);
    char buf[4096];
    ssize_t n;

    if (vm->console_path) {
        g_autofree char *text = NULL;
        gsize len = 0;

        if (g_file_get_contents(vm->console_path, &text, &len, NULL)) {
            g_string_append_len(all, text, len);
        }
    }
    while (vm->serial_fd >= 0 &&
           (n = read(vm->serial_fd, buf, sizeof(buf))) > 0) {
        g_string_append_len(all, buf, n);
        if (all->len > 64 * 1024) {
            g_string_erase(all, 0, all->len - 8192);
        }
    }
    if (all->len > 8192) {
        g_string_erase(all, 0, all->len - 8192);
    }
    g_test_message("--- the guest's serial port (last %zu bytes) ---\n%s",
                   all->len, all->str);
}

static Vm *vm_new(GuestKind guest, const char *dir)
{
    Vm *vm = g_new0(Vm, 1);

    vm->guest = guest;
    vm->dir = g_strdup(dir);
    vm->serial_fd = -1;
    vm->serial_buf = g_string_new(NULL);
    g_ptr_array_add(all_vms, vm);
    return vm;
}

Vm *vm_start(const VmOptions *o)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *dir = NULL;
    g_autofree char *log = NULL;
    g_autofree char *serial = NULL;
    g_autofree char *cmdline = NULL;
    const char *accel = o->accel ? o->accel : "tcg";
    int mem = o->mem_mib ? o->mem_mib :
              (o->guest == GUEST_LINUX || o->guest == GUEST_DEBIAN ? 512 : 64);
    Vm *vm;

    harness_init();
    dir = o->dir ? g_strdup(o->dir) : g_dir_make_tmp("vmtest-XXXXXX", NULL);
    g_assert_nonnull(dir);
    vm_register_dir(dir);
    vm = vm_new(o->guest, dir);
    vm->qmp_path = g_build_filename(dir, "qmp.sock", NULL);
    serial = g_build_filename(dir, "serial.sock", NULL);
    log = g_build_filename(dir, "qemu.log", NULL);

#define ARG(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    for (const char *const *w = o->wrapper; w && *w; w++) {
        ARG("%s", *w);
    }
    ARG("%s", qemu_binary());
    ARG("-accel"); ARG("%s", accel);
    ARG("-M"); ARG("%s", o->machine ? o->machine : "pc");
    ARG("-m"); ARG("%d", mem);
    ARG("-smp"); ARG("%d", o->smp ? o->smp : 1);
    ARG("-nodefaults"); ARG("-display"); ARG("none");
    /* threads named after their job in /proc/PID/task/TID/comm */
    ARG("-name"); ARG("debug-threads=on");
    ARG("-S");
    ARG("-qmp"); ARG("unix:%s,server=on,wait=off", vm->qmp_path);
    if (o->guest == GUEST_DEBIAN) {
        /*
         * The console goes to a file, which never fills.  A socket that
         * nobody reads holds only 278 of the serial port's one-byte
         * writes; then the port stops sending and the guest's next
         * console write (systemd's status of a slow start job) blocks
         * its boot for good.
         */
        vm->console_path = g_build_filename(dir, "console.log", NULL);
        ARG("-chardev"); ARG("file,id=agent,path=%s", vm->console_path);
    } else {
        ARG("-chardev"); ARG("socket,id=agent,path=%s,server=on,wait=off",
                             serial);
    }
    ARG("-serial"); ARG("chardev:agent");
    ARG("-pidfile"); ARG("%s/qemu.pid", dir);
    if (o->daemonize) {
        ARG("-daemonize");
    }
    if (o->guest == GUEST_LINUX) {
        ARG("-serial"); ARG("file:%s/console.log", dir);
        ARG("-kernel"); ARG("%s", g_getenv("VMFORK_LINUX_KERNEL"));
        ARG("-initrd"); ARG("%s", g_getenv("VMFORK_LINUX_INITRD"));
        ARG("-append"); ARG("console=ttyS1 quiet panic=-1");
        ARG("-no-reboot");
    } else if (o->guest == GUEST_DEBIAN) {
        const char *d = g_getenv("VMFORK_DEBIAN_DIR");
        g_autofree char *base = g_build_filename(d, "debian.qcow2", NULL);
        g_autofree char *disk = g_build_filename(dir, "debian.qcow2", NULL);
        g_autofree char *cl_path = g_build_filename(d, "cmdline", NULL);
        g_autofree char *cl = NULL, *mk = NULL, *err = NULL;
        int status;

        /* a throwaway overlay: debian.qcow2 itself is only read */
        mk = g_strdup_printf("%s create -q -f qcow2 -F qcow2 -b %s %s",
                             g_getenv("VMFORK_QEMU_IMG"), base, disk);
        g_assert_true(g_spawn_command_line_sync(mk, NULL, &err, &status, NULL));
        if (status) {
            g_error("%s: %s", mk, err);
        }
        g_assert_true(g_file_get_contents(cl_path, &cl, NULL, NULL));
        g_strstrip(cl);
        vm->ssh_port = o->ssh_port;
        if (!vm->ssh_port) {
            struct sockaddr_in sin = { .sin_family = AF_INET };
            socklen_t len = sizeof(sin);
            int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            g_assert_cmpint(bind(s, (struct sockaddr *)&sin, sizeof(sin)), ==, 0);
            g_assert_cmpint(getsockname(s, (struct sockaddr *)&sin, &len), ==, 0);
            vm->ssh_port = ntohs(sin.sin_port);
            close(s);
        }
        vm->qga_path = g_build_filename(dir, "qga.sock", NULL);
        ARG("-kernel"); ARG("%s/vmlinux", d);
        ARG("-initrd"); ARG("%s/initrd.img", d);
        ARG("-append"); ARG("%s%s%s", cl, o->kernel_args ? " " : "",
                            o->kernel_args ? o->kernel_args : "");
        ARG("-drive"); ARG("file=%s,format=qcow2,if=none,id=disk0", disk);
        ARG("-device"); ARG("virtio-blk-pci,drive=disk0");
        ARG("-netdev"); ARG("user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22",
                            vm->ssh_port);
        ARG("-device"); ARG("virtio-net-pci,netdev=net0,romfile=");
        ARG("-device"); ARG("virtio-serial-pci");
        ARG("-chardev"); ARG("socket,id=qga0,path=%s,server=on,wait=off",
                             vm->qga_path);
        ARG("-device");
        ARG("virtserialport,chardev=qga0,name=org.qemu.guest_agent.0");
    } else {
        ARG("-kernel"); ARG("%s", g_getenv("VMFORK_TINY"));
    }
    for (const char *const *e = o->extra; e && *e; e++) {
        g_autoptr(GString) arg = g_string_new(*e);

        g_string_replace(arg, "@DIR@", dir, 0);
        ARG("%s", arg->str);
    }
#undef ARG
    g_ptr_array_add(argv, NULL);
    cmdline = g_strjoinv(" ", (char **)argv->pdata);
    g_test_message("starting %s: %s", vm_describe(o), cmdline);

    vm->pid = spawn(argv, log);
    register_group(vm->pid);
    if (o->daemonize) {
        /* The launcher exits once the daemon is up; we reap the daemon
         * (a subreaper), which runs in a process group of its own */
        g_autofree char *pidfile = g_build_filename(dir, "qemu.pid", NULL);
        g_autofree char *text = NULL;
        int status;

        g_assert_cmpint(waitpid(vm->pid, &status, 0), ==, vm->pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status)) {
            dump_log(vm, "qemu.log");
            g_error("QEMU -daemonize failed: status 0x%x", status);
        }
        g_assert_true(g_file_get_contents(pidfile, &text, NULL, NULL));
        vm->pid = atoi(text);
        register_group(getpgid(vm->pid));
    }
    vm->qmp = qmp_vm_unix_connect(vm->pid, vm->qmp_path);
    if (!vm->qmp) {
        dump_log(vm, "qemu.log");
        g_error("QEMU did not open its QMP socket");
    }
    if (!vm->console_path) {
        /* Connected before the guest runs (-S): no output is lost */
        vm->serial_fd = vm_unix_connect(vm->pid, serial, QMP_TIMEOUT_MS);
        g_assert_cmpint(vm->serial_fd, >=, 0);
    }
    if (o->no_boot) {
        return vm;
    }
    json_node_unref(vm_qmp(vm, "cont", NULL));

    if (o->guest == GUEST_LINUX) {
        for (;;) {
            g_autofree char *line = vm_read_line(vm, BOOT_TIMEOUT_MS);

            if (!line) {
                dump_log(vm, "console.log");
                dump_log(vm, "qemu.log");
                g_error("the Linux guest did not print its READY line");
            }
            if (g_str_has_prefix(line, "READY vmfork-agent")) {
                break;
            }
        }
    } else if (o->guest == GUEST_DEBIAN) {
        /* systemd boots for seconds: the caller waits for what it needs */
    } else if (vm_tiny_next_seq(vm, BOOT_TIMEOUT_MS) < 0) {
        dump_log(vm, "qemu.log");
        g_error("the tiny guest printed no counter line");
    }
    return vm;
}

Vm *vm_attach_child(Vm *parent, JsonObject *child)
{
    Vm *vm = vm_new(parent->guest, parent->dir);
    g_autofree char *serial = NULL;
    g_autofree char *args = NULL;

    vm->pid = json_object_get_int_member(child, "pid");
    vm->is_child = true;
    vm->qmp_path = g_strdup(json_object_get_string_member(child, "monitor"));
    vm->qmp = qmp_vm_unix_connect(vm->pid, vm->qmp_path);
    if (!vm->qmp) {
        dump_log(vm, "qemu.log");       /* the child's stderr too */
        g_error("child %d did not open its QMP socket", vm->pid);
    }

    if (parent->console_path) {
        /* vmfork gave the child's file chardev a path of its own */
        vm->console_path = g_strdup_printf("%s.fork-%d", parent->console_path,
                                           vm->pid);
        g_assert_true(g_file_test(vm->console_path, G_FILE_TEST_EXISTS));
    } else {
        serial = g_strdup_printf("%s/serial-%d.sock", parent->dir, vm->pid);
        args = g_strdup_printf("{\"id\": \"agent\", \"backend\": {\"type\": "
                               "\"socket\", \"data\": {\"addr\": {\"type\": "
                               "\"unix\", \"data\": {\"path\": \"%s\"}}, "
                               "\"server\": true, \"wait\": false}}}", serial);
        json_node_unref(vm_qmp(vm, "chardev-change", args));
        vm->serial_fd = vm_unix_connect(vm->pid, serial, QMP_TIMEOUT_MS);
        g_assert_cmpint(vm->serial_fd, >=, 0);
    }
    if (vm->guest == GUEST_DEBIAN && json_object_has_member(child, "chardevs")) {
        /* where the reply says the child's qemu-ga listens */
        JsonArray *cds = json_object_get_array_member(child, "chardevs");

        for (guint i = 0; i < json_array_get_length(cds); i++) {
            JsonObject *cd = json_array_get_object_element(cds, i);

            if (g_str_equal(json_object_get_string_member(cd, "id"), "qga0")) {
                vm->qga_path = g_strdup(json_object_get_string_member(cd, "path"));
            }
        }
    }
    return vm;
}

static void vm_free(Vm *vm)
{
    if (vm->qmp) {
        qmp_close(vm->qmp);
    }
    if (vm->serial_fd >= 0) {
        close(vm->serial_fd);
    }
    g_string_free(vm->serial_buf, true);
    g_free(vm->console_path);
    g_free(vm->qga_path);
    g_free(vm->qmp_path);
    g_free(vm->dir);
    g_free(vm);
}

void vm_quit(Vm *vm)
{
    g_autoptr(GError) err = NULL;
    JsonNode *r = qmp_execute(vm->qmp, "quit", NULL, QMP_TIMEOUT_MS, &err);

    g_assert_no_error(err);
    json_node_unref(r);
    if (!vm->is_child) {
        /* We spawned it: wait for it and reap it */
        gint64 deadline = g_get_monotonic_time() + QMP_TIMEOUT_MS * 1000LL;

        while (waitpid(vm->pid, NULL, WNOHANG) == 0) {
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            g_usleep(2000);
        }
    } else {
        g_assert_true(pid_wait_gone(vm->pid, QMP_TIMEOUT_MS));
    }
}

void vm_cleanup_all(void)
{
    if (!all_vms) {
        return;
    }
    if (g_test_failed()) {
        for (guint i = 0; i < all_vms->len; i++) {
            Vm *vm = all_vms->pdata[i];

            if (!vm->is_child) {
                dump_log(vm, "qemu.log");
            }
        }
    }
    kill_groups(SIGKILL);
    for (guint i = 0; i < all_vms->len; i++) {
        Vm *vm = all_vms->pdata[i];

        if (!vm->is_child) {
            waitpid(vm->pid, NULL, 0);
        }
        vm_free(vm);
    }
    g_ptr_array_set_size(all_vms, 0);
    /* vmfork children whose parent died were re-parented to us */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* reaped one */
    }
    for (int i = 0; i < MAX_GROUPS; i++) {
        groups[i] = 0;
    }
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0]) {
            remove_dir(dirs[i]);
            dirs[i][0] = 0;
        }
    }
}

/* ---- QMP ------------------------------------------------------------- */

JsonNode *vm_qmp(Vm *vm, const char *command, const char *args_json)
{
    g_autoptr(GError) err = NULL;
    JsonNode *r = qmp_execute_json(vm->qmp, command, args_json,
                                   QMP_TIMEOUT_MS, &err);

    g_assert_no_error(err);
    return r;
}

GError *vm_qmp_error(Vm *vm, const char *command, const char *args_json)
{
    GError *err = NULL;
    JsonNode *r = qmp_execute_json(vm->qmp, command, args_json,
                                   QMP_TIMEOUT_MS, &err);

    if (r) {
        json_node_unref(r);
    }
    return err;
}

char *vm_runstate(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "query-status", NULL);
    char *s = g_strdup(json_object_get_string_member(
                           json_node_get_object(r), "status"));

    json_node_unref(r);
    return s;
}

pid_t vm_thread_id(Vm *vm, const char *iothread)
{
    JsonNode *r = vm_qmp(vm, iothread ? "query-iothreads" :
                         "query-cpus-fast", NULL);
    JsonArray *a = json_node_get_array(r);
    pid_t tid = -1;

    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *o = json_array_get_object_element(a, i);

        if (!iothread ||
            !g_strcmp0(json_object_get_string_member(o, "id"), iothread)) {
            tid = json_object_get_int_member(o, "thread-id");
            break;
        }
    }
    json_node_unref(r);
    g_assert_cmpint(tid, >, 0);
    return tid;
}

JsonArray *vm_fork(Vm *vm, const char *args_json)
{
    JsonNode *r = vm_qmp(vm, "vmfork", args_json);
    JsonArray *children = json_object_get_array_member(
        json_node_get_object(r), "children");

    json_array_ref(children);
    json_node_unref(r);
    return children;
}

struct VmForkThread {
    QmpClient *qmp;
    char *args;
    JsonNode *reply;
    GError *err;
    gint answered;
    GThread *thread;
};

static gpointer fork_thread(gpointer data)
{
    VmForkThread *t = data;

    t->reply = qmp_execute_json(t->qmp, "vmfork", t->args, 60000, &t->err);
    g_atomic_int_set(&t->answered, 1);
    return NULL;
}

VmForkThread *vm_fork_thread_start(QmpClient *qmp, const char *args_json)
{
    VmForkThread *t = g_new0(VmForkThread, 1);

    t->qmp = qmp;
    t->args = g_strdup(args_json);
    t->thread = g_thread_new("vmfork", fork_thread, t);
    return t;
}

bool vm_fork_thread_answered(VmForkThread *t)
{
    return g_atomic_int_get(&t->answered);
}

JsonNode *vm_fork_thread_join(VmForkThread *t, GError **err)
{
    JsonNode *reply;

    g_thread_join(t->thread);
    reply = t->reply;
    if (t->err) {
        g_propagate_error(err, t->err);
    }
    g_free(t->args);
    g_free(t);
    return reply;
}

/* ---- Serial ---------------------------------------------------------- */

char *vm_read_line(Vm *vm, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;

    for (;;) {
        char *nl = memchr(vm->serial_buf->str, '\n', vm->serial_buf->len);
        struct pollfd pfd = { .fd = vm->serial_fd, .events = POLLIN };
        gint64 left;
        char buf[4096];
        ssize_t n;

        if (nl) {
            char *line = g_strndup(vm->serial_buf->str,
                                   nl - vm->serial_buf->str);

            g_string_erase(vm->serial_buf, 0, nl - vm->serial_buf->str + 1);
            g_strchomp(line);
            return line;
        }
        left = (deadline - g_get_monotonic_time()) / 1000;
        if (left <= 0 || poll(&pfd, 1, left) <= 0) {
            return NULL;
        }
        n = read(vm->serial_fd, buf, sizeof(buf));
        if (n <= 0) {
            return NULL;
        }
        g_string_append_len(vm->serial_buf, buf, n);
    }
}

void fd_write_all(int fd, const char *text)
{
    size_t len = strlen(text);

    while (len) {
        ssize_t n = write(fd, text, len);

        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };

            poll(&pfd, 1, 1000);
            continue;
        }
        g_assert_cmpint(n, >, 0);
        text += n;
        len -= n;
    }
}

static void serial_write(Vm *vm, const char *text)
{
    fd_write_all(vm->serial_fd, text);
}

void vm_agent_send(Vm *vm, const char *fmt, ...)
{
    g_autofree char *cmd = NULL;
    va_list ap;

    g_assert(vm->guest == GUEST_LINUX);
    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    serial_write(vm, cmd);
    serial_write(vm, "\n");
}

char *vm_agent_reply(Vm *vm)
{
    for (;;) {
        g_autofree char *line = vm_read_line(vm, QMP_TIMEOUT_MS);

        if (!line) {
            g_error("agent: no reply");
        }
        if (g_str_has_prefix(line, "ERR")) {
            g_error("agent: command failed: %s", line);
        }
        if (g_str_equal(line, "OK")) {
            return g_strdup("");
        }
        if (g_str_has_prefix(line, "OK ")) {
            return g_strdup(line + 3);
        }
        /* "T ..." timestamp lines, a READY line of a restarted agent */
    }
}

char *vm_agent(Vm *vm, const char *fmt, ...)
{
    g_autofree char *cmd = NULL;
    va_list ap;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vm_agent_send(vm, "%s", cmd);
    return vm_agent_reply(vm);
}

char *vm_sh(Vm *vm, const char *fmt, ...)
{
    g_autofree char *cmd = NULL, *reply = NULL;
    g_auto(GStrv) parts = NULL;
    GString *out = g_string_new(NULL);
    va_list ap;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    reply = vm_agent(vm, "sh %s", cmd);
    parts = g_strsplit(reply, " ", 2);
    if (!g_str_equal(parts[0], "0")) {
        g_error("guest command '%s' exited with status %s", cmd, parts[0]);
    }
    for (const char *p = parts[1]; p && p[0] && p[1]; p += 2) {
        unsigned int byte;

        sscanf(p, "%2x", &byte);
        g_string_append_c(out, byte);
    }
    return g_string_free(out, false);
}

void vm_disk_write(Vm *vm, const char *dev, int sector, const char *text)
{
    g_free(vm_sh(vm, "printf %s | dd of=/dev/%s bs=512 seek=%d conv=fsync "
                 "2>/dev/null", text, dev, sector));
}

char *vm_disk_read(Vm *vm, const char *dev, int sector)
{
    return vm_sh(vm, "dd if=/dev/%s bs=512 skip=%d count=1 iflag=direct "
                 "2>/dev/null | tr -d '\\000'", dev, sector);
}

char *file_sha256(const char *path)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data,
                                       len);
}

gsize vm_log_size(Vm *vm)
{
    g_autofree char *log = g_build_filename(vm->dir, "qemu.log", NULL);
    GStatBuf st;

    g_assert_cmpint(g_stat(log, &st), ==, 0);
    return st.st_size;
}

char *vm_log_since(Vm *vm, gsize from)
{
    g_autofree char *log = g_build_filename(vm->dir, "qemu.log", NULL);
    g_autofree char *text = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(log, &text, &len, NULL));
    g_assert_cmpuint(len, >=, from);
    return g_strdup(text + from);
}

guint vm_log_count(Vm *vm, const char *pattern)
{
    g_autofree char *text = vm_log_since(vm, 0);
    g_autoptr(GRegex) re = g_regex_new(pattern, G_REGEX_MULTILINE, 0, NULL);
    g_autoptr(GMatchInfo) m = NULL;
    guint n = 0;

    for (g_regex_match(re, text, 0, &m); g_match_info_matches(m);
         g_match_info_next(m, NULL)) {
        n++;
    }
    return n;
}

void vm_trace_enable(Vm *vm, const char *name)
{
    g_autofree char *args = g_strdup_printf(
        "{\"name\": \"%s\", \"enable\": true}", name);

    json_node_unref(vm_qmp(vm, "trace-event-set-state", args));
}

void vm_qemu_img_create(const char *path, const char *fmt, int mib)
{
    g_autofree char *cmd = g_strdup_printf("%s create -q -f %s %s %dM",
                                           g_getenv("VMFORK_QEMU_IMG"), fmt,
                                           path, mib);
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL));
    g_assert_cmpint(status, ==, 0);
}

guint vm_disk_chain_length(Vm *vm)
{
    g_autoptr(JsonNode) r = vm_qmp(vm, "query-block", NULL);
    JsonObject *b = json_array_get_object_element(json_node_get_array(r), 0);
    JsonObject *image = json_object_get_object_member(
        json_object_get_object_member(b, "inserted"), "image");
    guint n = 0;

    for (; image; n++) {
        image = json_object_has_member(image, "backing-image") ?
            json_object_get_object_member(image, "backing-image") : NULL;
    }
    return n;
}

guint vm_qemu_img_check_dir(const char *dir, bool may_leak)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    guint n = 0, leaky = 0;

    g_assert_nonnull(d);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        g_autofree char *cmd = NULL, *err = NULL;
        int status;

        if (!g_str_has_suffix(name, ".qcow2")) {
            continue;
        }
        cmd = g_strdup_printf("%s check -q %s", g_getenv("VMFORK_QEMU_IMG"),
                              path);
        g_assert_true(g_spawn_command_line_sync(cmd, NULL, &err, &status,
                                                NULL));
        if (status) {
            g_test_message("qemu-img check %s: %s", name, err);
        }
        /* qemu-img check exits 3 when the image only leaks clusters */
        if (!(may_leak && WIFEXITED(status) && WEXITSTATUS(status) == 3)) {
            g_assert_cmpint(status, ==, 0);
        }
        leaky += status != 0;
        n++;
    }
    g_test_message("qemu-img check: %u overlays, %u clean, %u leaking "
                   "clusters only", n, n - leaky, leaky);
    return n;
}

char *vm_clone_id_word(Vm *vm)
{
    char *id = vm_agent(vm, "cloneid");

    g_strdelimit(id, " ", '_');
    return id;
}

void vm_writer_start(Vm *vm, const char *dev)
{
    g_free(vm_agent(vm, "wstart %s", dev));
}

guint64 vm_writer_wait(Vm *vm, guint64 n)
{
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    guint64 acked;

    for (;;) {
        g_autofree char *r = vm_agent(vm, "wstat");

        acked = g_ascii_strtoull(r, NULL, 10);
        if (acked >= n) {
            return acked;
        }
        if (g_get_monotonic_time() > deadline) {
            g_error("writer: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                    " records acknowledged after 30 s", acked, n);
        }
        g_usleep(10 * 1000);
    }
}

guint64 vm_writer_stop(Vm *vm)
{
    g_autofree char *acked = vm_agent(vm, "wstop");

    return g_ascii_strtoull(acked, NULL, 10);
}

char *vm_writer_check(Vm *vm, const char *dev, guint64 acked)
{
    /* Read a little past the acknowledged records: nothing may be there */
    g_autofree char *reply = vm_agent(vm, "wcheck %s %" G_GUINT64_FORMAT,
                                      dev, acked + 64);
    g_auto(GStrv) f = g_strsplit(reply, " ", 3);
    guint64 prefix, after;

    g_assert_cmpuint(g_strv_length(f), ==, 3);
    prefix = g_ascii_strtoull(f[0], NULL, 10);
    after = g_ascii_strtoull(f[1], NULL, 10);
    g_test_message("%s: %" G_GUINT64_FORMAT " acknowledged, on disk %s "
                   "(%" G_GUINT64_FORMAT " valid after a gap)",
                   dev, acked, f[2], after);
    /* Every acknowledged write; at most one more (in flight at the stop) */
    g_assert_cmpuint(prefix, >=, acked);
    g_assert_cmpuint(prefix, <=, acked + 1);
    g_assert_cmpuint(after, ==, 0);
    return g_strdup(f[2]);
}

gint64 vm_tiny_next_seq(Vm *vm, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;

    g_assert(vm->guest == GUEST_TINY);
    for (;;) {
        int left = (deadline - g_get_monotonic_time()) / 1000;
        g_autofree char *line = vm_read_line(vm, MAX(left, 0));
        guint64 tsc;
        gint64 seq;

        if (!line) {
            return -1;
        }
        if (g_str_has_prefix(line, "C ") &&
            sscanf(line, "C %" G_GINT64_FORMAT " %" G_GINT64_MODIFIER "x",
                   &seq, &tsc) == 2) {
            return seq;
        }
    }
}

void vm_tiny_send(Vm *vm, const char *cmd)
{
    g_assert(vm->guest == GUEST_TINY);
    serial_write(vm, cmd);
    serial_write(vm, "\n");
}

char *vm_tiny_reply(Vm *vm, char want, int timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;

    for (;;) {
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        g_autofree char *line = left > 0 ? vm_read_line(vm, left) : NULL;

        if (!line) {
            g_error("tiny guest: no '%c' reply within %d ms", want,
                    timeout_ms);
        }
        if (line[0] == 'E') {
            g_error("tiny guest: a command failed: %s", line);
        }
        if (line[0] == want && line[1] == ' ') {
            return g_strdup(line + 2);
        }
    }
}

char *vm_tiny_cmd(Vm *vm, const char *cmd)
{
    vm_tiny_send(vm, cmd);
    return vm_tiny_reply(vm, g_ascii_toupper(cmd[0]), QMP_TIMEOUT_MS);
}

/* ---- Debian guest: ssh ------------------------------------------------- */

/* A port p such that p + k * offset, k = 0 .. n - 1, are free on 127.0.0.1 */
int vm_free_ports(int offset, int n)
{
    for (int tries = 0; tries < 100; tries++) {
        struct sockaddr_in sin = { .sin_family = AF_INET };
        socklen_t len = sizeof(sin);
        g_autofree int *fds = g_new(int, n);
        int port = 0, k;

        for (k = 0; k < n; k++) {
            fds[k] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sin.sin_port = htons(k ? port + k * offset : 0);
            if ((k && port + k * offset >= 65536) ||
                bind(fds[k], (struct sockaddr *)&sin, sizeof(sin)) < 0) {
                k++;
                port = 0;
                break;
            }
            if (!k) {
                g_assert_cmpint(getsockname(fds[0], (struct sockaddr *)&sin,
                                            &len), ==, 0);
                port = ntohs(sin.sin_port);
            }
        }
        while (k--) {
            close(fds[k]);
        }
        if (port) {
            return port;
        }
    }
    g_error("no %d free ports %d apart", n, offset);
}

char **vm_piped_log_args(const char *dir, int index, int *reader)
{
    g_autofree char *fifo = g_build_filename(dir, "log.fifo", NULL);
    char **args = g_new0(char *, 5);

    g_assert_cmpint(mkfifo(fifo, 0600), ==, 0);
    *reader = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    g_assert_cmpint(*reader, >=, 0);
    args[0] = g_strdup("-chardev");
    args[1] = g_strdup_printf("null,id=piped,logfile=%s", fifo);
    args[2] = g_strdup("-device");
    args[3] = g_strdup_printf("isa-serial,chardev=piped,index=%d", index);
    return args;
}

/* ssh's command line for CMD on VM; free with g_strfreev() */
static char **ssh_argv(Vm *vm, bool with_stdin, const char *cmd)
{
    g_autofree char *key = g_build_filename(g_getenv("VMFORK_DEBIAN_DIR"),
                                            "id_ed25519", NULL);
    g_autofree char *portstr = g_strdup_printf("%d", vm->ssh_port);
    const char *argv[] = {
        "ssh", "-i", key, "-p", portstr, "-o", "BatchMode=yes",
        /* the TCP connect and the server's banner: a guest that is slow
         * on a loaded host takes seconds to fork and start sshd */
        "-o", "ConnectTimeout=30", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "root@127.0.0.1", cmd, NULL };
    GStrvBuilder *b = g_strv_builder_new();
    char **v;

    g_assert(vm->ssh_port);
    g_strv_builder_add(b, argv[0]);
    if (!with_stdin) {
        g_strv_builder_add(b, "-n");
    }
    g_strv_builder_addv(b, argv + 1);
    v = g_strv_builder_end(b);
    g_strv_builder_unref(b);
    return v;
}

/* vm_ssh(), and what ssh wrote to stderr in *errout unless NULL */
static char *ssh_run(Vm *vm, int *status, const char *cmd, char **errout)
{
    g_auto(GStrv) argv = ssh_argv(vm, false, cmd);
    g_autoptr(GError) err = NULL;
    char *out = NULL;

    if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH |
                      (errout ? 0 : G_SPAWN_STDERR_TO_DEV_NULL), NULL, NULL,
                      &out, errout, status, &err)) {
        g_error("ssh: %s", err->message);
    }
    return out;
}

char *vm_ssh(Vm *vm, int *status, const char *cmd)
{
    return ssh_run(vm, status, cmd, NULL);
}

double vm_ssh_clock_offset(Vm *vm, double *err)
{
    g_auto(GStrv) argv = ssh_argv(vm, true, "echo ready; while read x; do "
                                  "date +%s.%N; done");
    g_autoptr(GError) gerr = NULL;
    double best = 0, best_err = G_MAXDOUBLE;
    int in_fd, out_fd, status;
    g_autofree char *ready = NULL;
    GPid pid;

    if (!g_spawn_async_with_pipes(NULL, argv, NULL, G_SPAWN_SEARCH_PATH |
                                  G_SPAWN_STDERR_TO_DEV_NULL |
                                  G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &pid,
                                  &in_fd, &out_fd, NULL, &gerr)) {
        g_error("ssh: %s", gerr->message);
    }
    ready = fd_read_line(out_fd, 30000);
    g_assert_cmpstr(ready, ==, "ready");
    /* Five reads; the one with the shortest round trip */
    for (int i = 0; i < 5; i++) {
        gint64 before = g_get_real_time(), after;
        g_autofree char *now = NULL;

        fd_write_all(in_fd, "\n");
        now = fd_read_line(out_fd, 10000);
        after = g_get_real_time();
        g_assert_nonnull(now);
        if ((after - before) / 2e6 < best_err) {
            best_err = (after - before) / 2e6;
            best = g_ascii_strtod(now, NULL) - (before + after) / 2e6;
        }
    }
    close(in_fd);
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_spawn_close_pid(pid);
    close(out_fd);
    *err = best_err;
    return best;
}

char *vm_qga(Vm *vm, const char *command, int timeout_s, int *status,
             char **errout)
{
    g_autofree char *timeout = g_strdup_printf("%d", timeout_s);
    const char *argv[] = { "python3", g_getenv("VMFORK_DEBIAN_QGA"),
                           "--timeout", timeout, vm->qga_path, command, NULL };
    char *out = NULL;

    g_assert_nonnull(vm->qga_path);
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, &out, errout, status, NULL)) {
        *status = -1;
    }
    return out;
}

/*
 * Where a connection to the guest's sshd stops: slirp's forwarding and
 * connections (HMP info usernet) and, where the guest has qemu-ga, its
 * interfaces and addresses
 */
static void dump_network(Vm *vm)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) r = qmp_execute_json(vm->qmp, "human-monitor-command",
                                             "{\"command-line\": \"info usernet\"}",
                                             QMP_TIMEOUT_MS, &err);

    g_test_message("--- info usernet ---\n%s", r ? json_node_get_string(r) :
                   err->message);
    if (vm->qga_path && g_getenv("VMFORK_DEBIAN_QGA")) {
        g_autofree char *errout = NULL;
        int status;
        g_autofree char *out = vm_qga(vm, "guest-network-get-interfaces", 20,
                                      &status, &errout);

        g_test_message("--- qemu-ga: guest-network-get-interfaces (status "
                       "0x%x) ---\n%s%s", status, out ? out : "",
                       errout ? errout : "");
    }
}

void vm_wait_ssh(Vm *vm, int timeout_s)
{
    gint64 deadline = g_get_monotonic_time() + timeout_s * G_USEC_PER_SEC;

    for (;;) {
        int status;
        g_autofree char *errout = NULL;
        g_autofree char *out = ssh_run(vm, &status, "true", &errout);

        if (status == 0) {
            return;
        }
        if (pid_gone(vm->pid) || g_get_monotonic_time() > deadline) {
            /* what tells most last: CI keeps the output's tail */
            dump_serial_tail(vm);
            dump_log(vm, "qemu.log");
            if (!pid_gone(vm->pid)) {
                dump_network(vm);
            }
            g_test_message("ssh (the last try, status 0x%x): %s%s", status,
                           out ? out : "", errout ? errout : "");
            g_error("no ssh login on port %d (QEMU %s)", vm->ssh_port,
                    pid_gone(vm->pid) ? "gone" : "running");
        }
        g_usleep(500 * 1000);
    }
}

JsonNode *vm_guest_request_event(Vm *vm, const char *action, int timeout_ms)
{
    g_autoptr(GError) err = NULL;
    JsonNode *ev = qmp_wait_event(vm->qmp, "VMFORK_GUEST_REQUEST", timeout_ms,
                                  &err);

    g_assert_no_error(err);
    g_assert_cmpstr(json_object_get_string_member(qmp_event_data(ev),
                                                  "action"), ==, action);
    return ev;
}
