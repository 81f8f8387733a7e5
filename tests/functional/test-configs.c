/*
 * The configuration matrix: VMs written the way libvirt and virt-install
 * write them, each row a real QEMU command line with the Linux guest
 * under TCG.  Each row either forks (both VMs' disks, channels and
 * consoles keep working, each disk with its own data only) or is refused
 * with an error that names the object.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "vmtest.h"
#include "audit.h"
#include <glib/gstdio.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHANNEL "org.qemu.guest_agent.0"
/* How long a test waits for a QMP event that must come */
#define EVENT_TIMEOUT_MS 30000

/* What a row has, and so what is checked in parent and child */
enum {
    HAS_DISK = 1 << 0,          /* a writable qcow2 disk, @DEV@ in the guest */
    HAS_CHANNEL = 1 << 1,       /* a virtio-serial port on a unix socket */
    HAS_CDROM = 1 << 2,         /* a read-only cd.iso */
    HAS_SANDBOX = 1 << 3,       /* a seccomp filter, in the child too */
    HAS_GPU = 1 << 4,           /* virtio-gpu resources: shareable images */
};

typedef struct ConfigRow {
    const char *name;
    const char *machine;        /* NULL: pc */
    const char *const *extra;   /* @DIR@: the test directory */
    unsigned has;
    const char *dev;            /* the disk in the guest */
    const char *guest_setup;    /* a guest shell command before the fork */
    const char *refused;        /* NULL: it forks; else what the error names */
    /* before QEMU starts: what the host must run (NULL: ready; else why
     * the row is skipped) */
    const char *(*host_setup)(const char *dir);
} ConfigRow;

#define CHANNEL_ARGS \
    "-device", "virtio-serial-pci,id=virtio-serial0", \
    "-chardev", "socket,id=charchannel0,path=@DIR@/qga.sock,server=on," \
                "wait=off", \
    "-device", "virtserialport,bus=virtio-serial0.0,nr=1," \
               "chardev=charchannel0,id=channel0,name=" CHANNEL

static const char *const blockdev_virtio[] = {
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0",
    NULL
};

static const char *const blockdev_virtio_iothread[] = {
    "-object", "iothread,id=iothread1",
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "virtio-blk-pci,iothread=iothread1,drive=libvirt-1-format,"
               "id=virtio-disk0",
    NULL
};

static const char *const blockdev_scsi_iothread[] = {
    "-object", "iothread,id=iothread1",
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "virtio-scsi-pci,iothread=iothread1,id=scsi0",
    "-device", "scsi-hd,bus=scsi0.0,drive=libvirt-1-format,id=scsi0-0-0-0",
    NULL
};

/* libvirt's <disk ...><target dev='sda' bus='sata'/> on q35's AHCI */
static const char *const blockdev_sata[] = {
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "ide-hd,bus=ide.0,drive=libvirt-1-format,id=sata0-0-0",
    NULL
};

static const char *const channel_only[] = {
    CHANNEL_ARGS,
    NULL
};

/*
 * libvirt's <video><model type='virtio'/></video> on VNC, virt-install's
 * for a Linux guest; the guest's virtio_gpu driver makes 2D resources
 * (its fbdev console's), each a memfd shareable with display backends
 */
static const char *const virtio_vga[] = {
    "-device", "{\"driver\":\"virtio-vga\",\"id\":\"video0\","
               "\"max_outputs\":1}",
    "-vnc", "unix:@DIR@/vnc.sock",
    NULL
};

/*
 * virt-install's q35 domain: devices on root ports, a SATA cdrom; its
 * clock (RTC catch-up, no HPET), vmcoreinfo and, for a Linux guest, a
 * virtio-vga on VNC, as libvirt 9.0 writes them
 */
static const char *const q35_libvirt[] = {
    "-machine", "hpet=off",
    "-rtc", "base=utc,driftfix=slew",
    "-device", "{\"driver\":\"virtio-vga\",\"id\":\"video0\","
               "\"max_outputs\":1,\"bus\":\"pcie.0\",\"addr\":\"0x1\"}",
    "-vnc", "unix:@DIR@/vnc.sock",
    "-device", "vmcoreinfo",
    "-device", "pcie-root-port,port=16,chassis=1,id=pci.1,bus=pcie.0,"
               "multifunction=on,addr=0x2",
    "-device", "pcie-root-port,port=17,chassis=2,id=pci.2,bus=pcie.0,"
               "addr=0x2.0x1",
    "-device", "pcie-root-port,port=18,chassis=3,id=pci.3,bus=pcie.0,"
               "addr=0x2.0x2",
    "-device", "pcie-root-port,port=19,chassis=4,id=pci.4,bus=pcie.0,"
               "addr=0x2.0x3",
    "-device", "pcie-root-port,port=20,chassis=5,id=pci.5,bus=pcie.0,"
               "addr=0x2.0x4",
    "-device", "qemu-xhci,p2=15,p3=15,id=usb,bus=pci.2,addr=0x0",
    "-object", "iothread,id=iothread1",
    "-device", "virtio-serial-pci,id=virtio-serial0,bus=pci.3,addr=0x0",
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "virtio-blk-pci,iothread=iothread1,bus=pci.4,addr=0x0,"
               "drive=libvirt-1-format,id=virtio-disk0,bootindex=1",
    "-blockdev", "{\"driver\":\"file\",\"filename\":\"@DIR@/cd.iso\","
                 "\"node-name\":\"libvirt-2-storage\","
                 "\"auto-read-only\":true,\"discard\":\"unmap\"}",
    "-blockdev", "{\"node-name\":\"libvirt-2-format\",\"read-only\":true,"
                 "\"driver\":\"raw\",\"file\":\"libvirt-2-storage\"}",
    "-device", "ide-cd,bus=ide.0,drive=libvirt-2-format,id=sata0-0-0",
    "-chardev", "socket,id=charchannel0,path=@DIR@/qga.sock,server=on,"
                "wait=off",
    "-device", "virtserialport,bus=virtio-serial0.0,nr=1,"
               "chardev=charchannel0,id=channel0,name=" CHANNEL,
    "-device", "usb-tablet,id=input0,bus=usb.0,port=1",
    "-device", "virtio-balloon-pci,id=balloon0,bus=pci.5,addr=0x0",
    "-object", "{\"qom-type\":\"rng-random\",\"id\":\"objrng0\","
               "\"filename\":\"/dev/urandom\"}",
    "-device", "virtio-rng-pci,rng=objrng0,id=rng0,bus=pci.1,addr=0x0",
    "-device", "pvpanic,id=panic0",
    "-device", "vmgenid",
    "-device", "pcie-root-port,port=21,chassis=6,id=pci.6,bus=pcie.0,"
               "addr=0x2.0x5",
    "-netdev", "{\"type\":\"user\",\"id\":\"hostnet0\"}",
    "-device", "{\"driver\":\"virtio-net-pci\",\"netdev\":\"hostnet0\","
               "\"id\":\"net0\",\"mac\":\"52:54:00:5c:1d:0e\","
               "\"bus\":\"pci.6\",\"addr\":\"0x0\"}",
    NULL
};

