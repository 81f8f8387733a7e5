/*
 * Unit tests of the synchronous QMP client (qmp/qmp.h) against a scripted
 * QMP peer (qmp-peer.h): no QEMU.
 *
 * Assertions are non-fatal so that the fixture teardown always runs: it
 * closes the client and stops the peer thread, which removes its socket.
 * A test returns early when a step it depends on failed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <qmp/qmp.h>

#include "test-util.h"

typedef struct {
    QmpPeer *peer;
    QmpClient *client;
} Fixture;

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    g_clear_pointer(&f->client, qmp_close);
    g_clear_pointer(&f->peer, qmp_peer_free);
}

/* Starts a peer playing @script and connects a client to it. */
static gboolean start(Fixture *f, const QmpPeerStep *script)
{
    g_autoptr(GError) err = NULL;

    f->peer = qmp_peer_start(script);
    f->client = qmp_connect_unix(qmp_peer_path(f->peer), TIMEOUT_MS, &err);
    g_assert_no_error(err);
    return f->client != NULL;
}

/* Closes the client and checks that the peer played its script to the end. */
static gboolean finish(Fixture *f)
{
    g_clear_pointer(&f->client, qmp_close);
    return peer_finished(f->peer);
}

static void assert_error_contains(const GError *err, const char *part)
{
    if (err && !strstr(err->message, part)) {
        g_test_message("error '%s' does not contain '%s'", err->message, part);
        g_test_fail();
    }
}

/* ---- connecting ------------------------------------------------------- */

static void connect_reads_greeting_and_negotiates(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE, PEER_END,
    };
    int major = -1, minor = -1, micro = -1;
    JsonNode *caps;

    (void)data;
    REQUIRE(start(f, script));
    g_assert_cmpstr(qmp_client_qemu_version(f->client, &major, &minor, &micro),
                    ==, "10.0.13");
    g_assert_cmpint(major, ==, 10);
    g_assert_cmpint(minor, ==, 0);
    g_assert_cmpint(micro, ==, 13);
    g_assert_cmpstr(qmp_client_qemu_package(f->client), ==,
                    "Debian 1:10.0.13+ds-0+deb13u1");
    g_assert_true(qmp_client_has_capability(f->client, "oob"));
    g_assert_false(qmp_client_has_capability(f->client, "exec-oob"));
    g_assert_true(json_object_has_member(qmp_client_greeting(f->client),
                                         "version"));
    g_assert_cmpint(qmp_client_get_fd(f->client), >=, 0);
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 0);
    REQUIRE(finish(f));

    /* Exactly one message, without arguments. */
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 1);
    caps = qmp_peer_received(f->peer, 0);
    assert_json(caps, "{\"execute\": \"qmp_capabilities\", "
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
    f->client = qmp_connect_unix_with_caps(qmp_peer_path(f->peer), caps,
                                           TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(f->client != NULL);
    REQUIRE(finish(f));
    assert_json(qmp_peer_received(f->peer, 0),
                "{\"execute\": \"qmp_capabilities\", "
                "\"arguments\": {\"enable\": [\"oob\"]}, \"id\": \"libqmp-1\"}");
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
    f->client = qmp_connect_unix_with_caps(qmp_peer_path(f->peer), caps,
                                           TIMEOUT_MS, &err);
    g_assert_null(f->client);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_COMMAND);
    REQUIRE(err != NULL);
    g_assert_cmpstr(err->message, ==, "capabilities negotiation failed: "
                    "GenericError: Capability 'x' not available");
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    g_assert_cmpstr(qmp_error_desc(err), ==, "Capability 'x' not available");
    REQUIRE(finish(f));
}

static void connect_rejects_what_is_not_a_greeting(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_SEND("{\"return\": {}}\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;

    (void)data;
    f->peer = qmp_peer_start(script);
    f->client = qmp_connect_unix(qmp_peer_path(f->peer), TIMEOUT_MS, &err);
    g_assert_null(f->client);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "not a QMP greeting");
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
    f->client = qmp_connect_unix(qmp_peer_path(f->peer), 200, &err);
    g_assert_null(f->client);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    assert_error_contains(err, "QMP greeting");
    g_assert_cmpint(elapsed_ms(t0), >=, 200);
    g_assert_cmpint(elapsed_ms(t0), <, 2000);
}

