/*
 * Unit tests of the asynchronous QMP client (qmp/async.h) and its GLib
 * adapter (qmp/adapters/glib.h) against a scripted QMP peer (qmp-peer.h):
 * no QEMU.
 *
 * Each test runs the client in a GMainContext of its own and records every
 * callback, in the order they ran, as a line of text in a log ("a: ok {}",
 * "event STOP", "b: CLOSED connection closed by the peer", ...); tests then
 * compare the whole log with what a user should see.
 *
 * Assertions are non-fatal so that the fixture teardown always runs: it
 * frees the client, stops the peer thread (which removes its socket) and
 * frees the context.  A test returns early when a step it depends on failed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <qmp/adapters/glib.h>
#include <qmp/async.h>

#include "test-util.h"

typedef struct Fixture Fixture;

/* One command's callback data. */
typedef struct {
    Fixture *f;
    char *label;
    GError *error;              /* a copy of the error it got */
} Call;

struct Fixture {
    QmpPeer *peer;
    GMainContext *context;
    QmpAsyncClient *client;
    GPtrArray *log;             /* char *, one line per callback */
    GPtrArray *calls;           /* Call *, freed in the teardown */
    gboolean connect_done;
    GError *connect_error;
    gboolean disconnected;
    gboolean free_in_callback;  /* the next command callback frees */
};

static const char *error_code_name(const GError *error)
{
    static const char *const names[] = {
        [QMP_ERROR_COMMAND] = "COMMAND", [QMP_ERROR_IO] = "IO",
        [QMP_ERROR_CLOSED] = "CLOSED", [QMP_ERROR_TIMEOUT] = "TIMEOUT",
        [QMP_ERROR_PROTOCOL] = "PROTOCOL", [QMP_ERROR_INVALID] = "INVALID",
    };

    if (error->domain != QMP_ERROR || error->code < 0 ||
        error->code > QMP_ERROR_INVALID) {
        return "NOT-A-QMP-ERROR";
    }
    return names[error->code];
}

