/*
 * vmfork pool: keep pre-forked children of a template VM ready and hand
 * them out on request.
 *
 *   vmfork pool SOCKET [--listen POOL] [--size N] [--max-live N] ...
 *   vmfork take POOL [--no-start] [--wait MS] [--json]
 *   vmfork release POOL PID
 *   vmfork pool-status POOL [--json]
 *
 * The pool is one process with a GLib main loop.  It holds the template's
 * QMP monitor (libqmp's async client), forks each child with its own
 * "vmfork" command (start: false, so that per-child templates and
 * host-forward offsets never collide), connects to each child's monitor
 * once VMFORK_CHILD_READY comes, and only then counts it as ready.  Taking
 * a child is a "cont" on that connection, which the pool then closes so
 * that the taker can connect; a replacement is forked at once.
 *
 * The protocol on POOL (a unix socket) is QMP-shaped JSON, one object per
 * line each way; docs/pool.md is its reference.
 *
 * A child is in exactly one state and leaves the pool's ready queue before
 * anything is sent to it, so it is never handed out twice; it is dropped
 * only on its VMFORK_CHILD_EXITED event, so the pool never signals a pid
 * that may have been reused.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib-unix.h>
#include <qmp/async.h>
#include <qmp/adapters/glib.h>

#include "vmfork-tool.h"

#define POOL_MAX_LINE (64 * 1024)       /* longest request line */
#define POOL_SAMPLES 4096               /* latencies kept for percentiles */
#define POOL_RETRY_MS 1000              /* after a failed fork */
#define POOL_CHILD_TIMEOUT_MS 10000     /* fork to ready, cont, connect */
#define POOL_RELEASE_KILL_MS 5000       /* SIGTERM, then SIGKILL */

/* ---- the pool's state --------------------------------------------------- */

typedef enum {
    CHILD_STARTING,     /* forked, waiting for its READY event */
    CHILD_CONNECTING,   /* ready; connecting to its monitor */
    CHILD_SETTLING,     /* --settle: its guest runs, then "stop" */
    CHILD_READY,        /* paused, monitor connected: in the ready queue */
    CHILD_TAKING,       /* taken off the queue; "cont" sent for a request */
    CHILD_TAKEN,        /* handed out */
    CHILD_RELEASING,    /* signalled by "release" */
    CHILD_DEAD,         /* failed in the pool; killed, waiting for EXITED */
} ChildState;

static const char *const child_state_names[] = {
    [CHILD_STARTING] = "starting",
    [CHILD_CONNECTING] = "connecting",
    [CHILD_SETTLING] = "settling",
    [CHILD_READY] = "ready",
    [CHILD_TAKING] = "taking",
    [CHILD_TAKEN] = "taken",
    [CHILD_RELEASING] = "releasing",
    [CHILD_DEAD] = "dead",
};

typedef struct Pool Pool;
typedef struct Conn Conn;
typedef struct Request Request;

typedef struct {
    Pool *pool;
    gint64 pid;
    gint64 clone_id;
    char *monitor;
    JsonNode *info;             /* its entry in vmfork's reply */
    int slot;                   /* host-forward slot, 0 for none */
    ChildState state;
    QmpAsyncClient *qmp;        /* its monitor, while in the pool */
    gint64 forked_us;           /* when its vmfork command was sent */
    Request *req;               /* TAKING: the take; RELEASING: the release */
    guint timer;                /* a deadline for the current state */
} Child;

typedef struct {
    double v[POOL_SAMPLES];
    guint n;                    /* samples in v (at most POOL_SAMPLES) */
    guint next;                 /* ring position */
    guint64 count;              /* all samples ever */
} Samples;

struct Pool {
    GMainLoop *loop;
    QmpAsyncClient *tmpl;
    char *template_path;
    char *listen_path;
    int size;
    int max_live;               /* 0: no limit */
    int hostfwd_step;           /* 0: children have no host forwards */
    int take_wait_ms;           /* default "wait-ms" of a take */
    int settle_ms;              /* how long a new child's guest runs */
    int warm_ms;                /* --warm: how long a paused template runs */
    JsonObject *fork_args;      /* vmfork's arguments but hostfwd-offset */

    GHashTable *children;       /* pid -> Child */
    GQueue ready;               /* Child, the longest ready first */
    GQueue waiting;             /* Request (take), oldest first */
    GHashTable *early_ready;    /* pids whose READY came before the reply */
    GHashTable *early_exited;   /* pid -> status, EXITED before the reply */
    GArray *slots;              /* gboolean, slot i in use (0 unused) */
    int forking;                /* vmfork commands outstanding */
    gboolean warming;           /* --warm: the template runs for it */
    guint retry_source;
    GList *conns;               /* Conn */
    GSocketService *service;
    gboolean stopping;
    guint stop_timer;
    int exit_code;

    /* For pool-status */
    guint64 forked, fork_failures, served, released, died_ready, exited;
    guint64 take_timeouts;
    char *last_error;
    Samples take_ms, ready_ms;
};

/* A client connection of the pool's socket. */
struct Conn {
    Pool *pool;
    int refs;
    GSocketConnection *connection;
    GSocket *socket;
    GSource *in_source, *out_source;
    GString *in, *out;
    GQueue requests;            /* Request: the one being served, or none */
    gboolean closed;
    gboolean eof;               /* the client shut down its side: it only
                                 * waits for the replies (echo | socat) */
    gboolean write_failed;      /* a reply could not be sent */
    GSource *hup_source;        /* after eof: the client going entirely */
    gboolean in_next;           /* within conn_next() */
};

struct Request {
    Conn *conn;
    JsonNode *id;               /* nullable */
    char *command;
    JsonObject *args;           /* never NULL */
    gint64 received_us;
    gint64 deadline_us;         /* take: until when it may wait */
    guint timer;                /* take: while it waits for a ready child */
    gboolean queued;            /* in pool->waiting */
    gint64 pid;                 /* release: the child */
};

static void pool_refill(Pool *pool);
static void pool_serve_waiting(Pool *pool);
static void request_done(Request *req, JsonNode *ret, const char *err_class,
                         const char *fmt, ...) G_GNUC_PRINTF(4, 5);
static void conn_next(Conn *conn);
static void pool_maybe_finish_stop(Pool *pool);
static void take_start(Request *req);
static gboolean take_timed_out(gpointer data);

static void samples_add(Samples *s, double v)
{
    s->v[s->next] = v;
    s->next = (s->next + 1) % POOL_SAMPLES;
    s->n = MIN(s->n + 1, POOL_SAMPLES);
    s->count++;
}

static int compare_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* {"count", "p50", "p99", "max"} of the samples kept; nulls when none. */
static void samples_add_json(JsonBuilder *b, const char *name,
                             const Samples *s)
{
    g_autofree double *v = g_memdup2(s->v, s->n * sizeof(double));
    const char *names[] = { "p50", "p99", "max" };
    const double q[] = { 0.50, 0.99, 1.0 };

    qsort(v, s->n, sizeof(double), compare_double);
    json_builder_set_member_name(b, name);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "count");
    json_builder_add_int_value(b, s->count);
    for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
        json_builder_set_member_name(b, names[i]);
        if (s->n) {
            /* Nearest rank */
            guint rank = (guint)(q[i] * s->n + 0.999999);

            json_builder_add_double_value(b, v[MAX(rank, 1) - 1]);
        } else {
            json_builder_add_null_value(b);
        }
    }
    json_builder_end_object(b);
}

static void pool_set_error(Pool *pool, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

/* Records a problem; printed unless it is the same as the last one */
static void pool_set_error(Pool *pool, const char *fmt, ...)
{
    va_list ap;
    char *text;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (g_strcmp0(text, pool->last_error)) {
        g_printerr("vmfork pool: %s\n", text);
    }
    g_free(pool->last_error);
    pool->last_error = text;
}

/* ---- host-forward slots ------------------------------------------------- */

static int slot_get(Pool *pool)
{
    gboolean used = TRUE;
    guint i;

    for (i = 1; i < pool->slots->len; i++) {
        if (!g_array_index(pool->slots, gboolean, i)) {
            break;
        }
    }
    if (i == pool->slots->len) {
        g_array_set_size(pool->slots, i + 1);
    }
    g_array_index(pool->slots, gboolean, i) = used;
    return i;
}

static void slot_put(Pool *pool, int slot)
{
    if (slot > 0) {
        g_array_index(pool->slots, gboolean, slot) = FALSE;
    }
}

/* ---- children ----------------------------------------------------------- */

static guint pool_count(Pool *pool, ChildState state)
{
    GHashTableIter it;
    gpointer value;
    guint n = 0;

    g_hash_table_iter_init(&it, pool->children);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        n += ((Child *)value)->state == state;
    }
    return n;
}

/* Children on their way into the pool: forking, starting, connecting or
 * settling */
static guint pool_starting(Pool *pool)
{
    return pool_count(pool, CHILD_STARTING) +
           pool_count(pool, CHILD_CONNECTING) +
           pool_count(pool, CHILD_SETTLING) + pool->forking;
}

/* Every child of the pool alive or being forked, handed out or not */
static guint pool_live(Pool *pool)
{
    return g_hash_table_size(pool->children) + pool->forking;
}