static const char *const tcp_server_chardev[] = {
    "-device", "virtio-serial-pci,id=virtio-serial0",
    "-chardev", "socket,id=chartcp0,host=127.0.0.1,port=0,server=on,"
                "wait=off",
    "-device", "virtserialport,bus=virtio-serial0.0,nr=1,chardev=chartcp0,"
               "id=channel0,name=tcp.0",
    NULL
};

/* libvirt's <rng><backend model='egd' type='unix'> on a server socket */
static const char *const rng_egd_unix_server[] = {
    "-chardev", "socket,id=charrng0,path=@DIR@/egd.sock,server=on,wait=off",
    "-object", "{\"qom-type\":\"rng-egd\",\"id\":\"objrng0\","
               "\"chardev\":\"charrng0\"}",
    "-device", "virtio-rng-pci,rng=objrng0,id=rng0",
    NULL
};

/* libvirt's default sandbox with a seccomp-enabled QEMU */
static const char *const sandbox_spawn_deny[] = {
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
                "resourcecontrol=deny",
    NULL
};

/*
 * The same sandbox with spawn=allow (what docs/libvirt.md suggests for a
 * domain that keeps a filter), on a VM with a disk on an IOThread: fork()
 * is allowed, sched_setaffinity() is not (the children stay where Linux
 * puts them) and the child inherits the filter
 */
static const char *const sandbox_spawn_allow[] = {
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=allow,"
                "resourcecontrol=deny",
    "-object", "iothread,id=iothread1",
    VM_LIBVIRT_BLOCKDEV_QCOW2,
    "-device", "virtio-blk-pci,iothread=iothread1,drive=libvirt-1-format,"
               "id=virtio-disk0",
    NULL
};

/*
 * libvirt's <driver name='qemu' type='qcow2' cache='none' io='AIO'/>:
 * io='native' (Linux AIO, whose kernel context a child must not share
 * with the parent) or io='io_uring' (its ring, whose fd and mappings a
 * child must not share), on the disk alone or served by an IOThread
 * (<driver ... iothread='1'/>)
 */
#define LIBVIRT_BLOCKDEV_AIO(aio) \
    "-blockdev", "{\"driver\":\"file\",\"filename\":\"@DIR@/disk.qcow2\"," \
                 "\"node-name\":\"libvirt-1-storage\",\"aio\":\"" aio "\"," \
                 "\"cache\":{\"direct\":true,\"no-flush\":false}," \
                 "\"auto-read-only\":true,\"discard\":\"unmap\"}", \
    "-blockdev", "{\"node-name\":\"libvirt-1-format\",\"read-only\":false," \
                 "\"cache\":{\"direct\":true,\"no-flush\":false}," \
                 "\"driver\":\"qcow2\",\"file\":\"libvirt-1-storage\"}"
#define VIRTIO_DISK0 \
    "-device", "virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0"
#define VIRTIO_DISK0_IOTHREAD \
    "-object", "iothread,id=iothread1", \
    "-device", "virtio-blk-pci,iothread=iothread1,drive=libvirt-1-format," \
               "id=virtio-disk0"

static const char *const aio_native[] = {
    LIBVIRT_BLOCKDEV_AIO("native"), VIRTIO_DISK0, NULL
};

static const char *const aio_native_iothread[] = {
    LIBVIRT_BLOCKDEV_AIO("native"), VIRTIO_DISK0_IOTHREAD, NULL
};

static const char *const aio_io_uring[] = {
    LIBVIRT_BLOCKDEV_AIO("io_uring"), VIRTIO_DISK0, NULL
};

static const char *const aio_io_uring_iothread[] = {
    LIBVIRT_BLOCKDEV_AIO("io_uring"), VIRTIO_DISK0_IOTHREAD, NULL
};

/* libvirt's <tpm model='tpm-crb'><backend type='emulator' .../> */
static const char *const tpm_crb_swtpm[] = {
    "-chardev", "socket,id=chrtpm,path=@DIR@/swtpm.sock",
    "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm",
    "-device", "tpm-crb,tpmdev=tpm-tpm0,id=tpm0",
    NULL
};

static const char *start_swtpm(const char *dir)
{
    g_autofree char *swtpm = g_find_program_in_path("swtpm");
    g_autofree char *cmd = NULL;
    int status;

    if (!swtpm) {
        return "swtpm is not installed (Debian's swtpm)";
    }
    /* it ends when QEMU closes its control channel */
    cmd = g_strdup_printf("%s socket --tpm2 --tpmstate dir=%s "
                          "--ctrl type=unixio,path=%s/swtpm.sock "
                          "--terminate --daemon", swtpm, dir, dir);
    g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL));
    g_assert_cmpint(status, ==, 0);
    return NULL;
}

/* libvirt's <vsock model='virtio'> */
static const char *const vhost_vsock[] = {
    "-device", "vhost-vsock-pci,id=vsock0,guest-cid=3",
    NULL
};

static const char *need_vhost_vsock(const char *dir G_GNUC_UNUSED)
{
    return access("/dev/vhost-vsock", R_OK | W_OK) ? "no /dev/vhost-vsock "
           "here (the vhost_vsock module)" : NULL;
}

static const ConfigRow rows[] = {
    { .name = "blockdev-virtio-blk", .extra = blockdev_virtio,
      .has = HAS_DISK, .dev = "vda" },
    { .name = "blockdev-virtio-blk-iothread",
      .extra = blockdev_virtio_iothread, .has = HAS_DISK, .dev = "vda" },
    { .name = "blockdev-virtio-scsi-iothread",
      .extra = blockdev_scsi_iothread, .has = HAS_DISK, .dev = "sda",
      .guest_setup = "modprobe virtio_scsi && modprobe sd_mod && "
                     "for i in $(seq 50); do [ -b /dev/sda ] && break; "
                     "sleep 0.1; done; [ -b /dev/sda ]" },
    { .name = "blockdev-sata-q35", .machine = "q35", .extra = blockdev_sata,
      .has = HAS_DISK, .dev = "sda",
      .guest_setup = "modprobe ahci && modprobe sd_mod && "
                     "for i in $(seq 50); do [ -b /dev/sda ] && break; "
                     "sleep 0.1; done; [ -b /dev/sda ]" },
    { .name = "virtio-serial-unix-channel", .extra = channel_only,
      .has = HAS_CHANNEL },
    { .name = "virtio-vga", .extra = virtio_vga, .has = HAS_GPU,
      .guest_setup = "modprobe virtio-gpu && test -e /dev/dri/card0" },
    { .name = "q35-libvirt", .machine = "q35", .extra = q35_libvirt,
      .has = HAS_DISK | HAS_CHANNEL | HAS_CDROM, .dev = "vda" },
    { .name = "tcp-server-chardev", .extra = tcp_server_chardev,
      .refused = "chardev 'chartcp0'" },
    { .name = "rng-egd-unix-server", .extra = rng_egd_unix_server },
    { .name = "sandbox-spawn-deny", .extra = sandbox_spawn_deny,
      .refused = "the seccomp sandbox denies fork()" },
    { .name = "sandbox-spawn-allow", .extra = sandbox_spawn_allow,
      .has = HAS_DISK | HAS_SANDBOX, .dev = "vda" },
    { .name = "aio-native", .extra = aio_native, .has = HAS_DISK,
      .dev = "vda" },
    { .name = "aio-native-iothread", .extra = aio_native_iothread,
      .has = HAS_DISK, .dev = "vda" },
    { .name = "aio-io-uring", .extra = aio_io_uring, .has = HAS_DISK,
      .dev = "vda" },
    { .name = "aio-io-uring-iothread", .extra = aio_io_uring_iothread,
      .has = HAS_DISK, .dev = "vda" },
    { .name = "tpm-crb-swtpm", .extra = tpm_crb_swtpm,
      .refused = "TPM 'tpm-tpm0' (tpm-crb, emulator backend)",
      .host_setup = start_swtpm },
    { .name = "vhost-vsock", .extra = vhost_vsock,
      .refused = "device 'vsock0' (vhost-vsock-pci)",
      .host_setup = need_vhost_vsock },
};