static void connect_to_missing_socket_is_io_error(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(QmpClient) client =
        qmp_connect_unix("/nonexistent/vmfork-test.sock", TIMEOUT_MS, &err);

    g_assert_null(client);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_IO);
    assert_error_contains(err, "/nonexistent/vmfork-test.sock");
    assert_error_contains(err, g_strerror(ENOENT));
}

static void connect_accepts_path_longer_than_sun_path(Fixture *f,
                                                      gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE, PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(GString) path = NULL;
    g_autofree char *dir = NULL;

    (void)data;
    f->peer = qmp_peer_start(script);
    dir = g_path_get_dirname(qmp_peer_path(f->peer));
    path = g_string_new(dir);
    while (path->len < 200) {
        g_string_append(path, "/.");
    }
    g_string_append(path, "/qmp.sock");
    f->client = qmp_connect_unix(path->str, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(f->client != NULL);
    REQUIRE(finish(f));
}

static void connect_fd_on_socketpair(void)
{
    const char *input = QMP_PEER_GREETING_TEXT
                        "{\"return\": {}, \"id\": \"libqmp-1\"}\r\n";
    g_autoptr(GError) err = NULL;
    g_autoptr(QmpClient) client = NULL;
    char buf[256];
    ssize_t n;
    int sv[2];

    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    /* All the server's part fits in the socket buffer beforehand. */
    n = write(sv[1], input, strlen(input));
    g_assert_cmpint(n, ==, (ssize_t)strlen(input));
    client = qmp_connect_fd(sv[0], NULL, TIMEOUT_MS, &err);
    g_assert_no_error(err);
    g_assert_nonnull(client);
    n = recv(sv[1], buf, sizeof(buf) - 1, MSG_DONTWAIT);
    g_assert_cmpint(n, >, 0);
    buf[MAX(n, 0)] = '\0';
    g_assert_cmpstr(buf, ==, "{\"execute\":\"qmp_capabilities\","
                             "\"id\":\"libqmp-1\"}\n");
    close(sv[1]);
}

/* ---- commands --------------------------------------------------------- */

static void execute_returns_the_return_value(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_REPLY("{\"status\": \"running\", \"singlestep\": false, "
                   "\"running\": true}"),
        PEER_EXPECT("{\"execute\": \"query-version\"}"),
        PEER_REPLY("[]"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) ret2 = NULL;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{\"status\": \"running\", \"singlestep\": false, "
                     "\"running\": true}");
    ret2 = qmp_execute(f->client, "query-version", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret2, "[]");
    REQUIRE(finish(f));
}

static void execute_sends_arguments_and_unique_ids(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"human-monitor-command\", "
                    "\"arguments\": {\"command-line\": \"info version\"}}"),
        PEER_REPLY("\"10.0.13\\r\\n\""),
        PEER_EXPECT("{\"execute\": \"stop\"}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) ret2 = NULL;

    (void)data;
    json_object_set_string_member(args, "command-line", "info version");
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "human-monitor-command", args, TIMEOUT_MS,
                      &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(ret != NULL);
    g_assert_cmpstr(json_node_get_string(ret), ==, "10.0.13\r\n");
    ret2 = qmp_execute(f->client, "stop", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    /* The caller's arguments are left as they were. */
    g_assert_cmpuint(json_object_get_size(args), ==, 1);
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 3);
    assert_json(qmp_peer_received(f->peer, 1),
                "{\"execute\": \"human-monitor-command\", \"arguments\": "
                "{\"command-line\": \"info version\"}, \"id\": \"libqmp-2\"}");
    assert_json(qmp_peer_received(f->peer, 2),
                "{\"execute\": \"stop\", \"id\": \"libqmp-3\"}");
}

static void execute_json_parses_arguments(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"device_del\", "
                    "\"arguments\": {\"id\": \"nic0\"}}"),
        PEER_REPLY("{}"),
        PEER_EXPECT("{\"execute\": \"cont\"}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) ret2 = NULL;
    JsonNode *bad;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute_json(f->client, "device_del", "{\"id\": \"nic0\"}",
                           TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{}");

    /* Invalid arguments: nothing is sent, the client stays usable. */
    bad = qmp_execute_json(f->client, "device_del", "[\"nic0\"]", TIMEOUT_MS,
                           &err);
    g_assert_null(bad);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
    g_clear_error(&err);
    bad = qmp_execute_json(f->client, "device_del", "{id: nic0", TIMEOUT_MS,
                           &err);
    g_assert_null(bad);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
    g_clear_error(&err);

    ret2 = qmp_execute_json(f->client, "cont", "", TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret2, "{}");
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 3);
    assert_json(qmp_peer_received(f->peer, 2),
                "{\"execute\": \"cont\", \"id\": \"libqmp-3\"}");
}

static void execute_error_reply_is_command_error(Fixture *f,
                                                 gconstpointer data)
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
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) copy = NULL;
    g_autoptr(JsonNode) ret = NULL;
    JsonNode *bad;

    (void)data;
    REQUIRE(start(f, script));
    bad = qmp_execute(f->client, "no-such-command", NULL, TIMEOUT_MS, &err);
    g_assert_null(bad);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_COMMAND);
    REQUIRE(err != NULL);
    g_assert_cmpstr(err->message, ==, "CommandNotFound: The command "
                    "no-such-command has not been found");
    g_assert_cmpstr(qmp_error_class(err), ==, "CommandNotFound");
    g_assert_cmpstr(qmp_error_desc(err), ==,
                    "The command no-such-command has not been found");

    /* Class and description travel with copies. */
    copy = g_error_copy(err);
    g_assert_cmpstr(qmp_error_class(copy), ==, "CommandNotFound");
    g_assert_cmpstr(qmp_error_desc(copy), ==,
                    "The command no-such-command has not been found");
    g_clear_error(&err);

    /* The connection stays usable. */
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{\"status\": \"paused\"}");
    REQUIRE(finish(f));
}

