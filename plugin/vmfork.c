/*
 * vmfork: clone a running VM by forking the QEMU process
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The parent's side: the QMP commands, the checks that refuse what cannot
 * be forked, the short pause around fork(), and the bookkeeping of the
 * children (events, reaping).  The child's side is in child.c.
 */

#include "qemu/osdep.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "qapi/error.h"
#include "qapi/qapi-commands-vmfork.h"
#include "qapi/qapi-events-vmfork.h"
#include "qapi/qapi-visit-sockets.h"
#include "qapi/qobject-input-visitor.h"
#include "qapi/visitor.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qemu/job.h"
#include "qom/object.h"
#include "qom/qom-qobject.h"
#include "qobject/qobject.h"
#include "block/thread-pool.h"
#include "chardev/char.h"
#include "chardev/char-fe.h"
#include "exec/cpu-common.h"
#include "exec/memory.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "io/channel-buffer.h"
#include "monitor/monitor.h"
#include "monitor/monitor-internal.h"
#include "net/net.h"
#include "net/slirp.h"
#include "system/accel-ops.h"
#include "system/block-backend.h"
#include "system/cpus.h"
#include "system/iothread.h"
#include "system/kvm.h"
#include "system/replay.h"
#include "system/runstate.h"
#include "system/system.h"
#include "system/tcg.h"
#include "system/vmfork.h"
#include "hw/nvram/fw_cfg.h"
#include "qemu/module.h"
#include "vmfork-internal.h"
#include "trace.h"

#define VMFORK_MAX_COUNT 256

typedef struct VmforkChildRecord {
    pid_t pid;
    int64_t clone_id;
    char *monitor;
    int pidfd;                  /* readable once the child has exited */
    int status_fd;              /* the child writes 'R' when ready */
    bool exited;
    int exit_status;
    QTAILQ_ENTRY(VmforkChildRecord) next;
} VmforkChildRecord;

typedef struct VmforkState {
    int64_t clone_id;           /* 0: not a clone */
    int64_t generation;
    pid_t parent_pid;           /* 0: not a clone */
    bool in_child;
    QTAILQ_HEAD(, VmforkChildRecord) children;
    GSList *blockers;           /* Error * reasons, see vmfork_add_blocker() */
} VmforkState;

static VmforkState vmfork_state = {
    .children = QTAILQ_HEAD_INITIALIZER(vmfork_state.children),
};

bool vmfork_in_child(void)
{
    return vmfork_state.in_child;
}

void vmfork_add_blocker(Error *reason)
{
    vmfork_state.blockers = g_slist_prepend(vmfork_state.blockers, reason);
}

void vmfork_del_blocker(Error *reason)
{
    vmfork_state.blockers = g_slist_remove(vmfork_state.blockers, reason);
}

char *vmfork_expand_template(const char *tmpl, int index, pid_t pid,
                             Error **errp)
{
    g_autoptr(GString) s = g_string_new(NULL);

    for (const char *p = tmpl; *p; p++) {
        if (*p != '%') {
            g_string_append_c(s, *p);
            continue;
        }
        switch (*++p) {
        case 'i':
            g_string_append_printf(s, "%d", index);
            break;
        case 'p':
            g_string_append_printf(s, "%d", (int)pid);
            break;
        case '%':
            g_string_append_c(s, '%');
            break;
        default:
            error_setg(errp, "vmfork: '%%%s' in template '%s' is not one of "
                       "%%i (child index), %%p (child pid), %%%%",
                       *p ? (char[]){ *p, 0 } : "", tmpl);
            return NULL;
        }
        if (!*p) {
            break;
        }
    }
    return g_string_free(g_steal_pointer(&s), false);
}

/* ---- Identity the guest can see --------------------------------------- */

/*
 * fw_cfg file opt/vmfork/clone-id: "CLONE-ID GENERATION\n" as zero-padded
 * decimals.  Its size is fixed (a guest lists fw_cfg files once), its
 * contents are read from this buffer at the time of each guest read.
 */