/* ---- Helpers ------------------------------------------------------------ */

/* A number field of /proc/PID/status */
static gint64 proc_status_field(pid_t pid, const char *field)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", pid);
    g_autofree char *status = NULL, *value = NULL;

    g_assert_true(g_file_get_contents(path, &status, NULL, NULL));
    value = proc_status_value(status, field);
    return g_ascii_strtoll(value, NULL, 10);
}

/* The guest's /dev node of the channel port */
static char *channel_dev(Vm *vm)
{
    char *dev = vm_sh(vm, "for p in /sys/class/virtio-ports/*; do "
                      "[ \"$(cat $p/name)\" = %s ] && echo /dev/${p##*/}; "
                      "done", CHANNEL);

    g_strchomp(dev);
    g_assert_cmpstr(dev, !=, "");
    return dev;
}

/* Until QEMU has accepted a client on chardev @id (10 s at most) */
static void wait_chardev_connected(Vm *vm, const char *id)
{
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

    for (;;) {
        JsonNode *r = vm_qmp(vm, "query-chardev", NULL);
        JsonArray *a = json_node_get_array(r);
        bool connected = false;

        for (guint i = 0; i < json_array_get_length(a); i++) {
            JsonObject *c = json_array_get_object_element(a, i);

            if (g_str_equal(json_object_get_string_member(c, "label"), id)) {
                connected = !g_str_has_prefix(
                    json_object_get_string_member(c, "filename"),
                    "disconnected:");
            }
        }
        json_node_unref(r);
        if (connected) {
            return;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
}

/* A line the guest writes on its channel arrives on the host socket */
static void channel_carries(Vm *vm, pid_t pid, const char *path,
                            const char *word)
{
    g_autofree char *dev = channel_dev(vm);
    g_autofree char *line = NULL;
    int fd = vm_unix_connect(pid, path, 10000);

    g_assert_cmpint(fd, >=, 0);
    /* The port is open on the host side once QEMU has the client */
    wait_chardev_connected(vm, "charchannel0");
    g_free(vm_sh(vm, "echo %s > %s", word, dev));
    line = fd_read_line(fd, 10000);
    close(fd);
    g_test_message("channel %s: '%s'", path, line ? line : "(nothing)");
    g_assert_cmpstr(line, ==, word);
}

/* The path of chardev @id of a child, as the vmfork reply lists it */
static const char *child_chardev_path(JsonObject *child, const char *id)
{
    JsonArray *chardevs = json_object_get_array_member(child, "chardevs");

    g_assert_nonnull(chardevs);
    for (guint i = 0; i < json_array_get_length(chardevs); i++) {
        JsonObject *c = json_array_get_object_element(chardevs, i);

        if (g_str_equal(json_object_get_string_member(c, "id"), id)) {
            return json_object_get_string_member(c, "path");
        }
    }
    g_error("the child lists no path for chardev '%s'", id);
}

/* query-block: the file of the active layer of every inserted medium */
static char *active_images(Vm *vm)
{
    JsonNode *r = vm_qmp(vm, "query-block", NULL);
    JsonArray *a = json_node_get_array(r);
    GString *s = g_string_new(NULL);

    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *b = json_array_get_object_element(a, i);
        JsonObject *ins = json_object_has_member(b, "inserted") ?
            json_object_get_object_member(b, "inserted") : NULL;

        if (ins) {
            g_string_append_printf(s, "%s%s", s->len ? " " : "",
                                   json_object_get_string_member(ins, "file"));
        }
    }
    json_node_unref(r);
    return g_string_free(s, false);
}

/* ---- The test of one row ------------------------------------------------- */

static void config_row(gconstpointer data)
{
    const ConfigRow *row = data;
    VmOptions o = { .guest = GUEST_LINUX, .machine = row->machine,
                    .extra = row->extra };
    g_autofree char *args = NULL, *img_p = NULL, *img_c = NULL;
    g_autofree char *dir = NULL, *disk = NULL, *cd = NULL;
    g_autoptr(JsonArray) children = NULL;
    g_autoptr(GError) err = NULL;
    JsonObject *c0;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_test_message("row %s: Linux guest under TCG, machine %s", row->name,
                   row->machine ? row->machine : "pc");
    /* The row's images first, in the directory of its VM */
    dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    vm_register_dir(dir);
    disk = g_build_filename(dir, "disk.qcow2", NULL);
    cd = g_build_filename(dir, "cd.iso", NULL);
    vm_qemu_img_create(disk, "qcow2", 64);
    vm_qemu_img_create(cd, "raw", 1);
    if (row->host_setup) {
        const char *missing = row->host_setup(dir);

        if (missing) {
            g_test_skip(missing);
            vm_cleanup_all();
            return;
        }
    }
    o.dir = dir;
    parent = vm_start(&o);
    if (row->guest_setup) {
        g_free(vm_sh(parent, "%s", row->guest_setup));
    }
    if (row->has & HAS_GPU) {
        guint n = audit_count_fds(parent->pid, "/memfd:virtio-gpu res "
                                  "(deleted)");

        g_test_message("parent: %u virtio-gpu resources", n);
        g_assert_cmpuint(n, >, 0);
    }
    if (row->has & HAS_DISK) {
        vm_disk_write(parent, row->dev, 100, "before-the-fork");
        /* A writable disk needs overlays: refused without, named */
        err = vm_qmp_error(parent, "vmfork", NULL);
        g_assert_nonnull(err);
        g_test_message("without overlay-dir: %s", err->message);
        g_assert_nonnull(strstr(err->message, "libvirt-1-format"));
        g_assert_nonnull(strstr(err->message, "overlay-dir"));
        g_clear_error(&err);
    }

    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", parent->dir);
    if (row->refused) {
        err = vm_qmp_error(parent, "vmfork", args);
        g_assert_nonnull(err);
        g_test_message("refused: %s", err->message);
        g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
        g_assert_nonnull(strstr(qmp_error_desc(err), row->refused));
        g_assert_cmpstr(vm_runstate(parent), ==, "running");
        g_free(vm_sh(parent, "true"));
        vm_quit(parent);
        vm_cleanup_all();
        return;
    }

    children = vm_fork(parent, args);
    g_assert_cmpuint(json_array_get_length(children), ==, 1);
    c0 = json_array_get_object_element(children, 0);
    child = vm_attach_child(parent, c0);

    /* Both guests answer, and the child shares no fd or mapping with the
     * parent that it should not (disks, NIC, IOThread, chardev sockets) */
    g_free(vm_sh(parent, "true"));
    g_free(vm_sh(child, "true"));
    audit_vm_pair(parent, child);
    if (row->has & HAS_SANDBOX) {
        /* 2: a seccomp filter (a child keeps its parent's) */
        g_assert_cmpint(proc_status_field(parent->pid, "Seccomp"), ==, 2);
        g_assert_cmpint(proc_status_field(child->pid, "Seccomp"), ==, 2);
    }

    if (row->has & HAS_DISK) {
        g_autofree char *b_p = NULL, *b_c = NULL, *w_p = NULL, *w_c = NULL;

        img_p = active_images(parent);
        img_c = active_images(child);
        g_test_message("active images: parent %s, child %s", img_p, img_c);
        g_assert_null(strstr(img_p, "disk.qcow2"));
        g_assert_null(strstr(img_c, "disk.qcow2"));
        g_assert_cmpstr(img_p, !=, img_c);
        /* a read-only disk is shared as it is: no overlay, the same file */
        if (row->has & HAS_CDROM) {
            g_assert_nonnull(strstr(img_p, cd));
            g_assert_nonnull(strstr(img_c, cd));
        }
        /* The reply names the child's overlay: its one writable image */
        {
            JsonArray *ov = json_object_get_array_member(c0, "overlays");

            g_assert_cmpuint(json_array_get_length(ov), ==, 1);
            g_assert_nonnull(strstr(img_c, json_array_get_string_element(
                ov, 0)));
        }

        vm_disk_write(parent, row->dev, 200, "written-by-the-parent");
        vm_disk_write(child, row->dev, 200, "written-by-the-child");
        b_p = vm_disk_read(parent, row->dev, 100);
        b_c = vm_disk_read(child, row->dev, 100);
        w_p = vm_disk_read(parent, row->dev, 200);
        w_c = vm_disk_read(child, row->dev, 200);
        g_assert_cmpstr(b_p, ==, "before-the-fork");
        g_assert_cmpstr(b_c, ==, "before-the-fork");
        g_assert_cmpstr(w_p, ==, "written-by-the-parent");
        g_assert_cmpstr(w_c, ==, "written-by-the-child");
    }
    if (row->has & HAS_CHANNEL) {
        g_autofree char *ppath = g_build_filename(parent->dir, "qga.sock",
                                                  NULL);
        const char *cpath = child_chardev_path(c0, "charchannel0");

        g_assert_cmpstr(cpath, !=, ppath);
        channel_carries(child, child->pid, cpath, "from-the-child");
        channel_carries(parent, parent->pid, ppath, "from-the-parent");
    }

    vm_quit(child);
    vm_quit(parent);
    if (row->has & HAS_DISK) {
        /* the base, the parent's and the child's overlays, all clean */
        g_assert_cmpuint(vm_qemu_img_check_dir(parent->dir, false), ==, 3);
    }
    vm_cleanup_all();
}

/* A new test directory with a 64 MiB qcow2 disk.qcow2, and its VM */
static Vm *start_with_image(VmOptions *o, char **dir, char **disk)
{
    *dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    vm_register_dir(*dir);
    *disk = g_build_filename(*dir, "disk.qcow2", NULL);
    vm_qemu_img_create(*disk, "qcow2", 64);
    o->dir = *dir;
    return vm_start(o);
}

/*
 * The image under a disk at the fork (the base) is the parent's and every
 * child's backing file: no child ever writes it, not even the metadata
 * that qcow2 writes when it closes an image.  Here the base carries a
 * persistent dirty bitmap (libvirt checkpoints, incremental backup),
 * which qcow2 stores when it closes the image: a child that quits must
 * leave the base byte for byte as it was.
 */
static void base_never_written(void)
{
    VmOptions o = { .guest = GUEST_LINUX, .extra = blockdev_virtio };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL;
    g_autofree char *h_fork = NULL, *h_after = NULL, *info = NULL;
    g_autofree char *cmd = NULL;
    JsonArray *children;
    Vm *parent, *child;
    int status;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = start_with_image(&o, &dir, &disk);
    json_node_unref(vm_qmp(parent, "block-dirty-bitmap-add",
                           "{\"node\": \"libvirt-1-format\", "
                           "\"name\": \"checkpoint0\", "
                           "\"persistent\": true}"));
    vm_disk_write(parent, "vda", 100, "before-the-fork");

    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    children = vm_fork(parent, args);
    h_fork = file_sha256(disk);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    json_array_unref(children);
    vm_disk_write(child, "vda", 200, "written-by-the-child");
    vm_quit(child);
    h_after = file_sha256(disk);
    g_test_message("base %s at the fork, %s after the child quit", h_fork,
                   h_after);
    g_assert_cmpstr(h_fork, ==, h_after);

    /* The parent owns the base: it stores its bitmap there at its end */
    vm_disk_write(parent, "vda", 200, "written-by-the-parent");
    vm_quit(parent);
    cmd = g_strdup_printf("%s info %s", g_getenv("VMFORK_QEMU_IMG"), disk);
    g_assert_true(g_spawn_command_line_sync(cmd, &info, NULL, &status,
                                            NULL));
    g_assert_cmpint(status, ==, 0);
    g_assert_nonnull(strstr(info, "checkpoint0"));
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 3);
    vm_cleanup_all();
}