static void child_clear_timer(Child *c)
{
    if (c->timer) {
        g_source_remove(c->timer);
        c->timer = 0;
    }
}

static void child_close_monitor(Child *c)
{
    QmpAsyncClient *qmp = c->qmp;

    if (qmp) {
        c->qmp = NULL;
        qmp_async_client_free(qmp);
    }
}

static void child_free(gpointer data)
{
    Child *c = data;

    child_clear_timer(c);
    child_close_monitor(c);
    slot_put(c->pool, c->slot);
    g_free(c->monitor);
    if (c->info) {
        json_node_unref(c->info);
    }
    g_free(c);
}

/*
 * Removes the qcow2 overlays that vmfork made for a child (its reply
 * entry's "overlays"), once the child is one that the pool ended: nobody
 * will read its disks again.
 */
static void remove_overlays(Pool *pool, JsonObject *entry)
{
    JsonNode *node = json_object_get_member(entry, "overlays");
    JsonArray *paths = node && JSON_NODE_HOLDS_ARRAY(node) ?
                       json_node_get_array(node) : NULL;

    for (guint i = 0; paths && i < json_array_get_length(paths); i++) {
        const char *path = json_array_get_string_element(paths, i);

        if (path && unlink(path) < 0 && errno != ENOENT) {
            pool_set_error(pool, "cannot remove %s: %s", path,
                           g_strerror(errno));
        }
    }
}

/*
 * The child failed while the pool holds it (no READY in time, its monitor
 * gone, "cont" failed): kill it.  Its pid is still ours, since its EXITED
 * event has not come; that event drops it.
 */
static void child_kill(Child *c, const char *why)
{
    Pool *pool = c->pool;

    ChildState was = c->state;

    if (was == CHILD_DEAD) {
        return;
    }
    if (was == CHILD_READY) {
        g_queue_remove(&pool->ready, c);
    }
    if (why) {
        pool_set_error(pool, "child %" G_GINT64_FORMAT " (%s): %s; killing "
                       "it", c->pid, child_state_names[was], why);
        if (was == CHILD_STARTING || was == CHILD_CONNECTING ||
            was == CHILD_SETTLING || was == CHILD_READY) {
            pool->died_ready++;
        }
    }
    /* Dead first: closing its monitor runs its callbacks, which check */
    c->state = CHILD_DEAD;
    child_clear_timer(c);
    child_close_monitor(c);
    kill(c->pid, SIGKILL);
}

static gboolean child_timed_out(gpointer data)
{
    Child *c = data;

    c->timer = 0;
    child_kill(c, "timed out");
    pool_refill(c->pool);
    return G_SOURCE_REMOVE;
}

static void child_set_timer(Child *c, int ms)
{
    child_clear_timer(c);
    c->timer = g_timeout_add(ms, child_timed_out, c);
}

static void on_child_disconnect(QmpAsyncClient *qmp, const GError *error,
                                gpointer data)
{
    Child *c = data;

    /* c->qmp is NULL once the pool closed the monitor itself */
    if (c->qmp == qmp && error && !c->pool->stopping) {
        /* Freed from within its callback: libqmp allows it */
        child_kill(c, "its monitor closed");
        pool_refill(c->pool);
    }
}

/* Into the ready queue, paused with its monitor connected */
static void child_put_ready(Child *c)
{
    Pool *pool = c->pool;

    child_clear_timer(c);
    c->state = CHILD_READY;
    samples_add(&pool->ready_ms,
                (g_get_monotonic_time() - c->forked_us) / 1000.0);
    g_queue_push_tail(&pool->ready, c);
    if (pool->stopping) {
        child_kill(c, NULL);
        return;
    }
    pool_serve_waiting(pool);
}

/*
 * --settle: the child was forked running; its guest has had the time to
 * take in that it is a clone (with vmgenid, Linux handles the new VM
 * generation ID and reseeds its RNG), so that a take's "cont" lets it go
 * on at once.  Now it stops and is ready.
 */
static void on_settled(QmpAsyncClient *qmp G_GNUC_UNUSED,
                       JsonNode *result G_GNUC_UNUSED, const GError *error,
                       gpointer data)
{
    Child *c = data;

    if (c->state != CHILD_SETTLING) {
        return;     /* killed meanwhile */
    }
    if (error) {
        g_autofree char *why = g_strdup_printf("stop failed: %s",
                                               error->message);

        child_kill(c, why);
        pool_refill(c->pool);
        return;
    }
    child_put_ready(c);
}

static gboolean child_settle_done(gpointer data)
{
    Child *c = data;
    g_autoptr(GError) err = NULL;

    c->timer = 0;
    child_set_timer(c, POOL_CHILD_TIMEOUT_MS);
    if (!qmp_async_client_execute(c->qmp, "stop", NULL, POOL_CHILD_TIMEOUT_MS,
                                  on_settled, c, &err)) {
        on_settled(c->qmp, NULL, err, c);
    }
    return G_SOURCE_REMOVE;
}

static void child_settle(Child *c)
{
    child_clear_timer(c);
    c->state = CHILD_SETTLING;
    c->timer = g_timeout_add(c->pool->settle_ms, child_settle_done, c);
}

static void on_child_connected(QmpAsyncClient *qmp, const GError *error,
                               gpointer data)
{
    Child *c = data;
    Pool *pool = c->pool;

    if (c->qmp != qmp) {
        return;     /* the pool closed it: the child is gone or dying */
    }
    if (error) {
        g_autofree char *why = g_strdup_printf("cannot connect to its "
                                               "monitor %s: %s", c->monitor,
                                               error->message);
        child_kill(c, why);
        pool_refill(pool);
        return;
    }
    if (pool->settle_ms) {
        child_settle(c);
        return;
    }
    child_put_ready(c);
}

/* Its READY event came: connect to its monitor. */
static void child_ready(Child *c)
{
    g_autoptr(GError) err = NULL;

    if (c->state != CHILD_STARTING) {
        return;
    }
    c->state = CHILD_CONNECTING;
    c->qmp = qmp_async_client_new();
    qmp_glib_attach(c->qmp, NULL);
    qmp_async_client_set_disconnect_callback(c->qmp, on_child_disconnect, c);
    if (!qmp_async_client_connect_unix(c->qmp, c->monitor, NULL,
                                       POOL_CHILD_TIMEOUT_MS,
                                       on_child_connected, c, &err)) {
        g_autofree char *why = g_strdup_printf("cannot connect to its "
                                               "monitor %s: %s", c->monitor,
                                               err->message);
        child_kill(c, why);
        pool_refill(c->pool);
    }
}

/* Its EXITED event came: drop it. */
static void child_exited(Child *c, gint64 status)
{
    Pool *pool = c->pool;
    Request *req = c->req;

    pool->exited++;
    /* A child handed out is its taker's, and so are its disks; the others'
     * go before a release is answered */
    if (c->state != CHILD_TAKEN) {
        remove_overlays(pool, json_node_get_object(c->info));
    }
    switch (c->state) {
    case CHILD_READY:
        g_queue_remove(&pool->ready, c);
        /* fall through */
    case CHILD_STARTING:
    case CHILD_CONNECTING:
    case CHILD_SETTLING:
        pool->died_ready++;
        pool_set_error(pool, "child %" G_GINT64_FORMAT " exited with status "
                       "%" G_GINT64_FORMAT " while in the pool", c->pid,
                       status);
        break;
    case CHILD_TAKING:
        /* Its "cont" fails with the monitor: the take goes on without it */
        req = c->req;
        c->req = NULL;
        c->state = CHILD_DEAD;
        child_close_monitor(c);
        take_start(req);
        break;
    case CHILD_RELEASING: {
        g_autoptr(JsonBuilder) b = json_builder_new();
        g_autoptr(JsonNode) ret = NULL;

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "pid");
        json_builder_add_int_value(b, c->pid);
        json_builder_set_member_name(b, "status");
        json_builder_add_int_value(b, status);
        json_builder_end_object(b);
        ret = json_builder_get_root(b);
        c->req = NULL;
        pool->released++;
        request_done(req, ret, NULL, NULL);
        break;
    }
    case CHILD_TAKEN:
    case CHILD_DEAD:
        break;
    }
    g_hash_table_remove(pool->children, &c->pid);
    pool_refill(pool);
    pool_maybe_finish_stop(pool);
}

/* ---- forking ------------------------------------------------------------ */

static gboolean pool_retry(gpointer data)
{
    Pool *pool = data;

    pool->retry_source = 0;
    pool_refill(pool);
    return G_SOURCE_REMOVE;
}

typedef struct {
    Pool *pool;
    int slot;
    gint64 sent_us;
} ForkCall;

