/*
 * Functional tests of moving a clone to another host: "vmfork migrate",
 * QEMU's own migration between two network namespaces on this machine.
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each namespace is a "host" with its own address on a veth pair; the
 * template and its clone run in the first, the destination QEMU in the
 * second, and the migration stream goes between the two addresses.  The
 * Linux guest under TCG, with a disk, user networking with a host forward,
 * and vmgenid.  The clone's guest writes fsync'd records (each carrying
 * the clone id it reads from fw_cfg at that moment) before, during and
 * after the migration; afterwards every acknowledged record is on the
 * destination's disk and all carry the same clone id, the guest's service
 * answers on the destination's forwarded port, and the source is gone.
 * Needs root and iproute2 (skipped otherwise).
 */

#define _GNU_SOURCE             /* setns() */
#include "vmtest.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TIMEOUT_MS 60000
#define SERVICE_PORT 7777       /* in the guest */
#define SOURCE_PORT 7000        /* host forwards, in each namespace */
#define DEST_PORT 7100
#define MIGRATION_PORT 4444
#define NBD_PORT 10809
#define DISK_MIB 64
#define MARK_SECTOR (DISK_MIB * 2048 - 8)

typedef struct {
    char src[32], dst[32];      /* netns names */
    char src_addr[16], dst_addr[16];
    char *ip;                   /* the ip program */
} Hosts;

static bool run_cmd(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static bool run_cmd(const char *fmt, ...)
{
    g_autofree char *cmd = NULL;
    g_autofree char *err = NULL;
    va_list ap;
    int status;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!g_spawn_command_line_sync(cmd, NULL, &err, &status, NULL) ||
        !g_spawn_check_wait_status(status, NULL)) {
        g_test_message("%s: %s", cmd, err ? err : "");
        return false;
    }
    return true;
}

/* Namespaces left by an earlier run of this test that was killed */
static void remove_stale_hosts(void)
{
    g_autoptr(GDir) d = g_dir_open("/var/run/netns", 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        int pid;

        if (sscanf(name, "vmfmig%d", &pid) == 1 && pid != getpid() &&
            kill(pid, 0) < 0) {
            run_cmd("ip netns del %s", name);
        }
    }
}

static void hosts_teardown(Hosts *h)
{
    run_cmd("ip netns del %s", h->src);
    run_cmd("ip netns del %s", h->dst);
    g_free(h->ip);
}

/* Two namespaces joined by a veth pair; false (skipped) if impossible */
static bool hosts_setup(Hosts *h)
{
    int n = getpid() % 200 + 20;

    if (geteuid() != 0) {
        g_test_skip("network namespaces need root");
        return false;
    }
    h->ip = g_find_program_in_path("ip");
    if (!h->ip) {
        g_test_skip("iproute2 (ip) is not installed");
        return false;
    }
    remove_stale_hosts();
    g_snprintf(h->src, sizeof(h->src), "vmfmig%da", getpid());
    g_snprintf(h->dst, sizeof(h->dst), "vmfmig%db", getpid());
    g_snprintf(h->src_addr, sizeof(h->src_addr), "10.252.%d.1", n);
    g_snprintf(h->dst_addr, sizeof(h->dst_addr), "10.252.%d.2", n);
    if (!run_cmd("ip netns add %s", h->src) ||
        !run_cmd("ip netns add %s", h->dst) ||
        !run_cmd("ip -n %s link add vmfa type veth peer name vmfb netns %s",
                 h->src, h->dst) ||
        !run_cmd("ip -n %s addr add %s/24 dev vmfa", h->src, h->src_addr) ||
        !run_cmd("ip -n %s addr add %s/24 dev vmfb", h->dst, h->dst_addr) ||
        !run_cmd("ip -n %s link set vmfa up", h->src) ||
        !run_cmd("ip -n %s link set vmfb up", h->dst) ||
        !run_cmd("ip -n %s link set lo up", h->src) ||
        !run_cmd("ip -n %s link set lo up", h->dst)) {
        hosts_teardown(h);
        g_test_skip("cannot make network namespaces and a veth pair");
        return false;
    }
    g_test_message("hosts: netns %s (%s) and %s (%s)", h->src, h->src_addr,
                   h->dst, h->dst_addr);
    return true;
}