/*
 * Where in @log (lines "TID@SECONDS:EVENT ARGS", as -msg timestamp=on
 * writes them) thread @tid first traced @what, an event and the start of
 * its arguments; -1: never
 */
static gssize traced_at(const char *log, int tid, const char *what)
{
    g_autofree char *pattern = g_strdup_printf("^%d@[0-9.]+:%s", tid, what);
    g_autoptr(GRegex) re = g_regex_new(pattern, G_REGEX_MULTILINE, 0, NULL);
    g_autoptr(GMatchInfo) m = NULL;
    int start = -1;

    if (g_regex_match(re, log, 0, &m)) {
        g_match_info_fetch_pos(m, 0, &start, NULL);
    }
    return start;
}

/*
 * A VM start turns the ioeventfds of virtio-pci devices back on, and for
 * a disk on an IOThread (as libvirt writes it) that moves the disk's
 * notifiers and nodes to the IOThread, a long part of the pause of such a
 * parent.  The parent turns them on once the command is over and its
 * vCPUs can run (plugin/virtio.c), a child at its VM start as before.  In
 * the trace of the main threads: the parent's resume, then its disk's
 * ioeventfds; then no notification of the disk in parent or child takes
 * the slower path through the notify region, which is what it would take
 * if nobody turned them on.  A later stop and cont of the parent is a VM
 * start like any other again: nothing is left for later.
 */
