/*
 * vmfork-bench: one benchmark VM
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The guest's first serial port is a client socket chardev that connects,
 * while QEMU starts, to a listener of ours: nothing the guest prints is
 * lost, also for a QEMU that runs at once (cold boot, -incoming).  QMP is a
 * server socket.  Every VM has -device vmgenid (what a user who forks or
 * clones VMs adds so that Linux reseeds its RNG), and -msg timestamp=on so
 * that trace lines carry the host's wall-clock time.
 */

#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define QMP_TIMEOUT_MS 30000

BenchPaths bench_paths;
int bench_verbose;

static const char *const trace_names[] = {
    "vmfork_start", "vmfork_parent_paused", "vmfork_parent_forked",
    "vmfork_parent_phase", "vmfork_parent_resumed", "vmfork_parent_unlocked",
    "vmfork_child_phase",
    "vmfork_child_ready",
};

const char *guest_name(GuestKind g)
{
    return g == GUEST_LINUX ? "linux" : "tiny";
}

char *vm_config_label(const VmConfig *c)
{
    return g_strdup_printf("%s-%s-%dm-%dcpu%s%s", guest_name(c->guest),
                           c->accel, c->mem_mib, c->vcpus,
                           c->touch_mib ? "-touched" : "",
                           c->disk ? "-disk" : "");
}

static bool is_kvm_pvm(void)
{
    return g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_EXISTS);
}

const char *accel_detail(const char *accel)
{
    if (g_str_equal(accel, "kvm")) {
        return is_kvm_pvm() ? "kvm (kvm_pvm, a software hypervisor)" : "kvm";
    }
    return "tcg";
}

/* qemu-img, which the build puts next to qemu-system-x86_64 */
static char *qemu_img_path(void)
{
    g_autofree char *bin = g_path_get_dirname(bench_paths.qemu);

    return g_build_filename(bin, "qemu-img", NULL);
}

/* A new 1 GiB qcow2 image at @path for a VM's disk */
static bool create_disk(const char *path, GError **errp)
{
    g_autofree char *img = qemu_img_path();
    const char *argv[] = {
        img, "create", "-q", "-f", "qcow2", path, "1G", NULL
    };
    g_autofree char *err_out = NULL;
    int status;

    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL,
                      NULL, NULL, NULL, &err_out, &status, errp)) {
        return false;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "qemu-img create %s: %s", path, err_out);
        return false;
    }
    return true;
}

const char *vm_missing(const VmConfig *c)
{
    if (!bench_paths.qemu ||
        !g_file_test(bench_paths.qemu, G_FILE_TEST_IS_EXECUTABLE)) {
        return "the patched QEMU is not built (build/qemu/qemu-system-x86_64)";
    }
    if (c->guest == GUEST_LINUX &&
        (!g_file_test(bench_paths.linux_kernel, G_FILE_TEST_EXISTS) ||
         !g_file_test(bench_paths.linux_initrd, G_FILE_TEST_EXISTS))) {
        return "the Linux test guest is not built (build/guest/linux)";
    }
    if (c->guest == GUEST_TINY &&
        !g_file_test(bench_paths.tiny, G_FILE_TEST_EXISTS)) {
        return "the tiny test guest is not built";
    }
    if (c->disk) {
        g_autofree char *img = qemu_img_path();

        if (!g_file_test(img, G_FILE_TEST_IS_EXECUTABLE)) {
            return "qemu-img is not built next to the patched QEMU";
        }
    }
    if (c->touch_mib) {
        /* the parent's touched RAM, and as much again for its children */
        g_autofree char *mi = NULL;
        const char *avail;

        if (g_file_get_contents("/proc/meminfo", &mi, NULL, NULL) &&
            (avail = strstr(mi, "MemAvailable:")) &&
            g_ascii_strtoll(avail + 13, NULL, 10) / 1024 <
            c->mem_mib + c->touch_mib) {
            return "not enough free memory on this host for the guest and "
                   "its touched RAM";
        }
    }
    if (g_str_equal(c->accel, "kvm")) {
        int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

        if (fd < 0) {
            return "/dev/kvm is not usable";
        }
        close(fd);
        if (c->guest == GUEST_LINUX && is_kvm_pvm()) {
            return "KVM here is kvm_pvm (software), which cannot run a stock "
                   "Linux kernel";
        }
    }
    return NULL;
}

/* ---- Sockets ------------------------------------------------------------ */

int unix_listen(const char *path, GError **errp)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "socket path too long: %s", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        listen(fd, 4) < 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "listen on %s: %s",
                    path, g_strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

int unix_accept(int lfd, int timeout_ms, GError **errp)
{
    struct pollfd pfd = { .fd = lfd, .events = POLLIN };
    int fd;

    if (poll(&pfd, 1, timeout_ms) <= 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "QEMU did not connect its serial port");
        return -1;
    }
    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "accept: %s",
                    g_strerror(errno));
    }
    return fd;
}