static void on_forked(QmpAsyncClient *qmp G_GNUC_UNUSED, JsonNode *result,
                      const GError *error, gpointer data)
{
    ForkCall *call = data;
    Pool *pool = call->pool;
    JsonArray *children = NULL;
    JsonNode *node;
    JsonObject *o;
    gpointer status;
    const char *monitor;
    gint64 pid, clone_id;
    Child *c;

    pool->forking--;
    if (result && JSON_NODE_HOLDS_OBJECT(result)) {
        node = json_object_get_member(json_node_get_object(result),
                                      "children");
        children = node && JSON_NODE_HOLDS_ARRAY(node) ?
                   json_node_get_array(node) : NULL;
    }
    if (error || !children || json_array_get_length(children) != 1 ||
        !JSON_NODE_HOLDS_OBJECT(json_array_get_element(children, 0))) {
        slot_put(pool, call->slot);
        pool->fork_failures++;
        pool_set_error(pool, "vmfork failed: %s", error ? error->message :
                       "unexpected reply");
        if (!pool->retry_source && !pool->stopping) {
            pool->retry_source = g_timeout_add(POOL_RETRY_MS, pool_retry,
                                               pool);
        }
        g_free(call);
        pool_maybe_finish_stop(pool);
        return;
    }
    node = json_array_get_element(children, 0);
    o = json_node_get_object(node);
    if (!tool_json_get_int(o, "pid", &pid) ||
        !tool_json_get_int(o, "clone-id", &clone_id) ||
        !tool_json_get_string(o, "monitor", &monitor)) {
        slot_put(pool, call->slot);
        g_free(call);
        pool_set_error(pool, "vmfork: a child without pid, clone-id or "
                       "monitor in the reply");
        return;
    }
    c = g_new0(Child, 1);
    c->pool = pool;
    c->pid = pid;
    c->clone_id = clone_id;
    c->monitor = g_strdup(monitor);
    c->slot = call->slot;
    c->forked_us = call->sent_us;
    c->info = json_node_ref(node);
    c->state = CHILD_STARTING;
    g_free(call);
    pool->forked++;
    g_hash_table_insert(pool->children, &c->pid, c);
    if (g_hash_table_lookup_extended(pool->early_exited, &c->pid, NULL,
                                     &status)) {
        g_hash_table_remove(pool->early_exited, &c->pid);
        child_exited(c, GPOINTER_TO_INT(status));
        return;
    }
    child_set_timer(c, POOL_CHILD_TIMEOUT_MS);
    if (g_hash_table_remove(pool->early_ready, &c->pid)) {
        child_ready(c);
    }
    if (pool->stopping) {
        child_kill(c, NULL);
    }
}

/* A new copy of the arguments of the pool's vmfork commands */
static JsonObject *fork_args_new(Pool *pool)
{
    JsonObject *args = json_object_new();
    GList *members = json_object_get_members(pool->fork_args);

    for (GList *m = members; m; m = m->next) {
        json_object_set_member(args, m->data, json_node_copy(
            json_object_get_member(pool->fork_args, m->data)));
    }
    g_list_free(members);
    return args;
}

/* Forks children until the pool is full (one vmfork command each). */
static void pool_refill(Pool *pool)
{
    guint in_pool, live;

    if (pool->stopping || pool->retry_source || pool->warming ||
        !qmp_async_client_is_connected(pool->tmpl)) {
        return;
    }
    in_pool = pool_starting(pool) + g_queue_get_length(&pool->ready);
    live = pool_live(pool);
    while (in_pool < (guint)pool->size &&
           (!pool->max_live || live < (guint)pool->max_live)) {
        g_autoptr(JsonObject) args = fork_args_new(pool);
        g_autoptr(GError) err = NULL;
        ForkCall *call = g_new0(ForkCall, 1);

        call->pool = pool;
        if (pool->hostfwd_step) {
            call->slot = slot_get(pool);
            json_object_set_int_member(args, "hostfwd-offset",
                                       (gint64)pool->hostfwd_step *
                                       call->slot);
        }
        call->sent_us = g_get_monotonic_time();
        if (!qmp_async_client_execute(pool->tmpl, "vmfork", args, -1,
                                      on_forked, call, &err)) {
            slot_put(pool, call->slot);
            g_free(call);
            return;     /* the template's disconnect callback follows */
        }
        pool->forking++;
        in_pool++;
        live++;
    }
}

/* ---- the template's monitor --------------------------------------------- */

static void on_template_event(QmpAsyncClient *qmp G_GNUC_UNUSED, JsonNode *event,
                              gpointer data)
{
    Pool *pool = data;
    const char *name = qmp_event_name(event);
    JsonObject *d = qmp_event_data(event);
    gint64 pid, status = -1;
    Child *c;

    if (!name || !d || !tool_json_get_int(d, "pid", &pid)) {
        return;
    }
    c = g_hash_table_lookup(pool->children, &pid);
    if (g_str_equal(name, EVENT_READY)) {
        if (c) {
            child_ready(c);
        } else if (pool->forking) {
            g_hash_table_add(pool->early_ready, g_memdup2(&pid, sizeof(pid)));
        }
    } else if (g_str_equal(name, EVENT_EXITED)) {
        tool_json_get_int(d, "status", &status);
        g_hash_table_remove(pool->early_ready, &pid);
        if (c) {
            child_exited(c, status);
        } else if (pool->forking) {
            g_hash_table_insert(pool->early_exited,
                                g_memdup2(&pid, sizeof(pid)),
                                GINT_TO_POINTER((int)status));
        }
    }
}

static void pool_stop(Pool *pool, int exit_code);

static void on_template_disconnect(QmpAsyncClient *qmp G_GNUC_UNUSED,
                                   const GError *error,
                                   gpointer data)
{
    Pool *pool = data;

    if (!pool->stopping) {
        pool_set_error(pool, "the template's monitor %s closed%s%s",
                       pool->template_path, error ? ": " : "",
                       error ? error->message : "");
        pool_stop(pool, TOOL_EXIT_IO);
    }
}

/* ---- requests ----------------------------------------------------------- */

static void conn_unref(Conn *conn);

static void request_free(Request *req)
{
    if (req->timer) {
        g_source_remove(req->timer);
    }
    if (req->id) {
        json_node_unref(req->id);
    }
    g_free(req->command);
    json_object_unref(req->args);
    g_free(req);
}

static void conn_write(Conn *conn, const char *text);

/*
 * Answers @req with @ret, or with an error when @err_class is set, and
 * frees it.  A take whose reply cannot be delivered (its connection
 * closed) has its child killed: nobody has it.
 */
static void request_done(Request *req, JsonNode *ret, const char *err_class,
                         const char *fmt, ...)
{
    Conn *conn = req->conn;
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) root = NULL;
    g_autofree char *text = NULL;

    json_builder_begin_object(b);
    if (err_class) {
        va_list ap;
        g_autofree char *desc = NULL;

        va_start(ap, fmt);
        desc = g_strdup_vprintf(fmt, ap);
        va_end(ap);
        json_builder_set_member_name(b, "error");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "class");
        json_builder_add_string_value(b, err_class);
        json_builder_set_member_name(b, "desc");
        json_builder_add_string_value(b, desc);
        json_builder_end_object(b);
    } else {
        json_builder_set_member_name(b, "return");
        json_builder_add_value(b, json_node_copy(ret));
    }
    if (req->id) {
        json_builder_set_member_name(b, "id");
        json_builder_add_value(b, json_node_copy(req->id));
    }
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    text = json_to_string(root, FALSE);
    if (req->queued) {
        g_queue_remove(&conn->pool->waiting, req);
    }
    g_queue_remove(&conn->requests, req);
    request_free(req);
    if (!conn->closed) {
        conn_write(conn, text);
        conn_next(conn);
    }
    conn_unref(conn);
}

/* The take reply: the child's entry of vmfork's reply, and more. */
static JsonNode *take_reply(Child *c, Request *req)
{
    JsonNode *ret = json_node_copy(c->info);
    JsonObject *o = json_node_get_object(ret);

    json_object_set_boolean_member(o, "running",
                                   json_object_get_boolean_member_with_default(
                                       req->args, "start", TRUE));
    if (c->slot) {
        json_object_set_int_member(o, "hostfwd-offset",
                                   (gint64)c->pool->hostfwd_step * c->slot);
    }
    json_object_set_double_member(o, "take-ms",
                                  (g_get_monotonic_time() - req->received_us)
                                  / 1000.0);
    return ret;
}

static void take_give(Child *c, Request *req)
{
    Pool *pool = c->pool;
    g_autoptr(JsonNode) ret = NULL;
    Conn *conn = req->conn;

    /* Let go of its monitor, so that the taker can connect */
    child_close_monitor(c);
    child_clear_timer(c);
    c->req = NULL;
    ret = take_reply(c, req);
    if (conn->closed) {
        /* Nobody to hand it to */
        c->state = CHILD_DEAD;
        kill(c->pid, SIGKILL);
        request_done(req, NULL, "GenericError", "closed");
        return;
    }
    c->state = CHILD_TAKEN;
    pool->served++;
    samples_add(&pool->take_ms, (g_get_monotonic_time() - req->received_us)
                / 1000.0);
    conn->refs++;
    request_done(req, ret, NULL, NULL);
    if (conn->write_failed && c->state == CHILD_TAKEN) {
        /* The reply did not get out: nobody has it */
        c->state = CHILD_DEAD;
        pool->served--;
        kill(c->pid, SIGKILL);
    }
    conn_unref(conn);
}