static void virtio_ioeventfds_after_resume(void)
{
    static const char *const extra[] = {
        "-msg", "timestamp=on",
        "-object", "iothread,id=iothread1",
        VM_LIBVIRT_BLOCKDEV_QCOW2,
        "-device", "virtio-blk-pci,iothread=iothread1,"
                   "drive=libvirt-1-format,id=virtio-disk0",
        NULL
    };
    static const char *const events[] = {
        "vmfork_parent_resumed", "vmfork_parent_unlocked",
        "virtio_pci_ioeventfd_deferred",
        "virtio_pci_ioeventfd_start_deferred", "virtio_pci_notify_write",
        "virtio_pci_notify_write_pio",
    };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL, *log = NULL;
    g_autofree char *b_c = NULL, *w_p = NULL, *w_c = NULL;
    g_autoptr(JsonArray) children = NULL;
    gsize from;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_test_message("Linux guest under TCG, virtio-blk on an IOThread");
    parent = start_with_image(&o, &dir, &disk);
    vm_disk_write(parent, "vda", 100, "before-the-fork");
    for (guint i = 0; i < G_N_ELEMENTS(events); i++) {
        vm_trace_enable(parent, events[i]);
    }
    from = vm_log_size(parent);
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    children = vm_fork(parent, args);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    /* The parent turns them on in a bottom half, just after its reply */
    for (int tries = 0;; tries++) {
        g_free(log);
        log = vm_log_since(parent, from);
        if (strstr(log, ":virtio_pci_ioeventfd_start_deferred") ||
            tries == 100) {
            break;
        }
        g_usleep(100 * 1000);
    }
    {
        gssize deferred, resumed, unlocked, started, child_deferred;

        deferred = traced_at(log, parent->pid,
                             "virtio_pci_ioeventfd_deferred virtio-blk-pci");
        resumed = traced_at(log, parent->pid, "vmfork_parent_resumed");
        unlocked = traced_at(log, parent->pid, "vmfork_parent_unlocked");
        started = traced_at(log, parent->pid, "virtio_pci_ioeventfd_start_"
                            "deferred virtio-blk-pci start 1");
        child_deferred = traced_at(log, child->pid,
                                   "virtio_pci_ioeventfd_deferred");
        g_test_message("parent (pid %d): its disk's ioeventfds left off at "
                       "byte %zd of the trace, resumed at %zd, BQL let go "
                       "at %zd, ioeventfds on at %zd; child (pid %d): "
                       "left off at %zd", parent->pid, deferred, resumed,
                       unlocked, started, child->pid, child_deferred);
        g_assert_cmpint(deferred, >=, 0);
        g_assert_cmpint(resumed, >, deferred);
        g_assert_cmpint(unlocked, >, resumed);
        g_assert_cmpint(started, >, unlocked);
        g_assert_cmpint(child_deferred, ==, -1);
    }

    /* Each guest writes its disk, every notification through ioeventfds */
    from = vm_log_size(parent);
    vm_disk_write(parent, "vda", 200, "written-by-the-parent");
    vm_disk_write(child, "vda", 200, "written-by-the-child");
    b_c = vm_disk_read(child, "vda", 100);
    w_p = vm_disk_read(parent, "vda", 200);
    w_c = vm_disk_read(child, "vda", 200);
    g_assert_cmpstr(b_c, ==, "before-the-fork");
    g_assert_cmpstr(w_p, ==, "written-by-the-parent");
    g_assert_cmpstr(w_c, ==, "written-by-the-child");
    g_free(log);
    log = vm_log_since(parent, from);
    g_assert_null(strstr(log, ":virtio_pci_notify_write"));

    /* stop and cont: the ioeventfds go off and on again at once */
    json_node_unref(vm_qmp(parent, "stop", NULL));
    json_node_unref(vm_qmp(parent, "cont", NULL));
    vm_disk_write(parent, "vda", 300, "after-cont");
    g_free(log);
    log = vm_log_since(parent, from);
    g_assert_null(strstr(log, ":virtio_pci_ioeventfd_deferred"));
    g_assert_null(strstr(log, ":virtio_pci_notify_write"));

    vm_quit(child);
    vm_quit(parent);
    /* the base, the parent's and the child's overlays, all clean */
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 3);
    vm_cleanup_all();
}

/* A disk plugged in at run time (blockdev-add, device_add) is seen too */
static void hotplugged_disk(void)
{
    VmOptions o = { .guest = GUEST_LINUX };
    g_autofree char *dir = NULL, *disk = NULL, *add = NULL, *args = NULL;
    g_autofree char *w_p = NULL, *w_c = NULL, *img_p = NULL, *img_c = NULL;
    g_autoptr(GError) err = NULL;
    JsonArray *children;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = start_with_image(&o, &dir, &disk);
    add = g_strdup_printf("{\"driver\": \"qcow2\", \"node-name\": "
                          "\"hot0\", \"file\": {\"driver\": \"file\", "
                          "\"filename\": \"%s\"}}", disk);
    json_node_unref(vm_qmp(parent, "blockdev-add", add));
    json_node_unref(vm_qmp(parent, "device_add",
                           "{\"driver\": \"virtio-blk-pci\", "
                           "\"drive\": \"hot0\", \"id\": \"hotdisk\"}"));
    g_free(vm_sh(parent, "for i in $(seq 100); do [ -b /dev/vda ] && "
                 "break; echo 1 > /sys/bus/pci/rescan; sleep 0.1; done; "
                 "[ -b /dev/vda ]"));

    err = vm_qmp_error(parent, "vmfork", NULL);
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, "disk 'hotdisk' (node 'hot0')"));
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    children = vm_fork(parent, args);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    json_array_unref(children);
    img_p = active_images(parent);
    img_c = active_images(child);
    g_test_message("active images: parent %s, child %s", img_p, img_c);
    g_assert_null(strstr(img_p, "disk.qcow2"));
    g_assert_null(strstr(img_c, "disk.qcow2"));
    vm_disk_write(parent, "vda", 200, "written-by-the-parent");
    vm_disk_write(child, "vda", 200, "written-by-the-child");
    w_p = vm_disk_read(parent, "vda", 200);
    w_c = vm_disk_read(child, "vda", 200);
    g_assert_cmpstr(w_p, ==, "written-by-the-parent");
    g_assert_cmpstr(w_c, ==, "written-by-the-child");
    vm_quit(child);
    vm_quit(parent);
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 3);
    vm_cleanup_all();
}