static void log_line(Fixture *f, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void log_line(Fixture *f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_ptr_array_add(f->log, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

static void call_free(Call *call)
{
    g_free(call->label);
    g_clear_error(&call->error);
    g_free(call);
}

/* ---- callbacks -------------------------------------------------------- */

static void on_connect(QmpAsyncClient *client, const GError *error,
                       gpointer data)
{
    Fixture *f = data;

    g_assert_true(client == f->client);
    g_assert_false(f->connect_done);    /* once only */
    f->connect_done = TRUE;
    if (error) {
        f->connect_error = g_error_copy(error);
        log_line(f, "connect: %s %s", error_code_name(error), error->message);
    } else {
        log_line(f, "connected");
    }
}

static void on_event(QmpAsyncClient *client, JsonNode *event, gpointer data)
{
    Fixture *f = data;

    (void)client;
    log_line(f, "event %s", qmp_event_name(event));
}

static void on_disconnect(QmpAsyncClient *client, const GError *error,
                          gpointer data)
{
    Fixture *f = data;

    (void)client;
    g_assert_false(f->disconnected);    /* once only */
    f->disconnected = TRUE;
    if (error) {
        log_line(f, "disconnected: %s %s", error_code_name(error),
                 error->message);
    } else {
        log_line(f, "disconnected");
    }
}

static void on_reply(QmpAsyncClient *client, JsonNode *result,
                     const GError *error, gpointer data)
{
    Call *call = data;
    Fixture *f = call->f;

    g_assert_true((result == NULL) != (error == NULL));
    if (error) {
        call->error = g_error_copy(error);
        log_line(f, "%s: %s %s", call->label, error_code_name(error),
                 error->message);
    } else {
        g_autofree char *text = json_to_string(result, FALSE);

        log_line(f, "%s: ok %s", call->label, text);
    }
    if (f->free_in_callback) {
        f->free_in_callback = FALSE;
        g_assert_true(client == f->client);
        f->client = NULL;
        qmp_async_client_free(client);
    }
}

/* ---- fixture ---------------------------------------------------------- */

static void fixture_setup(Fixture *f, gconstpointer data)
{
    (void)data;
    f->context = g_main_context_new();
    f->log = g_ptr_array_new_with_free_func(g_free);
    f->calls = g_ptr_array_new_with_free_func((GDestroyNotify)call_free);
    f->client = qmp_async_client_new();
    qmp_async_client_set_event_callback(f->client, on_event, f);
    qmp_async_client_set_disconnect_callback(f->client, on_disconnect, f);
    qmp_glib_attach(f->client, f->context);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    g_clear_pointer(&f->client, qmp_async_client_free);
    g_clear_pointer(&f->peer, qmp_peer_free);
    g_clear_pointer(&f->context, g_main_context_unref);
    g_clear_pointer(&f->log, g_ptr_array_unref);
    g_clear_pointer(&f->calls, g_ptr_array_unref);
    g_clear_error(&f->connect_error);
}

static gboolean set_flag(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

/* Runs the loop until @n lines are logged or @timeout_ms passes. */
static gboolean run_until_logged(Fixture *f, guint n, int timeout_ms)
{
    gboolean timed_out = FALSE;
    GSource *timer = g_timeout_source_new(timeout_ms);

    g_source_set_callback(timer, set_flag, &timed_out, NULL);
    g_source_attach(timer, f->context);
    while (f->log->len < n && !timed_out) {
        g_main_context_iteration(f->context, TRUE);
    }
    g_source_destroy(timer);
    g_source_unref(timer);
    if (f->log->len < n) {
        g_test_message("timed out after %d ms waiting for %u log lines, "
                       "got %u", timeout_ms, n, f->log->len);
    }
    return f->log->len >= n;
}

/* Runs the loop for @ms milliseconds. */
static void run_for(Fixture *f, int ms)
{
    gboolean done = FALSE;
    GSource *timer = g_timeout_source_new(ms);

    g_source_set_callback(timer, set_flag, &done, NULL);
    g_source_attach(timer, f->context);
    while (!done) {
        g_main_context_iteration(f->context, TRUE);
    }
    g_source_destroy(timer);
    g_source_unref(timer);
}

/* Starts a peer playing @script and connects the client to it (no wait). */
static gboolean start(Fixture *f, const QmpPeerStep *script)
{
    g_autoptr(GError) err = NULL;
    gboolean ok;

    f->peer = qmp_peer_start(script);
    ok = qmp_async_client_connect_unix(f->client, qmp_peer_path(f->peer),
                                       NULL, TIMEOUT_MS, on_connect, f, &err);
    g_assert_no_error(err);
    return ok;
}

/* start(), then runs the loop until the client is connected. */
static gboolean start_connected(Fixture *f, const QmpPeerStep *script)
{
    if (!start(f, script) || !run_until_logged(f, 1, TIMEOUT_MS)) {
        return FALSE;
    }
    g_assert_cmpstr(g_ptr_array_index(f->log, 0), ==, "connected");
    g_assert_true(qmp_async_client_is_connected(f->client));
    g_ptr_array_remove_index(f->log, 0);
    return f->connect_error == NULL;
}

/* Callback data that logs "<label>: ..." (owned by the fixture). */
static Call *new_call(Fixture *f, const char *label)
{
    Call *call = g_new0(Call, 1);

    call->f = f;
    call->label = g_strdup(label);
    g_ptr_array_add(f->calls, call);
    return call;
}

/* Queues @command; its callback logs "<label>: ...". */
static gboolean execute(Fixture *f, const char *label, const char *command,
                        const char *arguments_json, int timeout_ms)
{
    g_autoptr(GError) err = NULL;
    Call *call = new_call(f, label);
    gboolean ok;

    ok = qmp_async_client_execute_json(f->client, command, arguments_json,
                                       timeout_ms, on_reply, call, &err);
    g_assert_no_error(err);
    return ok;
}

static Call *find_call(Fixture *f, const char *label)
{
    for (guint i = 0; i < f->calls->len; i++) {
        Call *call = g_ptr_array_index(f->calls, i);

        if (strcmp(call->label, label) == 0) {
            return call;
        }
    }
    g_assert_not_reached();
    return NULL;
}

/* Frees the client and checks that the peer played its script to the end. */
static gboolean finish(Fixture *f)
{
    g_clear_pointer(&f->client, qmp_async_client_free);
    return peer_finished(f->peer);
}

/* Checks the whole log against @expected (NULL-terminated). */
static void assert_log(Fixture *f, const char *const *expected)
{
    guint n = g_strv_length((char **)expected);
    gboolean same = f->log->len == n;

    for (guint i = 0; same && i < n; i++) {
        same = strcmp(g_ptr_array_index(f->log, i), expected[i]) == 0;
    }
    if (!same) {
        g_test_message("log differs; expected:");
        for (guint i = 0; i < n; i++) {
            g_test_message("  %s", expected[i]);
        }
        g_test_message("got:");
        for (guint i = 0; i < f->log->len; i++) {
            g_test_message("  %s", (char *)g_ptr_array_index(f->log, i));
        }
        g_test_fail();
    }
}

#define ASSERT_LOG(f, ...) assert_log((f), (const char *const[]){ __VA_ARGS__, NULL })

/* Checks that the peer received @json (JSON equal) as message @index. */
static void assert_received(Fixture *f, guint index, const char *json)
{
    if (!assert_json(qmp_peer_received(f->peer, index), json)) {
        g_test_message("(in message %u)", index);
    }
}

/* Arguments of 1 MiB: more than the socket buffers hold. */
static char *big_arguments(void)
{
    return g_strdup_printf("{\"data\": \"%0*d\"}", 1 << 20, 0);
}

/* ---- connecting ------------------------------------------------------- */

static void connect_reads_greeting_and_negotiates(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE, PEER_END,
    };
    int major = -1, minor = -1, micro = -1;

    (void)data;
    REQUIRE(start(f, script));
    /* Nothing happens before the loop runs. */
    g_assert_false(f->connect_done);
    g_assert_false(qmp_async_client_is_connected(f->client));
    g_assert_null(qmp_async_client_qemu_version(f->client, NULL, NULL, NULL));
    g_assert_cmpint(qmp_async_client_get_fd(f->client), >=, 0);

    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "connected");
    g_assert_true(qmp_async_client_is_connected(f->client));
    g_assert_cmpstr(qmp_async_client_qemu_version(f->client, &major, &minor,
                                                  &micro), ==, "10.0.13");
    g_assert_cmpint(major, ==, 10);
    g_assert_cmpint(minor, ==, 0);
    g_assert_cmpint(micro, ==, 13);
    g_assert_cmpstr(qmp_async_client_qemu_package(f->client), ==,
                    "Debian 1:10.0.13+ds-0+deb13u1");
    g_assert_true(qmp_async_client_has_capability(f->client, "oob"));
    g_assert_false(qmp_async_client_has_capability(f->client, "exec-oob"));
    g_assert_true(json_object_has_member(
        qmp_async_client_greeting(f->client), "version"));
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);
    /* Connected and idle: read, nothing to write, no timer. */
    g_assert_cmpint(qmp_async_client_get_io(f->client), ==,
                    QMP_ASYNC_IO_READ);
    g_assert_cmpint(qmp_async_client_get_deadline(f->client), ==, -1);
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 1);
    assert_received(f, 0, "{\"execute\": \"qmp_capabilities\", "
                          "\"id\": \"libqmp-1\"}");
}