static void error_class_is_null_for_other_errors(void)
{
    g_autoptr(GError) io = g_error_new(QMP_ERROR, QMP_ERROR_IO, "x");
    g_autoptr(GError) other = g_error_new(G_FILE_ERROR, G_FILE_ERROR_NOENT,
                                          "y");

    g_assert_null(qmp_error_class(io));
    g_assert_null(qmp_error_desc(io));
    g_assert_null(qmp_error_class(other));
    g_assert_null(qmp_error_desc(NULL));
}

static void execute_reply_with_unknown_id_is_protocol_error(Fixture *f,
                                                            gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        /* One write: the client hangs up after the first of the two. */
        PEER_SEND("{\"return\": {}, \"id\": \"someone-else-7\"}\r\n"
                  "{\"return\": {}, \"id\": $id}\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "unexpected id");
    assert_error_contains(err, "someone-else-7");
    g_clear_error(&err);

    /* The connection is unusable: the same error, nothing sent. */
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "someone-else-7");
    REQUIRE(finish(f));
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 2);
}

static void execute_drops_late_reply_to_timed_out_command(Fixture *f,
                                                          gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"slow\", \"id\": \"libqmp-2\"}"),
        PEER_EXPECT("{\"execute\": \"fast\", \"id\": \"libqmp-3\"}"),
        PEER_SEND("{\"return\": {\"late\": true}, \"id\": \"libqmp-2\"}\r\n"),
        PEER_SEND(EVENT("STOP", "{}")),
        PEER_REPLY("{\"fast\": true}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) event = NULL;
    JsonNode *slow;

    (void)data;
    REQUIRE(start(f, script));
    slow = qmp_execute(f->client, "slow", NULL, 100, &err);
    g_assert_null(slow);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    assert_error_contains(err, "timed out waiting for the reply to 'slow'");
    g_clear_error(&err);

    ret = qmp_execute(f->client, "fast", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{\"fast\": true}");
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 1);
    event = qmp_next_event(f->client, 0, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(event != NULL);
    g_assert_cmpstr(qmp_event_name(event), ==, "STOP");
    REQUIRE(finish(f));
}

static void execute_idless_error_reply_is_the_reply(Fixture *f,
                                                    gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\"error\": {\"class\": \"GenericError\", "
                  "\"desc\": \"JSON parse error, expecting value\"}}\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_COMMAND);
    g_assert_cmpstr(qmp_error_class(err), ==, "GenericError");
    g_assert_cmpstr(qmp_error_desc(err), ==,
                    "JSON parse error, expecting value");
    REQUIRE(finish(f));
}

static void execute_idless_return_is_protocol_error(Fixture *f,
                                                    gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\"return\": {}}\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "without an id");
    REQUIRE(finish(f));
}

/* ---- events ----------------------------------------------------------- */

static void events_around_replies_are_queued_in_order(Fixture *f,
                                                      gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"stop\"}"),
        PEER_SEND(EVENT("A", "{\"n\": 1}")),
        PEER_SEND(EVENT("B", "{\"n\": 2}")),
        PEER_REPLY("{}"),
        PEER_SEND(EVENT("C", "{\"n\": 3}")),
        PEER_EXPECT("{\"execute\": \"cont\"}"),
        PEER_SEND(EVENT("D", "{\"n\": 4}")),
        PEER_REPLY("{}"),
        PEER_END,
    };
    static const char *const names[] = { "A", "B", "C", "D" };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) r1 = NULL;
    g_autoptr(JsonNode) r2 = NULL;
    JsonNode *none;

    (void)data;
    REQUIRE(start(f, script));
    r1 = qmp_execute(f->client, "stop", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    /* Reading stops at the reply: C is not looked at yet. */
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 2);
    r2 = qmp_execute(f->client, "cont", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 4);

    for (int i = 0; i < 4; i++) {
        g_autoptr(JsonNode) event = qmp_next_event(f->client, 0, &err);

        REQUIRE_NO_ERROR(err);
        REQUIRE(event != NULL);
        g_assert_cmpstr(qmp_event_name(event), ==, names[i]);
        g_assert_cmpint(json_object_get_int_member(qmp_event_data(event), "n"),
                        ==, i + 1);
    }
    none = qmp_next_event(f->client, 0, &err);
    g_assert_null(none);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    REQUIRE(finish(f));
}

