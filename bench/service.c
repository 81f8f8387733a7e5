/*
 * vmfork-bench: clones on demand and on other hosts (the "service" spec)
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A template of the group's configuration with user networking, whose
 * guest serves TCP port 7777 (its clone id from fw_cfg, then an echo),
 * paused; two "vmfork pool"s on two monitors of it, each with a "vmfork
 * serve" in front.  Measured, each as a scenario object:
 *
 *   serve-direct-LABEL    the floor: connect -> first byte straight to one
 *                         running clone's own forward (the guest's time)
 *   serve-warm-LABEL      connect -> first byte through serve, with the
 *                         pool full (8 ready) before each connection
 *   serve-empty-LABEL     the same when the pool (size 1) has just handed
 *                         out its only child: the connection waits for
 *                         the replacement's fork
 *   serve-load-LABEL      requests (connect, first line, close) per second
 *                         sustained by 4 clients for 10 s; each request's
 *                         time
 *   pool-memory-LABEL     private memory (USS) of the ready children
 *                         (paused) and of children handed out (running
 *                         their idle guest for 2 s)
 *   first-response-{vmfork,vmfork-command,cold-boot,snapshot,
 *   snapshot-prestarted,container}-LABEL
 *                         the request for a fresh VM -> the first byte of
 *                         its guest's answer on its forwarded port: a
 *                         take from the pool (against the pre-started
 *                         peer) or a vmfork command on the template
 *                         (against the others), against booting a new QEMU,
 *                         restoring a snapshot of a running clone (a new
 *                         QEMU with -incoming file:, or a QEMU waiting
 *                         with -incoming defer), and the same service in
 *                         a container that runc starts
 *   migrate-precopy-LABEL, migrate-postcopy-LABEL
 *                         "vmfork migrate" of a running clone to a QEMU
 *                         on this host (-incoming over loopback): total
 *                         time, downtime, and for post-copy the time until
 *                         it runs at the destination
 */

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"

#define GUEST_PORT 7777
/* The guest's init serves GUEST_PORT (tests/guest/linux/init) */
#define SERVICE_ARGS "vmfork.service=" G_STRINGIFY(GUEST_PORT)
/*
 * Ports from the template's forward up: pool 0's slots 1..40, pool 1's
 * at 41, 82, 123 (step 41), destinations from 130, migration 180, the
 * container 185, a command's children 186..189, the two servers 190 and
 * 191
 */
#define PORTS 200
#define WARM_SIZE 8
#define LOAD_CLIENTS 4
#define LOAD_SECONDS 10
#define HELD 8                  /* children handed out for the memory figure */
#define STEP_MS 30000

typedef struct Service {
    const VmConfig *cfg;
    char *dir;
    char *label;
    BenchVm *tmpl;
    int base_port;              /* the template's forward; slots above */
    pid_t pool[2], serve[2];
    char *pool_path[2];
    char *serve_log[2];
    int serve_port[2];
    int next_dest_port;
} Service;

/*
 * @n consecutive ports free on 127.0.0.1, below the kernel's ephemeral
 * range: the run's own connections take their local ports from that
 * range, and one of them (or its TIME_WAIT) on a forward's port makes
 * QEMU's -netdev hostfwd fail to listen
 */
static int free_port_range(int n)
{
    g_autofree char *range = NULL;
    int lo = 32768;

    if (g_file_get_contents("/proc/sys/net/ipv4/ip_local_port_range", &range,
                            NULL, NULL)) {
        lo = atoi(range);
    }
    if (lo - n <= 10000) {
        lo = 65536;     /* a small range: anywhere, as before */
    }
    for (int tries = 0; tries < 200; tries++) {
        int base = g_random_int_range(10000, MIN(lo, 60000) - n);
        int k;
        int *fds = g_new(int, n);

        for (k = 0; k < n; k++) {
            struct sockaddr_in sin = {
                .sin_family = AF_INET,
                .sin_port = htons(base + k),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
            };

            fds[k] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (bind(fds[k], (struct sockaddr *)&sin, sizeof(sin)) < 0) {
                k++;
                break;
            }
        }
        for (int i = 0; i < k; i++) {
            close(fds[i]);
        }
        g_free(fds);
        if (k == n) {
            return base;
        }
    }
    return -1;
}

static int tcp_connect(int port)
{
    struct sockaddr_in sin = {
        .sin_family = AF_INET,
        .sin_port = htons(port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads until a newline (or timeout); the time of its first byte */
static bool read_line_timed(int fd, int timeout_ms, gint64 *first_ns,
                            GString *line)
{
    gint64 deadline = now_ns() + timeout_ms * 1000000LL;

    *first_ns = 0;
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char buf[256];
        ssize_t n;
        int left = (deadline - now_ns()) / 1000000;

        if (left <= 0 || poll(&p, 1, left) <= 0) {
            return false;
        }
        n = read(fd, buf, sizeof(buf));
        if (n <= 0) {
            return false;
        }
        if (!*first_ns) {
            *first_ns = now_ns();
        }
        g_string_append_len(line, buf, n);
        if (memchr(buf, '\n', n)) {
            return true;
        }
    }
}

/* One request on a unix socket of a pool: its reply, NULL on failure */
static JsonObject *pool_call(const char *path, const char *request)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_autoptr(GString) line = g_string_new(NULL);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autofree char *req = g_strconcat(request, "\n", NULL);
    gint64 first;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return NULL;
    }
    ok = read_line_timed(fd, STEP_MS, &first, line);
    close(fd);
    if (!ok || !json_parser_load_from_data(parser, line->str, -1, NULL) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        return NULL;
    }
    return json_object_ref(json_node_get_object(json_parser_get_root(parser)));
}