#define VMFORK_FW_CFG_FILE "opt/vmfork/clone-id"
static char vmfork_fw_cfg_id[32 + 1];

static void vmfork_fw_cfg_update(void)
{
    snprintf(vmfork_fw_cfg_id, sizeof(vmfork_fw_cfg_id),
             "%020" PRId64 " %010" PRId64 "\n",
             vmfork_state.clone_id, vmfork_state.generation);
}

static void vmfork_machine_done(Notifier *n, void *opaque)
{
    FWCfgState *fw_cfg = fw_cfg_find();

    if (fw_cfg) {
        vmfork_fw_cfg_update();
        fw_cfg_add_file(fw_cfg, VMFORK_FW_CFG_FILE, vmfork_fw_cfg_id,
                        sizeof(vmfork_fw_cfg_id) - 1);
    }
}

static Notifier vmfork_machine_done_notifier = {
    .notify = vmfork_machine_done,
};

static void vmfork_register(void)
{
    qemu_add_machine_init_done_notifier(&vmfork_machine_done_notifier);
}
type_init(vmfork_register);

/*
 * In the child: a new identity.  The VM generation ID changes (the guest
 * is notified and Linux reseeds its RNG) and the fw_cfg file tells the
 * clone id and generation.
 */
bool vmfork_child_new_identity(Error **errp)
{
    Object *vmgenid = object_resolve_path_type("", "vmgenid", NULL);

    vmfork_fw_cfg_update();
    return !vmgenid || object_property_set_str(vmgenid, "guid", "auto", errp);
}

/* ---- Children of this VM ---------------------------------------------- */

static void vmfork_child_record_free(VmforkChildRecord *c)
{
    if (c->status_fd >= 0) {
        qemu_set_fd_handler(c->status_fd, NULL, NULL, NULL);
        close(c->status_fd);
    }
    if (c->pidfd >= 0) {
        qemu_set_fd_handler(c->pidfd, NULL, NULL, NULL);
        close(c->pidfd);
    }
    g_free(c->monitor);
    g_free(c);
}

static void vmfork_child_status_read(void *opaque)
{
    VmforkChildRecord *c = opaque;
    char byte;
    ssize_t n = read(c->status_fd, &byte, 1);

    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return;
    }
    if (n == 1 && byte == 'R') {
        trace_vmfork_child_ready(c->pid, c->clone_id);
        qapi_event_send_vmfork_child_ready(c->pid, c->clone_id, c->monitor);
    }
    /* One message, or end of file: a child that failed exits (see pidfd) */
    qemu_set_fd_handler(c->status_fd, NULL, NULL, NULL);
    close(c->status_fd);
    c->status_fd = -1;
}

/*
 * A child that was killed could not remove its monitor socket: the parent
 * that named the path removes it (a child that quits removes its own).
 */