static void connect_enables_requested_capabilities(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_EXPECT("{\"execute\": \"qmp_capabilities\", "
                    "\"arguments\": {\"enable\": [\"oob\"]}}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    static const char *const caps[] = { "oob", NULL };
    g_autoptr(GError) err = NULL;

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(qmp_async_client_connect_unix(f->client, qmp_peer_path(f->peer),
                                          caps, TIMEOUT_MS, on_connect, f,
                                          &err));
    REQUIRE_NO_ERROR(err);
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "connected");
    REQUIRE(finish(f));
    assert_received(f, 0, "{\"execute\": \"qmp_capabilities\", \"arguments\": "
                          "{\"enable\": [\"oob\"]}, \"id\": \"libqmp-1\"}");
}

static void connect_fails_when_negotiation_is_refused(Fixture *f,
                                                      gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_EXPECT("{\"execute\": \"qmp_capabilities\"}"),
        PEER_ERROR_REPLY("GenericError", "Capability 'x' not available"),
        PEER_END,
    };
    static const char *const caps[] = { "x", NULL };
    g_autoptr(GError) err = NULL;

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(qmp_async_client_connect_unix(f->client, qmp_peer_path(f->peer),
                                          caps, TIMEOUT_MS, on_connect, f,
                                          &err));
    /* Queued before the connection is ready: failed with it. */
    REQUIRE(execute(f, "held", "query-status", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f,
        "held: CLOSED capabilities negotiation failed: GenericError: "
        "Capability 'x' not available",
        "connect: COMMAND capabilities negotiation failed: GenericError: "
        "Capability 'x' not available");
    g_assert_cmpstr(qmp_error_class(f->connect_error), ==, "GenericError");
    g_assert_cmpstr(qmp_error_desc(f->connect_error), ==,
                    "Capability 'x' not available");
    g_assert_false(f->disconnected);
    g_assert_cmpint(qmp_async_client_get_fd(f->client), ==, -1);
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 1);
}

static void connect_rejects_what_is_not_a_greeting(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_SEND("{\"return\": {}}\r\n"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start(f, script));
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "connect: PROTOCOL not a QMP greeting: {\"return\":{}}");
    REQUIRE(finish(f));
}

static void connect_times_out_without_greeting(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_SLEEP(10000), PEER_GREETING, PEER_END,
    };
    g_autoptr(GError) err = NULL;
    gint64 t0 = g_get_monotonic_time();

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(qmp_async_client_connect_unix(f->client, qmp_peer_path(f->peer),
                                          NULL, 200, on_connect, f, &err));
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "connect: TIMEOUT timed out waiting for the QMP greeting");
    g_assert_cmpint(elapsed_ms(t0), >=, 200);
    g_assert_cmpint(elapsed_ms(t0), <, 2000);
    /* The teardown stops the sleeping peer. */
}

static void connect_to_missing_socket_fails_at_once(Fixture *f,
                                                    gconstpointer data)
{
    g_autoptr(GError) err = NULL;

    (void)data;
    g_assert_false(qmp_async_client_connect_unix(
        f->client, "/nonexistent/vmfork-test.sock", NULL, TIMEOUT_MS,
        on_connect, f, &err));
    g_assert_error(err, QMP_ERROR, QMP_ERROR_IO);
    REQUIRE(err != NULL);
    g_assert_nonnull(strstr(err->message, "/nonexistent/vmfork-test.sock"));
    g_assert_nonnull(strstr(err->message, g_strerror(ENOENT)));
    /* The callback is never called. */
    run_for(f, 50);
    g_assert_false(f->connect_done);
    g_assert_cmpuint(f->log->len, ==, 0);
}

static void connect_retries_while_backlog_is_full(Fixture *f,
                                                   gconstpointer data)
{
    static const char server_says[] =
        QMP_PEER_GREETING_TEXT "{\"return\": {}, \"id\": \"libqmp-1\"}\r\n";
    g_autoptr(GError) err = NULL;
    g_autofree char *dir = g_dir_make_tmp("test-async-XXXXXX", &err);
    g_autofree char *path = NULL;
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int listener = -1, filler = -1, queued = -1, conn = -1;
    int *const fds[] = { &listener, &filler, &queued, &conn };

    (void)data;
    REQUIRE_NO_ERROR(err);
    path = g_build_filename(dir, "qmp.sock", NULL);
    g_strlcpy(addr.sun_path, path, sizeof(addr.sun_path));
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    filler = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || filler < 0 ||
        bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(listener, 0) < 0 ||
        connect(filler, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        g_test_message("setting up the listener: %s", g_strerror(errno));
        g_test_fail();
        goto out;
    }
    /* The backlog holds the filler: the client has to wait. */
    if (!qmp_async_client_connect_unix(f->client, path, NULL, TIMEOUT_MS,
                                       on_connect, f, &err)) {
        g_assert_no_error(err);
        goto out;
    }
    g_assert_cmpint(qmp_async_client_get_io(f->client), ==,
                    QMP_ASYNC_IO_NONE);
    g_assert_cmpint(qmp_async_client_get_deadline(f->client), >, 0);
    run_for(f, 60);
    g_assert_false(f->connect_done);
    g_assert_cmpint(qmp_async_client_get_io(f->client), ==,
                    QMP_ASYNC_IO_NONE);

    /* Make room; the next retry gets in. */
    queued = accept(listener, NULL, NULL);
    g_assert_cmpint(queued, >=, 0);
    while (qmp_async_client_get_io(f->client) == QMP_ASYNC_IO_NONE &&
           !f->connect_done) {
        g_main_context_iteration(f->context, TRUE);
    }
    conn = accept(listener, NULL, NULL);
    g_assert_cmpint(conn, >=, 0);
    if (conn < 0) {
        goto out;
    }
    g_assert_cmpint(write(conn, server_says, strlen(server_says)), ==,
                    (ssize_t)strlen(server_says));
    if (run_until_logged(f, 1, TIMEOUT_MS)) {
        ASSERT_LOG(f, "connected");
    }
out:
    g_clear_pointer(&f->client, qmp_async_client_free);
    for (guint i = 0; i < G_N_ELEMENTS(fds); i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
        }
    }
    if (path) {
        unlink(path);
    }
    rmdir(dir);
}