static void wait_event_takes_named_event_and_keeps_others(Fixture *f,
                                                          gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"system_reset\"}"),
        PEER_SEND(EVENT("RESUME", "{}")),
        PEER_SEND(EVENT("STOP", "{\"n\": 1}")),
        PEER_SEND(EVENT("RESET", "{\"guest\": false}")),
        PEER_REPLY("{}"),
        PEER_SEND(EVENT("STOP", "{\"n\": 2}")),
        PEER_SEND(EVENT("SUSPEND", "{}")),
        PEER_SEND(EVENT("SHUTDOWN", "{}")),
        PEER_END,
    };
    static const char *const rest[] = { "RESUME", "RESET", "SUSPEND" };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) stop1 = NULL;
    g_autoptr(JsonNode) stop2 = NULL;
    g_autoptr(JsonNode) shutdown = NULL;
    JsonNode *none;
    gint64 t0;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "system_reset", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 3);

    stop1 = qmp_wait_event(f->client, "STOP", TIMEOUT_MS, &err);  /* queued */
    REQUIRE_NO_ERROR(err);
    REQUIRE(stop1 != NULL);
    g_assert_cmpint(json_object_get_int_member(qmp_event_data(stop1), "n"),
                    ==, 1);
    stop2 = qmp_wait_event(f->client, "STOP", TIMEOUT_MS, &err);  /* read */
    REQUIRE_NO_ERROR(err);
    REQUIRE(stop2 != NULL);
    g_assert_cmpint(json_object_get_int_member(qmp_event_data(stop2), "n"),
                    ==, 2);
    shutdown = qmp_wait_event(f->client, "SHUTDOWN", TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(shutdown != NULL);
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 3);

    t0 = g_get_monotonic_time();
    none = qmp_wait_event(f->client, "NEVER", 100, &err);
    g_assert_null(none);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    g_clear_error(&err);
    g_assert_cmpint(elapsed_ms(t0), >=, 100);
    g_assert_cmpint(elapsed_ms(t0), <, 1500);

    for (int i = 0; i < 3; i++) {
        g_autoptr(JsonNode) event = qmp_next_event(f->client, 0, &err);

        REQUIRE_NO_ERROR(err);
        REQUIRE(event != NULL);
        g_assert_cmpstr(qmp_event_name(event), ==, rest[i]);
    }
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 0);
    REQUIRE(finish(f));
}