/* Does qemu-img ARGS fail on an image lock (another process uses it)? */
static bool qemu_img_locked(const char *args)
{
    g_autofree char *cmd = g_strdup_printf("%s %s",
                                           g_getenv("VMFORK_QEMU_IMG"), args);
    g_autofree char *out = NULL, *err = NULL;
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, &out, &err, &status, NULL));
    g_test_message("qemu-img %s: %s", args,
                   status ? g_strstrip(err) : "succeeded");
    return status != 0 && strstr(err, "lock");
}

/* The one image of a VM's disk whose file is not the base */
static char *overlay_of(Vm *vm, const char *base)
{
    g_autofree char *images = active_images(vm);

    g_assert_null(strstr(images, base));
    g_assert_null(strchr(images, ' '));
    return g_steal_pointer(&images);
}

/*
 * Image locks stay the parent's: they live on open file descriptions, and
 * a child neither takes nor drops the parent's (it reopens the base
 * read-only for itself).  While a child runs, and after one quits and
 * one is killed, the parent's overlay and base keep their locks (another
 * writer is refused); a child's overlay is locked while it runs, and free
 * once it is gone.
 */
static void image_locks_stay_the_parents(void)
{
    VmOptions o = { .guest = GUEST_LINUX, .extra = blockdev_virtio };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL;
    g_autofree char *ov_p = NULL, *ov_c = NULL, *resize = NULL;
    g_autofree char *info_p = NULL, *info_c = NULL;
    g_autoptr(JsonArray) c1 = NULL, c2 = NULL;
    Vm *parent, *child;
    pid_t killed;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = start_with_image(&o, &dir, &disk);
    resize = g_strdup_printf("resize %s +1M", disk);
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);

    c1 = vm_fork(parent, args);
    child = vm_attach_child(parent, json_array_get_object_element(c1, 0));
    ov_p = overlay_of(parent, disk);
    ov_c = overlay_of(child, disk);
    info_p = g_strdup_printf("info %s", ov_p);
    info_c = g_strdup_printf("info %s", ov_c);
    g_assert_true(qemu_img_locked(info_p));
    g_assert_true(qemu_img_locked(info_c));
    g_assert_true(qemu_img_locked(resize));     /* the base: no writer */

    vm_quit(child);
    g_assert_true(qemu_img_locked(info_p));
    g_assert_true(qemu_img_locked(resize));
    g_assert_false(qemu_img_locked(info_c));

    /* A child killed by a signal: nothing of it may run at its end */
    c2 = vm_fork(parent, args);
    killed = json_object_get_int_member(json_array_get_object_element(c2, 0),
                                        "pid");
    g_assert_cmpint(kill(killed, SIGKILL), ==, 0);
    g_assert_true(pid_wait_gone(killed, 10000));
    g_free(ov_p);
    ov_p = overlay_of(parent, disk);
    g_free(info_p);
    info_p = g_strdup_printf("info %s", ov_p);
    g_assert_true(qemu_img_locked(info_p));
    g_assert_true(qemu_img_locked(resize));

    g_free(vm_sh(parent, "true"));
    vm_quit(parent);
    g_assert_false(qemu_img_locked(resize));
    vm_cleanup_all();
}

/*
 * A child with a disk can be stopped and continued, and migrated (to a
 * file here): the parent's nodes it keeps as its base stay inactive and
 * read-only through both (the block layer neither activates nor
 * inactivates them again), and its own overlay takes its writes after.
 */
static void child_stops_and_migrates(void)
{
    VmOptions o = { .guest = GUEST_LINUX, .extra = blockdev_virtio };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL, *uri = NULL;
    g_autofree char *state = NULL, *back = NULL, *h_fork = NULL;
    g_autofree char *h_after = NULL;
    g_autoptr(JsonArray) c = NULL;
    Vm *parent, *child;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = start_with_image(&o, &dir, &disk);
    vm_disk_write(parent, "vda", 100, "before-the-fork");
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    c = vm_fork(parent, args);
    h_fork = file_sha256(disk);
    child = vm_attach_child(parent, json_array_get_object_element(c, 0));

    json_node_unref(vm_qmp(child, "stop", NULL));
    json_node_unref(vm_qmp(child, "cont", NULL));
    vm_disk_write(child, "vda", 200, "after-cont");

    uri = g_strdup_printf("{\"uri\": \"exec:cat > %s/child.mig\"}", dir);
    json_node_unref(vm_qmp(child, "migrate", uri));
    for (int i = 0; i < 30000; i++) {
        g_free(state);
        state = vm_runstate(child);
        if (!g_str_equal(state, "running") &&
            !g_str_equal(state, "finish-migrate")) {
            break;
        }
        g_usleep(1000);
    }
    g_test_message("the child after its migration: %s", state);
    g_assert_cmpstr(state, ==, "postmigrate");
    json_node_unref(vm_qmp(child, "cont", NULL));
    vm_disk_write(child, "vda", 300, "after-migration");
    back = vm_disk_read(child, "vda", 100);
    g_assert_cmpstr(back, ==, "before-the-fork");
    g_free(back);
    back = vm_disk_read(child, "vda", 200);
    g_assert_cmpstr(back, ==, "after-cont");
    vm_quit(child);
    h_after = file_sha256(disk);
    g_assert_cmpstr(h_fork, ==, h_after);
    g_free(vm_sh(parent, "true"));
    vm_quit(parent);
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 3);
    vm_cleanup_all();
}

/* The fd of the node that a template keeps for its children */
#define PROTO_FD "-proto.qcow2 (deleted)"

/*
 * A template, paused and forked again and again (a pool's), keeps the
 * layer that its first fork gave it: nothing wrote it, so its children
 * are backed by the image under it, as the first fork's are.  Its chain
 * and its open files stay as they are, where each fork added a layer
 * before.  Each child has its own data only: not its siblings', and not
 * what the template writes into that layer once it runs again (which a
 * child backed by that layer would see).  Once the template has written
 * it, its next fork gives it a new layer.  With the disk on an IOThread
 * too, where each child's overlay joins the IOThread's AioContext.
 */