static void on_cont(QmpAsyncClient *qmp G_GNUC_UNUSED, JsonNode *result G_GNUC_UNUSED,
                    const GError *error, gpointer data)
{
    Child *c = data;
    Pool *pool = c->pool;
    Request *req = c->req;

    if (!req) {
        return;     /* it exited meanwhile, and the take went on */
    }
    if (error) {
        g_autofree char *why = g_strdup_printf("cont failed: %s",
                                               error->message);

        c->req = NULL;
        child_kill(c, why);
        /* The next ready child, for the same request */
        take_start(req);
        pool_refill(pool);
        return;
    }
    take_give(c, req);
}

/* Takes the longest-ready child for @req, or queues @req. */
static void take_start(Request *req)
{
    Pool *pool = req->conn->pool;
    Child *c;

    if (pool->stopping) {
        request_done(req, NULL, "GenericError", "the pool is stopping");
        return;
    }
    if (req->conn->closed) {
        request_done(req, NULL, "GenericError", "closed");
        return;
    }
    c = g_queue_pop_head(&pool->ready);
    if (!c) {
        if (!req->queued) {
            req->queued = TRUE;
            g_queue_push_tail(&pool->waiting, req);
        }
        if (!req->timer) {
            /* Also again, after a child that failed its cont */
            gint64 left = req->deadline_us - g_get_monotonic_time();

            req->timer = g_timeout_add(MAX(left, 0) / 1000, take_timed_out,
                                       req);
        }
        return;
    }
    if (req->queued) {
        g_queue_remove(&pool->waiting, req);
        req->queued = FALSE;
    }
    /* It has its child: no more waiting (the child's own timer runs) */
    if (req->timer) {
        g_source_remove(req->timer);
        req->timer = 0;
    }
    c->state = CHILD_TAKING;
    c->req = req;
    if (json_object_get_boolean_member_with_default(req->args, "start",
                                                    TRUE)) {
        g_autoptr(GError) err = NULL;

        child_set_timer(c, POOL_CHILD_TIMEOUT_MS);
        if (!qmp_async_client_execute(c->qmp, "cont", NULL,
                                      POOL_CHILD_TIMEOUT_MS, on_cont, c,
                                      &err)) {
            on_cont(c->qmp, NULL, err, c);
        }
    } else {
        take_give(c, req);
    }
    pool_refill(pool);
}

static void pool_serve_waiting(Pool *pool)
{
    while (pool->ready.length && pool->waiting.length) {
        take_start(g_queue_peek_head(&pool->waiting));
    }
}

static gboolean take_timed_out(gpointer data)
{
    Request *req = data;
    Pool *pool = req->conn->pool;
    guint live = pool_live(pool);
    gint64 wait_ms = json_object_get_int_member_with_default(
        req->args, "wait-ms", pool->take_wait_ms);
    g_autofree char *why = NULL;

    req->timer = 0;
    pool->take_timeouts++;
    if (pool->max_live && live >= (guint)pool->max_live) {
        why = g_strdup_printf("; %u clones live, the pool's --max-live",
                              live);
    } else if (pool->last_error) {
        why = g_strdup_printf("; the last problem: %s", pool->last_error);
    }
    request_done(req, NULL, "Timeout", "no clone was ready within %"
                 G_GINT64_FORMAT " ms%s", wait_ms, why ? why : "");
    return G_SOURCE_REMOVE;
}

static void cmd_take_request(Request *req)
{
    Pool *pool = req->conn->pool;
    JsonNode *start = json_object_get_member(req->args, "start");
    JsonNode *wait = json_object_get_member(req->args, "wait-ms");
    gint64 wait_ms = pool->take_wait_ms;

    if (start && (!JSON_NODE_HOLDS_VALUE(start) ||
                  json_node_get_value_type(start) != G_TYPE_BOOLEAN)) {
        request_done(req, NULL, "GenericError", "'start' must be a boolean");
        return;
    }
    if (wait) {
        if (!JSON_NODE_HOLDS_VALUE(wait) ||
            json_node_get_value_type(wait) != G_TYPE_INT64 ||
            json_node_get_int(wait) < 0 ||
            json_node_get_int(wait) > G_MAXINT) {
            request_done(req, NULL, "GenericError", "'wait-ms' must be an "
                         "integer from 0 to %d", G_MAXINT);
            return;
        }
        wait_ms = json_node_get_int(wait);
    }
    req->deadline_us = req->received_us + wait_ms * 1000;
    take_start(req);
}

static void cmd_release_request(Request *req)
{
    Pool *pool = req->conn->pool;
    JsonNode *pid = json_object_get_member(req->args, "pid");
    Child *c;

    if (!pid || !JSON_NODE_HOLDS_VALUE(pid) ||
        json_node_get_value_type(pid) != G_TYPE_INT64) {
        request_done(req, NULL, "GenericError", "'pid' (an integer) is "
                     "required");
        return;
    }
    req->pid = json_node_get_int(pid);
    c = g_hash_table_lookup(pool->children, &req->pid);
    if (!c || (c->state != CHILD_TAKEN && c->state != CHILD_RELEASING)) {
        request_done(req, NULL, "DeviceNotFound", "pid %" G_GINT64_FORMAT
                     " is not a clone this pool handed out, or it has "
                     "exited", req->pid);
        return;
    }
    if (c->state == CHILD_RELEASING) {
        request_done(req, NULL, "GenericError", "pid %" G_GINT64_FORMAT
                     " is being released already", req->pid);
        return;
    }
    /* SIGTERM: QEMU shuts down cleanly; SIGKILL if it does not in time */
    c->state = CHILD_RELEASING;
    c->req = req;
    kill(c->pid, SIGTERM);
    c->timer = g_timeout_add(POOL_RELEASE_KILL_MS, child_timed_out, c);
}

static void pool_status_add(Pool *pool, JsonBuilder *b)
{
    const struct {
        const char *name;
        guint64 value;
    } counts[] = {
        { "size", pool->size },
        { "max-live", pool->max_live },
        { "ready", g_queue_get_length(&pool->ready) },
        { "starting", pool_starting(pool) },
        { "taken", pool_count(pool, CHILD_TAKEN) +
                   pool_count(pool, CHILD_TAKING) },
        { "releasing", pool_count(pool, CHILD_RELEASING) },
        { "waiting", g_queue_get_length(&pool->waiting) },
        { "forked", pool->forked },
        { "fork-failures", pool->fork_failures },
        { "served", pool->served },
        { "released", pool->released },
        { "exited", pool->exited },
        { "died-in-pool", pool->died_ready },
        { "take-timeouts", pool->take_timeouts },
    };

    for (gsize i = 0; i < G_N_ELEMENTS(counts); i++) {
        json_builder_set_member_name(b, counts[i].name);
        json_builder_add_int_value(b, counts[i].value);
    }
    json_builder_set_member_name(b, "template");
    json_builder_add_string_value(b, pool->template_path);
    samples_add_json(b, "take-ms", &pool->take_ms);
    samples_add_json(b, "ready-ms", &pool->ready_ms);
    json_builder_set_member_name(b, "last-error");
    if (pool->last_error) {
        json_builder_add_string_value(b, pool->last_error);
    } else {
        json_builder_add_null_value(b);
    }
}

static void cmd_status_request(Request *req)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) ret = NULL;
    Pool *pool = req->conn->pool;
    GHashTableIter it;
    gpointer value;

    json_builder_begin_object(b);
    pool_status_add(pool, b);
    json_builder_set_member_name(b, "children");
    json_builder_begin_array(b);
    g_hash_table_iter_init(&it, pool->children);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Child *c = value;

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "pid");
        json_builder_add_int_value(b, c->pid);
        json_builder_set_member_name(b, "clone-id");
        json_builder_add_int_value(b, c->clone_id);
        json_builder_set_member_name(b, "state");
        json_builder_add_string_value(b, child_state_names[c->state]);
        json_builder_set_member_name(b, "monitor");
        json_builder_add_string_value(b, c->monitor);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    ret = json_builder_get_root(b);
    request_done(req, ret, NULL, NULL);
}

static const char *const take_args[] = { "start", "wait-ms", NULL };
static const char *const release_args[] = { "pid", NULL };
static const char *const no_args[] = { NULL };
static const char *const request_members[] = { "execute", "arguments", "id",
                                               NULL };

static const struct {
    const char *name;
    void (*run)(Request *req);
    const char *const *args;
} pool_commands[] = {
    { "take", cmd_take_request, take_args },
    { "release", cmd_release_request, release_args },
    { "query-pool", cmd_status_request, no_args },
};

/* FALSE after answering @req when @o has a member not in @allowed. */
static gboolean request_check_members(Request *req, JsonObject *o,
                                      const char *const *allowed)
{
    g_autoptr(GList) members = json_object_get_members(o);

    for (GList *l = members; l; l = l->next) {
        if (!g_strv_contains(allowed, l->data)) {
            request_done(req, NULL, "GenericError", "unknown %s '%s'%s%s",
                         allowed == request_members ? "member" : "argument",
                         (char *)l->data, req->command ? " of " : "",
                         req->command ? req->command : "");
            return FALSE;
        }
    }
    return TRUE;
}

