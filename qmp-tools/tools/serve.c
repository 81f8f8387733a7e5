/*
 * vmfork serve: a fresh clone for each TCP connection.
 *
 *   vmfork serve --listen [ADDR:]PORT --pool POOL --guest-port P
 *                [--max-clones N] [--queue N] [--queue-timeout MS] [--keep]
 *
 * Each accepted connection takes a running child from the pool at POOL
 * (vmfork pool, started with --hostfwd-step so that each child has host
 * forwards of its own), connects to the host forward that leads to port P
 * of that child's guest (the take reply lists the child's forwards), and
 * copies bytes both ways (g_io_stream_splice_async()) until either side
 * ends its stream.  Then the child is released (ended), unless --keep.
 *
 * Bounded: at most --max-clones connections have a clone at a time; the
 * next --queue connections wait for one, each up to --queue-timeout; any
 * more, and those that time out, get one line, "vmfork serve: busy ...",
 * and are closed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <string.h>

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib-unix.h>

#include "vmfork-tool.h"

#define SERVE_STOP_MS 5000      /* for the clones to be released at exit */

typedef struct {
    GMainLoop *loop;
    GSocketService *service;
    GSocketClient *connector;
    char *pool_path;
    int guest_port;
    int max_clones;
    int queue_max;
    int queue_timeout_ms;
    gboolean keep;
    gboolean verbose;
    guint live;                 /* sessions past the queue */
    GQueue queue;               /* Session, waiting for a clone slot */
    GList *sessions;            /* every Session */
    gboolean stopping;
    guint stop_timer;
    /* Counts, printed at exit */
    guint64 accepted, served, busy, failed;
} Serve;

typedef struct {
    Serve *serve;
    GSocketConnection *client;
    GSocketConnection *pool;    /* to take, then to release */
    GDataInputStream *pool_in;
    GSocketConnection *guest;
    GCancellable *cancel;
    guint timer;                /* in the queue */
    gboolean queued, counted;
    gint64 pid;                 /* the clone, 0 before the take */
    gint64 accepted_us;
    char *line;                 /* the request being written to the pool */
} Session;

static void session_start(Session *s);

static void session_log(Session *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void session_log(Session *s, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    if (!s->serve->verbose) {
        return;
    }
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    printf("%.3f ms: pid %" G_GINT64_FORMAT ": %s\n",
           (g_get_monotonic_time() - s->accepted_us) / 1000.0, s->pid, msg);
    fflush(stdout);
}

static void serve_maybe_quit(Serve *serve)
{
    if (serve->stopping && !serve->sessions) {
        g_main_loop_quit(serve->loop);
    }
}

static void session_free(Session *s)
{
    Serve *serve = s->serve;

    if (s->timer) {
        g_source_remove(s->timer);
    }
    if (s->queued) {
        g_queue_remove(&serve->queue, s);
    }
    if (s->counted) {
        serve->live--;
    }
    serve->sessions = g_list_remove(serve->sessions, s);
    for (int i = 0; i < 3; i++) {
        GSocketConnection *c = i == 0 ? s->client : i == 1 ? s->pool :
                               s->guest;

        if (c) {
            g_io_stream_close(G_IO_STREAM(c), NULL, NULL);
        }
    }
    g_clear_object(&s->client);
    g_clear_object(&s->pool_in);
    g_clear_object(&s->pool);
    g_clear_object(&s->guest);
    g_clear_object(&s->cancel);
    g_free(s->line);
    g_free(s);
    /* A slot is free: the oldest waiting connection gets it */
    while (serve->live < (guint)serve->max_clones && serve->queue.length) {
        Session *next = g_queue_pop_head(&serve->queue);

        next->queued = FALSE;
        g_source_remove(next->timer);
        next->timer = 0;
        session_start(next);
    }
    serve_maybe_quit(serve);
}

/* Tells the client (best effort, it may be gone) and closes. */
static void session_refuse(Session *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static void session_refuse(Session *s, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    g_autofree char *line = NULL;
    GOutputStream *out = g_io_stream_get_output_stream(
        G_IO_STREAM(s->client));
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    line = g_strdup_printf("vmfork serve: %s\n", msg);
    /* A short line into an empty socket buffer: it does not block */
    g_socket_set_blocking(g_socket_connection_get_socket(s->client), FALSE);
    g_output_stream_write(out, line, strlen(line), NULL, NULL);
    session_log(s, "refused: %s", msg);
    session_free(s);
}

/* ---- releasing the clone ------------------------------------------------ */

static void on_released(GObject *source, GAsyncResult *res, gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;
    g_autofree char *reply = g_data_input_stream_read_line_finish(
        G_DATA_INPUT_STREAM(source), res, NULL, &err);

    if (!reply || !strstr(reply, "\"return\"")) {
        g_printerr("vmfork serve: release of pid %" G_GINT64_FORMAT
                   " failed: %s\n", s->pid,
                   reply ? reply : err ? err->message : "no reply");
    }
    session_log(s, "released");
    session_free(s);
}

static void on_release_written(GObject *source, GAsyncResult *res,
                               gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;

    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, NULL,
                                          &err)) {
        g_printerr("vmfork serve: release of pid %" G_GINT64_FORMAT
                   " failed: %s\n", s->pid, err->message);
        session_free(s);
        return;
    }
    /* Not cancellable: the release must finish, also when stopping */
    g_data_input_stream_read_line_async(s->pool_in, G_PRIORITY_DEFAULT, NULL,
                                        on_released, s);
}