static void connect_fd_on_socketpair(Fixture *f, gconstpointer data)
{
    static const char server_says[] =
        QMP_PEER_GREETING_TEXT "{\"return\": {}, \"id\": \"libqmp-1\"}\r\n";
    g_autoptr(GError) err = NULL;
    char buf[256];
    ssize_t n;
    int sv[2];

    (void)data;
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    /* All the server's part fits in the socket buffer beforehand. */
    n = write(sv[1], server_says, strlen(server_says));
    g_assert_cmpint(n, ==, (ssize_t)strlen(server_says));
    g_assert_true(qmp_async_client_connect_fd(f->client, sv[0], NULL,
                                              TIMEOUT_MS, on_connect, f,
                                              &err));
    g_assert_no_error(err);
    if (run_until_logged(f, 1, TIMEOUT_MS)) {
        ASSERT_LOG(f, "connected");
    }
    /* Connected: the rest of the output goes out with the next write. */
    while (qmp_async_client_get_io(f->client) & QMP_ASYNC_IO_WRITE) {
        g_main_context_iteration(f->context, TRUE);
    }
    n = recv(sv[1], buf, sizeof(buf) - 1, MSG_DONTWAIT);
    g_assert_cmpint(n, >, 0);
    buf[MAX(n, 0)] = '\0';
    g_assert_cmpstr(buf, ==, "{\"execute\":\"qmp_capabilities\","
                             "\"id\":\"libqmp-1\"}\n");
    /* A client connects once. */
    g_assert_false(qmp_async_client_connect_fd(f->client, dup(sv[1]), NULL,
                                               TIMEOUT_MS, on_connect, f,
                                               &err));
    g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
    close(sv[1]);
}

static void commands_queued_early_are_sent_once_connected(Fixture *f,
                                                          gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"first\", \"id\": \"libqmp-2\"}"),
        PEER_REPLY("1"),
        PEER_EXPECT("{\"execute\": \"second\", \"id\": \"libqmp-3\", "
                    "\"arguments\": {\"n\": 2}}"),
        PEER_REPLY("2"),
        PEER_END,
    };

    (void)data;
    /* Even before connecting. */
    REQUIRE(execute(f, "first", "first", NULL, TIMEOUT_MS));
    REQUIRE(start(f, script));
    REQUIRE(execute(f, "second", "second", "{\"n\": 2}", TIMEOUT_MS));
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 2);
    REQUIRE(run_until_logged(f, 3, TIMEOUT_MS));
    ASSERT_LOG(f, "connected", "first: ok 1", "second: ok 2");
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);
    REQUIRE(finish(f));
}

/* ---- commands --------------------------------------------------------- */

static void outstanding_commands_answered_out_of_order(Fixture *f,
                                                       gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-a\", \"id\": \"libqmp-2\"}"),
        PEER_EXPECT("{\"execute\": \"query-b\", \"id\": \"libqmp-3\"}"),
        PEER_EXPECT("{\"execute\": \"query-c\", \"id\": \"libqmp-4\"}"),
        PEER_SEND("{\"return\": {\"n\": 3}, \"id\": \"libqmp-4\"}\r\n"),
        PEER_SEND("{\"return\": {\"n\": 1}, \"id\": \"libqmp-2\"}\r\n"),
        PEER_SEND("{\"return\": {\"n\": 2}, \"id\": \"libqmp-3\"}\r\n"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "a", "query-a", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "b", "query-b", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "c", "query-c", NULL, TIMEOUT_MS));
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 3);
    /* Queued, not written: that is the loop's job. */
    g_assert_cmpint(qmp_async_client_get_io(f->client), ==,
                    QMP_ASYNC_IO_READ | QMP_ASYNC_IO_WRITE);
    g_assert_cmpuint(f->log->len, ==, 0);
    REQUIRE(run_until_logged(f, 3, TIMEOUT_MS));
    ASSERT_LOG(f, "c: ok {\"n\":3}", "a: ok {\"n\":1}", "b: ok {\"n\":2}");
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);
    REQUIRE(finish(f));
}