/* Parses one request line; NULL after answering a bad one. */
static Request *request_parse(Conn *conn, const char *line)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) err = NULL;
    Request *req = g_new0(Request, 1);
    JsonObject *o;
    JsonNode *root, *member;

    req->conn = conn;
    req->received_us = g_get_monotonic_time();
    req->args = json_object_new();
    conn->refs++;
    g_queue_push_tail(&conn->requests, req);
    if (!json_parser_load_from_data(parser, line, -1, &err)) {
        request_done(req, NULL, "GenericError", "JSON parse error: %s",
                     err->message);
        return NULL;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        request_done(req, NULL, "GenericError", "a request must be a JSON "
                     "object");
        return NULL;
    }
    o = json_node_get_object(root);
    member = json_object_get_member(o, "id");
    req->id = member ? json_node_copy(member) : NULL;
    member = json_object_get_member(o, "execute");
    if (!member || !JSON_NODE_HOLDS_VALUE(member) ||
        json_node_get_value_type(member) != G_TYPE_STRING) {
        request_done(req, NULL, "GenericError", "'execute' (a string) is "
                     "required");
        return NULL;
    }
    req->command = g_strdup(json_node_get_string(member));
    member = json_object_get_member(o, "arguments");
    if (member) {
        if (!JSON_NODE_HOLDS_OBJECT(member)) {
            request_done(req, NULL, "GenericError", "'arguments' must be an "
                         "object");
            return NULL;
        }
        json_object_unref(req->args);
        req->args = json_object_ref(json_node_get_object(member));
    }
    return request_check_members(req, o, request_members) ? req : NULL;
}

static void request_run(Request *req)
{
    for (gsize i = 0; i < G_N_ELEMENTS(pool_commands); i++) {
        if (g_str_equal(req->command, pool_commands[i].name)) {
            if (request_check_members(req, req->args,
                                      pool_commands[i].args)) {
                pool_commands[i].run(req);
            }
            return;
        }
    }
    request_done(req, NULL, "CommandNotFound", "the pool has no command "
                 "'%s' (it has take, release and query-pool)",
                 req->command);
}

/* ---- client connections ------------------------------------------------- */

static void conn_close(Conn *conn)
{
    Pool *pool = conn->pool;
    Request *req;

    if (conn->closed) {
        return;
    }
    conn->closed = TRUE;
    if (conn->in_source) {
        g_source_destroy(conn->in_source);
        g_clear_pointer(&conn->in_source, g_source_unref);
    }
    if (conn->out_source) {
        g_source_destroy(conn->out_source);
        g_clear_pointer(&conn->out_source, g_source_unref);
    }
    if (conn->hup_source) {
        g_source_destroy(conn->hup_source);
        g_clear_pointer(&conn->hup_source, g_source_unref);
    }
    g_io_stream_close(G_IO_STREAM(conn->connection), NULL, NULL);
    pool->conns = g_list_remove(pool->conns, conn);
    /*
     * Its one request: a take still waiting goes; a take whose child is
     * being started finishes and kills the child (take_give()); a release
     * finishes without its reply.
     */
    req = g_queue_peek_head(&conn->requests);
    if (req && req->queued) {
        request_done(req, NULL, "GenericError", "closed");
    }
    conn_unref(conn);
}

static void conn_unref(Conn *conn)
{
    if (--conn->refs) {
        return;
    }
    g_string_free(conn->in, TRUE);
    g_string_free(conn->out, TRUE);
    g_object_unref(conn->connection);
    g_free(conn);
}

static gboolean conn_on_writable(GSocket *socket, GIOCondition cond,
                                 gpointer data);

/*
 * A client that shut down its side is done once it has a reply to every
 * line it sent (a last line without its newline is not a request)
 */
static void conn_maybe_finish(Conn *conn)
{
    if (conn->eof && !conn->closed && !conn->requests.length &&
        !conn->out->len && !conn->in_next &&
        !memchr(conn->in->str, '\n', conn->in->len)) {
        conn_close(conn);
    }
}

/* After its eof: the client closed the connection entirely */
static gboolean conn_on_hup(GSocket *socket G_GNUC_UNUSED,
                            GIOCondition cond G_GNUC_UNUSED, gpointer data)
{
    Conn *conn = data;

    conn->refs++;
    conn_close(conn);
    conn_unref(conn);
    return G_SOURCE_REMOVE;
}

static void conn_flush(Conn *conn)
{
    while (conn->out->len) {
        g_autoptr(GError) err = NULL;
        gssize n = g_socket_send(conn->socket, conn->out->str, conn->out->len,
                                 NULL, &err);

        if (n < 0) {
            if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
                break;
            }
            conn->write_failed = TRUE;
            conn_close(conn);
            return;
        }
        g_string_erase(conn->out, 0, n);
    }
    if (conn->out->len && !conn->out_source) {
        conn->out_source = g_socket_create_source(conn->socket, G_IO_OUT,
                                                  NULL);
        g_source_set_callback(conn->out_source,
                              (GSourceFunc)(void (*)(void))conn_on_writable,
                              conn, NULL);
        g_source_attach(conn->out_source, NULL);
    } else if (!conn->out->len && conn->out_source) {
        g_source_destroy(conn->out_source);
        g_clear_pointer(&conn->out_source, g_source_unref);
    }
    conn_maybe_finish(conn);
}

static gboolean conn_on_writable(GSocket *socket G_GNUC_UNUSED,
                                 GIOCondition cond G_GNUC_UNUSED,
                                 gpointer data)
{
    Conn *conn = data;

    conn->refs++;
    conn_flush(conn);
    conn_unref(conn);
    return G_SOURCE_CONTINUE;
}

static void conn_write(Conn *conn, const char *text)
{
    g_string_append(conn->out, text);
    g_string_append_c(conn->out, '\n');
    conn_flush(conn);
}

/* Starts the next complete request line, one request at a time. */
static void conn_next(Conn *conn)
{
    if (conn->in_next) {
        return;     /* a request answered at once: the loop below goes on */
    }
    conn->in_next = TRUE;
    while (!conn->closed && !conn->requests.length) {
        char *nl = memchr(conn->in->str, '\n', conn->in->len);
        g_autofree char *line = NULL;
        Request *req;

        if (!nl) {
            break;
        }
        line = g_strndup(conn->in->str, nl - conn->in->str);
        g_string_erase(conn->in, 0, nl - conn->in->str + 1);
        g_strstrip(line);
        if (!line[0]) {
            continue;
        }
        req = request_parse(conn, line);
        if (req) {
            request_run(req);
        }
    }
    conn->in_next = FALSE;
    conn_maybe_finish(conn);
}

static gboolean conn_on_readable(GSocket *socket, GIOCondition cond G_GNUC_UNUSED,
                                 gpointer data)
{
    Conn *conn = data;
    char buf[4096];
    g_autoptr(GError) err = NULL;
    gssize n = g_socket_receive(socket, buf, sizeof(buf), NULL, &err);

    if (n < 0 && g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
        return G_SOURCE_CONTINUE;
    }
    conn->refs++;
    if (n == 0 && !(g_socket_condition_check(socket, G_IO_HUP) & G_IO_HUP)) {
        /*
         * The client shut down its side only (echo ... | socat): read no
         * more, answer what it sent, then close.  Should it close
         * entirely meanwhile (HUP), that is a close.
         */
        conn->eof = TRUE;
        g_source_destroy(conn->in_source);
        g_clear_pointer(&conn->in_source, g_source_unref);
        conn->hup_source = g_socket_create_source(socket, G_IO_HUP, NULL);
        g_source_set_callback(conn->hup_source,
                              (GSourceFunc)(void (*)(void))conn_on_hup,
                              conn, NULL);
        g_source_attach(conn->hup_source, NULL);
        conn_next(conn);
        conn_maybe_finish(conn);
    } else if (n <= 0) {
        conn_close(conn);
    } else {
        g_string_append_len(conn->in, buf, n);
        if (conn->in->len > POOL_MAX_LINE &&
            !memchr(conn->in->str, '\n', conn->in->len)) {
            Request *req = g_new0(Request, 1);

            /* Answer, then hang up: the rest of the line is not read */
            req->conn = conn;
            req->args = json_object_new();
            conn->refs++;
            g_queue_push_tail(&conn->requests, req);
            request_done(req, NULL, "GenericError", "request longer than "
                         "%d bytes", POOL_MAX_LINE);
            conn_flush(conn);
            conn_close(conn);
        } else {
            conn_next(conn);
        }
    }
    conn_unref(conn);
    return G_SOURCE_CONTINUE;
}

static gboolean on_incoming(GSocketService *service G_GNUC_UNUSED,
                            GSocketConnection *connection,
                            GObject *source_object G_GNUC_UNUSED, gpointer data)
{
    Pool *pool = data;
    Conn *conn = g_new0(Conn, 1);

    conn->pool = pool;
    conn->refs = 1;
    conn->connection = g_object_ref(connection);
    conn->socket = g_socket_connection_get_socket(connection);
    conn->in = g_string_new(NULL);
    conn->out = g_string_new(NULL);
    g_socket_set_blocking(conn->socket, FALSE);
    conn->in_source = g_socket_create_source(conn->socket,
                                             G_IO_IN | G_IO_HUP | G_IO_ERR,
                                             NULL);
    g_source_set_callback(conn->in_source,
                          (GSourceFunc)(void (*)(void))conn_on_readable,
                          conn, NULL);
    g_source_attach(conn->in_source, NULL);
    pool->conns = g_list_prepend(pool->conns, conn);
    return TRUE;
}