static void next_event_waits_for_an_event(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_SLEEP(200),
        PEER_SEND(EVENT("POWERDOWN", "{}")),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) event = NULL;
    JsonNode *none;
    gint64 t0;

    (void)data;
    REQUIRE(start(f, script));
    t0 = g_get_monotonic_time();
    none = qmp_next_event(f->client, 0, &err);
    g_assert_null(none);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    g_clear_error(&err);
    g_assert_cmpint(elapsed_ms(t0), <, 100);

    event = qmp_next_event(f->client, -1, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(event != NULL);
    g_assert_cmpstr(qmp_event_name(event), ==, "POWERDOWN");
    g_assert_nonnull(qmp_event_data(event));
    REQUIRE(finish(f));
}

static void events_sent_before_close_stay_readable(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"quit\"}"),
        PEER_REPLY("{}"),
        PEER_SEND("{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, "
                  "\"event\": \"SHUTDOWN\"}\r\n"),
        PEER_CLOSE,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) event = NULL;
    JsonNode *none;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "quit", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    event = qmp_next_event(f->client, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(event != NULL);
    g_assert_cmpstr(qmp_event_name(event), ==, "SHUTDOWN");
    g_assert_null(qmp_event_data(event));

    none = qmp_next_event(f->client, TIMEOUT_MS, &err);
    g_assert_null(none);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    g_clear_error(&err);
    none = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(none);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    REQUIRE(finish(f));
}

/* ---- broken peers ----------------------------------------------------- */

static void peer_closing_mid_reply_is_closed_error(Fixture *f,
                                                   gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\"return\": {\"status\": \"runn"),
        PEER_CLOSE,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    assert_error_contains(err, "in the middle of a message");
    g_clear_error(&err);

    ret = qmp_next_event(f->client, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    g_clear_error(&err);
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    REQUIRE(finish(f));
}

static void oversized_reply_is_protocol_error(Fixture *f, gconstpointer data)
{
    g_autofree char *big = g_strnfill(2000, 'x');
    g_autofree char *reply = g_strdup_printf(
        "{\"return\": \"%s\", \"id\": $id}\r\n", big);
    const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-big\"}"),
        PEER_SEND(reply),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    qmp_client_set_max_message_size(f->client, 1024);
    ret = qmp_execute(f->client, "query-big", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "exceeds the maximum size of 1024 bytes");
    REQUIRE(finish(f));
}

static void invalid_json_reply_is_protocol_error(Fixture *f,
                                                 gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\"return\": {\"status\": runn}, \"id\": $id}\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "invalid JSON");
    REQUIRE(finish(f));
}