static void events_interleaved_with_replies_arrive_in_order(Fixture *f,
                                                            gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"stop\"}"),
        PEER_EXPECT("{\"execute\": \"cont\"}"),
        PEER_SEND(EVENT("A", "{}")),
        PEER_SEND("{\"return\": {}, \"id\": \"libqmp-2\"}\r\n"),
        PEER_SEND(EVENT("B", "{}") EVENT("C", "{}")
                  "{\"return\": {}, \"id\": \"libqmp-3\"}\r\n"),
        PEER_SEND(EVENT("D", "{}")),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "stop", "stop", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "cont", "cont", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 6, TIMEOUT_MS));
    ASSERT_LOG(f, "event A", "stop: ok {}", "event B", "event C",
               "cont: ok {}", "event D");
    REQUIRE(finish(f));
}

static void error_reply_is_command_error(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"no-such-command\"}"),
        PEER_ERROR_REPLY("CommandNotFound",
                         "The command no-such-command has not been found"),
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_REPLY("{\"status\": \"paused\"}"),
        PEER_END,
    };
    Call *call;

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "bad", "no-such-command", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    /* The client stays usable. */
    g_assert_true(qmp_async_client_is_connected(f->client));
    REQUIRE(execute(f, "good", "query-status", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f,
        "bad: COMMAND CommandNotFound: The command no-such-command has not "
        "been found",
        "good: ok {\"status\":\"paused\"}");
    call = find_call(f, "bad");
    g_assert_cmpstr(qmp_error_class(call->error), ==, "CommandNotFound");
    g_assert_cmpstr(qmp_error_desc(call->error), ==,
                    "The command no-such-command has not been found");
    REQUIRE(finish(f));
}

static void idless_error_reply_goes_to_oldest_command(Fixture *f,
                                                      gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"first\"}"),
        PEER_EXPECT("{\"execute\": \"second\"}"),
        PEER_SEND("{\"error\": {\"class\": \"GenericError\", "
                  "\"desc\": \"JSON parse error\"}}\r\n"),
        PEER_REPLY("{}"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "first", "first", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "second", "second", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "first: COMMAND GenericError: JSON parse error",
               "second: ok {}");
    REQUIRE(finish(f));
}

static void json_arguments_are_checked_before_queueing(Fixture *f,
                                                       gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"device_del\", "
                    "\"arguments\": {\"id\": \"nic0\"}}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;

    (void)data;
    REQUIRE(start_connected(f, script));
    g_assert_false(qmp_async_client_execute_json(f->client, "device_del",
                                                 "[\"nic0\"]", TIMEOUT_MS,
                                                 NULL, NULL, &err));
    g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
    g_clear_error(&err);
    g_assert_false(qmp_async_client_execute_json(f->client, "device_del",
                                                 "{id: nic0", TIMEOUT_MS,
                                                 NULL, NULL, &err));
    g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);

    REQUIRE(execute(f, "del", "device_del", "{\"id\": \"nic0\"}", TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "del: ok {}");
    REQUIRE(finish(f));
}

static void arguments_are_copied_when_queued(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"device_del\", "
                    "\"arguments\": {\"id\": \"nic0\"}}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(JsonObject) args = json_object_new();
    Call *call = new_call(f, "del");

    (void)data;
    /* Queued before the connection is ready, then changed by the caller. */
    json_object_set_string_member(args, "id", "nic0");
    REQUIRE(qmp_async_client_execute(f->client, "device_del", args,
                                     TIMEOUT_MS, on_reply, call, NULL));
    json_object_set_string_member(args, "id", "changed");
    REQUIRE(start(f, script));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "connected", "del: ok {}");
    g_assert_cmpstr(json_object_get_string_member(args, "id"), ==, "changed");
    REQUIRE(finish(f));
}

static void fd_is_passed_with_scm_rights(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT_FD("{\"execute\": \"getfd\", "
                       "\"arguments\": {\"fdname\": \"fd0\"}}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) args = json_object_new();
    g_autofree char *tmp = NULL;
    struct stat mine, theirs;
    Call *call = new_call(f, "getfd");
    int fd, copy, received;

    (void)data;
    fd = g_file_open_tmp("libqmp-fd-XXXXXX", &tmp, &err);
    REQUIRE_NO_ERROR(err);
    unlink(tmp);
    json_object_set_string_member(args, "fdname", "fd0");
    if (start_connected(f, script)) {
        g_assert_false(qmp_async_client_execute_with_fd(
            f->client, "getfd", args, -1, TIMEOUT_MS, on_reply, call, &err));
        g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
        g_clear_error(&err);

        /* The client keeps its own duplicate: ours may go at once. */
        copy = dup(fd);
        g_assert_true(qmp_async_client_execute_with_fd(
            f->client, "getfd", args, copy, TIMEOUT_MS, on_reply, call, &err));
        g_assert_no_error(err);
        close(copy);
        if (run_until_logged(f, 1, TIMEOUT_MS)) {
            ASSERT_LOG(f, "getfd: ok {}");
        }
        finish(f);
    }
    received = qmp_peer_steal_fd(f->peer, 0);
    g_assert_cmpint(received, >=, 0);
    if (received >= 0) {
        g_assert_cmpint(fstat(fd, &mine), ==, 0);
        g_assert_cmpint(fstat(received, &theirs), ==, 0);
        g_assert_cmpuint(mine.st_dev, ==, theirs.st_dev);
        g_assert_cmpuint(mine.st_ino, ==, theirs.st_ino);
        close(received);
    }
    close(fd);
}

/* ---- timeouts --------------------------------------------------------- */

static void slow_reply_times_out_and_client_stays_usable(Fixture *f,
                                                         gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"slow\", \"id\": \"libqmp-2\"}"),
        PEER_SLEEP(10000),
        PEER_REPLY("{}"),
        PEER_END,
    };
    gint64 t0;

    (void)data;
    REQUIRE(start_connected(f, script));
    t0 = g_get_monotonic_time();
    REQUIRE(execute(f, "slow", "slow", NULL, 250));
    g_assert_cmpint(qmp_async_client_get_deadline(f->client), >, 0);
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    ASSERT_LOG(f, "slow: TIMEOUT timed out waiting for the reply to 'slow'");
    g_assert_cmpint(elapsed_ms(t0), >=, 250);
    g_assert_cmpint(elapsed_ms(t0), <, 1500);
    g_assert_true(qmp_async_client_is_connected(f->client));
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);
    g_assert_cmpint(qmp_async_client_get_deadline(f->client), ==, -1);
    /* The teardown stops the sleeping peer. */
}