static void session_end(Session *s)
{
    GOutputStream *out;

    if (s->serve->keep) {
        session_log(s, "kept");
        session_free(s);
        return;
    }
    g_free(s->line);
    s->line = g_strdup_printf("{\"execute\": \"release\", \"arguments\": "
                              "{\"pid\": %" G_GINT64_FORMAT "}}\n", s->pid);
    out = g_io_stream_get_output_stream(G_IO_STREAM(s->pool));
    g_output_stream_write_all_async(out, s->line, strlen(s->line),
                                    G_PRIORITY_DEFAULT, NULL,
                                    on_release_written, s);
}

/* ---- the connection to the guest ---------------------------------------- */

static void on_spliced(GObject *source G_GNUC_UNUSED, GAsyncResult *res,
                       gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;

    g_io_stream_splice_finish(res, &err);
    session_log(s, "connection ended%s%s", err ? ": " : "",
                err ? err->message : "");
    session_end(s);
}

static void on_guest_connected(GObject *source, GAsyncResult *res,
                               gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;

    s->guest = g_socket_client_connect_finish(G_SOCKET_CLIENT(source), res,
                                              &err);
    if (!s->guest) {
        s->serve->failed++;
        g_printerr("vmfork serve: cannot reach the guest of pid %"
                   G_GINT64_FORMAT ": %s\n", s->pid, err->message);
        session_end(s);
        return;
    }
    s->serve->served++;
    session_log(s, "connected to its guest");
    /* Until either side ends its stream (or a stop cancels it) */
    g_io_stream_splice_async(G_IO_STREAM(s->client), G_IO_STREAM(s->guest),
                             G_IO_STREAM_SPLICE_NONE, G_PRIORITY_DEFAULT,
                             s->cancel, on_spliced, s);
}

/*
 * The host forward of the taken clone that leads to the guest port, from
 * the take reply's "hostfwds"; NULL if it has none.
 */
static GSocketAddress *guest_address(Serve *serve, JsonObject *taken)
{
    JsonNode *node = json_object_get_member(taken, "hostfwds");
    JsonArray *fwds;

    if (!node || !JSON_NODE_HOLDS_ARRAY(node)) {
        return NULL;
    }
    fwds = json_node_get_array(node);
    for (guint i = 0; i < json_array_get_length(fwds); i++) {
        JsonObject *f = json_array_get_object_element(fwds, i);
        const char *proto, *addr;
        gint64 guest_port, host_port;

        if (f && tool_json_get_string(f, "protocol", &proto) &&
            g_str_equal(proto, "tcp") &&
            tool_json_get_int(f, "guest-port", &guest_port) &&
            guest_port == serve->guest_port &&
            tool_json_get_int(f, "host-port", &host_port) &&
            tool_json_get_string(f, "host-address", &addr)) {
            /* "" and 0.0.0.0 listen on every address: use loopback */
            if (!addr[0] || g_str_equal(addr, "0.0.0.0")) {
                addr = "127.0.0.1";
            }
            return g_inet_socket_address_new_from_string(addr, host_port);
        }
    }
    return NULL;
}

/* ---- taking a clone ----------------------------------------------------- */