static void vmfork_child_remove_socket(VmforkChildRecord *c)
{
    struct stat st;

    if (lstat(c->monitor, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(c->monitor);
    }
}

static void vmfork_child_exit_read(void *opaque)
{
    VmforkChildRecord *c = opaque;
    int wstatus;
    pid_t r = waitpid(c->pid, &wstatus, WNOHANG);

    if (r == 0 || (r < 0 && errno == EINTR)) {
        return;
    }
    if (c->status_fd >= 0) {
        /* A ready message still in the pipe comes before the exit */
        vmfork_child_status_read(c);
    }
    qemu_set_fd_handler(c->pidfd, NULL, NULL, NULL);
    close(c->pidfd);
    c->pidfd = -1;
    c->exited = true;
    if (r < 0) {
        c->exit_status = 255;
    } else if (WIFSIGNALED(wstatus)) {
        c->exit_status = 128 + WTERMSIG(wstatus);
    } else {
        c->exit_status = WEXITSTATUS(wstatus);
    }
    if (WIFSIGNALED(wstatus)) {
        vmfork_child_remove_socket(c);
    }
    trace_vmfork_child_exited(c->pid, c->exit_status);
    qapi_event_send_vmfork_child_exited(c->pid, c->clone_id, c->exit_status);
}

static VmforkChildRecord *vmfork_child_record_new(pid_t pid, char *monitor,
                                                  int status_fd)
{
    VmforkChildRecord *c = g_new0(VmforkChildRecord, 1);

    c->pid = pid;
    c->clone_id = pid;
    c->monitor = monitor;
    c->status_fd = status_fd;
    c->pidfd = syscall(SYS_pidfd_open, pid, 0);
    QTAILQ_INSERT_TAIL(&vmfork_state.children, c, next);

    qemu_set_fd_handler(c->status_fd, vmfork_child_status_read, NULL, c);
    if (c->pidfd >= 0) {
        qemu_set_fd_handler(c->pidfd, vmfork_child_exit_read, NULL, c);
    }
    return c;
}

/*
 * In the child: the parent's children are not ours.  Forget them without
 * touching them (their fds only lose this process's reference).
 */
static void vmfork_forget_children(void)
{
    VmforkChildRecord *c, *tmp;

    QTAILQ_FOREACH_SAFE(c, &vmfork_state.children, next, tmp) {
        QTAILQ_REMOVE(&vmfork_state.children, c, next);
        vmfork_child_record_free(c);
    }
}

VmforkInfo *qmp_query_vmfork(Error **errp)
{
    VmforkInfo *info = g_new0(VmforkInfo, 1);
    VmforkChildInfoList **tail = &info->children;
    VmforkChildRecord *c;

    info->clone_id = vmfork_state.clone_id;
    info->generation = vmfork_state.generation;
    info->parent_pid = vmfork_state.parent_pid;
    QTAILQ_FOREACH(c, &vmfork_state.children, next) {
        VmforkChildInfo *ci = g_new0(VmforkChildInfo, 1);

        ci->pid = c->pid;
        ci->monitor = g_strdup(c->monitor);
        ci->clone_id = c->clone_id;
        ci->state = c->exited ? VMFORK_CHILD_STATE_EXITED
                              : VMFORK_CHILD_STATE_RUNNING;
        ci->has_exit_status = c->exited;
        ci->exit_status = c->exit_status;
        QAPI_LIST_APPEND(tail, ci);
    }
    return info;
}

/* ---- Checks: what cannot be forked is refused before anything happens - */

void vmfork_blocker_add(GString *why, const char *fmt, ...)
{
    va_list ap;

    g_string_append(why, why->len ? "; " : "");
    va_start(ap, fmt);
    g_string_append_vprintf(why, fmt, ap);
    va_end(ap);
}

static int check_ram_block(RAMBlock *rb, void *opaque)
{
    GString *why = opaque;

    if (qemu_ram_is_shared(rb)) {
        vmfork_blocker_add(why, "RAM block '%s' is shared memory, which "
                           "parent and child would both write (use a "
                           "private memory backend)", qemu_ram_get_idstr(rb));
    }
    return 0;
}

static int check_device(Object *obj, void *opaque)
{
    GString *why = opaque;
    const char *type = object_get_typename(obj);

    if (!object_dynamic_cast(obj, "device")) {
        return 0;
    }
    if (g_str_has_prefix(type, "vfio") || g_str_has_prefix(type, "vhost-") ||
        g_str_has_prefix(type, "ivshmem")) {
        vmfork_blocker_add(why, "device '%s' (%s) owns host resources that "
                           "a child cannot share or re-create",
                           object_get_canonical_path_component(obj), type);
    }
    return 0;
}

static void check_netdevs(const VmforkRequest *req, GString *why)
{
#ifdef CONFIG_SLIRP
    Error *err = NULL;

    if (!net_slirp_can_fork(&err)) {
        vmfork_blocker_add(why, "%s", error_get_pretty(err));
        error_free(err);
    }
#endif

    NetClientState *ncs[MAX_QUEUE_NUM];
    int n = qemu_find_net_clients_except(NULL, ncs, NET_CLIENT_DRIVER_NIC,
                                         MAX_QUEUE_NUM);

    for (int i = 0; i < n; i++) {
        NetClientDriver type = ncs[i]->info->type;

        if (type != NET_CLIENT_DRIVER_USER &&
            type != NET_CLIENT_DRIVER_HUBPORT &&
            type != NET_CLIENT_DRIVER_TAP) {
            vmfork_blocker_add(why, "netdev '%s' (%s) cannot be forked "
                               "(only user networking and taps can)",
                               ncs[i]->name, NetClientDriver_str(type));
        }
    }
    vmfork_taps_check(req, why);
}

static bool vmfork_check(const VmforkRequest *req, Error **errp)
{
    g_autoptr(GString) why = g_string_new(NULL);
    RunState state = runstate_get();

    if (vmfork_state.blockers) {
        for (GSList *l = vmfork_state.blockers; l; l = l->next) {
            vmfork_blocker_add(why, "%s", error_get_pretty(l->data));
        }
    }
    if (state != RUN_STATE_RUNNING && state != RUN_STATE_PAUSED) {
        vmfork_blocker_add(why, "the VM is in state '%s' (it must be "
                           "running or paused)", RunState_str(state));
    }
    if (migration_is_running()) {
        vmfork_blocker_add(why, "a migration is in progress");
    }
    WITH_JOB_LOCK_GUARD() {
        Job *job = job_next_locked(NULL);

        if (job) {
            vmfork_blocker_add(why, "job '%s' is running",
                               job->id ? job->id : "");
        }
    }
    if (replay_mode != REPLAY_MODE_NONE) {
        vmfork_blocker_add(why, "record/replay is active");
    }
    if (kvm_enabled()) {
        Error *err = NULL;

        if (!kvm_can_fork(&err)) {
            vmfork_blocker_add(why, "%s", error_get_pretty(err));
            error_free(err);
        }
    } else if (!tcg_enabled()) {
        vmfork_blocker_add(why, "only the KVM and TCG accelerators can be "
                           "forked");
    } else if (object_property_find(OBJECT(current_accel()), "split-wx") &&
               object_property_get_bool(OBJECT(current_accel()), "split-wx",
                                        NULL)) {
        vmfork_blocker_add(why, "TCG split-wx maps the code buffer shared, "
                           "so parent and child would translate into one "
                           "buffer");
    }
    qemu_ram_foreach_block(check_ram_block, why);
    object_child_foreach_recursive(object_get_root(), check_device, why);
    vmfork_disks_check(req->overlay_dir, why);
    check_netdevs(req, why);

    if (why->len) {
        error_setg(errp, "vmfork: this VM cannot be forked: %s", why->str);
        return false;
    }
    return true;
}

/* The path of the unix socket of the monitor running this command */
static char *monitor_socket_path(void)
{
    Monitor *mon = monitor_cur();
    Chardev *chr = mon ? qemu_chr_fe_get_driver(&mon->chr) : NULL;
    g_autoptr(SocketAddress) addr = NULL;
    QObject *qobj;
    Visitor *v;

    if (!chr || !object_dynamic_cast(OBJECT(chr), TYPE_CHARDEV_SOCKET)) {
        return NULL;
    }
    qobj = object_property_get_qobject(OBJECT(chr), "addr", NULL);
    if (!qobj) {
        return NULL;
    }
    v = qobject_input_visitor_new(qobj);
    visit_type_SocketAddress(v, NULL, &addr, NULL);
    visit_free(v);
    qobject_unref(qobj);
    if (!addr || addr->type != SOCKET_ADDRESS_TYPE_UNIX ||
        (addr->u.q_unix.has_abstract && addr->u.q_unix.abstract)) {
        return NULL;
    }
    return g_strdup(addr->u.q_unix.path);
}

/* With several children, a template must give each its own path */
bool vmfork_check_template_per_child(const char *what, const char *tmpl,
                                     int count, Error **errp)
{
    if (count > 1 && !strstr(tmpl, "%i") && !strstr(tmpl, "%p")) {
        error_setg(errp, "vmfork: with count > 1, the %s template "
                   "needs %%i or %%p", what);
        return false;
    }
    return true;
}

/* A child's socket path: not in use, and short enough for sun_path */
static bool check_socket_template(const char *what, const char *tmpl,
                                  int count, Error **errp)
{
    struct sockaddr_un sun;

    if (!vmfork_check_template_per_child(what, tmpl, count, errp)) {
        return false;
    }

    for (int i = 0; i < count; i++) {
        /* the longest pid (PID_MAX_LIMIT is 2^22) */
        g_autofree char *path = vmfork_expand_template(tmpl, i, 4194304,
                                                       errp);
        g_autofree char *dir = NULL;

        if (!path) {
            return false;
        }
        if (strlen(path) >= sizeof(sun.sun_path)) {
            error_setg(errp, "vmfork: %s path '%s' is longer than a unix "
                       "socket path can be (%zu bytes)", what, path,
                       sizeof(sun.sun_path) - 1);
            return false;
        }
        if (!strstr(tmpl, "%p") && access(path, F_OK) == 0) {
            error_setg(errp, "vmfork: %s path '%s' exists; a child would "
                       "replace it", what, path);
            return false;
        }
        dir = g_path_get_dirname(path);
        if (access(dir, W_OK | X_OK) < 0) {
            error_setg_errno(errp, errno, "vmfork: cannot create %s "
                             "sockets in '%s'", what, dir);
            return false;
        }
    }
    return true;
}

static void vmfork_request_free(VmforkRequest *req)
{
    g_free(req->monitor_tmpl);
    g_free(req->serial_tmpl);
    g_free(req->overlay_dir);
    if (req->taps) {
        g_ptr_array_free(req->taps, true);      /* closes the fds left */
    }
}

static bool vmfork_parse_request(VmforkRequest *req, bool has_count,
                                 int64_t count, const char *monitor,
                                 const char *serial, bool has_start,
                                 bool start, bool has_parent,
                                 VmforkParentState parent,
                                 const char *overlay_dir,
                                 bool has_hostfwd_offset,
                                 int64_t hostfwd_offset, VmforkTapList *taps,
                                 Error **errp)
{
    req->count = has_count ? count : 1;
    if (has_count && (count < 1 || count > VMFORK_MAX_COUNT)) {
        error_setg(errp, "vmfork: count must be between 1 and %d",
                   VMFORK_MAX_COUNT);
        return false;
    }
    req->start = has_start ? start : true;
    req->parent_stays_paused = has_parent &&
                               parent == VMFORK_PARENT_STATE_PAUSED;
    if (monitor) {
        if (!*monitor) {
            error_setg(errp, "vmfork: monitor must not be empty");
            return false;
        }
        req->monitor_tmpl = g_strdup(monitor);
    } else {
        g_autofree char *path = monitor_socket_path();

        if (!path) {
            error_setg(errp, "vmfork: the monitor running this command is "
                       "not a unix socket, so there is no default for the "
                       "children's monitors; pass 'monitor'");
            return false;
        }
        req->monitor_tmpl = g_strconcat(path, ".fork-%p", NULL);
    }
    if (!check_socket_template("monitor", req->monitor_tmpl, req->count,
                               errp)) {
        return false;
    }
    if (has_hostfwd_offset) {
        if (hostfwd_offset < -65535 || hostfwd_offset > 65535) {
            error_setg(errp, "vmfork: hostfwd-offset must be between "
                       "-65535 and 65535");
            return false;
        }
        req->hostfwd_offset = hostfwd_offset;
    }
    if (overlay_dir) {
        if (!g_file_test(overlay_dir, G_FILE_TEST_IS_DIR)) {
            error_setg(errp, "vmfork: overlay-dir '%s' is not a directory",
                       overlay_dir);
            return false;
        }
        if (access(overlay_dir, W_OK | X_OK) < 0) {
            error_setg_errno(errp, errno, "vmfork: cannot create overlays "
                             "in '%s'", overlay_dir);
            return false;
        }
        req->overlay_dir = g_strdup(overlay_dir);
    }
    if (serial) {
        g_autofree char *path = vmfork_expand_template(serial, 0, 1, errp);

        if (!path) {
            return false;
        }
        if (!serial_hd(0)) {
            error_setg(errp, "vmfork: serial given, but the VM has no "
                       "serial port");
            return false;
        }
        if (!vmfork_check_template_per_child("serial", serial, req->count,
                                             errp)) {
            return false;
        }
        req->serial_tmpl = g_strdup(serial);
    }
    return vmfork_taps_parse(req, taps, errp);
}

/* ---- The fork --------------------------------------------------------- */

/*
 * Under KVM some of the VM's state lives in the kernel, in a VM that the
 * child cannot use: the vCPU registers and the in-kernel LAPIC, PIC and
 * IOAPIC.  The parent saves just these sections into memory, which the
 * child inherits and loads into its new VM.  (The in-kernel PIT and the
 * clock are saved by vm_stop() and restored by vm_start() already.)
 * Everything else the child has in its copy of the heap, as under TCG.
 */
static const char *const kvm_kernel_state_sections[] = {
    "cpu", "apic", "i8259", "ioapic", "kvm-tpr-opt", NULL
};

typedef struct KvmStateSnapshot {
    QIOChannelBuffer *bioc;
    QEMUFile *out;              /* closing it would free bioc's data */
} KvmStateSnapshot;

static bool kvm_state_save(KvmStateSnapshot *snap, Error **errp)
{
    int ret;

    snap->bioc = qio_channel_buffer_new(64 * KiB);
    snap->out = qemu_file_new_output(QIO_CHANNEL(snap->bioc));
    ret = qemu_save_device_state_subset(snap->out, kvm_kernel_state_sections);
    if (ret >= 0) {
        ret = qemu_fflush(snap->out);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vmfork: cannot save the KVM state");
        return false;
    }
    return true;
}

static void kvm_state_free(KvmStateSnapshot *snap)
{
    if (snap->out) {
        qemu_fclose(snap->out);
    }
    snap->out = NULL;
    snap->bioc = NULL;
}

bool vmfork_accel_child(QIOChannelBuffer *kvm_state, Error **errp)
{
    QEMUFile *f;
    int ret;

    if (!kvm_state) {
        cpus_restart_vcpus_after_fork();
        return true;
    }
    if (!kvm_rebuild_after_fork(errp)) {
        return false;
    }
    cpus_restart_vcpus_after_fork();
    qio_channel_io_seek(QIO_CHANNEL(kvm_state), 0, SEEK_SET, &error_abort);
    f = qemu_file_new_input(QIO_CHANNEL(kvm_state));
    /*
     * One memory transaction: loading kvm-tpr-opt maps the vapic option
     * ROM out and back in, which would delete and re-create memory slots
     * of the new VM (milliseconds each under some hypervisors) only to
     * end where it started.
     */
    memory_region_transaction_begin();
    ret = qemu_load_device_state(f);
    memory_region_transaction_commit();
    qemu_fclose(f);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vmfork: cannot load the KVM state");
        return false;
    }
    return true;
}