static void non_object_reply_is_protocol_error(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("[{\"return\": {}, \"id\": $id}]\r\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    assert_error_contains(err, "expected a JSON object, got an array");
    REQUIRE(finish(f));
}

static void slow_reply_times_out_within_deadline(Fixture *f,
                                                 gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SLEEP(10000),
        PEER_REPLY("{}"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    JsonNode *ret;
    gint64 t0;

    (void)data;
    REQUIRE(start(f, script));
    t0 = g_get_monotonic_time();
    ret = qmp_execute(f->client, "query-status", NULL, 250, &err);
    g_assert_null(ret);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    g_assert_cmpint(elapsed_ms(t0), >=, 250);
    g_assert_cmpint(elapsed_ms(t0), <, 1500);
    /* The teardown stops the sleeping peer. */
}

/* ---- layout of what the peer sends ------------------------------------ */

static void pretty_printed_reply_is_read(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SEND("{\n    \"timestamp\": {\n        \"seconds\": 1,\n"
                  "        \"microseconds\": 2\n    },\n"
                  "    \"event\": \"STOP\"\n}\n"),
        PEER_SEND("{\n    \"return\": {\n        \"status\": \"running\",\n"
                  "        \"singlestep\": false,\n"
                  "        \"running\": true\n    },\n    \"id\": $id\n}\n"),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonNode) event = NULL;

    (void)data;
    REQUIRE(start(f, script));
    ret = qmp_execute(f->client, "query-status", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{\"status\": \"running\", \"singlestep\": false, "
                     "\"running\": true}");
    event = qmp_next_event(f->client, 0, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(event != NULL);
    g_assert_cmpstr(qmp_event_name(event), ==, "STOP");
    REQUIRE(finish(f));
}

static void reply_sent_one_byte_at_a_time_is_read(Fixture *f,
                                                  gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_SEND_BYTEWISE(QMP_PEER_GREETING_TEXT, 1),
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-name\"}"),
        PEER_SEND_BYTEWISE(EVENT("STOP", "{}"), 1),
        /* No newline after it: the client may close as soon as it has
         * the closing brace, and the peer would fail writing more. */
        PEER_SEND_BYTEWISE("{\"return\": {\"name\": \"vm{0}\\\"\"}, "
                           "\"id\": $id}", 1),
        PEER_END,
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;

    (void)data;
    REQUIRE(start(f, script));
    g_assert_cmpstr(qmp_client_qemu_version(f->client, NULL, NULL, NULL), ==,
                    "10.0.13");
    ret = qmp_execute(f->client, "query-name", NULL, TIMEOUT_MS, &err);
    REQUIRE_NO_ERROR(err);
    assert_json(ret, "{\"name\": \"vm{0}\\\"\"}");
    g_assert_cmpuint(qmp_client_events_queued(f->client), ==, 1);
    REQUIRE(finish(f));
}

/* ---- file descriptors and signals ------------------------------------- */

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
    g_autoptr(JsonNode) ret = NULL;
    g_autofree char *tmp = NULL;
    struct stat mine, theirs;
    char buf[8] = "";
    int fd, received;
    JsonNode *bad;

    (void)data;
    fd = g_file_open_tmp("libqmp-fd-XXXXXX", &tmp, &err);
    REQUIRE_NO_ERROR(err);
    REQUIRE(fd >= 0);
    unlink(tmp);
    json_object_set_string_member(args, "fdname", "fd0");
    if (start(f, script)) {
        /* A bad fd is refused before anything is sent. */
        bad = qmp_execute_with_fd(f->client, "getfd", args, 99999, TIMEOUT_MS,
                                  &err);
        g_assert_null(bad);
        g_assert_error(err, QMP_ERROR, QMP_ERROR_INVALID);
        g_clear_error(&err);

        ret = qmp_execute_with_fd(f->client, "getfd", args, fd, TIMEOUT_MS,
                                  &err);
        g_assert_no_error(err);
        g_clear_error(&err);
        assert_json(ret, "{}");
        finish(f);
    }
    received = qmp_peer_steal_fd(f->peer, 0);
    g_assert_cmpint(received, >=, 0);
    g_assert_cmpint(received, !=, fd);
    if (received >= 0) {
        /* The same open file: same inode, shared file offset. */
        g_assert_cmpint(fstat(fd, &mine), ==, 0);
        g_assert_cmpint(fstat(received, &theirs), ==, 0);
        g_assert_cmpuint(mine.st_dev, ==, theirs.st_dev);
        g_assert_cmpuint(mine.st_ino, ==, theirs.st_ino);
        g_assert_cmpint(write(received, "vmfork", 6), ==, 6);
        g_assert_cmpint(lseek(fd, 0, SEEK_CUR), ==, 6);
        g_assert_cmpint(pread(fd, buf, 6, 0), ==, 6);
        g_assert_cmpstr(buf, ==, "vmfork");
        close(received);
    }
    g_assert_cmpint(qmp_peer_steal_fd(f->peer, 1), ==, -1);
    close(fd);
}

static void sending_to_closed_peer_does_not_raise_sigpipe(Fixture *f,
                                                          gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING, PEER_NEGOTIATE, PEER_CLOSE,
    };
    g_autoptr(GError) err = NULL;
    g_autofree char *arg = g_strdup_printf("{\"data\": \"%0*d\"}", 300000, 0);
    void (*old)(int) = signal(SIGPIPE, SIG_DFL);   /* would kill us */
    JsonNode *ret;

    (void)data;
    if (start(f, script)) {
        /* The peer has closed; nothing has been read since. */
        g_assert_true(qmp_peer_finish(f->peer, TIMEOUT_MS, NULL));
        ret = qmp_execute_json(f->client, "guest-write", arg, TIMEOUT_MS, &err);
        g_assert_null(ret);
        g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
        g_clear_error(&err);
        ret = qmp_next_event(f->client, TIMEOUT_MS, &err);
        g_assert_null(ret);
        g_assert_error(err, QMP_ERROR, QMP_ERROR_CLOSED);
    }
    signal(SIGPIPE, old);
}