static void on_taken(GObject *source, GAsyncResult *res, gpointer data)
{
    Session *s = data;
    Serve *serve = s->serve;
    g_autoptr(GError) err = NULL;
    g_autofree char *reply = g_data_input_stream_read_line_finish(
        G_DATA_INPUT_STREAM(source), res, NULL, &err);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GSocketAddress) addr = NULL;
    JsonObject *o, *taken;
    JsonNode *member;

    if (!reply || !json_parser_load_from_data(parser, reply, -1, NULL) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        serve->failed++;
        session_refuse(s, "no clone: the pool did not answer%s%s",
                       err ? ": " : "", err ? err->message : "");
        return;
    }
    o = json_node_get_object(json_parser_get_root(parser));
    member = json_object_get_member(o, "error");
    if (member && JSON_NODE_HOLDS_OBJECT(member)) {
        serve->busy++;
        session_refuse(s, "no clone: %s",
                       json_object_get_string_member_with_default(
                           json_node_get_object(member), "desc", "?"));
        return;
    }
    member = json_object_get_member(o, "return");
    taken = member && JSON_NODE_HOLDS_OBJECT(member) ?
            json_node_get_object(member) : NULL;
    if (!taken || !tool_json_get_int(taken, "pid", &s->pid)) {
        serve->failed++;
        session_refuse(s, "no clone: the pool's reply has no pid");
        return;
    }
    session_log(s, "taken");
    addr = guest_address(serve, taken);
    if (!addr) {
        serve->failed++;
        g_printerr("vmfork serve: pid %" G_GINT64_FORMAT " has no TCP host "
                   "forward to guest port %d (start the pool with "
                   "--hostfwd-step, and the template with a hostfwd to that "
                   "port)\n", s->pid, serve->guest_port);
        session_end(s);
        return;
    }
    g_socket_client_connect_async(serve->connector,
                                  G_SOCKET_CONNECTABLE(addr), s->cancel,
                                  on_guest_connected, s);
}

static void on_take_written(GObject *source, GAsyncResult *res,
                            gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;

    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, NULL,
                                          &err)) {
        s->serve->failed++;
        session_refuse(s, "no clone: %s", err->message);
        return;
    }
    g_data_input_stream_read_line_async(s->pool_in, G_PRIORITY_DEFAULT, NULL,
                                        on_taken, s);
}

static void on_pool_connected(GObject *source, GAsyncResult *res,
                              gpointer data)
{
    Session *s = data;
    g_autoptr(GError) err = NULL;
    GOutputStream *out;
    gint64 left_ms = s->serve->queue_timeout_ms -
                     (g_get_monotonic_time() - s->accepted_us) / 1000;

    s->pool = g_socket_client_connect_finish(G_SOCKET_CLIENT(source), res,
                                             &err);
    if (!s->pool) {
        s->serve->failed++;
        session_refuse(s, "no clone: cannot reach the pool: %s",
                       err->message);
        return;
    }
    s->pool_in = g_data_input_stream_new(g_io_stream_get_input_stream(
        G_IO_STREAM(s->pool)));
    /* The pool waits for a ready clone for what is left of the timeout */
    s->line = g_strdup_printf("{\"execute\": \"take\", \"arguments\": "
                              "{\"wait-ms\": %" G_GINT64_FORMAT "}}\n",
                              MAX(left_ms, 0));
    out = g_io_stream_get_output_stream(G_IO_STREAM(s->pool));
    g_output_stream_write_all_async(out, s->line, strlen(s->line),
                                    G_PRIORITY_DEFAULT, NULL,
                                    on_take_written, s);
}

static void session_start(Session *s)
{
    Serve *serve = s->serve;
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(
        serve->pool_path);

    s->counted = TRUE;
    serve->live++;
    g_socket_client_connect_async(serve->connector,
                                  G_SOCKET_CONNECTABLE(addr), NULL,
                                  on_pool_connected, s);
}

/* ---- accepting ---------------------------------------------------------- */

static gboolean on_queue_timeout(gpointer data)
{
    Session *s = data;

    s->timer = 0;
    s->serve->busy++;
    session_refuse(s, "busy: no clone within %d ms", s->serve->queue_timeout_ms);
    return G_SOURCE_REMOVE;
}