/*
 * Guest RAM is MADV_DONTFORK (physmem.c), so that QEMU's helper processes
 * (tap scripts, exec: migration) do not copy its page tables.  For vmfork
 * the child must inherit it, copy-on-write.
 */
static int ram_block_set_fork(RAMBlock *rb, void *opaque)
{
    int advice = *(int *)opaque;
    void *host = qemu_ram_get_host_addr(rb);

    if (host) {
        madvise(host, qemu_ram_get_max_length(rb), advice);
    }
    return 0;
}

static void ram_set_fork(int advice)
{
    qemu_ram_foreach_block(ram_block_set_fork, &advice);
}

static void vmfork_child_failed(Error *err)
{
    error_report_err(err);
    /* No exit notifiers or atexit handlers: they belong to the parent */
    _exit(1);
}

VmforkResult *qmp_vmfork(bool has_count, int64_t count, const char *monitor,
                         const char *serial, bool has_start, bool start,
                         bool has_parent, VmforkParentState parent,
                         const char *overlay_dir, bool has_hostfwd_offset,
                         int64_t hostfwd_offset, bool has_taps,
                         VmforkTapList *taps, Error **errp)
{
    VmforkRequest req = { 0 };
    KvmStateSnapshot kvm_state = { 0 };
    VmforkResult *result = g_new0(VmforkResult, 1);
    VmforkChildList **tail = &result->children;
    int64_t t0 = g_get_monotonic_time(), t_stop;
    bool was_running = runstate_is_running();
    int gate[2] = { -1, -1 };
    int i = 0;

    if (!vmfork_parse_request(&req, has_count, count, monitor, serial,
                              has_start, start, has_parent, parent,
                              overlay_dir, has_hostfwd_offset,
                              hostfwd_offset, taps, errp) ||
        !vmfork_check(&req, errp) ||
        !vmfork_taps_take_fds(&req, errp) ||
        !vmfork_disks_prepare(&req, errp)) {
        goto fail;
    }
    trace_vmfork_start(req.count, req.start, req.parent_stays_paused);

    /*
     * 1. Before the guest stops: only this thread may cross fork() with
     * useful state, and guest RAM must be inherited.
     */
    iothread_stop_all();
    ram_set_fork(MADV_DOFORK);
    fflush(NULL);

    /* 2. The guest's pause: vCPUs stopped, block I/O drained */
    t_stop = g_get_monotonic_time();
    if (was_running) {
        global_state_store();
        vm_stop(RUN_STATE_PAUSED);
    }
    bdrv_drain_all_begin();
    if (kvm_enabled() && !kvm_state_save(&kvm_state, errp)) {
        goto resume;
    }
    trace_vmfork_parent_paused(g_get_monotonic_time() - t0);

    /*
     * The children's guests start together, once the last one is forked:
     * each waits for end of file on this pipe, which comes when the parent
     * closes its end after the loop (or dies).  Otherwise the guests of
     * the first children would take the CPUs from the forks of the others.
     */
    if (pipe2(gate, O_CLOEXEC) < 0) {
        error_setg_errno(errp, errno, "vmfork: pipe2() failed");
        goto resume;
    }

    for (i = 0; i < req.count; i++) {
        int status[2];
        pid_t pid;

        if (pipe2(status, O_CLOEXEC) < 0) {
            error_setg_errno(errp, errno, "vmfork: pipe2() failed");
            break;
        }
        rcu_enable_atfork();
        pid = vmfork_fault_fork_fails(i) ? -1 : fork();
        rcu_disable_atfork();
        if (pid < 0) {
            error_setg_errno(errp, errno, "vmfork: fork() failed");
            error_append_hint(errp, "A seccomp sandbox with spawn=deny, "
                              "RLIMIT_NPROC or a memory limit can make "
                              "fork() fail.\n");
            close(status[0]);
            close(status[1]);
            break;
        }
        if (pid == 0) {
            Error *err = NULL;
            char byte;

            close(gate[1]);
            close(status[0]);
            vmfork_state.in_child = true;
            vmfork_state.generation++;
            vmfork_state.parent_pid = getppid();
            vmfork_state.clone_id = getpid();
            vmfork_forget_children();
            ram_set_fork(MADV_DONTFORK);
            if (!vmfork_child_setup(&req, i, kvm_state.bioc, &err)) {
                vmfork_child_failed(err);
            }
            while (read(gate[0], &byte, 1) < 0 && errno == EINTR) {
                /* until the parent's end is closed */
            }
            close(gate[0]);
            bdrv_drain_all_end();
            if (req.start) {
                vm_start();
            }
            vmfork_fault_child_phase("started");
            if (!vmfork_child_start_monitor(&req, i, &err)) {
                vmfork_child_failed(err);
            }
            if (write(status[1], "R", 1) != 1) {
                /* The parent is gone: nobody to tell, run anyway */
            }
            close(status[1]);
            vmfork_request_free(&req);
            /* This reply goes to the parent's client connection, detached */
            return result;
        }
        close(status[1]);
        {
            VmforkChildRecord *c = vmfork_child_record_new(
                pid, vmfork_expand_template(req.monitor_tmpl, i, pid,
                                            &error_abort), status[0]);
            VmforkChild *vc = g_new0(VmforkChild, 1);

            vc->pid = pid;
            vc->monitor = g_strdup(c->monitor);
            vc->clone_id = c->clone_id;
            QAPI_LIST_APPEND(tail, vc);
            trace_vmfork_parent_forked(i, pid, g_get_monotonic_time() - t0);
        }
    }

resume:
    /* 3. The children start; the parent goes on: disks, guest, the rest */
    if (gate[0] >= 0) {
        close(gate[1]);
        close(gate[0]);
    }
    kvm_state_free(&kvm_state);
    if (i < req.count) {
        vmfork_disks_abort();
    } else if (!vmfork_disks_parent_switch(errp)) {
        /* The children must not see the base change: they go */
        i = -1;
    }
    bdrv_drain_all_end();
    /* After an error the parent runs as before, template or not */
    if (was_running && (!req.parent_stays_paused || i < req.count)) {
        vm_start();
    }
    trace_vmfork_parent_resumed(g_get_monotonic_time() - t_stop);
    ram_set_fork(MADV_DONTFORK);
    iothread_restart_all();

    if (i < req.count) {
        /* Not half-forked: the children made so far go (and get reaped) */
        for (VmforkChildList *l = result->children; l; l = l->next) {
            kill(l->value->pid, SIGKILL);
        }
        goto fail;
    }
    if (!object_resolve_path_type("", "vmgenid", NULL)) {
        result->warning = g_strdup("the VM has no vmgenid device, so the "
                                   "children share the parent's guest RNG "
                                   "state (add -device vmgenid)");
    }
    vmfork_request_free(&req);
    return result;

fail:
    vmfork_request_free(&req);
    qapi_free_VmforkResult(result);
    return NULL;
}

/*
 * Thread pools of the child's AioContexts: the main loop's and those of
 * IOThreads (restarted already).
 */
static int reset_iothread_pool(Object *obj, void *opaque)
{
    IOThread *iothread = (IOThread *)object_dynamic_cast(obj, TYPE_IOTHREAD);

    if (iothread && iothread_get_aio_context(iothread)->thread_pool) {
        thread_pool_reset_after_fork_aio(
            iothread_get_aio_context(iothread)->thread_pool);
    }
    return 0;
}

void vmfork_reset_thread_pools(void)
{
    AioContext *ctxs[] = {
        qemu_get_aio_context(), iohandler_get_aio_context()
    };

    for (size_t i = 0; i < ARRAY_SIZE(ctxs); i++) {
        if (ctxs[i]->thread_pool) {
            thread_pool_reset_after_fork_aio(ctxs[i]->thread_pool);
        }
    }
    object_child_foreach(object_get_objects_root(), reset_iothread_pool, NULL);
    object_child_foreach(object_get_internal_root(), reset_iothread_pool,
                         NULL);
}