/* ---- starting and stopping ---------------------------------------------- */

static gboolean pool_stop_timeout(gpointer data)
{
    Pool *pool = data;

    pool->stop_timer = 0;
    g_printerr("vmfork pool: %u children did not exit in time\n",
               g_hash_table_size(pool->children));
    g_main_loop_quit(pool->loop);
    return G_SOURCE_REMOVE;
}

/* Once stopping, quit when no child of the pool is left. */
static void pool_maybe_finish_stop(Pool *pool)
{
    GHashTableIter it;
    gpointer value;

    if (!pool->stopping || pool->forking || pool->warming) {
        return;     /* a warming template is paused again first */
    }
    if (qmp_async_client_is_connected(pool->tmpl)) {
        g_hash_table_iter_init(&it, pool->children);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            ChildState s = ((Child *)value)->state;

            if (s != CHILD_TAKEN) {
                return;
            }
        }
    }
    g_main_loop_quit(pool->loop);
}

/*
 * Stops serving: the socket goes, waiting requests fail, the children in
 * the pool are killed; those handed out run on.  Quits once the pool's
 * children have exited.
 */
static void pool_stop(Pool *pool, int exit_code)
{
    GHashTableIter it;
    gpointer value;

    if (pool->stopping) {
        return;
    }
    pool->stopping = TRUE;
    pool->exit_code = exit_code;
    g_socket_service_stop(pool->service);
    g_socket_listener_close(G_SOCKET_LISTENER(pool->service));
    unlink(pool->listen_path);
    while (pool->conns) {
        conn_close(pool->conns->data);
    }
    /* Also with the template gone: its children outlive it */
    g_hash_table_iter_init(&it, pool->children);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Child *c = value;

        if (c->state != CHILD_TAKEN && c->state != CHILD_RELEASING) {
            child_kill(c, NULL);
        }
    }
    pool->stop_timer = g_timeout_add(POOL_RELEASE_KILL_MS, pool_stop_timeout,
                                     pool);
    pool_maybe_finish_stop(pool);
}

static gboolean on_signal(gpointer data)
{
    pool_stop(data, TOOL_EXIT_OK);
    return G_SOURCE_CONTINUE;
}

/*
 * --warm: under TCG a child runs on the code its template translated, and
 * a clone's guest first handles its new VM generation ID, code that a
 * template paused since boot never ran (each child would translate it).
 * A VM that runs on after a fork handles one unchanged notification
 * (identity.c), so a paused template is let run: "cont", one fork whose
 * child is killed at once, warm_ms of guest time, "stop".  A running
 * template warms at the pool's first fork.
 */
static void warm_done(Pool *pool, const char *step, const GError *error)
{
    if (error) {
        pool_set_error(pool, "--warm: %s failed: %s", step, error->message);
    }
    pool->warming = FALSE;
    pool_refill(pool);
    pool_maybe_finish_stop(pool);
}

static void on_warm_stopped(QmpAsyncClient *qmp G_GNUC_UNUSED,
                            JsonNode *result G_GNUC_UNUSED,
                            const GError *error, gpointer data)
{
    warm_done(data, "stop", error);
}

static gboolean warm_stop(gpointer data)
{
    Pool *pool = data;
    g_autoptr(GError) err = NULL;

    if (!qmp_async_client_execute(pool->tmpl, "stop", NULL, -1,
                                  on_warm_stopped, pool, &err)) {
        warm_done(pool, "stop", err);
    }
    return G_SOURCE_REMOVE;
}

static void on_warm_forked(QmpAsyncClient *qmp G_GNUC_UNUSED,
                           JsonNode *result, const GError *error,
                           gpointer data)
{
    Pool *pool = data;
    JsonArray *children = NULL;
    gint64 pid;

    if (result && JSON_NODE_HOLDS_OBJECT(result) &&
        json_object_has_member(json_node_get_object(result), "children")) {
        children = json_object_get_array_member(json_node_get_object(result),
                                                "children");
    }
    /* The template reaps it; its events concern no child of the pool */
    for (guint i = 0; children && i < json_array_get_length(children); i++) {
        JsonObject *child = json_array_get_object_element(children, i);

        if (child && tool_json_get_int(child, "pid", &pid)) {
            kill(pid, SIGKILL);
            remove_overlays(pool, child);
        }
    }
    if (error) {
        pool_set_error(pool, "--warm: vmfork failed: %s", error->message);
    }
    g_timeout_add(pool->warm_ms, warm_stop, pool);
}

static void on_warm_running(QmpAsyncClient *qmp G_GNUC_UNUSED,
                            JsonNode *result G_GNUC_UNUSED,
                            const GError *error, gpointer data)
{
    Pool *pool = data;
    g_autoptr(JsonObject) args = NULL;
    g_autoptr(GError) err = NULL;

    if (error) {
        warm_done(pool, "cont", error);
        return;
    }
    if (pool->stopping) {
        warm_stop(pool);
        return;
    }
    /* As the pool's own forks (overlays, templates), but paused */
    args = fork_args_new(pool);
    json_object_set_boolean_member(args, "start", FALSE);
    if (!qmp_async_client_execute(pool->tmpl, "vmfork", args, -1,
                                  on_warm_forked, pool, &err)) {
        warm_done(pool, "vmfork", err);
    }
}

static void on_warm_status(QmpAsyncClient *qmp G_GNUC_UNUSED,
                           JsonNode *result, const GError *error,
                           gpointer data)
{
    Pool *pool = data;
    const char *status = NULL;
    g_autoptr(GError) err = NULL;

    if (result && JSON_NODE_HOLDS_OBJECT(result)) {
        tool_json_get_string(json_node_get_object(result), "status", &status);
    }
    if (error || g_strcmp0(status, "paused") || pool->stopping) {
        warm_done(pool, "query-status", error);
        return;
    }
    if (!qmp_async_client_execute(pool->tmpl, "cont", NULL, -1,
                                  on_warm_running, pool, &err)) {
        warm_done(pool, "cont", err);
    }
}

static void on_template_connected(QmpAsyncClient *qmp G_GNUC_UNUSED,
                                  const GError *error,
                                  gpointer data)
{
    Pool *pool = data;
    g_autoptr(GError) err = NULL;

    if (error) {
        pool_set_error(pool, "cannot connect to the template's monitor %s: "
                       "%s", pool->template_path, error->message);
        pool_stop(pool, TOOL_EXIT_IO);
        return;
    }
    if (!pool->warm_ms) {
        pool_refill(pool);
        return;
    }
    pool->warming = TRUE;
    if (!qmp_async_client_execute(pool->tmpl, "query-status", NULL, -1,
                                  on_warm_status, pool, &err)) {
        pool->warming = FALSE;  /* the template's disconnect callback follows */
    }
}

/* ---- vmfork pool -------------------------------------------------------- */

static char *pool_listen;
static int pool_size = 4;
static int pool_max_live;
static int pool_wait_ms = 10000;
static int pool_hostfwd_step;
static int pool_settle_ms;
static int pool_warm_ms;
static char *pool_monitor;
static char *pool_serial;
static char *pool_overlay_dir;
static char **pool_chardevs;
static char **pool_chardev_logs;

static const GOptionEntry pool_entries[] = {
    { "listen", 'l', 0, G_OPTION_ARG_FILENAME, &pool_listen,
      "The pool's unix socket (default: SOCKET.pool)", "POOL" },
    { "size", 'n', 0, G_OPTION_ARG_INT, &pool_size,
      "Keep N children ready (default 4)", "N" },
    { "max-live", 0, 0, G_OPTION_ARG_INT, &pool_max_live,
      "Fork no more while N children of the pool live, ready or handed "
      "out (default: no limit)", "N" },
    { "wait", 'w', 0, G_OPTION_ARG_INT, &pool_wait_ms,
      "How long a take waits for a ready child by default (default 10000)",
      "MS" },
    { "hostfwd-step", 0, 0, G_OPTION_ARG_INT, &pool_hostfwd_step,
      "Give each child host forwards of its own: the template's ports plus "
      "N times the child's slot (1, 2, ...; a slot is reused once its child "
      "has exited)", "N" },
    { "settle", 0, 0, G_OPTION_ARG_INT, &pool_settle_ms,
      "Fork each child running and stop it MS later, once its guest has "
      "taken in that it is a clone (its new VM generation ID): a take then "
      "resumes a guest with nothing left to do (default 0: forked paused)",
      "MS" },
    { "warm", 0, 0, G_OPTION_ARG_INT, &pool_warm_ms,
      "If the template is paused, let it run once before its first child: "
      "one fork (its child killed at once), then MS of guest time, then "
      "stop.  Under TCG its guest then has handled a new VM generation ID, "
      "and every child finds that code translated (default 0: the "
      "template is left as it is)", "MS" },
    { "monitor", 'm', 0, G_OPTION_ARG_FILENAME, &pool_monitor,
      "Path template of each child's QMP socket; must contain %p (default: "
      "SOCKET.fork-%p)", "TEMPLATE" },
    { "serial", 's', 0, G_OPTION_ARG_FILENAME, &pool_serial,
      "Path template (with %p) of a file for each child's serial output",
      "TEMPLATE" },
    { "overlay-dir", 'o', 0, G_OPTION_ARG_FILENAME, &pool_overlay_dir,
      "Create the qcow2 overlays of writable disks in DIR", "DIR" },
    { "chardev", 'c', 0, G_OPTION_ARG_FILENAME_ARRAY, &pool_chardevs,
      "Where each child's unix socket chardev ID listens: a path template "
      "with %p; repeat for several", "ID=TEMPLATE" },
    { "chardev-log", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &pool_chardev_logs,
      "Where each child logs what chardev ID logs (logfile=): a file path "
      "template with %p (needed for a log on a pipe, such as libvirt's "
      "<log> through virtlogd); repeat for several", "ID=TEMPLATE" },
    { NULL }
};