static void late_reply_to_timed_out_command_is_dropped(Fixture *f,
                                                       gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"slow\", \"id\": \"libqmp-2\"}"),
        PEER_EXPECT("{\"execute\": \"fast\", \"id\": \"libqmp-3\"}"),
        PEER_SLEEP(400),
        PEER_SEND("{\"return\": {\"late\": true}, \"id\": \"libqmp-2\"}\r\n"),
        PEER_SEND(EVENT("STOP", "{}")),
        PEER_REPLY("{\"fast\": true}"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "slow", "slow", NULL, 100));
    REQUIRE(execute(f, "fast", "fast", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 3, TIMEOUT_MS));
    ASSERT_LOG(f, "slow: TIMEOUT timed out waiting for the reply to 'slow'",
               "event STOP", "fast: ok {\"fast\":true}");
    REQUIRE(finish(f));
}

static void command_not_yet_written_is_never_sent(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_SLEEP(400),        /* reads nothing meanwhile */
        PEER_EXPECT("{\"execute\": \"big\"}"),
        PEER_REPLY("{}"),
        PEER_END,               /* "never" would fail the script */
    };
    g_autofree char *arg = big_arguments();   /* stuck until the peer reads */

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "big", "big", arg, TIMEOUT_MS));
    REQUIRE(execute(f, "never", "never", NULL, 100));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "never: TIMEOUT timed out sending 'never'", "big: ok {}");
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 2);
}

static void command_partly_written_is_completed(Fixture *f,
                                                gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_SLEEP(400),        /* reads nothing meanwhile */
        PEER_EXPECT("{\"execute\": \"big\"}"),
        PEER_REPLY("{}"),       /* late: dropped */
        PEER_EXPECT("{\"execute\": \"after\"}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autofree char *arg = big_arguments();

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "big", "big", arg, 100));
    REQUIRE(run_until_logged(f, 1, TIMEOUT_MS));
    REQUIRE(execute(f, "after", "after", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "big: TIMEOUT timed out sending 'big'", "after: ok {}");
    REQUIRE(finish(f));
}

/* ---- the end of the connection ---------------------------------------- */

static void peer_dying_fails_outstanding_commands(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"a\"}"),
        PEER_EXPECT("{\"execute\": \"b\"}"),
        PEER_EXPECT("{\"execute\": \"c\"}"),
        PEER_SEND(EVENT("SHUTDOWN", "{}")),
        PEER_CLOSE,
    };
    g_autoptr(GError) err = NULL;

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "a", "a", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "b", "b", NULL, -1));
    REQUIRE(execute(f, "c", "c", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 5, TIMEOUT_MS));
    ASSERT_LOG(f, "event SHUTDOWN",
               "a: CLOSED connection closed by the peer",
               "b: CLOSED connection closed by the peer",
               "c: CLOSED connection closed by the peer",
               "disconnected: CLOSED connection closed by the peer");
    g_assert_false(qmp_async_client_is_connected(f->client));
    g_assert_cmpint(qmp_async_client_get_fd(f->client), ==, -1);
    g_assert_cmpint(qmp_async_client_get_io(f->client), ==,
                    QMP_ASYNC_IO_NONE);
    g_assert_false(qmp_async_client_execute(f->client, "d", NULL, TIMEOUT_MS,
                                            NULL, NULL, &err));
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    REQUIRE(finish(f));
    g_assert_cmpuint(f->log->len, ==, 5);   /* nothing more on free */
}

static void peer_closing_mid_reply_is_closed_error(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\"return\": {\"status\": \"runn"),
        PEER_CLOSE,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "status", "query-status", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f,
        "status: CLOSED connection closed by the peer in the middle of a "
        "message",
        "disconnected: CLOSED connection closed by the peer in the middle of "
        "a message");
    REQUIRE(finish(f));
}

static void reply_with_unknown_id_ends_connection(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"a\"}"),
        PEER_EXPECT("{\"execute\": \"b\"}"),
        PEER_SEND("{\"return\": {}, \"id\": \"someone-else-7\"}\r\n"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "a", "a", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "b", "b", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 3, TIMEOUT_MS));
#define UNKNOWN "PROTOCOL reply with an unexpected id: " \
                "{\"return\":{},\"id\":\"someone-else-7\"}"
    ASSERT_LOG(f, "a: " UNKNOWN, "b: " UNKNOWN, "disconnected: " UNKNOWN);
#undef UNKNOWN
    REQUIRE(finish(f));
}