#define ADD(path, fn) \
    g_test_add(path, Fixture, NULL, NULL, fn, fixture_teardown)

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_set_nonfatal_assertions();

    ADD("/libqmp/connect/reads-greeting-and-negotiates",
        connect_reads_greeting_and_negotiates);
    ADD("/libqmp/connect/enables-requested-capabilities",
        connect_enables_requested_capabilities);
    ADD("/libqmp/connect/fails-when-negotiation-is-refused",
        connect_fails_when_negotiation_is_refused);
    ADD("/libqmp/connect/rejects-what-is-not-a-greeting",
        connect_rejects_what_is_not_a_greeting);
    ADD("/libqmp/connect/times-out-without-greeting",
        connect_times_out_without_greeting);
    g_test_add_func("/libqmp/connect/missing-socket-is-io-error",
                    connect_to_missing_socket_is_io_error);
    ADD("/libqmp/connect/accepts-path-longer-than-sun-path",
        connect_accepts_path_longer_than_sun_path);
    g_test_add_func("/libqmp/connect/fd-on-socketpair",
                    connect_fd_on_socketpair);

    ADD("/libqmp/execute/returns-the-return-value",
        execute_returns_the_return_value);
    ADD("/libqmp/execute/sends-arguments-and-unique-ids",
        execute_sends_arguments_and_unique_ids);
    ADD("/libqmp/execute/json-parses-arguments",
        execute_json_parses_arguments);
    ADD("/libqmp/execute/error-reply-is-command-error",
        execute_error_reply_is_command_error);
    g_test_add_func("/libqmp/error/class-is-null-for-other-errors",
                    error_class_is_null_for_other_errors);
    ADD("/libqmp/execute/reply-with-unknown-id-is-protocol-error",
        execute_reply_with_unknown_id_is_protocol_error);
    ADD("/libqmp/execute/drops-late-reply-to-timed-out-command",
        execute_drops_late_reply_to_timed_out_command);
    ADD("/libqmp/execute/idless-error-reply-is-the-reply",
        execute_idless_error_reply_is_the_reply);
    ADD("/libqmp/execute/idless-return-is-protocol-error",
        execute_idless_return_is_protocol_error);

    ADD("/libqmp/events/around-replies-are-queued-in-order",
        events_around_replies_are_queued_in_order);
    ADD("/libqmp/events/wait-takes-named-event-and-keeps-others",
        wait_event_takes_named_event_and_keeps_others);
    ADD("/libqmp/events/next-waits-for-an-event",
        next_event_waits_for_an_event);
    ADD("/libqmp/events/sent-before-close-stay-readable",
        events_sent_before_close_stay_readable);

    ADD("/libqmp/peer/closing-mid-reply-is-closed-error",
        peer_closing_mid_reply_is_closed_error);
    ADD("/libqmp/peer/oversized-reply-is-protocol-error",
        oversized_reply_is_protocol_error);
    ADD("/libqmp/peer/invalid-json-reply-is-protocol-error",
        invalid_json_reply_is_protocol_error);
    ADD("/libqmp/peer/non-object-reply-is-protocol-error",
        non_object_reply_is_protocol_error);
    ADD("/libqmp/peer/slow-reply-times-out-within-deadline",
        slow_reply_times_out_within_deadline);
    ADD("/libqmp/peer/pretty-printed-reply-is-read",
        pretty_printed_reply_is_read);
    ADD("/libqmp/peer/reply-sent-one-byte-at-a-time-is-read",
        reply_sent_one_byte_at_a_time_is_read);

    ADD("/libqmp/fd/passed-with-scm-rights", fd_is_passed_with_scm_rights);
    ADD("/libqmp/signals/sending-to-closed-peer-does-not-raise-sigpipe",
        sending_to_closed_peer_does_not_raise_sigpipe);
    return g_test_run();
}