#define POOL_DESCRIPTION \
    "Keeps N pre-forked children of the VM at SOCKET (the template, best " \
    "paused) paused and ready, and hands one out per request on the unix " \
    "socket POOL: 'take' starts it (cont) and gives its pid, clone-id and " \
    "monitor; a replacement is forked at once.  'vmfork take', 'vmfork " \
    "release' and 'vmfork pool-status' are its clients; docs/pool.md " \
    "describes the protocol.\n" \
    "The pool needs SOCKET to itself (give the template a second -qmp for " \
    "other tools).  It runs until SIGINT or SIGTERM: then the children " \
    "still in the pool are killed, those handed out run on.\n" \
    "\n" TOOL_HELP_EXIT_CODES

static gboolean template_has_pid(const char *template)
{
    return !template || strstr(template, "%p");
}

/* Is each ID=TEMPLATE of @specs well formed, its template with %p? */
static gboolean chardev_specs_have_pid(char **specs)
{
    for (char **c = specs; c && *c; c++) {
        if (!chardev_spec_valid(*c) || !strstr(*c, "%p")) {
            return FALSE;
        }
    }
    return TRUE;
}

int cmd_pool(Tool *tool, int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketAddress) addr = NULL;
    Pool pool = { 0 };
    guint sig_int, sig_term;
    int rc;

    command_init(tool, "vmfork pool", "SOCKET",
                 "Keep pre-forked children of a VM ready to hand out.",
                 POOL_DESCRIPTION, pool_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    if (pool_size < 1) {
        return tool_usage_error(tool, "--size must be at least 1");
    }
    if (pool_max_live < 0 || (pool_max_live && pool_max_live < pool_size)) {
        return tool_usage_error(tool, "--max-live must be at least --size");
    }
    if (pool_wait_ms < 0 || pool_hostfwd_step < 0 || pool_settle_ms < 0 ||
        pool_warm_ms < 0) {
        return tool_usage_error(tool, "--wait, --hostfwd-step, --settle and "
                                "--warm must not be negative");
    }
    if (!template_has_pid(pool_monitor) || !template_has_pid(pool_serial)) {
        return tool_usage_error(tool, "--monitor and --serial must contain "
                                "%%p: each child is forked by a command of "
                                "its own, so %%i is always 0");
    }
    if (!chardev_specs_have_pid(pool_chardevs)) {
        return tool_usage_error(tool, "--chardev takes ID=TEMPLATE, the "
                                "template with %%p");
    }
    if (!chardev_specs_have_pid(pool_chardev_logs)) {
        return tool_usage_error(tool, "--chardev-log takes ID=TEMPLATE, "
                                "the template with %%p");
    }

    pool.template_path = argv[1];
    pool.listen_path = pool_listen ? pool_listen :
                       g_strconcat(argv[1], ".pool", NULL);
    pool.size = pool_size;
    pool.max_live = pool_max_live;
    pool.take_wait_ms = pool_wait_ms;
    pool.hostfwd_step = pool_hostfwd_step;
    pool.settle_ms = pool_settle_ms;
    pool.warm_ms = pool_warm_ms;
    pool.fork_args = json_object_new();
    json_object_set_int_member(pool.fork_args, "count", 1);
    json_object_set_boolean_member(pool.fork_args, "start",
                                   pool.settle_ms > 0);
    if (pool_monitor) {
        json_object_set_string_member(pool.fork_args, "monitor", pool_monitor);
    }
    if (pool_serial) {
        json_object_set_string_member(pool.fork_args, "serial", pool_serial);
    }
    if (pool_overlay_dir) {
        json_object_set_string_member(pool.fork_args, "overlay-dir",
                                      pool_overlay_dir);
    }
    if (pool_chardevs || pool_chardev_logs) {
        json_object_set_array_member(pool.fork_args, "chardevs",
                                     chardev_specs_to_json(pool_chardevs,
                                                           pool_chardev_logs));
    }
    pool.children = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                          child_free);
    pool.early_ready = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                             g_free, NULL);
    pool.early_exited = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                              g_free, NULL);
    pool.slots = g_array_new(FALSE, TRUE, sizeof(gboolean));
    g_array_set_size(pool.slots, 1);
    pool.loop = g_main_loop_new(NULL, FALSE);

    /* The socket first: a stale one from a dead pool is replaced */
    pool.service = g_socket_service_new();
    /* Takes come in bursts (vmfork serve: one connection each) */
    g_socket_listener_set_backlog(G_SOCKET_LISTENER(pool.service), SOMAXCONN);
    unlink(pool.listen_path);
    addr = g_unix_socket_address_new(pool.listen_path);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(pool.service), addr,
                                       G_SOCKET_TYPE_STREAM,
                                       G_SOCKET_PROTOCOL_DEFAULT, NULL, NULL,
                                       &err)) {
        tool_message(tool, "cannot listen on %s: %s", pool.listen_path,
                     err->message);
        rc = TOOL_EXIT_IO;
        goto out;
    }
    g_signal_connect(pool.service, "incoming", G_CALLBACK(on_incoming),
                     &pool);

    pool.tmpl = qmp_async_client_new();
    qmp_glib_attach(pool.tmpl, NULL);
    qmp_async_client_set_event_callback(pool.tmpl, on_template_event, &pool);
    qmp_async_client_set_disconnect_callback(pool.tmpl,
                                             on_template_disconnect, &pool);
    if (!qmp_async_client_connect_unix(pool.tmpl, pool.template_path, NULL,
                                       tool->timeout_ms, on_template_connected,
                                       &pool, &err)) {
        rc = tool_report_error(tool, err, "connecting to the template");
        unlink(pool.listen_path);
        goto out;
    }
    sig_int = g_unix_signal_add(SIGINT, on_signal, &pool);
    sig_term = g_unix_signal_add(SIGTERM, on_signal, &pool);
    g_socket_service_start(pool.service);
    printf("vmfork pool: template %s, size %d, listening on %s\n",
           pool.template_path, pool.size, pool.listen_path);
    fflush(stdout);

    g_main_loop_run(pool.loop);

    g_source_remove(sig_int);
    g_source_remove(sig_term);
    if (pool.stop_timer) {
        g_source_remove(pool.stop_timer);
    }
    if (pool.retry_source) {
        g_source_remove(pool.retry_source);
    }
    rc = pool.exit_code;
out:
    /* Children handed out stay; their monitors are not ours any more */
    g_hash_table_destroy(pool.children);
    g_clear_pointer(&pool.tmpl, qmp_async_client_free);
    g_hash_table_destroy(pool.early_ready);
    g_hash_table_destroy(pool.early_exited);
    g_array_free(pool.slots, TRUE);
    json_object_unref(pool.fork_args);
    g_object_unref(pool.service);
    g_main_loop_unref(pool.loop);
    g_free(pool.last_error);
    if (!pool_listen) {
        g_free(pool.listen_path);
    }
    return rc;
}

/* ---- the clients: take, release, pool-status ---------------------------- */

/*
 * Sends one request to the pool at @path and reads its reply within the
 * tool's timeout.  Returns: the "return" value, or NULL after reporting
 * the problem with *@rc set (1 for an error reply, 3 otherwise).
 */