static void close_fails_outstanding_commands(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"a\"}"),
        PEER_EXPECT("{\"execute\": \"b\"}"),
        PEER_END,
    };
    gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "a", "a", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "b", "b", NULL, -1));
    /* Until the peer has both (qmp_capabilities was the first). */
    while (qmp_peer_n_received(f->peer) < 3 &&
           g_get_monotonic_time() < end) {
        g_main_context_iteration(f->context, FALSE);
        g_usleep(1000);
    }
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 3);
    qmp_async_client_close(f->client);
    /* The callbacks ran from close() itself. */
    ASSERT_LOG(f, "a: CLOSED connection closed by the client",
               "b: CLOSED connection closed by the client", "disconnected");
    g_assert_cmpuint(qmp_async_client_outstanding(f->client), ==, 0);
    qmp_async_client_close(f->client);      /* again: nothing happens */
    g_assert_cmpuint(f->log->len, ==, 3);
    REQUIRE(finish(f));
    g_assert_cmpuint(f->log->len, ==, 3);   /* nor on free */
}

static void free_from_callback_fails_the_rest(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"a\"}"),
        PEER_EXPECT("{\"execute\": \"b\"}"),
        PEER_EXPECT("{\"execute\": \"c\"}"),
        PEER_SEND("{\"return\": {}, \"id\": \"libqmp-2\"}\r\n"
                  EVENT("NOT_DELIVERED", "{}")
                  "{\"return\": {}, \"id\": \"libqmp-3\"}\r\n"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "a", "a", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "b", "b", NULL, TIMEOUT_MS));
    REQUIRE(execute(f, "c", "c", NULL, TIMEOUT_MS));
    f->free_in_callback = TRUE;
    REQUIRE(run_until_logged(f, 4, TIMEOUT_MS));
    ASSERT_LOG(f, "a: ok {}", "b: CLOSED connection closed by the client",
               "c: CLOSED connection closed by the client", "disconnected");
    g_assert_null(f->client);
    /* Nothing more runs: the source went with the client. */
    run_for(f, 50);
    g_assert_cmpuint(f->log->len, ==, 4);
    REQUIRE(finish(f));
}

/* ---- layout of what the peer sends ------------------------------------ */

static void partial_reads_are_reassembled(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_SEND_BYTEWISE(QMP_PEER_GREETING_TEXT, 1),
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-name\"}"),
        PEER_SEND("{\"timestamp\": {\"seconds\": 1, \"micro"),
        PEER_SLEEP(50),
        PEER_SEND("seconds\": 2}, \"event\": \"ST"),
        PEER_SLEEP(50),
        PEER_SEND("OP\"}\r\n{\"return\": {\"name\": \"vm{0}\\\"\"}, "),
        PEER_SLEEP(50),
        /* No newline after it: the client may close as soon as it has
         * the closing brace, and the peer would fail writing more. */
        PEER_SEND_BYTEWISE("\"id\": $id}", 1),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    g_assert_cmpstr(qmp_async_client_qemu_version(f->client, NULL, NULL, NULL),
                    ==, "10.0.13");
    REQUIRE(execute(f, "name", "query-name", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "event STOP", "name: ok {\"name\":\"vm{0}\\\"\"}");
    REQUIRE(finish(f));
}

static void pretty_printed_messages_are_read(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\n    \"timestamp\": {\n        \"seconds\": 1,\n"
                  "        \"microseconds\": 2\n    },\n"
                  "    \"event\": \"STOP\"\n}\n"),
        PEER_SEND("{\n    \"return\": {\n        \"running\": false\n"
                  "    },\n    \"id\": $id\n}\n"),
        PEER_END,
    };

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "status", "query-status", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "event STOP", "status: ok {\"running\":false}");
    REQUIRE(finish(f));
}

static void large_command_is_written_in_pieces(Fixture *f,
                                               gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"guest-write\"}"),
        PEER_REPLY("{}"),
        PEER_EXPECT("{\"execute\": \"after\"}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autofree char *arg = big_arguments();   /* takes several writes */

    (void)data;
    REQUIRE(start_connected(f, script));
    REQUIRE(execute(f, "big", "guest-write", arg, TIMEOUT_MS));
    REQUIRE(execute(f, "after", "after", NULL, TIMEOUT_MS));
    REQUIRE(run_until_logged(f, 2, TIMEOUT_MS));
    ASSERT_LOG(f, "big: ok {}", "after: ok {}");
    REQUIRE(finish(f));
}

static void sending_to_closed_peer_does_not_raise_sigpipe(Fixture *f,
                                                          gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_SEND(EVENT("SHUTDOWN", "{}")),
        PEER_CLOSE,
    };
    g_autofree char *arg = big_arguments();
    void (*old)(int) = signal(SIGPIPE, SIG_DFL);   /* would kill us */

    (void)data;
    if (start_connected(f, script)) {
        /* The peer has closed; the client has not noticed yet. */
        g_assert_true(qmp_peer_finish(f->peer, TIMEOUT_MS, NULL));
        execute(f, "write", "guest-write", arg, TIMEOUT_MS);
        qmp_async_client_handle_write(f->client);
        if (run_until_logged(f, 3, TIMEOUT_MS)) {
            ASSERT_LOG(f, "event SHUTDOWN",
                       "write: CLOSED connection closed by the peer",
                       "disconnected: CLOSED connection closed by the peer");
        }
    }
    signal(SIGPIPE, old);
}

/* ---- without an adapter ----------------------------------------------- */