/* The "return" object of a request to pool @i, NULL on any failure */
static JsonObject *pool_request(Service *sv, int i, const char *request)
{
    g_autoptr(JsonObject) r = pool_call(sv->pool_path[i], request);

    return r && json_object_has_member(r, "return") ?
        json_object_ref(json_object_get_object_member(r, "return")) : NULL;
}

static JsonObject *pool_status(Service *sv, int i)
{
    return pool_request(sv, i, "{\"execute\": \"query-pool\"}");
}

/* The host port of a take reply's first forward, or -1 */
static int reply_port(JsonObject *ret)
{
    JsonArray *fwds = ret && json_object_has_member(ret, "hostfwds") ?
        json_object_get_array_member(ret, "hostfwds") : NULL;

    return fwds && json_array_get_length(fwds) ?
        json_object_get_int_member(json_array_get_object_element(fwds, 0),
                                   "host-port") : -1;
}

/* Ends a child taken from pool @i */
static void release(Service *sv, int i, gint64 pid)
{
    g_autofree char *rel = g_strdup_printf(
        "{\"execute\": \"release\", \"arguments\": {\"pid\": %"
        G_GINT64_FORMAT "}}", pid);
    /* Its answer comes once the child has exited; nothing in it is needed */
    g_autoptr(JsonObject) reply = pool_call(sv->pool_path[i], rel);
}

/* Until pool @i says @name is @want */
static bool pool_wait(Service *sv, int i, const char *name, gint64 want)
{
    gint64 deadline = now_ns() + STEP_MS * 1000000LL;

    while (now_ns() < deadline) {
        JsonObject *st = pool_status(sv, i);
        gint64 v = st ? json_object_get_int_member(st, name) : -1;

        if (st) {
            json_object_unref(st);
        }
        if (v == want) {
            return true;
        }
        g_usleep(2000);
    }
    return false;
}

/* The pids of pool @i's children in @state */
static GArray *pool_pids(Service *sv, int i, const char *state)
{
    GArray *pids = g_array_new(false, false, sizeof(int));
    JsonObject *st = pool_status(sv, i);
    JsonArray *a = st ? json_object_get_array_member(st, "children") : NULL;

    for (guint k = 0; a && k < json_array_get_length(a); k++) {
        JsonObject *c = json_array_get_object_element(a, k);

        if (g_str_equal(json_object_get_string_member(c, "state"), state)) {
            int pid = json_object_get_int_member(c, "pid");

            g_array_append_val(pids, pid);
        }
    }
    if (st) {
        json_object_unref(st);
    }
    return pids;
}

static bool wait_log(const char *path, const char *text, pid_t pid)
{
    gint64 deadline = now_ns() + STEP_MS * 1000000LL;

    while (now_ns() < deadline && !procs_pid_gone(pid)) {
        g_autofree char *log = NULL;

        if (g_file_get_contents(path, &log, NULL, NULL) && strstr(log, text)) {
            return true;
        }
        g_usleep(5000);
    }
    return false;
}

/* The next destination port, 130..179 from the template's forward */
static int next_dest_port(Service *sv)
{
    int port = sv->next_dest_port++;

    if (sv->next_dest_port >= sv->base_port + 180) {
        sv->next_dest_port = sv->base_port + 130;
    }
    return port;
}

static char *net_arg(int port)
{
    return g_strdup_printf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d", port,
                           GUEST_PORT);
}

static bool service_setup(Service *sv, GError **errp)
{
    g_autofree char *netdev = net_arg(sv->base_port);
    g_autofree char *qmp0 = g_strdup_printf("unix:%s/pool0.qmp,server=on,"
                                            "wait=off", sv->dir);
    g_autofree char *qmp1 = g_strdup_printf("unix:%s/pool1.qmp,server=on,"
                                            "wait=off", sv->dir);
    const char *extra[] = { "-netdev", netdev, "-device",
                            "virtio-net-pci,netdev=n0,romfile=",
                            "-qmp", qmp0, "-qmp", qmp1, NULL };
    VmSpawnOpts o = { .paused = true, .connect_qmp = true, .extra = extra,
                      .kernel_args = SERVICE_ARGS };
    g_autoptr(JsonNode) stopped = NULL;
    gint64 deadline;

    sv->tmpl = vm_spawn(sv->cfg, sv->dir, "template", &o, errp);
    if (!sv->tmpl || !vm_boot(sv->tmpl, errp)) {
        return false;
    }
    /* Paused once the service answers, so that every clone's does */
    for (deadline = now_ns() + STEP_MS * 1000000LL;;) {
        g_autoptr(GString) line = g_string_new(NULL);
        int fd = tcp_connect(sv->base_port);
        gint64 first;
        bool ok = fd >= 0 && read_line_timed(fd, 1000, &first, line);

        if (fd >= 0) {
            close(fd);
        }
        if (ok) {
            break;
        }
        if (now_ns() > deadline) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "the template's service does not answer");
            return false;
        }
        g_usleep(50000);
    }
    stopped = vm_qmp(sv->tmpl, "stop", NULL, STEP_MS, errp);
    if (!stopped) {
        return false;
    }

    /* Pool 0: warm, 8 ready, settled; pool 1: one ready */
    for (int i = 0; i < 2; i++) {
        g_autofree char *mon = g_strdup_printf("%s/pool%d.qmp", sv->dir, i);
        g_autofree char *plog = g_strdup_printf("%s/pool%d.log", sv->dir, i);
        g_autofree char *size = g_strdup_printf("%d", i ? 1 : WARM_SIZE);
        g_autofree char *listen = NULL;
        g_autofree char *gport = g_strdup_printf("%d", GUEST_PORT);
        /* The agent's port is a client socket: a file in the children */
        g_autofree char *serial = g_strdup_printf("%s/pool%d-%%p.out",
                                                  sv->dir, i);
        char *pool_argv[] = { (char *)bench_paths.vmfork_tool, "pool", mon,
                              "--listen", NULL, "--size", size,
                              "--hostfwd-step", i ? "41" : "1",
                              "--max-live", i ? "3" : "40",
                              "--serial", serial,
                              /*
                               * Pool 0 in vmfork's best pre-started mode:
                               * the template run once (its guest's code
                               * for a new VM generation ID translated),
                               * each child settled (that code run)
                               */
                              i ? NULL : "--warm", "1000", "--settle",
                              "200", NULL };
        char *serve_argv[] = { (char *)bench_paths.vmfork_tool, "serve",
                               "--listen", NULL, "--pool", NULL,
                               "--guest-port", gport, "--max-clones", "16",
                               bench_verbose ? "--verbose" : NULL, NULL };

        sv->pool_path[i] = g_strdup_printf("%s/pool%d.sock", sv->dir, i);
        pool_argv[4] = sv->pool_path[i];
        sv->pool[i] = procs_spawn(pool_argv, plog);
        if (!wait_log(plog, "listening on", sv->pool[i]) ||
            !pool_wait(sv, i, "ready", i ? 1 : WARM_SIZE)) {
            g_autofree char *text = NULL;

            g_file_get_contents(plog, &text, NULL, NULL);
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "vmfork pool %d did not fill: %s", i,
                        text ? text : "");
            return false;
        }
        sv->serve_port[i] = sv->base_port + 190 + i;
        listen = g_strdup_printf("127.0.0.1:%d", sv->serve_port[i]);
        serve_argv[3] = listen;
        serve_argv[5] = sv->pool_path[i];
        sv->serve_log[i] = g_strdup_printf("%s/serve%d.log", sv->dir, i);
        sv->serve[i] = procs_spawn(serve_argv, sv->serve_log[i]);
        if (!wait_log(sv->serve_log[i], "listening on", sv->serve[i])) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "vmfork serve %d did not start", i);
            return false;
        }
    }
    return true;
}