typedef struct {
    const char *netns;
    int port;
    int fd;
} NetnsConnect;

static gpointer netns_connect_thread(gpointer data)
{
    NetnsConnect *c = data;
    g_autofree char *path = g_strdup_printf("/var/run/netns/%s", c->netns);
    struct sockaddr_in sin = {
        .sin_family = AF_INET,
        .sin_port = htons(c->port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    int ns = open(path, O_RDONLY | O_CLOEXEC);

    c->fd = -1;
    /* setns() moves this thread only */
    if (ns >= 0 && setns(ns, CLONE_NEWNET) == 0) {
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
            close(c->fd);
            c->fd = -1;
        }
    }
    if (ns >= 0) {
        close(ns);
    }
    return NULL;
}

/* The first line the service on 127.0.0.1:@port of @netns answers */
static char *netns_banner(const char *netns, int port)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_MS * 1000LL;

    for (;;) {
        NetnsConnect c = { .netns = netns, .port = port };
        char *line = NULL;

        g_thread_join(g_thread_new("netns", netns_connect_thread, &c));
        if (c.fd >= 0) {
            line = fd_read_line(c.fd, 2000);
            close(c.fd);
        }
        if (line || g_get_monotonic_time() > deadline) {
            return line;
        }
        g_usleep(100 * 1000);
    }
}

static void guest_service_up(Vm *vm, const char *id)
{
    g_autofree char *r = vm_agent(vm,
        "sh ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && "
        "echo %s > /tmp/id && "
        "(nc -ll -p %d -e cat /tmp/id >/dev/null 2>&1 &)", id, SERVICE_PORT);

    g_assert_true(g_str_has_prefix(r, "0"));
}

static char *vmgenid_guid(Vm *vm)
{
    g_autoptr(JsonNode) r = vm_qmp(vm, "qom-get", "{\"path\": "
                                   "\"/machine/peripheral/vmgenid0\", "
                                   "\"property\": \"guid\"}");

    return g_strdup(json_node_get_string(r));
}

/* The file of the child's disk (its qcow2 overlay), from query-block */
static char *disk_file(Vm *vm)
{
    g_autoptr(JsonNode) r = vm_qmp(vm, "query-block", NULL);
    JsonArray *a = json_node_get_array(r);

    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *b = json_array_get_object_element(a, i);

        if (json_object_has_member(b, "inserted")) {
            return g_strdup(json_object_get_string_member(
                json_object_get_object_member(b, "inserted"), "file"));
        }
    }
    g_error("the VM has no disk");
}

typedef enum {
    SHARED_STORAGE_PRECOPY,
    SHARED_STORAGE_POSTCOPY,
    NBD_MIRROR_PRECOPY,
} Mode;