/* One round of a plain poll() loop driving @client by its getters. */
static void poll_once(QmpAsyncClient *client, int max_ms)
{
    int fd = qmp_async_client_get_fd(client);
    QmpAsyncIo io = qmp_async_client_get_io(client);
    gint64 deadline = qmp_async_client_get_deadline(client);
    struct pollfd pfd = {
        .fd = io ? fd : -1,
        .events = ((io & QMP_ASYNC_IO_READ) ? POLLIN : 0) |
                  ((io & QMP_ASYNC_IO_WRITE) ? POLLOUT : 0),
    };
    int timeout = max_ms;

    if (deadline >= 0) {
        gint64 left = (deadline - g_get_monotonic_time() + 999) / 1000;

        timeout = (int)CLAMP(left, 0, max_ms);
    }
    if (poll(&pfd, 1, timeout) > 0) {
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            qmp_async_client_handle_read(client);
        }
        if (pfd.revents & POLLOUT) {
            qmp_async_client_handle_write(client);
        }
    }
    if (deadline >= 0 && g_get_monotonic_time() >= deadline) {
        qmp_async_client_handle_timer(client);
    }
}

static void poll_loop_drives_client_without_adapter(Fixture *f,
                                                    gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND(EVENT("RESUME", "{}")),
        PEER_REPLY("{\"running\": true}"),
        PEER_EXPECT("{\"execute\": \"slow\"}"),
        PEER_SLEEP(10000),
        PEER_END,
    };
    gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;

    (void)data;
    qmp_async_client_set_loop(f->client, NULL, NULL);   /* no GLib */
    REQUIRE(start(f, script));
    REQUIRE(execute(f, "status", "query-status", NULL, TIMEOUT_MS));
    while (f->log->len < 3 && g_get_monotonic_time() < end) {
        poll_once(f->client, 100);
    }
    REQUIRE(execute(f, "slow", "slow", NULL, 100));
    while (f->log->len < 4 && g_get_monotonic_time() < end) {
        poll_once(f->client, 100);
    }
    ASSERT_LOG(f, "connected", "event RESUME",
               "status: ok {\"running\":true}",
               "slow: TIMEOUT timed out waiting for the reply to 'slow'");
    /* The GLib context was never needed. */
    g_assert_false(g_main_context_pending(f->context));
    /* The teardown stops the sleeping peer. */
}

#define ADD(path, fn) \
    g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_set_nonfatal_assertions();

    ADD("/async/connect/reads-greeting-and-negotiates",
        connect_reads_greeting_and_negotiates);
    ADD("/async/connect/enables-requested-capabilities",
        connect_enables_requested_capabilities);
    ADD("/async/connect/fails-when-negotiation-is-refused",
        connect_fails_when_negotiation_is_refused);
    ADD("/async/connect/rejects-what-is-not-a-greeting",
        connect_rejects_what_is_not_a_greeting);
    ADD("/async/connect/times-out-without-greeting",
        connect_times_out_without_greeting);
    ADD("/async/connect/missing-socket-fails-at-once",
        connect_to_missing_socket_fails_at_once);
    ADD("/async/connect/retries-while-backlog-is-full",
        connect_retries_while_backlog_is_full);
    ADD("/async/connect/fd-on-socketpair", connect_fd_on_socketpair);
    ADD("/async/connect/commands-queued-early-are-sent-once-connected",
        commands_queued_early_are_sent_once_connected);

    ADD("/async/execute/outstanding-commands-answered-out-of-order",
        outstanding_commands_answered_out_of_order);
    ADD("/async/execute/events-interleaved-with-replies-arrive-in-order",
        events_interleaved_with_replies_arrive_in_order);
    ADD("/async/execute/error-reply-is-command-error",
        error_reply_is_command_error);
    ADD("/async/execute/idless-error-reply-goes-to-oldest-command",
        idless_error_reply_goes_to_oldest_command);
    ADD("/async/execute/json-arguments-are-checked-before-queueing",
        json_arguments_are_checked_before_queueing);
    ADD("/async/execute/arguments-are-copied-when-queued",
        arguments_are_copied_when_queued);
    ADD("/async/execute/fd-is-passed-with-scm-rights",
        fd_is_passed_with_scm_rights);

    ADD("/async/timeout/slow-reply-times-out-and-client-stays-usable",
        slow_reply_times_out_and_client_stays_usable);
    ADD("/async/timeout/late-reply-to-timed-out-command-is-dropped",
        late_reply_to_timed_out_command_is_dropped);

    ADD("/async/timeout/command-not-yet-written-is-never-sent",
        command_not_yet_written_is_never_sent);
    ADD("/async/timeout/command-partly-written-is-completed",
        command_partly_written_is_completed);

    ADD("/async/close/peer-dying-fails-outstanding-commands",
        peer_dying_fails_outstanding_commands);
    ADD("/async/close/peer-closing-mid-reply-is-closed-error",
        peer_closing_mid_reply_is_closed_error);
    ADD("/async/close/reply-with-unknown-id-ends-connection",
        reply_with_unknown_id_ends_connection);
    ADD("/async/close/close-fails-outstanding-commands",
        close_fails_outstanding_commands);
    ADD("/async/close/free-from-callback-fails-the-rest",
        free_from_callback_fails_the_rest);

    ADD("/async/peer/partial-reads-are-reassembled",
        partial_reads_are_reassembled);
    ADD("/async/peer/pretty-printed-messages-are-read",
        pretty_printed_messages_are_read);
    ADD("/async/peer/large-command-is-written-in-pieces",
        large_command_is_written_in_pieces);
    ADD("/async/signals/sending-to-closed-peer-does-not-raise-sigpipe",
        sending_to_closed_peer_does_not_raise_sigpipe);

    ADD("/async/loop/poll-loop-drives-client-without-adapter",
        poll_loop_drives_client_without_adapter);
    return g_test_run();
}