/* One request through serve @i: connect -> first byte (ms), or -1 */
static double request(Service *sv, int i, double *total_ms)
{
    g_autoptr(GString) line = g_string_new(NULL);
    gint64 t0 = now_ns(), first;
    int fd = tcp_connect(sv->serve_port[i]);
    bool ok = fd >= 0 && read_line_timed(fd, STEP_MS, &first, line) &&
              g_ascii_isdigit(line->str[0]);

    if (fd >= 0) {
        close(fd);
    }
    if (total_ms) {
        *total_ms = MS(now_ns() - t0);
    }
    return ok ? MS(first - t0) : -1;
}

/* The result object of scenario @what-LABEL, measured by @method */
static JsonObject *scenario(Service *sv, const char *what,
                            const char *method)
{
    g_autofree char *name = g_strdup_printf("%s-%s", what, sv->label);
    JsonObject *o = bench_base_object(name, "service", sv->cfg);

    if (method) {
        json_object_set_string_member(o, "method", method);
    }
    return o;
}

static void set_dist(JsonObject *o, const char *name, GArray *v)
{
    Dist d;

    dist_of(v, &d);
    json_object_set_member(o, name, dist_json(&d, false));
    json_object_set_int_member(o, "n", d.n);
}

static JsonObject *measure_ttfb(Service *sv, int i, int n, GError **errp)
{
    JsonObject *o = scenario(sv, i ? "serve-empty" : "serve-warm", NULL);
    g_autoptr(GArray) ttfb = g_array_new(false, false, sizeof(double));

    for (int k = 0; k < n && !procs_interrupted(); k++) {
        double ms;

        if (i == 0) {
            /* Warm: full, and the last clone released */
            if (!pool_wait(sv, 0, "ready", WARM_SIZE) ||
                !pool_wait(sv, 0, "taken", 0)) {
                g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                            "pool 0 did not refill");
                break;
            }
        } else {
            /* Empty: hand out its one ready child, connect at once */
            g_autoptr(JsonObject) ret = NULL;

            if (!pool_wait(sv, 1, "ready", 1) ||
                !pool_wait(sv, 1, "taken", 0)) {
                g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                            "pool 1 did not refill");
                break;
            }
            ret = pool_request(sv, 1, "{\"execute\": \"take\", "
                               "\"arguments\": {\"start\": false}}");
            if (ret) {
                ms = request(sv, 1, NULL);
                release(sv, 1, json_object_get_int_member(ret, "pid"));
                if (ms >= 0) {
                    g_array_append_val(ttfb, ms);
                }
                continue;
            }
        }
        ms = request(sv, i, NULL);
        if (ms >= 0) {
            g_array_append_val(ttfb, ms);
        }
    }
    if (bench_verbose) {
        /* serve's own step times, connection by connection */
        g_autofree char *log = NULL;

        g_file_get_contents(sv->serve_log[i], &log, NULL, NULL);
        g_printerr("   vmfork serve's log:\n%s", log ? log : "");
    }
    json_object_set_string_member(o, "method", i ? "pool just emptied "
                                  "(size 1)" : "pool full (8 ready)");
    set_dist(o, "ttfb_ms", ttfb);
    return o;
}

/*
 * The floor: n connections straight to one running clone's own forward
 * (no serve, no new clone each time), the guest service's own time
 */