static gboolean on_incoming(GSocketService *service G_GNUC_UNUSED,
                            GSocketConnection *connection,
                            GObject *source_object G_GNUC_UNUSED,
                            gpointer data)
{
    Serve *serve = data;
    Session *s = g_new0(Session, 1);

    s->serve = serve;
    s->client = g_object_ref(connection);
    s->cancel = g_cancellable_new();
    s->accepted_us = g_get_monotonic_time();
    serve->sessions = g_list_prepend(serve->sessions, s);
    serve->accepted++;
    if (serve->live < (guint)serve->max_clones) {
        session_start(s);
    } else if (serve->queue.length < (guint)serve->queue_max) {
        s->queued = TRUE;
        g_queue_push_tail(&serve->queue, s);
        s->timer = g_timeout_add(serve->queue_timeout_ms, on_queue_timeout, s);
    } else {
        serve->busy++;
        session_refuse(s, "busy: %u clones live, %u connections waiting",
                       serve->live, serve->queue.length);
    }
    return TRUE;
}

static gboolean on_stop_timeout(gpointer data)
{
    Serve *serve = data;

    serve->stop_timer = 0;
    g_printerr("vmfork serve: %u connections did not end in time\n",
               g_list_length(serve->sessions));
    g_main_loop_quit(serve->loop);
    return G_SOURCE_REMOVE;
}

/* Stops accepting, refuses the waiting, ends every connection. */
static gboolean on_signal(gpointer data)
{
    Serve *serve = data;

    if (serve->stopping) {
        return G_SOURCE_CONTINUE;
    }
    serve->stopping = TRUE;
    g_socket_service_stop(serve->service);
    g_socket_listener_close(G_SOCKET_LISTENER(serve->service));
    while (serve->queue.length) {
        Session *s = g_queue_peek_head(&serve->queue);

        session_refuse(s, "stopping");
    }
    for (GList *l = serve->sessions; l; l = l->next) {
        g_cancellable_cancel(((Session *)l->data)->cancel);
    }
    serve->stop_timer = g_timeout_add(SERVE_STOP_MS, on_stop_timeout, serve);
    serve_maybe_quit(serve);
    return G_SOURCE_CONTINUE;
}

/* ---- vmfork serve ------------------------------------------------------- */

static char *serve_listen;
static char *serve_pool;
static int serve_guest_port;
static int serve_max_clones = 16;
static int serve_queue = 64;
static int serve_queue_timeout_ms = 10000;
static gboolean serve_keep;
static gboolean serve_verbose;

static const GOptionEntry serve_entries[] = {
    { "listen", 'l', 0, G_OPTION_ARG_STRING, &serve_listen,
      "Accept TCP connections on ADDR:PORT (ADDR default 127.0.0.1)",
      "[ADDR:]PORT" },
    { "pool", 'p', 0, G_OPTION_ARG_FILENAME, &serve_pool,
      "The socket of the 'vmfork pool' to take clones from", "POOL" },
    { "guest-port", 'g', 0, G_OPTION_ARG_INT, &serve_guest_port,
      "Forward each connection to this TCP port of its clone's guest", "P" },
    { "max-clones", 'n', 0, G_OPTION_ARG_INT, &serve_max_clones,
      "At most N connections have a clone at a time (default 16)", "N" },
    { "queue", 'q', 0, G_OPTION_ARG_INT, &serve_queue,
      "Up to N more connections wait for a clone (default 64)", "N" },
    { "queue-timeout", 'w', 0, G_OPTION_ARG_INT, &serve_queue_timeout_ms,
      "How long a connection waits for its clone (default 10000)", "MS" },
    { "keep", 'k', 0, G_OPTION_ARG_NONE, &serve_keep,
      "Keep each clone running when its connection ends", NULL },
    { "verbose", 'v', 0, G_OPTION_ARG_NONE, &serve_verbose,
      "Print a line for each step of each connection", NULL },
    { NULL }
};

#define SERVE_DESCRIPTION \
    "Accepts TCP connections; each gets a fresh running clone from the " \
    "pool at POOL and is forwarded to port P of that clone's guest, " \
    "through the clone's own user-network host forward (start the pool " \
    "with --hostfwd-step, the template with a hostfwd to port P).  When " \
    "either side ends its stream, the connection closes and the clone is " \
    "released (ended), unless --keep.\n" \
    "A connection beyond --max-clones waits in the queue; one beyond the " \
    "queue, or waiting longer than --queue-timeout, gets the line " \
    "\"vmfork serve: busy ...\" and is closed.  SIGINT or SIGTERM stops " \
    "the server: connections end and their clones are released.\n" \
    "\n" TOOL_HELP_EXIT_CODES