/* ---- Spawning ----------------------------------------------------------- */

static char *log_tail(const char *path)
{
    g_autofree char *text = NULL;
    gsize len = 0;

    if (!g_file_get_contents(path, &text, &len, NULL) || !len) {
        return g_strdup("(no output)");
    }
    return g_strdup(len > 600 ? text + len - 600 : text);
}

BenchVm *vm_spawn(const VmConfig *c, const char *dir, const char *name,
                  const VmSpawnOpts *o, GError **errp)
{
    static const VmSpawnOpts none;
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *listen_path = g_strdup_printf("%s/%s.ser", dir, name);
    BenchVm *vm = g_new0(BenchVm, 1);
    g_autoptr(GError) err = NULL;
    int lfd, fd;

    o = o ? o : &none;
    vm->cfg = *c;
    vm->name = g_strdup(name);
    vm->dir = g_strdup(dir);
    vm->qmp_path = g_strdup_printf("%s/%s.qmp", dir, name);
    vm->log_path = g_strdup_printf("%s/%s.log", dir, name);

    lfd = unix_listen(listen_path, errp);
    if (lfd < 0) {
        vm_destroy(vm);
        return NULL;
    }

#define ARG(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG("%s", bench_paths.qemu);
    ARG("-accel"); ARG("%s", c->accel);
    if (o->mem_path) {
        ARG("-M"); ARG("pc,memory-backend=ram0");
        ARG("-object");
        ARG("memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=%s",
            c->mem_mib, o->mem_path, o->mem_share ? "on" : "off");
    } else {
        ARG("-M"); ARG("pc");
    }
    ARG("-m"); ARG("%d", c->mem_mib);
    ARG("-smp"); ARG("%d", c->vcpus);
    ARG("-nodefaults"); ARG("-display"); ARG("none");
    if (o->paused) {
        ARG("-S");
    }
    ARG("-qmp"); ARG("unix:%s,server=on,wait=off", vm->qmp_path);
    ARG("-chardev"); ARG("socket,id=agent,path=%s", listen_path);
    ARG("-serial"); ARG("chardev:agent");
    ARG("-device"); ARG("vmgenid");
    ARG("-msg"); ARG("timestamp=on");
    if (c->disk) {
        g_autofree char *image = g_strdup_printf("%s/%s.qcow2", dir, name);

        if (!create_disk(image, errp)) {
            close(lfd);
            vm_destroy(vm);
            return NULL;
        }
        /* As virt-install writes it (test-configs' blockdev rows) */
        ARG("-object"); ARG("iothread,id=iothread1");
        ARG("-blockdev");
        ARG("{\"driver\":\"file\",\"filename\":\"%s\","
            "\"node-name\":\"libvirt-1-storage\",\"auto-read-only\":true,"
            "\"discard\":\"unmap\"}", image);
        ARG("-blockdev");
        ARG("{\"node-name\":\"libvirt-1-format\",\"read-only\":false,"
            "\"driver\":\"qcow2\",\"file\":\"libvirt-1-storage\"}");
        ARG("-device");
        ARG("virtio-blk-pci,iothread=iothread1,drive=libvirt-1-format,"
            "id=virtio-disk0");
    }
    if (c->guest == GUEST_LINUX) {
        ARG("-kernel"); ARG("%s", bench_paths.linux_kernel);
        ARG("-initrd"); ARG("%s", bench_paths.linux_initrd);
        ARG("-append"); ARG("console=ttyS1 quiet panic=-1%s%s",
                            o->kernel_args ? " " : "",
                            o->kernel_args ? o->kernel_args : "");
        ARG("-no-reboot");
    } else {
        ARG("-kernel"); ARG("%s", bench_paths.tiny);
    }
    if (o->incoming) {
        ARG("-incoming"); ARG("%s", o->incoming);
    }
    for (const char *const *e = o->extra; e && *e; e++) {
        ARG("%s", *e);
    }
#undef ARG
    g_ptr_array_add(argv, NULL);
    if (bench_verbose > 1) {
        g_autofree char *cmd = g_strjoinv(" ", (char **)argv->pdata);

        g_printerr("  spawn %s: %s\n", name, cmd);
    }

    vm->spawn_ns = now_ns();
    vm->pid = procs_spawn((char **)argv->pdata, vm->log_path);
    if (vm->pid < 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "fork: %s",
                    g_strerror(errno));
        close(lfd);
        vm_destroy(vm);
        return NULL;
    }
    fd = unix_accept(lfd, QMP_TIMEOUT_MS, &err);
    close(lfd);
    unlink(listen_path);
    if (fd < 0) {
        g_autofree char *tail = log_tail(vm->log_path);

        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "%s: %s; QEMU log: %s", name, err->message, tail);
        vm_destroy(vm);
        return NULL;
    }
    vm->serial = stream_socket(fd, c->guest, name);
    if (o->connect_qmp && !vm_connect_qmp(vm, QMP_TIMEOUT_MS, errp)) {
        vm_destroy(vm);
        return NULL;
    }
    return vm;
}