static JsonObject *measure_direct(Service *sv, int n, GError **errp)
{
    JsonObject *o = scenario(sv, "serve-direct", "a running clone's own "
                             "host forward; one clone for all connections");
    g_autoptr(GArray) ttfb = g_array_new(false, false, sizeof(double));
    g_autoptr(JsonObject) ret = pool_request(sv, 0, "{\"execute\": "
                                             "\"take\"}");
    int port = reply_port(ret);

    if (port < 0) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "take: no clone "
                    "with a host forward");
        set_dist(o, "ttfb_ms", ttfb);
        return o;
    }
    for (int k = 0; k < n && !procs_interrupted(); k++) {
        g_autoptr(GString) line = g_string_new(NULL);
        gint64 t0 = now_ns(), first;
        int fd = tcp_connect(port);
        bool ok = fd >= 0 && read_line_timed(fd, STEP_MS, &first, line);

        if (fd >= 0) {
            close(fd);
        }
        if (ok) {
            double ms = MS(first - t0);

            g_array_append_val(ttfb, ms);
        }
        g_usleep(20000);        /* its nc forks the next listener */
    }
    release(sv, 0, json_object_get_int_member(ret, "pid"));
    set_dist(o, "ttfb_ms", ttfb);
    return o;
}

/*
 * Connects to 127.0.0.1:@port until something listens (or @deadline_ns),
 * and waits for the first byte; its time, or -1
 */
static gint64 first_byte_at(int port, gint64 deadline_ns)
{
    for (;;) {
        g_autoptr(GString) line = g_string_new(NULL);
        gint64 first = 0;
        int fd = tcp_connect(port);

        if (fd >= 0) {
            int left = (deadline_ns - now_ns()) / 1000000;
            bool ok = left > 0 && read_line_timed(fd, left, &first, line);

            close(fd);
            return ok ? first : -1;
        }
        if (now_ns() > deadline_ns) {
            return -1;
        }
        g_usleep(200);
    }
}

/* The time from @t0 to a first byte at @t1 to @ms, if one came (t1 > 0) */
static void push_first_byte(GArray *ms, gint64 t0, gint64 t1)
{
    if (t1 > 0) {
        double v = MS(t1 - t0);

        g_array_append_val(ms, v);
    }
}

/* vmfork: a take from the full pool, then its forward's first byte */
static JsonObject *first_response_vmfork(Service *sv, int n, GError **errp)
{
    JsonObject *o = scenario(sv, "first-response-vmfork", "take from a "
                             "full pool (cont) -> first byte on its own "
                             "forward");
    g_autoptr(GArray) ms = g_array_new(false, false, sizeof(double));

    for (int k = 0; k < n && !procs_interrupted(); k++) {
        g_autoptr(JsonObject) ret = NULL;
        gint64 t0, t1;

        if (!pool_wait(sv, 0, "ready", WARM_SIZE) ||
            !pool_wait(sv, 0, "taken", 0)) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "pool 0 did not refill");
            break;
        }
        t0 = now_ns();
        ret = pool_request(sv, 0, "{\"execute\": \"take\"}");
        if (!ret || reply_port(ret) < 0) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "take failed");
            break;
        }
        t1 = first_byte_at(reply_port(ret), t0 + STEP_MS * 1000000LL);
        release(sv, 0, json_object_get_int_member(ret, "pid"));
        push_first_byte(ms, t0, t1);
    }
    set_dist(o, "first_response_ms", ms);
    return o;
}

/*
 * Connects to 127.0.0.1:@port every 20 ms until one of the connections
 * gets a byte (or @deadline_ns).  A service that is not up yet refuses
 * the connection, or (behind slirp's forward) closes it or never answers
 * the SYN that slirp passed on, which slirp would only resend seconds
 * later: hence a new connection every 20 ms.  Each one stays open until it
 * ends or the first byte comes (the last RETRY_CONNS of them), so that a
 * service slower than 20 ms to answer is still seen when it answers.  The
 * time of the first byte, or -1.
 */