static void template_keeps_its_layer(gconstpointer extra)
{
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL;
    g_autofree char *layer = NULL, *info = NULL;
    Vm *parent, *child[3];

    if (vm_skip_if_missing(&o)) {
        return;
    }
    parent = start_with_image(&o, &dir, &disk);
    vm_disk_write(parent, "vda", 100, "before-the-forks");
    json_node_unref(vm_qmp(parent, "stop", NULL));
    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    for (int i = 0; i < 3; i++) {
        g_autoptr(JsonArray) c = vm_fork(parent, args);
        g_autofree char *now = NULL;

        child[i] = vm_attach_child(parent,
                                   json_array_get_object_element(c, 0));
        now = overlay_of(parent, disk);
        g_test_message("TCG, Linux guest, paused template, fork %d: %u "
                       "images in its chain, active %s", i + 1,
                       vm_disk_chain_length(parent), now);
        g_assert_cmpuint(vm_disk_chain_length(parent), ==, 2);
        g_assert_cmpuint(audit_count_fds(parent->pid, "-parent.qcow2"), ==,
                         1);
        /*
         * From the second fork on, one more image: the node that the
         * children of the kept layer take over, kept for the next forks
         * (its file removed); the children hold none of its fds
         */
        g_assert_cmpuint(audit_count_fds(parent->pid, PROTO_FD), ==, i ? 1 : 0);
        g_assert_cmpuint(audit_count_fds(child[i]->pid, PROTO_FD), ==, 0);
        if (layer) {
            g_assert_cmpstr(now, ==, layer);
        } else {
            layer = g_steal_pointer(&now);
        }
    }
    for (int i = 0; i < 3; i++) {
        g_autofree char *mine = g_strdup_printf("written-by-child-%d", i);

        vm_disk_write(child[i], "vda", 200, mine);
    }

    /* The template runs and writes its layer, which no child reads */
    json_node_unref(vm_qmp(parent, "cont", NULL));
    vm_disk_write(parent, "vda", 200, "written-by-the-parent");
    vm_disk_write(parent, "vda", 300, "later-by-the-parent");
    for (int i = 0; i < 3; i++) {
        g_autofree char *mine = g_strdup_printf("written-by-child-%d", i);
        g_autofree char *before = vm_disk_read(child[i], "vda", 100);
        g_autofree char *own = vm_disk_read(child[i], "vda", 200);
        g_autofree char *later = vm_disk_read(child[i], "vda", 300);

        g_assert_cmpstr(before, ==, "before-the-forks");
        g_assert_cmpstr(own, ==, mine);
        g_assert_cmpstr(later, ==, "");
    }
    /* A child that quits leaves the template's layer locked, as it was */
    vm_quit(child[0]);
    info = g_strdup_printf("info %s", layer);
    g_assert_true(qemu_img_locked(info));

    /* Written now: the next fork gives the template a new layer */
    json_node_unref(vm_qmp(parent, "stop", NULL));
    {
        g_autoptr(JsonArray) c = vm_fork(parent, args);

        vm_quit(vm_attach_child(parent, json_array_get_object_element(c, 0)));
    }
    g_assert_cmpuint(vm_disk_chain_length(parent), ==, 3);
    json_node_unref(vm_qmp(parent, "cont", NULL));
    {
        g_autofree char *w = vm_disk_read(parent, "vda", 200);

        g_assert_cmpstr(w, ==, "written-by-the-parent");
    }
    vm_quit(child[1]);
    vm_quit(child[2]);
    vm_quit(parent);
    /* the base, the template's two layers and the four children's */
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 7);
    vm_cleanup_all();
}

/*
 * The parent puts the new layer on its disk once its guest runs again,
 * and until then holds the guest's requests.  When that fails (here
 * VMFORK_FAULT fail-parent:block), the command fails as it does for a
 * child that cannot set up: the child goes, every overlay goes, and so
 * do the child's sockets (the parent removes them).  The parent runs on
 * with the image it had, its requests no longer held: a write and a read
 * in the guest complete.  With the disk on the main loop, and on an
 * IOThread, where the guest's requests need no BQL.
 */
static void parent_switch_fails(gconstpointer extra)
{
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autofree char *dir = NULL, *disk = NULL, *args = NULL;
    g_autofree char *images = NULL, *back = NULL;
    g_autoptr(GError) err = NULL, qerr = NULL;
    g_autoptr(GDir) d = NULL;
    const char *name;
    JsonNode *ev;
    pid_t pid;
    Vm *parent;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    g_setenv("VMFORK_FAULT", "fail-parent:block", TRUE);
    parent = start_with_image(&o, &dir, &disk);
    g_unsetenv("VMFORK_FAULT");
    vm_disk_write(parent, "vda", 100, "before-the-fork");

    args = g_strdup_printf("{\"overlay-dir\": \"%s\"}", dir);
    err = vm_qmp_error(parent, "vmfork", args);
    g_assert_nonnull(err);
    g_test_message("TCG, Linux guest: %s", err->message);
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    g_assert_nonnull(strstr(qmp_error_desc(err),
                            "the parent's 'block' fails"));
    ev = qmp_wait_event(parent->qmp, "VMFORK_CHILD_EXITED",
                        EVENT_TIMEOUT_MS, &qerr);
    g_assert_no_error(qerr);
    pid = json_object_get_int_member(qmp_event_data(ev), "pid");
    json_node_unref(ev);
    g_assert_true(pid_wait_gone(pid, 10000));

    images = active_images(parent);
    g_assert_cmpstr(images, ==, disk);
    /*
     * No overlay, and no socket of the killed child's (serial.sock.fork-).
     * Its console's file (console.log.fork-PID) is its output, and stays
     * if the child got as far as its chardevs before it was killed.
     */
    d = g_dir_open(dir, 0, NULL);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        struct stat st;

        g_test_message("in the overlay dir: %s", name);
        g_assert_true(!g_str_has_suffix(name, ".qcow2") ||
                      !strcmp(name, "disk.qcow2"));
        g_assert_cmpint(lstat(path, &st), ==, 0);
        g_assert_true(!strstr(name, ".fork-") || !S_ISSOCK(st.st_mode));
    }
    vm_disk_write(parent, "vda", 200, "after-the-failure");
    back = vm_disk_read(parent, "vda", 200);
    g_assert_cmpstr(back, ==, "after-the-failure");
    g_free(back);
    back = vm_disk_read(parent, "vda", 100);
    g_assert_cmpstr(back, ==, "before-the-fork");
    vm_quit(parent);
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==, 1);
    vm_cleanup_all();
}

/*
 * The overlays that vmfork writes are, byte for byte, what qemu-img
 * creates over the same backing file (`create -u`, which does not open
 * it, as vmfork does not).  Only the first overlay of a backing format
 * and size is created through the block layer; every other is a copy of
 * it with the backing file's name replaced.  A parent that runs on forks
 * three times, two children each time, so each fork has a new base (the
 * layer that the fork before gave the parent) and a new name to write:
 * the base image's name is longer than the layers' (the name gets
 * shorter, then keeps its length).  Each overlay is compared before
 * anyone writes it, and each child's disk names its own overlay.  With a
 * qcow2 base, and with a raw one, whose overlays name another backing
 * format than those of the layers above.  And from a paused template,
 * which keeps the layer of its first fork: the children of the next
 * forks are backed by the base again, and take over a node that the
 * template opened for them at its second fork and keeps.
 */
typedef struct OverlaysCase {
    const char *fmt;
    bool paused;
} OverlaysCase;