bool vm_connect_qmp(BenchVm *vm, int timeout_ms, GError **errp)
{
    gint64 deadline = now_ns() + timeout_ms * 1000000LL;

    for (;;) {
        g_autoptr(GError) err = NULL;

        vm->qmp = qmp_connect_unix(vm->qmp_path, QMP_TIMEOUT_MS, &err);
        if (vm->qmp) {
            return true;
        }
        if (now_ns() > deadline || procs_pid_gone(vm->pid)) {
            g_autofree char *tail = log_tail(vm->log_path);

            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "%s: no QMP (%s); QEMU log: %s", vm->name,
                        err->message, tail);
            return false;
        }
        g_usleep(500);
    }
}

gint vm_wait_ready(BenchVm *vm, guint from, int timeout_ms, Line *out,
                   GError **errp)
{
    gint i = stream_wait(vm->serial, from, LINE_READY,
                         now_ns() + timeout_ms * 1000000LL, out);

    if (i < 0) {
        g_autofree char *tail = log_tail(vm->log_path);

        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "%s: the guest printed no ready line in %d s; QEMU log: %s",
                    vm->name, timeout_ms / 1000, tail);
    }
    return i;
}

bool vm_boot(BenchVm *vm, GError **errp)
{
    JsonNode *r;

    vm->traces = true;
    for (guint i = 0; i < G_N_ELEMENTS(trace_names); i++) {
        g_autofree char *args = g_strdup_printf(
            "{\"name\": \"%s\", \"enable\": true}", trace_names[i]);
        g_autoptr(GError) err = NULL;

        r = qmp_execute_json(vm->qmp, "trace-event-set-state", args,
                             QMP_TIMEOUT_MS, &err);
        if (!r) {
            if (bench_verbose) {
                g_printerr("  no trace point %s: %s (no phase breakdown)\n",
                           trace_names[i], err->message);
            }
            vm->traces = false;
            break;
        }
        json_node_unref(r);
    }
    r = vm_qmp(vm, "cont", NULL, QMP_TIMEOUT_MS, errp);
    if (!r) {
        return false;
    }
    json_node_unref(r);
    return vm_wait_ready(vm, 0, vm->cfg.guest == GUEST_LINUX ? 180000 : 120000,
                         NULL, errp) >= 0;
}

void vm_destroy(BenchVm *vm)
{
    if (!vm) {
        return;
    }
    if (vm->qmp) {
        qmp_close(vm->qmp);
    }
    if (vm->pid > 0) {
        procs_kill_group(vm->pid);
    }
    stream_free(vm->serial);
    unlink(vm->qmp_path);
    g_free(vm->name);
    g_free(vm->dir);
    g_free(vm->qmp_path);
    g_free(vm->log_path);
    g_free(vm);
}

JsonNode *vm_qmp(BenchVm *vm, const char *cmd, const char *args_json,
                 int timeout_ms, GError **errp)
{
    JsonNode *r = qmp_execute_json(vm->qmp, cmd, args_json, timeout_ms, errp);

    if (!r) {
        g_prefix_error(errp, "%s: %s: ", vm->name, cmd);
    }
    return r;
}

void vm_drain_events(BenchVm *vm)
{
    JsonNode *ev;

    while ((ev = qmp_next_event(vm->qmp, 0, NULL))) {
        json_node_unref(ev);
    }
}

/* ---- Serial commands ---------------------------------------------------- */

static bool write_all(int fd, const char *buf, gsize len, GError **errp)
{
    while (len) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };

            poll(&pfd, 1, 1000);
            continue;
        }
        if (n <= 0) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "serial write: %s", g_strerror(errno));
            return false;
        }
        buf += n;
        len -= n;
    }
    return true;
}

char *serial_command(Stream *s, const char *cmd, int timeout_ms,
                     GError **errp)
{
    g_autofree char *line = g_strdup_printf("%s\n", cmd);
    guint from = stream_count(s);
    Line l;

    if (!write_all(stream_fd(s), line, strlen(line), errp)) {
        return NULL;
    }
    if (stream_wait(s, from, LINE_REPLY, now_ns() + timeout_ms * 1000000LL,
                    &l) < 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "%s: no reply to '%s'", stream_name(s), cmd);
        return NULL;
    }
    if (g_str_has_prefix(l.text, "ERR") || g_str_has_prefix(l.text, "E ")) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: '%s' failed: %s",
                    stream_name(s), cmd, l.text);
        return NULL;
    }
    return g_strdup(l.text);
}