/* "PORT" or "ADDR:PORT" ("[V6]:PORT"), ADDR an IP address; else NULL. */
static GSocketAddress *parse_listen(const char *text)
{
    g_autoptr(GSocketConnectable) na = NULL;
    g_autoptr(GInetAddress) ip = NULL;
    guint64 port;

    if (g_ascii_string_to_unsigned(text, 10, 0, 65535, &port, NULL)) {
        return g_inet_socket_address_new_from_string("127.0.0.1", port);
    }
    na = g_network_address_parse(text, 0, NULL);
    if (!na || !strchr(text, ':')) {
        return NULL;
    }
    ip = g_inet_address_new_from_string(
        g_network_address_get_hostname(G_NETWORK_ADDRESS(na)));
    if (!ip) {
        return NULL;
    }
    return g_inet_socket_address_new(ip,
        g_network_address_get_port(G_NETWORK_ADDRESS(na)));
}

int cmd_serve(Tool *tool, int argc, char **argv)
{
    g_autoptr(GSocketAddress) addr = NULL;
    g_autoptr(GSocketAddress) bound = NULL;
    g_autoptr(GError) err = NULL;
    Serve serve = { 0 };
    guint sig_int, sig_term;
    int rc;

    command_init(tool, "vmfork serve", "",
                 "Give each TCP connection a clone of its own.",
                 SERVE_DESCRIPTION, serve_entries);
    rc = tool_parse(tool, &argc, &argv, 0, 0);
    if (rc) {
        return rc;
    }
    if (!serve_listen || !serve_pool || !serve_guest_port) {
        return tool_usage_error(tool, "--listen, --pool and --guest-port "
                                "are required");
    }
    addr = parse_listen(serve_listen);
    if (!addr) {
        return tool_usage_error(tool, "--listen takes PORT or ADDR:PORT, "
                                "not '%s'", serve_listen);
    }
    if (serve_guest_port < 1 || serve_guest_port > 65535) {
        return tool_usage_error(tool, "--guest-port must be from 1 to 65535");
    }
    if (serve_max_clones < 1 || serve_queue < 0 ||
        serve_queue_timeout_ms < 0) {
        return tool_usage_error(tool, "--max-clones must be at least 1, "
                                "--queue and --queue-timeout not negative");
    }

    serve.pool_path = serve_pool;
    serve.guest_port = serve_guest_port;
    serve.max_clones = serve_max_clones;
    serve.queue_max = serve_queue;
    serve.queue_timeout_ms = serve_queue_timeout_ms;
    serve.keep = serve_keep;
    serve.verbose = serve_verbose;
    serve.loop = g_main_loop_new(NULL, FALSE);
    serve.connector = g_socket_client_new();
    /* Local sockets only: no proxy lookup on the way */
    g_socket_client_set_enable_proxy(serve.connector, FALSE);
    serve.service = g_socket_service_new();
    g_socket_listener_set_backlog(G_SOCKET_LISTENER(serve.service),
                                  SOMAXCONN);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(serve.service),
                                       addr, G_SOCKET_TYPE_STREAM,
                                       G_SOCKET_PROTOCOL_TCP, NULL, &bound,
                                       &err)) {
        tool_message(tool, "cannot listen on %s: %s", serve_listen,
                     err->message);
        rc = TOOL_EXIT_IO;
        goto out;
    }
    g_signal_connect(serve.service, "incoming", G_CALLBACK(on_incoming),
                     &serve);
    sig_int = g_unix_signal_add(SIGINT, on_signal, &serve);
    sig_term = g_unix_signal_add(SIGTERM, on_signal, &serve);
    g_socket_service_start(serve.service);
    {
        g_autofree char *where = g_socket_connectable_to_string(
            G_SOCKET_CONNECTABLE(bound));

        printf("vmfork serve: listening on %s, pool %s, guest port %d\n",
               where, serve.pool_path, serve.guest_port);
        fflush(stdout);
    }

    g_main_loop_run(serve.loop);

    g_source_remove(sig_int);
    g_source_remove(sig_term);
    if (serve.stop_timer) {
        g_source_remove(serve.stop_timer);
    }
    printf("vmfork serve: %" G_GUINT64_FORMAT " connections, %"
           G_GUINT64_FORMAT " served, %" G_GUINT64_FORMAT " busy, %"
           G_GUINT64_FORMAT " failed\n", serve.accepted, serve.served,
           serve.busy, serve.failed);
    fflush(stdout);
out:
    g_object_unref(serve.service);
    g_object_unref(serve.connector);
    g_main_loop_unref(serve.loop);
    return rc;
}