#define RETRY_CONNS 256
static gint64 first_byte_retry(int port, gint64 deadline_ns)
{
    struct pollfd p[RETRY_CONNS];
    gint64 next = 0, first = -1;
    int n = 0;

    while (first < 0 && now_ns() < deadline_ns) {
        struct timespec wait;
        gint64 wait_ns;

        if (now_ns() >= next) {
            int fd;

            if (n == RETRY_CONNS) {     /* the oldest makes room */
                close(p[0].fd);
                memmove(p, p + 1, --n * sizeof(*p));
            }
            fd = tcp_connect(port);
            if (fd >= 0) {
                p[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
            }
            /* No listener yet (QEMU not up): try again soon */
            next = now_ns() + (fd >= 0 ? 20000000LL : 200000LL);
        }
        wait_ns = MAX(MIN(next, deadline_ns) - now_ns(), 0);
        wait = (struct timespec){ wait_ns / 1000000000, wait_ns % 1000000000 };
        if (ppoll(p, n, &wait, NULL) <= 0) {
            continue;
        }
        for (int i = 0; i < n; i++) {
            char c;

            if (!p[i].revents) {
                continue;
            }
            if (read(p[i].fd, &c, 1) == 1) {
                first = now_ns();
                break;
            }
            close(p[i].fd);             /* ended: refused behind slirp */
            memmove(p + i, p + i + 1, (--n - i) * sizeof(*p));
            i--;
        }
    }
    while (n--) {
        close(p[n].fd);
    }
    return first;
}

/*
 * Cold boot: a new QEMU of the same configuration whose guest's init
 * starts the same service: from its spawn to the first byte on its
 * forward
 */
static JsonObject *first_response_cold(Service *sv, int n, GError **errp)
{
    JsonObject *o = scenario(sv, "first-response-cold-boot", "spawn of a "
                             "new QEMU whose guest starts the service at "
                             "boot -> first byte on its forward");
    g_autoptr(GArray) ms = g_array_new(false, false, sizeof(double));

    for (int k = 0; k < n && !procs_interrupted(); k++) {
        int port = next_dest_port(sv);
        g_autofree char *netdev = net_arg(port);
        const char *extra[] = { "-netdev", netdev, "-device",
                                "virtio-net-pci,netdev=n0,romfile=", NULL };
        VmSpawnOpts vo = { .extra = extra, .kernel_args = SERVICE_ARGS };
        BenchVm *vm;
        gint64 t1;

        vm = vm_spawn(sv->cfg, sv->dir, "cold", &vo, errp);
        if (!vm) {
            break;
        }
        t1 = first_byte_retry(port, vm->spawn_ns + 180000 * 1000000LL);
        push_first_byte(ms, vm->spawn_ns, t1);
        vm_destroy(vm);
    }
    set_dist(o, "first_response_ms", ms);
    return o;
}

/*
 * A container: the same service (the guest's busybox nc, answering with
 * an id, then an echo) as the only process of an OCI container that runc
 * starts in the host's network: from the spawn of `runc run` to the first
 * byte on its port
 */
static JsonObject *first_response_container(Service *sv, int n,
                                            GError **errp)
{
    /* (No comma in a method: scripts/bench.sh splits results.csv on them) */
    JsonObject *o = scenario(sv, "first-response-container", "spawn of "
                             "`runc run` (the guest's busybox nc as the "
                             "container's service in the host's network) -> "
                             "first byte on its port");
    g_autofree char *bundle = g_build_filename(sv->dir, "container", NULL);
    g_autofree char *log = g_build_filename(sv->dir, "container.log", NULL);
    g_autoptr(GArray) ms = g_array_new(false, false, sizeof(double));
    g_autofree char *svc = g_build_filename(bundle, "rootfs", "svc", NULL);
    const char *why = container_missing();
    int port = sv->base_port + 185;
    g_autofree char *port_s = g_strdup_printf("%d", port);

    if (why) {
        json_object_set_string_member(o, "skipped", why);
        return o;
    }
    /* As the guest's (its root file system is read-only) */
    if (!container_bundle(bundle, (const char *const[]){
                              "/bin/nc", "-ll", "-p", port_s, "-e", "/svc",
                              NULL }, true, errp) ||
        !g_file_set_contents(svc, "#!/bin/sh\necho 0\nexec cat\n", -1,
                             errp)) {
        return o;
    }
    chmod(svc, 0755);
    for (int k = 0; k < n && !procs_interrupted(); k++) {
        g_autofree char *name = g_strdup_printf("vmfork-bench-svc-%d-%d",
                                                (int)getpid(), k);
        char *argv[] = { "/usr/bin/env", "runc", "run", "--bundle", bundle,
                         name, NULL };
        gint64 t0 = now_ns(), t1;
        pid_t pid = procs_spawn(argv, log);

        t1 = pid > 0 ? first_byte_retry(port, t0 + STEP_MS * 1000000LL) : -1;
        push_first_byte(ms, t0, t1);
        container_remove(name, pid);
        if (t1 < 0) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "the container's service did not answer (see %s)",
                        log);
            break;
        }
    }
    set_dist(o, "first_response_ms", ms);
    return o;
}

/*
 * vmfork from nothing ready: a vmfork command on the paused template (its
 * own monitor, not a pool's), from its send to the first byte on the
 * child's forward; the like for like of a cold boot, a snapshot restore
 * or a container start, where the pool's take is that of a pre-started
 * peer
 */
static JsonObject *first_response_command(Service *sv, int n, GError **errp)
{
    JsonObject *o = scenario(sv, "first-response-vmfork-command", "vmfork "
                             "command on the paused template -> first byte "
                             "on the child's own forward");
    g_autoptr(GArray) ms = g_array_new(false, false, sizeof(double));

    for (int k = 0; k < n && !procs_interrupted(); k++) {
        int off = 186 + k % 4;          /* free slots (see PORTS) */
        g_autofree char *args = g_strdup_printf(
            "{\"count\": 1, \"parent\": \"paused\", \"hostfwd-offset\": "
            "%d, \"monitor\": \"%s/cmd-%%p.qmp\", \"serial\": "
            "\"%s/cmd-%%p.out\"}", off, sv->dir, sv->dir);
        g_autoptr(JsonNode) ret = NULL;
        JsonArray *children;
        gint64 t0 = now_ns(), t1, pid;

        ret = vm_qmp(sv->tmpl, "vmfork", args, STEP_MS, errp);
        children = ret ? json_object_get_array_member(
            json_node_get_object(ret), "children") : NULL;
        if (!children || !json_array_get_length(children)) {
            break;
        }
        pid = json_object_get_int_member(
            json_array_get_object_element(children, 0), "pid");
        t1 = first_byte_at(sv->base_port + off, t0 + STEP_MS * 1000000LL);
        kill(pid, SIGKILL);
        procs_wait_gone(pid, 10000);
        push_first_byte(ms, t0, t1);
    }
    set_dist(o, "first_response_ms", ms);
    return o;
}

/* Each peer's first response against vmfork's (p50 over p50) */
static void first_response_ratio(JsonObject *peer, JsonObject *vmfork)
{
    double v = json_path_num(vmfork, "first_response_ms.p50");
    double p = json_path_num(peer, "first_response_ms.p50");

    if (!isnan(v) && v > 0 && !isnan(p)) {
        json_object_set_double_member(peer, "ratio_vs_vmfork",
                                      round(p / v * 10.0) / 10.0);
    }
}

/*
 * The peers: a snapshot of a running clone (its service listening) in a
 * file, restored n times by a new QEMU (-incoming file:), and n times by
 * a QEMU started beforehand and waiting (-incoming defer, then
 * migrate-incoming): from the start, or from migrate-incoming, to the
 * first byte on its forward
 */