static void test_migrate(gconstpointer data)
{
    Mode mode = GPOINTER_TO_INT(data);
    bool postcopy = mode == SHARED_STORAGE_POSTCOPY;
    bool nbd = mode == NBD_MIRROR_PRECOPY;
    g_autofree char *dir = g_dir_make_tmp("vmtest-mig-XXXXXX", NULL);
    g_autofree char *dst_dir = g_dir_make_tmp("vmtest-migdst-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *drive = g_strdup_printf(
        "file=%s,format=raw,if=virtio,cache=writeback", base);
    g_autofree char *src_netdev = g_strdup_printf(
        "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d", SOURCE_PORT, SERVICE_PORT);
    g_autofree char *dst_netdev = g_strdup_printf(
        "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d", DEST_PORT, SERVICE_PORT);
    const char *common[] = { "-device", "virtio-net-pci,netdev=n0,romfile=",
                             "-device", "vmgenid,id=vmgenid0" };
    Hosts h = { 0 };
    const char *src_wrapper[] = { NULL, "netns", "exec", h.src, NULL };
    const char *dst_wrapper[] = { NULL, "netns", "exec", h.dst, NULL };
    const char *src_extra[] = { "-drive", drive, "-netdev", src_netdev,
                                common[0], common[1], common[2], common[3],
                                NULL };
    g_autofree char *dst_drive = NULL, *incoming = NULL, *to = NULL;
    g_autofree char *args = NULL, *out = NULL, *errout = NULL;
    g_autofree char *id_c = NULL, *id_dst = NULL, *guid_c = NULL;
    g_autofree char *guid_dst = NULL, *runs = NULL, *want = NULL;
    g_autofree char *banner = NULL, *mark = NULL, *overlay = NULL;
    g_autofree char *mirror = NULL, *src_banner = NULL;
    g_autoptr(JsonArray) children = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    const char *dst_extra[16];
    VmOptions src_o = { .guest = GUEST_LINUX, .extra = src_extra,
                        .wrapper = src_wrapper, .dir = dir };
    VmOptions dst_o = { .guest = GUEST_LINUX, .extra = dst_extra,
                        .wrapper = dst_wrapper, .dir = dst_dir,
                        .no_boot = true };
    guint64 before, after;
    JsonObject *result;
    Vm *parent, *child, *dst;
    int status, k = 0;

    vm_register_dir(dir);
    vm_register_dir(dst_dir);
    if (vm_skip_if_missing(&src_o) || !hosts_setup(&h)) {
        vm_cleanup_all();
        return;
    }
    src_wrapper[0] = dst_wrapper[0] = h.ip;
    g_assert_true(g_file_set_contents(base, "", 0, NULL));
    g_assert_cmpint(truncate(base, DISK_MIB << 20), ==, 0);

    /* The template, in the first "host", and its clone */
    parent = vm_start(&src_o);
    vm_disk_write(parent, "vda", MARK_SECTOR, "before-the-fork");
    guest_service_up(parent, "parent");
    args = g_strdup_printf("{\"overlay-dir\": \"%s\", \"hostfwd-offset\": 1}",
                           dir);
    children = vm_fork(parent, args);
    child = vm_attach_child(parent, json_array_get_object_element(children,
                                                                  0));
    g_free(vm_agent(child, "sh echo child > /tmp/id"));
    id_c = vm_clone_id_word(child);
    guid_c = vmgenid_guid(child);
    overlay = disk_file(child);
    vm_writer_start(child, "/dev/vda");
    before = vm_writer_wait(child, 20);

    /* The destination, in the second "host": the same command line */
    if (nbd) {
        /* A disk of its own, filled through NBD by the clone's mirror */
        g_autofree char *img = g_build_filename(dst_dir, "disk.qcow2", NULL);

        g_assert_true(run_cmd("%s create -q -f qcow2 %s %dM",
                              g_getenv("VMFORK_QEMU_IMG"), img, DISK_MIB));
        dst_drive = g_strdup_printf("file=%s,format=qcow2,if=virtio,"
                                    "cache=writeback,node-name=disk0", img);
    } else {
        /* Shared storage: the clone's own overlay */
        dst_drive = g_strdup_printf("file=%s,format=qcow2,if=virtio,"
                                    "cache=writeback", overlay);
    }
    incoming = g_strdup_printf("tcp:%s:%d", h.dst_addr, MIGRATION_PORT);
    dst_extra[k++] = "-drive";
    dst_extra[k++] = dst_drive;
    dst_extra[k++] = "-netdev";
    dst_extra[k++] = dst_netdev;
    for (int i = 0; i < 4; i++) {
        dst_extra[k++] = common[i];
    }
    dst_extra[k++] = "-incoming";
    dst_extra[k++] = incoming;
    dst_extra[k++] = "-global";
    dst_extra[k++] = "migration.x-postcopy-ram=on";
    dst_extra[k] = NULL;
    dst = vm_start(&dst_o);
    /* cont while it waits for the stream: it runs once it has arrived */
    json_node_unref(vm_qmp(dst, "cont", NULL));
    if (nbd) {
        g_autofree char *start = g_strdup_printf(
            "{\"addr\": {\"type\": \"inet\", \"data\": {\"host\": \"%s\", "
            "\"port\": \"%d\"}}}", h.dst_addr, NBD_PORT);

        json_node_unref(vm_qmp(dst, "nbd-server-start", start));
        json_node_unref(vm_qmp(dst, "block-export-add",
                               "{\"type\": \"nbd\", \"id\": \"disk0\", "
                               "\"node-name\": \"disk0\", \"name\": "
                               "\"disk0\", \"writable\": true}"));
        mirror = g_strdup_printf("virtio0=nbd:%s:%d:exportname=disk0",
                                 h.dst_addr, NBD_PORT);
    }

    /* Move the clone while its guest writes; its monitor is the tool's */
    qmp_close(child->qmp);
    child->qmp = NULL;
    to = g_strdup_printf("tcp:%s:%d", h.dst_addr, MIGRATION_PORT);
    {
        const char *argv[] = { g_getenv("VMFORK_TOOL"), "migrate",
                               child->qmp_path, "--to", to, "--json",
                               postcopy ? "--postcopy" : nbd ? "--mirror" :
                               NULL, nbd ? mirror : NULL, NULL };

        g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL,
                                   &out, &errout, &status, NULL));
    }
    g_test_message("vmfork migrate: %s%s", out, errout);
    g_assert_true(g_spawn_check_wait_status(status, NULL));
    g_assert_true(json_parser_load_from_data(parser, out, -1, NULL));
    result = json_node_get_object(json_parser_get_root(parser));
    if (postcopy) {
        g_assert_false(json_object_get_null_member(result, "postcopy_ms"));
    }
    if (nbd) {
        json_node_unref(vm_qmp(dst, "nbd-server-stop", NULL));
    }

    /* The source clone is gone; the destination runs the same guest */
    g_assert_true(pid_wait_gone(child->pid, TIMEOUT_MS));
    /*
     * The first byte that the destination's guest gets on its serial port
     * after the migration is lost now and then: "wstat" arrived as "stat"
     * (4 of about 30 runs on 2026-12-06, builds before and after that
     * day's changes alike; not understood yet).  So an empty line goes
     * first, which the agent ignores.
     */
    vm_agent_send(dst, "%s", "");
    after = vm_writer_wait(dst, before + 20);
    g_assert_cmpuint(after, >=, before + 20);
    after = vm_writer_stop(dst);
    /*
     * Every acknowledged record (checked by vm_writer_check()), all with
     * the clone's id: one run "ID:N"
     */
    runs = vm_writer_check(dst, "/dev/vda", after);
    want = g_strdup_printf("%s:", id_c);
    g_assert_true(g_str_has_prefix(runs, want));
    g_assert_cmpuint(g_ascii_strtoull(runs + strlen(want), NULL, 10), >=,
                     after);
    mark = vm_disk_read(dst, "vda", MARK_SECTOR);
    g_assert_cmpstr(mark, ==, "before-the-fork");
    /* Its identity: clone id and VM generation ID */
    id_dst = vm_clone_id_word(dst);
    g_assert_cmpstr(id_dst, ==, id_c);
    guid_dst = vmgenid_guid(dst);
    g_assert_cmpstr(guid_dst, ==, guid_c);
    /* Its service, on the destination's forwarded port */
    banner = netns_banner(h.dst, DEST_PORT);
    g_assert_cmpstr(banner, ==, "child");
    /* The template runs on in its host */
    src_banner = netns_banner(h.src, SOURCE_PORT);
    g_assert_cmpstr(src_banner, ==, "parent");

    vm_quit(dst);
    vm_quit(parent);
    vm_cleanup_all();
    hosts_teardown(&h);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_data_func("/migrate/tcg/linux/shared-storage-precopy",
                         GINT_TO_POINTER(SHARED_STORAGE_PRECOPY),
                         test_migrate);
    g_test_add_data_func("/migrate/tcg/linux/shared-storage-postcopy",
                         GINT_TO_POINTER(SHARED_STORAGE_POSTCOPY),
                         test_migrate);
    g_test_add_data_func("/migrate/tcg/linux/nbd-mirror-precopy",
                         GINT_TO_POINTER(NBD_MIRROR_PRECOPY),
                         test_migrate);
    return g_test_run();
}