static JsonNode *pool_call(const Tool *tool, const char *path,
                           const char *command, JsonObject *args, int *rc)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) request = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GString) in = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *text = NULL;
    gint64 deadline = tool_deadline(tool);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    JsonObject *reply;
    JsonNode *member;
    gsize off = 0;
    int fd;

    *rc = TOOL_EXIT_IO;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        tool_message(tool, "%s: path too long", path);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        tool_message(tool, "cannot connect to the pool %s: %s", path,
                     g_strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "execute");
    json_builder_add_string_value(b, command);
    if (args) {
        json_builder_set_member_name(b, "arguments");
        json_builder_begin_object(b);
        for (GList *m = json_object_get_members(args), *l = m; l;
             l = l->next) {
            json_builder_set_member_name(b, l->data);
            json_builder_add_value(b, json_node_copy(
                json_object_get_member(args, l->data)));
            if (!l->next) {
                g_list_free(m);
            }
        }
        json_builder_end_object(b);
    }
    json_builder_end_object(b);
    request = json_builder_get_root(b);
    text = json_to_string(request, FALSE);
    g_string_append(in, text);
    g_string_append_c(in, '\n');
    while (off < in->len) {
        ssize_t n = send(fd, in->str + off, in->len - off, MSG_NOSIGNAL);

        if (n < 0 && errno != EINTR) {
            tool_message(tool, "writing to the pool: %s", g_strerror(errno));
            close(fd);
            return NULL;
        }
        off += MAX(n, 0);
    }
    g_string_truncate(in, 0);
    while (!memchr(in->str, '\n', in->len)) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char buf[4096];
        ssize_t n;
        int ret = poll(&pfd, 1, tool_remaining_ms(deadline));

        if (ret == 0) {
            tool_message(tool, "no reply from the pool within %d ms",
                         tool->timeout_ms);
            close(fd);
            return NULL;
        }
        n = ret < 0 ? -1 : read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            tool_message(tool, "the pool closed the connection%s%s",
                         n < 0 ? ": " : "", n < 0 ? g_strerror(errno) : "");
            close(fd);
            return NULL;
        }
        g_string_append_len(in, buf, n);
    }
    close(fd);
    if (!json_parser_load_from_data(parser, in->str,
                                    strchr(in->str, '\n') - in->str, &err) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        tool_message(tool, "the pool's reply is not a JSON object%s%s",
                     err ? ": " : "", err ? err->message : "");
        return NULL;
    }
    reply = json_node_get_object(json_parser_get_root(parser));
    member = json_object_get_member(reply, "error");
    if (member && JSON_NODE_HOLDS_OBJECT(member)) {
        JsonObject *e = json_node_get_object(member);

        fprintf(stderr, "%s: %s\n",
                json_object_get_string_member_with_default(e, "class", "?"),
                json_object_get_string_member_with_default(e, "desc", "?"));
        *rc = TOOL_EXIT_QMP;
        return NULL;
    }
    member = json_object_get_member(reply, "return");
    if (!member) {
        tool_message(tool, "the pool's reply has neither return nor error");
        return NULL;
    }
    *rc = TOOL_EXIT_OK;
    return json_node_copy(member);
}

static gboolean take_no_start;
static int take_wait_ms = -1;
static gboolean client_json;

static const GOptionEntry take_entries[] = {
    { "no-start", 0, 0, G_OPTION_ARG_NONE, &take_no_start,
      "Leave the child paused, for 'cont' on its monitor", NULL },
    { "wait", 'w', 0, G_OPTION_ARG_INT, &take_wait_ms,
      "Wait up to MS for a ready child (default: the pool's --wait)", "MS" },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &client_json,
      "Print the reply as one JSON object", NULL },
    { NULL }
};

#define TAKE_DESCRIPTION \
    "Takes a child from the pool at POOL (see 'vmfork pool'); it is " \
    "running unless --no-start.  Prints\n" \
    "  pid PID clone-id ID monitor PATH take MS ms\n" \
    "The child belongs to the caller: 'vmfork release POOL PID' (or 'quit' " \
    "on its monitor) ends it.\n" \
    "\n" TOOL_HELP_EXIT_CODES

int cmd_take(Tool *tool, int argc, char **argv)
{
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonNode) ret = NULL;
    JsonObject *o;
    gint64 pid = 0, clone_id = 0;
    const char *monitor = "?";
    int rc;

    command_init(tool, "vmfork take", "POOL",
                 "Take a child from a pool.", TAKE_DESCRIPTION, take_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    if (take_no_start) {
        json_object_set_boolean_member(args, "start", FALSE);
    }
    if (take_wait_ms >= 0) {
        json_object_set_int_member(args, "wait-ms", take_wait_ms);
        /* The reply comes after the wait: give it that long and more */
        if (tool->timeout_ms >= 0) {
            tool->timeout_ms = MAX(tool->timeout_ms, take_wait_ms + 5000);
        }
    }
    ret = pool_call(tool, argv[1], "take", args, &rc);
    if (!ret) {
        return rc;
    }
    if (client_json) {
        tool_print_json(ret, tool_stdout_is_tty());
        return TOOL_EXIT_OK;
    }
    o = JSON_NODE_HOLDS_OBJECT(ret) ? json_node_get_object(ret) : NULL;
    if (!tool_json_get_int(o, "pid", &pid) ||
        !tool_json_get_int(o, "clone-id", &clone_id) ||
        !tool_json_get_string(o, "monitor", &monitor)) {
        tool_message(tool, "the pool's reply lacks pid, clone-id or monitor");
        return TOOL_EXIT_IO;
    }
    printf("pid %" G_GINT64_FORMAT " clone-id %" G_GINT64_FORMAT
           " monitor %s take %.3f ms\n", pid, clone_id, monitor,
           json_object_get_double_member_with_default(o, "take-ms", 0));
    fflush(stdout);
    return TOOL_EXIT_OK;
}

#define RELEASE_DESCRIPTION \
    "Ends the child PID that the pool at POOL handed out (SIGTERM, then " \
    "SIGKILL after 5 s) and prints \"pid PID exited with status S\".\n" \
    "\n" TOOL_HELP_EXIT_CODES

int cmd_release(Tool *tool, int argc, char **argv)
{
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonNode) ret = NULL;
    gint64 status = -1;
    int pid, rc;

    command_init(tool, "vmfork release", "POOL PID",
                 "End a child taken from a pool.", RELEASE_DESCRIPTION, NULL);
    rc = tool_parse(tool, &argc, &argv, 2, 2);
    if (rc) {
        return rc;
    }
    if (!tool_parse_pid(argv[2], &pid)) {
        return tool_usage_error(tool, "'%s' is not a pid", argv[2]);
    }
    json_object_set_int_member(args, "pid", pid);
    ret = pool_call(tool, argv[1], "release", args, &rc);
    if (!ret) {
        return rc;
    }
    if (JSON_NODE_HOLDS_OBJECT(ret)) {
        tool_json_get_int(json_node_get_object(ret), "status", &status);
    }
    printf("pid %d exited with status %" G_GINT64_FORMAT "\n", pid, status);
    fflush(stdout);
    return TOOL_EXIT_OK;
}

static const GOptionEntry status_entries[] = {
    { "json", 'j', 0, G_OPTION_ARG_NONE, &client_json,
      "Print query-pool's reply as JSON", NULL },
    { NULL }
};

#define STATUS_DESCRIPTION \
    "Prints the counts and latencies of the pool at POOL (its query-pool " \
    "command), then a table of its children.\n" \
    "\n" TOOL_HELP_EXIT_CODES

int cmd_pool_status(Tool *tool, int argc, char **argv)
{
    g_autoptr(JsonNode) ret = NULL;
    JsonObject *o;
    JsonNode *children;
    int rc;

    command_init(tool, "vmfork pool-status", "POOL",
                 "Show a pool's counts, latencies and children.",
                 STATUS_DESCRIPTION, status_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    ret = pool_call(tool, argv[1], "query-pool", NULL, &rc);
    if (!ret) {
        return rc;
    }
    if (client_json || !JSON_NODE_HOLDS_OBJECT(ret)) {
        tool_print_json(ret, tool_stdout_is_tty());
        return TOOL_EXIT_OK;
    }
    o = json_node_get_object(ret);
    for (GList *m = json_object_get_members(o), *l = m; l; l = l->next) {
        JsonNode *v = json_object_get_member(o, l->data);

        if (JSON_NODE_HOLDS_OBJECT(v)) {
            /* A latency: {"count", "p50", "p99", "max"} */
            JsonObject *lat = json_node_get_object(v);

            gint64 count = json_object_get_int_member_with_default(
                lat, "count", 0);

            printf("%-14s count %" G_GINT64_FORMAT, (char *)l->data, count);
            for (const char *const *q = (const char *const[]){ "p50", "p99",
                 "max", NULL }; count && *q; q++) {
                printf(" %s %.3f", *q,
                       json_object_get_double_member_with_default(lat, *q,
                                                                  0));
            }
            printf(count ? " ms\n" : "\n");
        } else if (JSON_NODE_HOLDS_VALUE(v)) {
            g_autofree char *text = json_to_string(v, FALSE);

            printf("%-14s %s\n", (char *)l->data, text);
        }
        if (!l->next) {
            g_list_free(m);
        }
    }
    children = json_object_get_member(o, "children");
    if (children && JSON_NODE_HOLDS_ARRAY(children)) {
        JsonArray *a = json_node_get_array(children);

        printf("%-8s %-8s %-10s %s\n", "PID", "CLONE-ID", "STATE", "MONITOR");
        for (guint i = 0; i < json_array_get_length(a); i++) {
            JsonObject *c = json_array_get_object_element(a, i);

            printf("%-8" G_GINT64_FORMAT " %-8" G_GINT64_FORMAT " %-10s %s\n",
                   json_object_get_int_member_with_default(c, "pid", 0),
                   json_object_get_int_member_with_default(c, "clone-id", 0),
                   json_object_get_string_member_with_default(c, "state",
                                                              "?"),
                   json_object_get_string_member_with_default(c, "monitor",
                                                              "?"));
        }
    }
    fflush(stdout);
    return TOOL_EXIT_OK;
}