static void first_response_snapshot(Service *sv, int n,
                                    JsonObject **cold, JsonObject **pre,
                                    GError **errp)
{
    g_autofree char *snap = g_strdup_printf("%s/snapshot.mig", sv->dir);
    g_autofree char *file_uri = g_strdup_printf("file:%s", snap);
    g_autoptr(GArray) cold_ms = g_array_new(false, false, sizeof(double));
    g_autoptr(GArray) pre_ms = g_array_new(false, false, sizeof(double));
    g_autoptr(JsonObject) ret = pool_request(sv, 0, "{\"execute\": "
                                             "\"take\"}");

    *cold = scenario(sv, "first-response-snapshot", "a new QEMU restores "
                     "a snapshot of a running clone (-incoming file:) -> "
                     "first byte on its forward");
    *pre = scenario(sv, "first-response-snapshot-prestarted", "a QEMU "
                    "waiting with -incoming defer: migrate-incoming of the "
                    "snapshot -> first byte on its forward");
    if (!ret) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "take failed");
        goto out;
    }
    {
        /* The snapshot: the clone, its guest's service running */
        g_autoptr(GError) err = NULL;
        g_autoptr(QmpClient) q = qmp_connect_unix(
            json_object_get_string_member(ret, "monitor"), STEP_MS, &err);
        g_autofree char *args = g_strdup_printf("{\"uri\": \"%s\"}",
                                                file_uri);
        g_autoptr(JsonNode) a = NULL, b = NULL;
        gint64 deadline = now_ns() + STEP_MS * 1000000LL;
        bool done = false;

        a = q ? qmp_execute_json(q, "migrate", args, STEP_MS, &err) : NULL;
        while (a && !done && now_ns() < deadline) {
            g_autoptr(JsonNode) st = qmp_execute(q, "query-migrate", NULL,
                                                 STEP_MS, &err);
            const char *s = st ? json_object_get_string_member_with_default(
                json_node_get_object(st), "status", "") : "";

            done = g_str_equal(s, "completed");
            if (!st || g_str_equal(s, "failed")) {
                break;
            }
            g_usleep(5000);
        }
        release(sv, 0, json_object_get_int_member(ret, "pid"));
        if (!done) {
            g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "saving the "
                        "snapshot failed%s%s", err ? ": " : "",
                        err ? err->message : "");
            goto out;
        }
    }
    for (int k = 0; k < 2 * n && !procs_interrupted(); k++) {
        bool prestarted = k % 2;
        int port = next_dest_port(sv);
        g_autofree char *netdev = net_arg(port);
        const char *extra[] = { "-netdev", netdev, "-device",
                                "virtio-net-pci,netdev=n0,romfile=", NULL };
        VmSpawnOpts o = { .incoming = prestarted ? "defer" : file_uri,
                          .extra = extra, .connect_qmp = true };
        BenchVm *vm;
        gint64 t0, t1;

        vm = vm_spawn(sv->cfg, sv->dir, "peer", &o, errp);
        if (!vm) {
            break;
        }
        t0 = vm->spawn_ns;
        if (prestarted) {
            g_autofree char *args = g_strdup_printf("{\"uri\": \"%s\"}",
                                                    file_uri);
            g_autoptr(JsonNode) st = vm_qmp(vm, "query-status", NULL,
                                            STEP_MS, errp);
            g_autoptr(JsonNode) in = NULL;

            t0 = now_ns();
            in = st ? vm_qmp(vm, "migrate-incoming", args, STEP_MS, errp) :
                 NULL;
            if (!in) {
                vm_destroy(vm);
                break;
            }
        }
        /*
         * Connect once it runs, as a client of vmfork does (the take
         * answers after cont): a SYN that slirp passes to a guest still
         * loading is lost, and slirp resends it seconds later
         */
        while (now_ns() < t0 + STEP_MS * 1000000LL) {
            g_autoptr(JsonNode) st = vm_qmp(vm, "query-status", NULL,
                                            STEP_MS, NULL);

            if (!st || json_object_get_boolean_member_with_default(
                    json_node_get_object(st), "running", false)) {
                break;
            }
            g_usleep(500);
        }
        t1 = first_byte_at(port, t0 + STEP_MS * 1000000LL);
        vm_destroy(vm);
        push_first_byte(prestarted ? pre_ms : cold_ms, t0, t1);
    }
out:
    set_dist(*cold, "first_response_ms", cold_ms);
    set_dist(*pre, "first_response_ms", pre_ms);
}

typedef struct {
    Service *sv;
    gint64 end_ns;
    GArray *ms;                 /* each request's time */
    guint errors;
    GMutex *lock;
} Load;

static gpointer load_client(gpointer data)
{
    Load *l = data;

    while (now_ns() < l->end_ns && !procs_interrupted()) {
        double total;
        double ms = request(l->sv, 0, &total);

        g_mutex_lock(l->lock);
        if (ms >= 0) {
            g_array_append_val(l->ms, total);
        } else {
            l->errors++;
        }
        g_mutex_unlock(l->lock);
    }
    return NULL;
}

static JsonObject *measure_load(Service *sv)
{
    JsonObject *o = scenario(sv, "serve-load", NULL);
    GMutex lock;
    GThread *t[LOAD_CLIENTS];
    Load l = { .sv = sv, .ms = g_array_new(false, false, sizeof(double)),
               .lock = &lock };
    gint64 t0;
    double secs;
    guint n;

    g_mutex_init(&lock);
    pool_wait(sv, 0, "ready", WARM_SIZE);
    t0 = now_ns();
    l.end_ns = t0 + LOAD_SECONDS * 1000000000LL;
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        t[i] = g_thread_new("load", load_client, &l);
    }
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        g_thread_join(t[i]);
    }
    secs = MS(now_ns() - t0) / 1000.0;
    n = l.ms->len;
    json_object_set_int_member(o, "clients", LOAD_CLIENTS);
    json_object_set_double_member(o, "seconds", secs);
    json_object_set_int_member(o, "errors", l.errors);
    json_object_set_double_member(o, "requests_per_s", n / secs);
    set_dist(o, "request_ms", l.ms);
    g_array_free(l.ms, true);
    g_mutex_clear(&lock);
    return o;
}