#define LONG_BASE "a-base-image-with-a-name-longer-than-any-layer-name-of-vmfork"

static const OverlaysCase overlays_cases[] = {
    { "qcow2", false }, { "raw", false }, { "qcow2", true },
};

static void assert_overlay_as_created(const char *dir, const char *path,
                                      const char *backing, const char *fmt)
{
    g_autofree char *want = g_build_filename(dir, "expected.img", NULL);
    g_autofree char *cmd = g_strdup_printf("%s create -q -u -f qcow2 -b %s "
                                           "-F %s %s 64M",
                                           g_getenv("VMFORK_QEMU_IMG"),
                                           backing, fmt, want);
    g_autofree char *got = NULL, *expected = NULL;
    gsize got_len, expected_len;
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, &status,
                                            NULL));
    g_assert_cmpint(status, ==, 0);
    g_assert_true(g_file_get_contents(path, &got, &got_len, NULL));
    g_assert_true(g_file_get_contents(want, &expected, &expected_len, NULL));
    g_unlink(want);
    g_test_message("%s: %" G_GSIZE_FORMAT " bytes, backed by %s (%s, a "
                   "name of %zu characters)", strrchr(path, '/') + 1,
                   got_len, strrchr(backing, '/') + 1, fmt,
                   strlen(backing));
    g_assert_cmpmem(got, got_len, expected, expected_len);
}

static void overlays_as_qemu_img_creates_them(gconstpointer data)
{
    const OverlaysCase *oc = data;
    const char *fmt = oc->fmt;
    g_autofree char *dir = NULL, *disk = NULL;
    g_autofree char *storage = NULL, *format = NULL, *args = NULL;
    g_autofree char *base = NULL;
    const char *extra[] = { "-blockdev", NULL, "-blockdev", NULL,
                            "-device", "virtio-blk-pci,drive=libvirt-1-format,"
                            "id=virtio-disk0", NULL };
    VmOptions o = { .guest = GUEST_LINUX, .extra = extra };
    g_autoptr(GPtrArray) children = g_ptr_array_new();
    Vm *parent;

    if (vm_skip_if_missing(&o)) {
        return;
    }
    dir = g_dir_make_tmp("vmtest-XXXXXX", NULL);
    vm_register_dir(dir);
    o.dir = dir;
    disk = g_build_filename(dir, LONG_BASE ".img", NULL);
    vm_qemu_img_create(disk, fmt, 64);
    storage = g_strdup_printf("{\"driver\":\"file\",\"filename\":\"%s\","
                              "\"node-name\":\"libvirt-1-storage\"}", disk);
    format = g_strdup_printf("{\"node-name\":\"libvirt-1-format\",\"driver\":"
                             "\"%s\",\"file\":\"libvirt-1-storage\"}", fmt);
    extra[1] = storage;
    extra[3] = format;
    parent = vm_start(&o);
    if (oc->paused) {
        json_node_unref(vm_qmp(parent, "stop", NULL));
    }
    args = g_strdup_printf("{\"count\": 2, \"overlay-dir\": \"%s\"}", dir);
    base = g_strdup(disk);
    for (int i = 0; i < 3; i++) {
        g_autoptr(JsonArray) c = vm_fork(parent, args);
        g_autofree char *layer = overlay_of(parent, disk);
        const char *base_fmt = i && !oc->paused ? "qcow2" : fmt;

        if (!oc->paused || !i) {
            assert_overlay_as_created(dir, layer, base, base_fmt);
        }
        for (guint j = 0; j < json_array_get_length(c); j++) {
            JsonObject *child = json_array_get_object_element(c, j);
            JsonArray *ov = json_object_get_array_member(child, "overlays");
            const char *path = json_array_get_string_element(ov, 0);
            g_autofree char *active = NULL;
            Vm *vm;

            assert_overlay_as_created(dir, path, base, base_fmt);
            vm = vm_attach_child(parent, child);
            g_ptr_array_add(children, vm);
            /* and the child's disk names it */
            active = active_images(vm);
            g_assert_cmpstr(active, ==, path);
        }
        if (!oc->paused) {
            g_free(base);
            base = g_steal_pointer(&layer);
        }
    }
    /* The overlays work: the last children read the base through them */
    if (oc->paused) {
        json_node_unref(vm_qmp(parent, "cont", NULL));
    }
    vm_disk_write(parent, "vda", 100, "written-after-the-forks");
    for (guint j = 0; j < children->len; j++) {
        g_autofree char *r = vm_disk_read(children->pdata[j], "vda", 100);

        g_assert_cmpstr(r, ==, "");
        vm_quit(children->pdata[j]);
    }
    vm_quit(parent);
    /* the parent's layers (three, or the one it kept) and the children's */
    g_assert_cmpuint(vm_qemu_img_check_dir(dir, false), ==,
                     oc->paused ? 7 : 9);
    vm_cleanup_all();
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (guint i = 0; i < G_N_ELEMENTS(rows); i++) {
        g_autofree char *path = g_strdup_printf("/configs/linux/tcg/%s",
                                                rows[i].name);

        g_test_add_data_func(path, &rows[i], config_row);
    }
    g_test_add_func("/configs/linux/tcg/base-never-written",
                    base_never_written);
    g_test_add_func("/configs/linux/tcg/virtio-ioeventfds-after-resume",
                    virtio_ioeventfds_after_resume);
    g_test_add_func("/configs/linux/tcg/hotplugged-disk", hotplugged_disk);
    g_test_add_func("/configs/linux/tcg/image-locks-stay-the-parents",
                    image_locks_stay_the_parents);
    g_test_add_func("/configs/linux/tcg/child-stops-and-migrates",
                    child_stops_and_migrates);
    g_test_add_data_func("/configs/linux/tcg/template-keeps-its-layer",
                         blockdev_virtio, template_keeps_its_layer);
    g_test_add_data_func("/configs/linux/tcg/template-keeps-its-layer-"
                         "iothread", blockdev_virtio_iothread,
                         template_keeps_its_layer);
    g_test_add_data_func("/configs/linux/tcg/overlays-as-qemu-img-"
                         "creates-them", &overlays_cases[0],
                         overlays_as_qemu_img_creates_them);
    g_test_add_data_func("/configs/linux/tcg/overlays-as-qemu-img-"
                         "creates-them-raw", &overlays_cases[1],
                         overlays_as_qemu_img_creates_them);
    g_test_add_data_func("/configs/linux/tcg/overlays-as-qemu-img-"
                         "creates-them-template", &overlays_cases[2],
                         overlays_as_qemu_img_creates_them);
    g_test_add_data_func("/configs/linux/tcg/parent-switch-fails",
                         blockdev_virtio, parent_switch_fails);
    g_test_add_data_func("/configs/linux/tcg/parent-switch-fails-iothread",
                         blockdev_virtio_iothread, parent_switch_fails);
    return g_test_run();
}