static GArray *uss_of(GArray *pids)
{
    GArray *v = g_array_new(false, false, sizeof(double));

    for (guint i = 0; i < pids->len; i++) {
        Smaps m = smaps_read(g_array_index(pids, int, i));

        if (m.ok) {
            double kib = m.uss_kib;

            g_array_append_val(v, kib);
        }
    }
    return v;
}

static JsonObject *measure_memory(Service *sv)
{
    JsonObject *o = scenario(sv, "pool-memory", NULL);
    g_autoptr(GArray) ready = NULL, held = NULL;
    g_autoptr(GArray) uss_ready = NULL, uss_held = NULL;
    int fds[HELD];
    Smaps t;

    pool_wait(sv, 0, "taken", 0);
    pool_wait(sv, 0, "ready", WARM_SIZE);
    ready = pool_pids(sv, 0, "ready");
    uss_ready = uss_of(ready);
    for (int i = 0; i < HELD; i++) {
        g_autoptr(GString) line = g_string_new(NULL);
        gint64 first;

        fds[i] = tcp_connect(sv->serve_port[0]);
        if (fds[i] >= 0) {
            read_line_timed(fds[i], STEP_MS, &first, line);
        }
    }
    g_usleep(2 * G_USEC_PER_SEC);
    held = pool_pids(sv, 0, "taken");
    uss_held = uss_of(held);
    for (int i = 0; i < HELD; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    t = smaps_read(sv->tmpl->pid);
    set_dist(o, "clone_uss_kib", uss_ready);
    set_dist(o, "running_clone_uss_kib", uss_held);
    json_object_set_int_member(o, "template_uss_kib", t.uss_kib);
    return o;
}

/* A running clone from pool 0, moved to a QEMU on this host */
static bool migrate_once(Service *sv, bool postcopy, GArray *total,
                         GArray *downtime, GArray *running, GError **errp)
{
    g_autofree char *netdev = net_arg(sv->next_dest_port++);
    int mport = sv->base_port + 180;
    g_autofree char *incoming = g_strdup_printf("tcp:127.0.0.1:%d", mport);
    const char *extra[] = { "-netdev", netdev, "-device",
                            "virtio-net-pci,netdev=n0,romfile=", "-global",
                            "migration.x-postcopy-ram=on", NULL };
    VmSpawnOpts o = { .incoming = incoming, .extra = extra,
                      .connect_qmp = true };
    g_autoptr(JsonObject) ret = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autofree char *out = NULL, *err = NULL, *mon = NULL;
    g_autofree char *pong = NULL;
    JsonObject *res;
    BenchVm *dst;
    int status;
    bool ok = false;

    ret = pool_request(sv, 0, "{\"execute\": \"take\"}");
    if (!ret) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED, "take failed");
        return false;
    }
    mon = g_strdup(json_object_get_string_member(ret, "monitor"));
    dst = vm_spawn(sv->cfg, sv->dir, "dest", &o, errp);
    if (!dst) {
        return false;
    }
    /* Its main loop runs (it answers), so -incoming listens */
    {
        g_autoptr(JsonNode) st = vm_qmp(dst, "query-status", NULL, STEP_MS,
                                        errp);

        if (!st) {
            goto out;
        }
    }
    {
        char *argv[] = { (char *)bench_paths.vmfork_tool, "migrate", mon,
                         "--to", incoming, "--json",
                         postcopy ? "--postcopy" : NULL, NULL };

        if (!g_spawn_sync(NULL, argv, NULL, 0, NULL, NULL, &out, &err,
                          &status, errp)) {
            goto out;
        }
    }
    if (!g_spawn_check_wait_status(status, NULL) ||
        !json_parser_load_from_data(parser, out, -1, NULL)) {
        g_set_error(errp, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "vmfork migrate: %s%s", out, err);
        goto out;
    }
    res = json_node_get_object(json_parser_get_root(parser));
    /* It runs there: its agent answers */
    pong = serial_command(dst->serial, "ping", STEP_MS, errp);
    if (!pong) {
        goto out;
    }
    {
        double tot = json_object_get_double_member(res, "total_ms");
        double down = json_object_get_int_member(res, "downtime_ms");

        g_array_append_val(total, tot);
        g_array_append_val(downtime, down);
        if (postcopy && !json_object_get_null_member(res, "postcopy_ms")) {
            double run = json_object_get_double_member(res, "postcopy_ms");

            g_array_append_val(running, run);
        }
    }
    ok = true;
out:
    vm_destroy(dst);
    return ok;
}

static JsonObject *measure_migrate(Service *sv, bool postcopy, int n,
                                   GError **errp)
{
    JsonObject *o = scenario(sv, postcopy ? "migrate-postcopy" :
                             "migrate-precopy", NULL);
    g_autoptr(GArray) total = g_array_new(false, false, sizeof(double));
    g_autoptr(GArray) down = g_array_new(false, false, sizeof(double));
    g_autoptr(GArray) running = g_array_new(false, false, sizeof(double));

    for (int k = 0; k < n && !procs_interrupted(); k++) {
        if (!pool_wait(sv, 0, "ready", WARM_SIZE) ||
            !migrate_once(sv, postcopy, total, down, running, errp)) {
            break;
        }
    }
    set_dist(o, "migrate_total_ms", total);
    set_dist(o, "downtime_ms", down);
    if (postcopy) {
        set_dist(o, "running_at_dest_ms", running);
    }
    json_object_set_string_member(o, "method", "to a QEMU on this host "
                                  "over loopback; shared storage");
    json_object_set_int_member(o, "n", total->len);
    return o;
}

static void report(JsonObject *o, GError *err,
                   void (*emit)(JsonObject *, gpointer), gpointer data)
{
    if (err) {
        json_object_set_string_member(o, "error", err->message);
        g_printerr("   %s: error: %s\n",
                   json_object_get_string_member(o, "scenario"), err->message);
    }
    emit(o, data);
}

void run_service(const VmConfig *cfg, const Spec *s,
                 void (*emit)(JsonObject *, gpointer), gpointer data)
{
    Service sv = { .cfg = cfg };
    g_autoptr(GError) err = NULL;
    const char *const names[] = { "serve-warm", "serve-empty", "serve-load",
                                  "pool-memory", "migrate-precopy",
                                  "migrate-postcopy", "serve-direct",
                                  "first-response-vmfork",
                                  "first-response-snapshot",
                                  "first-response-snapshot-prestarted",
                                  "first-response-cold-boot",
                                  "first-response-container",
                                  "first-response-vmfork-command" };

    sv.label = vm_config_label(cfg);
    if (!bench_paths.vmfork_tool ||
        !g_file_test(bench_paths.vmfork_tool, G_FILE_TEST_IS_EXECUTABLE)) {
        err = g_error_new(G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "the vmfork "
                          "tool is not built (%s)", bench_paths.vmfork_tool);
    } else if ((sv.base_port = free_port_range(PORTS)) < 0) {
        err = g_error_new(G_IO_ERROR, G_IO_ERROR_FAILED, "no %d free ports "
                          "in a row", PORTS);
    }
    if (!err) {
        sv.dir = procs_make_dir(bench_paths.workdir, "vmfork-bench-svc");
        sv.next_dest_port = sv.base_port + 130;
        service_setup(&sv, &err);
    }
    if (err) {
        for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
            report(scenario(&sv, names[i], NULL), err, emit, data);
        }
        goto out;
    }
    if (!procs_interrupted()) {
        g_autoptr(GError) e = NULL;
        JsonObject *o = measure_direct(&sv, s->n, &e);

        g_printerr("   serve-direct: first byte p50 %.2f ms\n",
                   json_path_num(o, "ttfb_ms.p50"));
        report(o, e, emit, data);
    }
    for (int i = 0; i < 2 && !procs_interrupted(); i++) {
        g_autoptr(GError) e = NULL;
        JsonObject *o = measure_ttfb(&sv, i, s->n, &e);

        g_printerr("   %s: first byte p50 %.2f ms\n", names[i],
                   json_path_num(o, "ttfb_ms.p50"));
        report(o, e, emit, data);
    }
    if (!procs_interrupted()) {
        g_autoptr(GError) e = NULL, e2 = NULL, e3 = NULL, e4 = NULL;
        g_autoptr(GError) e5 = NULL;
        JsonObject *o = first_response_vmfork(&sv, s->n, &e);
        JsonObject *cmd = first_response_command(&sv, s->n, &e5);
        JsonObject *cold = NULL, *pre = NULL, *boot, *ctr;
        int np = MIN(s->n, 20);     /* medians of 20 (--quick: n) */

        g_printerr("   first-response-vmfork: p50 %.2f ms from the pool, "
                   "%.2f ms by a command\n",
                   json_path_num(o, "first_response_ms.p50"),
                   json_path_num(cmd, "first_response_ms.p50"));
        first_response_snapshot(&sv, np, &cold, &pre, &e2);
        g_printerr("   first-response-snapshot: p50 %.2f ms, prestarted "
                   "p50 %.2f ms\n",
                   json_path_num(cold, "first_response_ms.p50"),
                   json_path_num(pre, "first_response_ms.p50"));
        boot = first_response_cold(&sv, np, &e3);
        g_printerr("   first-response-cold-boot: p50 %.2f ms\n",
                   json_path_num(boot, "first_response_ms.p50"));
        ctr = first_response_container(&sv, np, &e4);
        g_printerr("   first-response-container: p50 %.2f ms\n",
                   json_path_num(ctr, "first_response_ms.p50"));
        /* Like for like: cold peers against the command, the pre-started
         * one against the pool */
        first_response_ratio(pre, o);
        for (JsonObject **peer = (JsonObject *[]){ cold, boot, ctr, NULL };
             *peer; peer++) {
            first_response_ratio(*peer, cmd);
        }
        report(o, e, emit, data);
        report(cmd, e5, emit, data);
        report(cold, e2, emit, data);
        report(pre, NULL, emit, data);
        report(boot, e3, emit, data);
        report(ctr, e4, emit, data);
    }
    if (!procs_interrupted()) {
        JsonObject *o = measure_load(&sv);

        g_printerr("   serve-load: %.1f requests/s\n",
                   json_object_get_double_member(o, "requests_per_s"));
        report(o, NULL, emit, data);
    }
    if (!procs_interrupted()) {
        report(measure_memory(&sv), NULL, emit, data);
    }
    for (int pc = 0; pc < 2 && !procs_interrupted(); pc++) {
        g_autoptr(GError) e = NULL;
        JsonObject *o = measure_migrate(&sv, pc, MAX(s->n / 3, 3), &e);

        g_printerr("   %s: total p50 %.1f ms, downtime p50 %.1f ms%s\n",
                   names[4 + pc], json_path_num(o, "migrate_total_ms.p50"),
                   json_path_num(o, "downtime_ms.p50"), pc ? "" : "");
        report(o, e, emit, data);
    }
out:
    for (int i = 0; i < 2; i++) {
        if (sv.serve[i] > 0) {
            procs_kill_group(sv.serve[i]);
        }
        if (sv.pool[i] > 0) {
            procs_kill_group(sv.pool[i]);
        }
        g_free(sv.pool_path[i]);
        g_free(sv.serve_log[i]);
    }
    if (sv.tmpl) {
        vm_destroy(sv.tmpl);
    }
    if (sv.dir) {
        procs_remove_dir(sv.dir);
    }
    g_free(sv.dir);
    g_free(sv.label);
}
