/*
 * Unit tests of the command-line tools (qmp-call, vmfork): the built tools
 * run as subprocesses against a scripted QMP peer (qmp-peer.h), no QEMU.
 * Their paths come from the environment (TEST_QMP_CALL, TEST_VMFORK; meson
 * sets them).
 *
 * Each test checks what a user or a script relies on: the exit code, what
 * goes to stdout and stderr, and the exact QMP the tool sent.  Assertions
 * are non-fatal so that the fixture teardown always runs: it stops the
 * peers (which removes their sockets), kills and reaps any process a test
 * started, and removes the temporary directory.  Every tool run is reaped
 * before run_tool() returns, and killed first if it outlives its deadline.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gio/gio.h>

#include "test-util.h"

/* A tool that runs longer than this is killed and the test fails. */
#define TOOL_DEADLINE_MS 20000

/* The reply to vmfork with two children, 101 and 102. */
#define TWO_CHILDREN \
    "{\"children\": [" \
    "{\"pid\": 101, \"clone-id\": 1, \"monitor\": \"/tmp/c-0.sock\"}, " \
    "{\"pid\": 102, \"clone-id\": 2, \"monitor\": \"/tmp/c-1.sock\"}]}"

/* One tool run: exit code (-1: killed by a signal) and output. */
typedef struct {
    int status;
    char *out;
    char *err;
} ToolRun;

typedef struct {
    QmpPeer *peer;              /* the VM at SOCKET */
    QmpPeer *child_peer;        /* a child's own monitor (vmfork kill) */
    GSubprocess *victim;        /* a process standing in for a child */
    char *tmpdir;               /* for paths where no socket is */
    char *missing;              /* such a path */
    ToolRun run;
} Fixture;

static void run_clear(ToolRun *r)
{
    g_clear_pointer(&r->out, g_free);
    g_clear_pointer(&r->err, g_free);
    r->status = -1;
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
    (void)data;
    memset(f, 0, sizeof(*f));
    f->run.status = -1;
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    (void)data;
    g_clear_pointer(&f->peer, qmp_peer_free);
    g_clear_pointer(&f->child_peer, qmp_peer_free);
    if (f->victim) {
        g_subprocess_force_exit(f->victim);
        g_subprocess_wait(f->victim, NULL, NULL);
        g_clear_object(&f->victim);
    }
    if (f->tmpdir) {
        rmdir(f->tmpdir);
        g_clear_pointer(&f->tmpdir, g_free);
    }
    g_clear_pointer(&f->missing, g_free);
    run_clear(&f->run);
}

#define ADD(path, fn) \
    g_test_add(path, Fixture, NULL, fixture_setup, fn, fixture_teardown)

/* ---- running the tools -------------------------------------------------- */

static const char *tool_path(const char *name)
{
    return g_getenv(g_str_equal(name, "qmp-call") ? "TEST_QMP_CALL"
                                                  : "TEST_VMFORK");
}

typedef struct {
    gboolean done;
    char *out;
    char *err;
    GError *error;
} Communication;

static void communicated(GObject *source, GAsyncResult *res, gpointer data)
{
    Communication *c = data;

    g_subprocess_communicate_utf8_finish(G_SUBPROCESS(source), res, &c->out,
                                         &c->err, &c->error);
    c->done = TRUE;
}

static gboolean deadline_passed(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

/*
 * Runs the tool argv[0] ("qmp-call" or "vmfork") with argv[1..], @input
 * (nullable) on its stdin and, when @pass_fd >= 0, @pass_fd as its fd 5
 * (taken).  Waits for it to exit and reaps it; kills it after
 * TOOL_DEADLINE_MS.  Returns FALSE (after a failed assertion) when the tool
 * could not run or had to be killed.
 */
static gboolean run_toolv(ToolRun *r, const char *input, int pass_fd,
                          const char *const *argv)
{
    const char *path = tool_path(argv[0]);
    g_autoptr(GSubprocessLauncher) launcher = NULL;
    g_autoptr(GSubprocess) proc = NULL;
    g_autoptr(GPtrArray) args = g_ptr_array_new();
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GSource) timer = NULL;
    g_autoptr(GError) err = NULL;
    Communication c = { 0 };
    gboolean timed_out = FALSE;

    run_clear(r);
    if (!path) {
        g_assert_nonnull(path);     /* run it with meson test */
        if (pass_fd >= 0) {
            close(pass_fd);
        }
        return FALSE;
    }
    g_ptr_array_add(args, (gpointer)path);
    for (guint i = 1; argv[i]; i++) {
        g_ptr_array_add(args, (gpointer)argv[i]);
    }
    g_ptr_array_add(args, NULL);

    launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                         G_SUBPROCESS_FLAGS_STDERR_PIPE |
                                         (input ? G_SUBPROCESS_FLAGS_STDIN_PIPE
                                                : 0));
    if (pass_fd >= 0) {
        g_subprocess_launcher_take_fd(launcher, pass_fd, 5);
    }
    g_main_context_push_thread_default(ctx);
    proc = g_subprocess_launcher_spawnv(launcher,
                                        (const char *const *)args->pdata,
                                        &err);
    if (proc) {
        g_subprocess_communicate_utf8_async(proc, input, NULL, communicated,
                                            &c);
        timer = g_timeout_source_new(TOOL_DEADLINE_MS);
        g_source_set_callback(timer, deadline_passed, &timed_out, NULL);
        g_source_attach(timer, ctx);
        while (!c.done && !timed_out) {
            g_main_context_iteration(ctx, TRUE);
        }
        if (!c.done) {
            g_subprocess_force_exit(proc);
            while (!c.done) {
                g_main_context_iteration(ctx, TRUE);
            }
        }
        g_source_destroy(timer);
        g_subprocess_wait(proc, NULL, NULL);
    }
    g_main_context_pop_thread_default(ctx);

    g_assert_no_error(err);
    if (!proc) {
        return FALSE;
    }
    g_assert_false(timed_out);
    g_assert_no_error(c.error);
    g_clear_error(&c.error);
    r->out = c.out ? c.out : g_strdup("");
    r->err = c.err ? c.err : g_strdup("");
    r->status = g_subprocess_get_if_exited(proc) ?
                g_subprocess_get_exit_status(proc) : -1;
    if (g_test_verbose()) {
        g_autofree char *cmd = g_strjoinv(" ", (char **)argv);

        g_test_message("$ %s -> %d\nstdout: %s\nstderr: %s", cmd, r->status,
                       r->out, r->err);
    }
    return !timed_out;
}

static gboolean run_tool(ToolRun *r, const char *input, int pass_fd, ...)
    G_GNUC_NULL_TERMINATED;

static gboolean run_tool(ToolRun *r, const char *input, int pass_fd, ...)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    va_list ap;
    const char *arg;

    va_start(ap, pass_fd);
    while ((arg = va_arg(ap, const char *))) {
        g_ptr_array_add(argv, (gpointer)arg);
    }
    va_end(ap);
    g_ptr_array_add(argv, NULL);
    return run_toolv(r, input, pass_fd, (const char *const *)argv->pdata);
}

#define RUN(f, ...) run_tool(&(f)->run, NULL, -1, __VA_ARGS__, NULL)

/* ---- peers and checks ---------------------------------------------------- */

/* A script that answers one command @cmd with @reply_json, then @extra. */
static QmpPeer *peer_answering(const char *cmd, const char *reply_json,
                               const QmpPeerStep *extra)
{
    g_autofree char *expect = g_strdup_printf("{\"execute\": \"%s\"}", cmd);
    g_autofree char *reply = g_strdup_printf("{\"return\": %s, \"id\": $id}"
                                             "\r\n", reply_json);
    QmpPeerStep script[16] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT(expect),
        PEER_SEND(reply),
    };
    guint n = 5;

    for (guint i = 0; extra && extra[i].op != QMP_PEER_END; i++) {
        g_assert_cmpuint(n, <, G_N_ELEMENTS(script) - 1);
        script[n++] = extra[i];
    }
    script[n] = (QmpPeerStep)PEER_END;
    return qmp_peer_start(script);
}

/* The @index-th message the peer received, and its "arguments" member. */
static JsonNode *received_arguments(QmpPeer *peer, guint index)
{
    JsonNode *msg = qmp_peer_received(peer, index);

    if (!msg) {
        return NULL;
    }
    return json_object_get_member(json_node_get_object(msg), "arguments");
}

/* Parses the tool's stdout as one JSON value (NULL after an assertion). */
static JsonNode *stdout_json(const ToolRun *r)
{
    g_autoptr(GError) err = NULL;
    JsonNode *node = json_from_string(r->out, &err);

    g_assert_no_error(err);
    return node;
}

static void assert_matches(const char *text, const char *regex)
{
    if (!g_regex_match_simple(regex, text, G_REGEX_MULTILINE, 0)) {
        g_test_message("'%s' does not match /%s/", text, regex);
        g_assert_true(!"output matches the expected pattern");
    }
}

static guint count_lines(const char *text)
{
    guint n = 0;

    for (const char *p = text; *p; p++) {
        n += *p == '\n';
    }
    return n;
}

/* A path in a fresh directory where no socket is. */
static const char *missing_socket(Fixture *f)
{
    f->tmpdir = g_dir_make_tmp("test-tools-XXXXXX", NULL);
    g_assert_nonnull(f->tmpdir);
    f->missing = g_build_filename(f->tmpdir ? f->tmpdir : "/nonexistent",
                                  "none.sock", NULL);
    return f->missing;
}

/* Runs the tool lines @cases (@n) and checks that each is a usage error. */
static void assert_usage_errors(Fixture *f, const char *const (*cases)[12],
                                guint n, const char *usage)
{
    for (guint i = 0; i < n; i++) {
        REQUIRE(run_toolv(&f->run, NULL, -1, cases[i]));
        g_test_message("case %u: %s", i, f->run.err);
        g_assert_cmpint(f->run.status, ==, 2);
        g_assert_cmpstr(f->run.out, ==, "");
        g_assert_nonnull(strstr(f->run.err, usage));
    }
}

/* Whether process @pid exists and is not a zombie. */
static gboolean process_is_running(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/stat", pid);
    g_autofree char *stat = NULL;
    const char *paren;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return FALSE;
    }
    paren = strrchr(stat, ')');
    return paren && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
}

/* ---- qmp-call ---------------------------------------------------------- */

static void qmp_call_prints_return_value(Fixture *f, gconstpointer data)
{
    g_autoptr(JsonNode) out = NULL;

    (void)data;
    f->peer = peer_answering("query-status",
                             "{\"status\": \"running\", \"running\": true}",
                             NULL);
    REQUIRE(RUN(f, "qmp-call", qmp_peer_path(f->peer), "query-status"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.err, ==, "");
    /* stdout is not a terminal: compact, one line. */
    g_assert_cmpuint(count_lines(f->run.out), ==, 1);
    out = stdout_json(&f->run);
    assert_json(out, "{\"status\": \"running\", \"running\": true}");
    g_assert_null(received_arguments(f->peer, 1));
}

static void qmp_call_sends_arguments_and_pretty_prints(Fixture *f,
                                                       gconstpointer data)
{
    g_autoptr(JsonNode) out = NULL;

    (void)data;
    f->peer = peer_answering("block_resize", "{\"a\": [1, 2]}", NULL);
    REQUIRE(RUN(f, "qmp-call", "--pretty", qmp_peer_path(f->peer),
                "block_resize", "{\"device\": \"d0\", \"size\": 1024}"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    assert_json(received_arguments(f->peer, 1),
                "{\"device\": \"d0\", \"size\": 1024}");
    assert_matches(f->run.out, "^\\{\n  \"a\" ?: \\[\n");
    out = stdout_json(&f->run);
    assert_json(out, "{\"a\": [1, 2]}");
}

static void qmp_call_reads_arguments_from_stdin(Fixture *f,
                                                gconstpointer data)
{
    (void)data;
    f->peer = peer_answering("getfd", "{}", NULL);
    REQUIRE(run_tool(&f->run, "{\"fdname\": \"x\"}\n", -1, "qmp-call",
                     qmp_peer_path(f->peer), "getfd", "-", NULL));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.out, ==, "{}\n");
    assert_json(received_arguments(f->peer, 1), "{\"fdname\": \"x\"}");
}

static void qmp_call_passes_fd_with_scm_rights(Fixture *f,
                                               gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT_FD("{\"execute\": \"getfd\", "
                       "\"arguments\": {\"fdname\": \"disk\"}}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int got;
    struct stat st;

    (void)data;
    REQUIRE(fd >= 0);
    f->peer = qmp_peer_start(script);
    REQUIRE(run_tool(&f->run, NULL, fd, "qmp-call", "--fd", "5",
                     qmp_peer_path(f->peer), "getfd",
                     "{\"fdname\": \"disk\"}", NULL));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    got = qmp_peer_steal_fd(f->peer, 0);
    g_assert_cmpint(got, >=, 0);
    g_assert_cmpint(fstat(got, &st), ==, 0);
    g_assert_true(S_ISCHR(st.st_mode));
    if (got >= 0) {
        close(got);
    }
}

static void qmp_call_error_reply_exits_1(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"block_resize\"}"),
        PEER_ERROR_REPLY("GenericError", "Device 'd9' not found"),
        PEER_END,
    };

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(RUN(f, "qmp-call", qmp_peer_path(f->peer), "block_resize",
                "{\"device\": \"d9\", \"size\": 1}"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 1);
    g_assert_cmpstr(f->run.out, ==, "");
    g_assert_cmpstr(f->run.err, ==, "GenericError: Device 'd9' not found\n");
}

static void qmp_call_missing_socket_exits_3(Fixture *f, gconstpointer data)
{
    const char *path = missing_socket(f);

    (void)data;
    REQUIRE(RUN(f, "qmp-call", path, "query-status"));
    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_cmpstr(f->run.out, ==, "");
    g_assert_nonnull(strstr(f->run.err, path));
}

static void qmp_call_timeout_exits_3(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"query-status\"}"),
        PEER_SLEEP(600),        /* no reply, ever */
        PEER_END,
    };
    gint64 start = g_get_monotonic_time();

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(RUN(f, "qmp-call", "--timeout", "100", qmp_peer_path(f->peer),
                "query-status"));
    /*
     * No reply comes: "timed out" (exit 3) shows that the tool gave up on
     * its own, whatever the load; and not before its --timeout of 100 ms.
     */
    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_nonnull(strstr(f->run.err, "timed out"));
    g_assert_cmpint(g_get_monotonic_time() - start, >=, 100 * 1000);
    REQUIRE(peer_finished(f->peer));
}

static void qmp_call_bad_usage_exits_2(Fixture *f, gconstpointer data)
{
    /* SOCKET does not exist: exit 2, not 3, shows nothing was connected. */
    const char *sock = missing_socket(f);
    const char *const cases[][12] = {
        { "qmp-call", NULL },
        { "qmp-call", sock, NULL },
        { "qmp-call", sock, "query-status", "{}", "extra", NULL },
        { "qmp-call", "--no-such-option", sock, "query-status", NULL },
        { "qmp-call", sock, "getfd", "[1]", NULL },
        { "qmp-call", sock, "getfd", "{\"fdname\":", NULL },
        { "qmp-call", "--compact", "--pretty", sock, "query-status", NULL },
        { "qmp-call", "--fd", "999", sock, "getfd", NULL },
        { "qmp-call", "--timeout", "0", sock, "query-status", NULL },
        { "qmp-call", "--timeout", "soon", sock, "query-status", NULL },
    };

    (void)data;
    assert_usage_errors(f, cases, G_N_ELEMENTS(cases), "Usage: qmp-call");
}

/* ---- every tool -------------------------------------------------------- */

static void help_prints_usage_and_exits_0(Fixture *f, gconstpointer data)
{
    const char *const cases[][4] = {
        { "qmp-call", "--help", NULL },
        { "vmfork", "--help", NULL },
        { "vmfork", "fork", "--help", NULL },
        { "vmfork", "ls", "--help", NULL },
        { "vmfork", "wait", "--help", NULL },
        { "vmfork", "kill", "--help", NULL },
        { "vmfork", "pool", "--help", NULL },
        { "vmfork", "take", "--help", NULL },
        { "vmfork", "release", "--help", NULL },
        { "vmfork", "pool-status", "--help", NULL },
        { "vmfork", "serve", "--help", NULL },
        { "vmfork", "migrate", "--help", NULL },
    };

    (void)data;
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        REQUIRE(run_toolv(&f->run, NULL, -1, cases[i]));
        g_assert_cmpint(f->run.status, ==, 0);
        g_assert_cmpstr(f->run.err, ==, "");
        g_assert_nonnull(strstr(f->run.out, "Usage:"));
        g_assert_nonnull(strstr(f->run.out, "Exit status"));
    }
    REQUIRE(RUN(f, "vmfork", "--version"));
    g_assert_cmpint(f->run.status, ==, 0);
    assert_matches(f->run.out, "^vmfork \\(vmfork\\) [0-9.]+\n$");
}

/* ---- vmfork fork ------------------------------------------------------- */

static void fork_sends_arguments_and_waits_for_ready(Fixture *f,
                                                     gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"vmfork\"}"),
        PEER_REPLY(TWO_CHILDREN),
        /* Not ours, then the children in the other order. */
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 99, \"clone-id\": 9, \"monitor\": \"x\"}")),
        PEER_SEND(EVENT("STOP", "{}")),
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 102, \"clone-id\": 2, "
                        "\"monitor\": \"/tmp/c-1.sock\"}")),
        PEER_SLEEP(50),
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 101, \"clone-id\": 1, "
                        "\"monitor\": \"/tmp/c-0.sock\"}")),
        PEER_END,
    };
    g_autoptr(JsonNode) out = NULL;
    JsonObject *o;
    JsonArray *children;

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(RUN(f, "vmfork", "fork", qmp_peer_path(f->peer), "--count", "2",
                "--monitor", "/tmp/c-%i.sock", "--serial", "/tmp/s-%p.log",
                "--no-start", "--paused-parent", "--overlay-dir", "/tmp/ov",
                "--chardev", "charchannel0=/tmp/qga-%i.sock",
                "-c", "agent=/tmp/a=%p", "--chardev-log", "pty0=/tmp/l-%p",
                "--chardev-log", "agent=/tmp/al-%i", "--json", "--timeout",
                "5000"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.err, ==, "");
    g_assert_cmpuint(qmp_peer_n_received(f->peer), ==, 2);
    assert_json(received_arguments(f->peer, 1),
                "{\"count\": 2, \"monitor\": \"/tmp/c-%i.sock\", "
                "\"serial\": \"/tmp/s-%p.log\", \"start\": false, "
                "\"parent\": \"paused\", \"overlay-dir\": \"/tmp/ov\", "
                "\"chardevs\": [{\"id\": \"charchannel0\", "
                "\"path\": \"/tmp/qga-%i.sock\"}, {\"id\": \"agent\", "
                "\"path\": \"/tmp/a=%p\", \"logfile\": \"/tmp/al-%i\"}, "
                "{\"id\": \"pty0\", \"logfile\": \"/tmp/l-%p\"}]}");

    out = stdout_json(&f->run);
    REQUIRE(out && JSON_NODE_HOLDS_OBJECT(out));
    o = json_node_get_object(out);
    g_assert_true(json_object_has_member(o, "command_ms"));
    g_assert_cmpfloat(json_object_get_double_member(o, "command_ms"), >=, 0);
    children = json_object_get_array_member(o, "children");
    REQUIRE(children && json_array_get_length(children) == 2);
    for (guint i = 0; i < 2; i++) {
        JsonObject *c = json_array_get_object_element(children, i);
        g_autofree char *monitor = g_strdup_printf("/tmp/c-%u.sock", i);

        g_assert_cmpint(json_object_get_int_member(c, "pid"), ==, 101 + i);
        g_assert_cmpint(json_object_get_int_member(c, "clone-id"), ==, 1 + i);
        g_assert_cmpstr(json_object_get_string_member(c, "monitor"), ==,
                        monitor);
        g_assert_cmpint(json_node_get_value_type(
                            json_object_get_member(c, "ready_ms")), ==,
                        G_TYPE_DOUBLE);
    }
    /* 101 was ready at least 50 ms after the command was answered. */
    g_assert_cmpfloat(json_object_get_double_member(
                          json_array_get_object_element(children, 0),
                          "ready_ms"), >=, 50.0);
    g_assert_cmpfloat(json_object_get_double_member(
                          json_array_get_object_element(children, 1),
                          "ready_ms"), >=, 0.0);
}

static void fork_by_default_sends_count_1_and_prints_lines(Fixture *f,
                                                           gconstpointer data)
{
    static const QmpPeerStep ready[] = {
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 4242, \"clone-id\": 7, "
                        "\"monitor\": \"/run/vm.qmp.fork-4242\"}")),
        PEER_END,
    };

    (void)data;
    f->peer = peer_answering("vmfork",
                             "{\"children\": [{\"pid\": 4242, "
                             "\"clone-id\": 7, "
                             "\"monitor\": \"/run/vm.qmp.fork-4242\"}]}",
                             ready);
    REQUIRE(RUN(f, "vmfork", "fork", qmp_peer_path(f->peer)));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.err, ==, "");
    assert_json(received_arguments(f->peer, 1), "{\"count\": 1}");
    assert_matches(f->run.out,
                   "\\Apid 4242 clone-id 7 monitor /run/vm.qmp.fork-4242 "
                   "ready [0-9]+\\.[0-9]{3} ms\n"
                   "forked 1 child in [0-9]+\\.[0-9]{3} ms\n\\z");
}

static void fork_child_exiting_before_ready_exits_1(Fixture *f,
                                                    gconstpointer data)
{
    static const QmpPeerStep events[] = {
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 101, \"clone-id\": 1, "
                        "\"monitor\": \"/tmp/c-0.sock\"}")),
        PEER_SEND(EVENT("VMFORK_CHILD_EXITED",
                        "{\"pid\": 102, \"clone-id\": 2, \"status\": 1}")),
        PEER_END,
    };

    (void)data;
    f->peer = peer_answering("vmfork", TWO_CHILDREN, events);
    REQUIRE(RUN(f, "vmfork", "fork", qmp_peer_path(f->peer), "--count", "2"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 1);
    g_assert_nonnull(strstr(f->run.err, "102 exited with status 1 before"));
    assert_matches(f->run.out, "^pid 101 .* ready [0-9.]+ ms$");
    assert_matches(f->run.out, "^pid 102 .* exited with status 1$");
    assert_matches(f->run.out, "^forked 2 children in [0-9.]+ ms$");
}

static void fork_without_ready_event_times_out_exits_3(Fixture *f,
                                                       gconstpointer data)
{
    g_autoptr(JsonNode) out = NULL;

    (void)data;
    f->peer = peer_answering("vmfork", TWO_CHILDREN, NULL);
    REQUIRE(RUN(f, "vmfork", "fork", qmp_peer_path(f->peer), "--count", "2",
                "--json", "--timeout", "200"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_nonnull(strstr(f->run.err, "timed out"));
    /* The children exist: they are still reported, not ready. */
    out = stdout_json(&f->run);
    REQUIRE(out != NULL);
    g_assert_true(json_node_is_null(json_object_get_member(
        json_array_get_object_element(
            json_object_get_array_member(json_node_get_object(out),
                                         "children"), 0), "ready_ms")));
}

static void fork_error_reply_exits_1(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"vmfork\"}"),
        PEER_ERROR_REPLY("GenericError",
                         "vmfork: disk 'drive0' is writable; pass overlay-dir"),
        PEER_END,
    };

    (void)data;
    f->peer = qmp_peer_start(script);
    REQUIRE(RUN(f, "vmfork", "fork", qmp_peer_path(f->peer)));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 1);
    g_assert_cmpstr(f->run.out, ==, "");
    g_assert_cmpstr(f->run.err, ==, "GenericError: vmfork: disk 'drive0' is "
                    "writable; pass overlay-dir\n");
}

/* ---- vmfork ls --------------------------------------------------------- */

#define QUERY_VMFORK \
    "{\"clone-id\": 0, \"generation\": 0, \"parent-pid\": 0, " \
    "\"children\": [" \
    "{\"pid\": 101, \"clone-id\": 1, \"monitor\": \"/tmp/c-0.sock\", " \
    "\"state\": \"running\"}, " \
    "{\"pid\": 102, \"clone-id\": 2, \"monitor\": \"/tmp/c-1.sock\", " \
    "\"state\": \"exited\", \"exit-status\": 137}]}"

static void ls_json_prints_query_vmfork(Fixture *f, gconstpointer data)
{
    g_autoptr(JsonNode) out = NULL;

    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "ls", qmp_peer_path(f->peer), "--json"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.err, ==, "");
    out = stdout_json(&f->run);
    assert_json(out, QUERY_VMFORK);
}

static void ls_prints_identity_and_table(Fixture *f, gconstpointer data)
{
    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "ls", qmp_peer_path(f->peer)));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    assert_matches(f->run.out, "\\Aclone-id 0 generation 0 parent-pid 0\n"
                   "PID +CLONE-ID +STATE +EXIT +MONITOR\n"
                   "101 +1 +running +- +/tmp/c-0.sock\n"
                   "102 +2 +exited +137 +/tmp/c-1.sock\n\\z");
}

/* ---- vmfork wait ------------------------------------------------------- */

static void wait_returns_on_exited_event(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep events[] = {
        PEER_SLEEP(50),
        PEER_SEND(EVENT("VMFORK_CHILD_READY",
                        "{\"pid\": 103, \"clone-id\": 3, \"monitor\": \"m\"}")),
        PEER_SEND(EVENT("VMFORK_CHILD_EXITED",
                        "{\"pid\": 104, \"clone-id\": 4, \"status\": 0}")),
        PEER_SEND(EVENT("VMFORK_CHILD_EXITED",
                        "{\"pid\": 101, \"clone-id\": 1, \"status\": 3}")),
        PEER_END,
    };

    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, events);
    REQUIRE(RUN(f, "vmfork", "wait", qmp_peer_path(f->peer), "101"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.out, ==, "pid 101 exited with status 3\n");
    g_assert_cmpstr(f->run.err, ==, "");
}

static void wait_reports_child_that_exited_already(Fixture *f,
                                                   gconstpointer data)
{
    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "wait", qmp_peer_path(f->peer), "102"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.out, ==, "pid 102 exited with status 137\n");
}

static void wait_times_out_exits_3(Fixture *f, gconstpointer data)
{
    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "wait", qmp_peer_path(f->peer), "101",
                "--timeout", "200"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_cmpstr(f->run.out, ==, "");
    g_assert_nonnull(strstr(f->run.err, "timed out"));
}

static void wait_refuses_pid_that_is_not_a_child(Fixture *f,
                                                 gconstpointer data)
{
    (void)data;
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "wait", qmp_peer_path(f->peer), "999"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 2);
    g_assert_nonnull(strstr(f->run.err, "pid 999 is not a child"));
}

/* ---- vmfork kill ------------------------------------------------------- */

static void kill_sends_quit_on_the_child_monitor(Fixture *f,
                                                 gconstpointer data)
{
    static const QmpPeerStep child_script[] = {
        PEER_GREETING,
        PEER_NEGOTIATE,
        PEER_EXPECT("{\"execute\": \"quit\"}"),
        PEER_REPLY("{}"),
        PEER_END,
    };
    static const QmpPeerStep exited[] = {
        PEER_SLEEP(100),
        PEER_SEND(EVENT("VMFORK_CHILD_EXITED",
                        "{\"pid\": 101, \"clone-id\": 1, \"status\": 0}")),
        PEER_END,
    };
    g_autofree char *query = NULL;

    (void)data;
    f->child_peer = qmp_peer_start(child_script);
    query = g_strdup_printf("{\"clone-id\": 0, \"generation\": 0, "
                            "\"parent-pid\": 0, \"children\": [{\"pid\": 101, "
                            "\"clone-id\": 1, \"monitor\": \"%s\", "
                            "\"state\": \"running\"}]}",
                            qmp_peer_path(f->child_peer));
    f->peer = peer_answering("query-vmfork", query, exited);
    REQUIRE(RUN(f, "vmfork", "kill", qmp_peer_path(f->peer), "101"));
    REQUIRE(peer_finished(f->child_peer));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    g_assert_cmpstr(f->run.out, ==, "pid 101 exited with status 0\n");
    g_assert_cmpstr(f->run.err, ==, "");
}

/* Starts a process that stands in for a child QEMU; its pid as text. */
static char *start_victim(Fixture *f)
{
    g_autoptr(GError) err = NULL;

    f->victim = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, &err, "sleep",
                                 "60", NULL);
    g_assert_no_error(err);
    return f->victim ? g_strdup(g_subprocess_get_identifier(f->victim))
                     : NULL;
}

static void kill_with_signal_kills_the_child(Fixture *f, gconstpointer data)
{
    static const QmpPeerStep exited[] = {
        PEER_SLEEP(100),
        PEER_SEND(EVENT("VMFORK_CHILD_EXITED",
                        "{\"pid\": $PID, \"clone-id\": 1, \"status\": 137}")),
        PEER_END,
    };
    QmpPeerStep events[G_N_ELEMENTS(exited)];
    g_autofree char *pid = start_victim(f);
    g_autofree char *query = NULL;
    g_autofree char *event = NULL;
    g_autofree char *expected = NULL;
    g_autoptr(GString) text = NULL;

    (void)data;
    REQUIRE(pid != NULL);
    query = g_strdup_printf("{\"clone-id\": 0, \"generation\": 0, "
                            "\"parent-pid\": 0, \"children\": [{\"pid\": %s, "
                            "\"clone-id\": 1, \"monitor\": \"/nowhere\", "
                            "\"state\": \"running\"}]}", pid);
    text = g_string_new(exited[1].text);
    g_string_replace(text, "$PID", pid, 0);
    memcpy(events, exited, sizeof(exited));
    events[1].text = text->str;
    f->peer = peer_answering("query-vmfork", query, events);
    REQUIRE(RUN(f, "vmfork", "kill", qmp_peer_path(f->peer), pid,
                "--signal", "KILL"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 0);
    expected = g_strdup_printf("pid %s exited with status 137\n", pid);
    g_assert_cmpstr(f->run.out, ==, expected);
    g_assert_true(g_subprocess_wait(f->victim, NULL, NULL));
    g_assert_true(g_subprocess_get_if_signaled(f->victim));
    g_assert_cmpint(g_subprocess_get_term_sig(f->victim), ==, SIGKILL);
}

static void kill_with_signal_refuses_pid_that_is_not_a_child(
    Fixture *f, gconstpointer data)
{
    g_autofree char *pid = start_victim(f);

    (void)data;
    REQUIRE(pid != NULL);
    f->peer = peer_answering("query-vmfork", QUERY_VMFORK, NULL);
    REQUIRE(RUN(f, "vmfork", "kill", qmp_peer_path(f->peer), pid,
                "--signal", "9"));
    REQUIRE(peer_finished(f->peer));

    g_assert_cmpint(f->run.status, ==, 2);
    g_assert_nonnull(strstr(f->run.err, "is not a child"));
    /* Still running: no signal was sent to it. */
    g_assert_true(process_is_running(pid));
}

/* ---- vmfork usage ------------------------------------------------------ */

static void vmfork_bad_usage_exits_2(Fixture *f, gconstpointer data)
{
    const char *sock = missing_socket(f);
    const char *const cases[][12] = {
        { "vmfork", NULL },
        { "vmfork", "frob", sock, NULL },
        { "vmfork", "--no-such-option", "ls", sock, NULL },
        { "vmfork", "fork", NULL },
        { "vmfork", "fork", sock, "--count", "0", NULL },
        { "vmfork", "fork", sock, "--count", "two", NULL },
        { "vmfork", "fork", sock, "--chardev", "qga", NULL },
        { "vmfork", "fork", sock, "--chardev", "=/tmp/x", NULL },
        { "vmfork", "fork", sock, "--chardev", "qga=", NULL },
        { "vmfork", "fork", sock, "--chardev-log", "qga", NULL },
        { "vmfork", "ls", sock, "extra", NULL },
        { "vmfork", "wait", sock, NULL },
        { "vmfork", "wait", sock, "abc", NULL },
        { "vmfork", "kill", sock, "101", "--signal", "NOPE", NULL },
        { "vmfork", "kill", sock, "101", "--frobnicate", NULL },
        { "vmfork", "pool", NULL },
        { "vmfork", "pool", sock, "--size", "0", NULL },
        { "vmfork", "pool", sock, "--size", "4", "--max-live", "2", NULL },
        { "vmfork", "pool", sock, "--monitor", "/tmp/child-%i", NULL },
        { "vmfork", "pool", sock, "--chardev", "qga=/tmp/qga", NULL },
        { "vmfork", "pool", sock, "--chardev-log", "qga=/tmp/qga.log", NULL },
        { "vmfork", "pool", sock, "--hostfwd-step", "-1", NULL },
        { "vmfork", "pool", sock, "--warm", "-1", NULL },
        { "vmfork", "take", NULL },
        { "vmfork", "release", sock, "abc", NULL },
        { "vmfork", "pool-status", sock, "extra", NULL },
        { "vmfork", "serve", "--pool", sock, "--guest-port", "22", NULL },
        { "vmfork", "serve", "--listen", "8080", "--pool", sock, NULL },
        { "vmfork", "serve", "--listen", "nohost:80", "--pool", sock,
          "--guest-port", "22", NULL },
        { "vmfork", "serve", "--listen", "8080", "--pool", sock,
          "--guest-port", "70000", NULL },
        { "vmfork", "serve", "--listen", "8080", "--pool", sock,
          "--guest-port", "22", "--max-clones", "0", NULL },
        { "vmfork", "migrate", sock, NULL },
        { "vmfork", "migrate", sock, "--to", "tcp:h:1", "--mirror", "vda",
          NULL },
        { "vmfork", "migrate", sock, "--to", "tcp:h:1", "--mirror",
          "vda=nbd:h:1", NULL },
        { "vmfork", "migrate", sock, "--to", "tcp:h:1", "--wait", "-1",
          NULL },
    };

    (void)data;
    assert_usage_errors(f, cases, G_N_ELEMENTS(cases), "Usage: vmfork");
}

static void vmfork_missing_socket_exits_3(Fixture *f, gconstpointer data)
{
    const char *sock = missing_socket(f);

    (void)data;
    REQUIRE(RUN(f, "vmfork", "ls", sock));
    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_nonnull(strstr(f->run.err, sock));
    REQUIRE(RUN(f, "vmfork", "fork", sock, "--count", "2"));
    g_assert_cmpint(f->run.status, ==, 3);
    /* The pool's clients, and a pool whose template is not there */
    REQUIRE(RUN(f, "vmfork", "take", sock));
    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_nonnull(strstr(f->run.err, sock));
    REQUIRE(RUN(f, "vmfork", "pool-status", sock));
    g_assert_cmpint(f->run.status, ==, 3);
    REQUIRE(RUN(f, "vmfork", "migrate", sock, "--to", "tcp:127.0.0.1:1"));
    g_assert_cmpint(f->run.status, ==, 3);
    REQUIRE(RUN(f, "vmfork", "pool", sock));
    g_assert_cmpint(f->run.status, ==, 3);
    g_assert_nonnull(strstr(f->run.err, sock));
    {
        g_autofree char *pool_sock = g_strconcat(sock, ".pool", NULL);

        g_assert_false(g_file_test(pool_sock, G_FILE_TEST_EXISTS));
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_set_nonfatal_assertions();

    ADD("/tools/qmp-call/prints-return-value", qmp_call_prints_return_value);
    ADD("/tools/qmp-call/sends-arguments-and-pretty-prints",
        qmp_call_sends_arguments_and_pretty_prints);
    ADD("/tools/qmp-call/reads-arguments-from-stdin",
        qmp_call_reads_arguments_from_stdin);
    ADD("/tools/qmp-call/passes-fd-with-scm-rights",
        qmp_call_passes_fd_with_scm_rights);
    ADD("/tools/qmp-call/error-reply-exits-1", qmp_call_error_reply_exits_1);
    ADD("/tools/qmp-call/missing-socket-exits-3",
        qmp_call_missing_socket_exits_3);
    ADD("/tools/qmp-call/timeout-exits-3", qmp_call_timeout_exits_3);
    ADD("/tools/qmp-call/bad-usage-exits-2", qmp_call_bad_usage_exits_2);
    ADD("/tools/help-prints-usage-and-exits-0", help_prints_usage_and_exits_0);

    ADD("/tools/vmfork/fork/sends-arguments-and-waits-for-ready",
        fork_sends_arguments_and_waits_for_ready);
    ADD("/tools/vmfork/fork/by-default-sends-count-1-and-prints-lines",
        fork_by_default_sends_count_1_and_prints_lines);
    ADD("/tools/vmfork/fork/child-exiting-before-ready-exits-1",
        fork_child_exiting_before_ready_exits_1);
    ADD("/tools/vmfork/fork/without-ready-event-times-out-exits-3",
        fork_without_ready_event_times_out_exits_3);
    ADD("/tools/vmfork/fork/error-reply-exits-1", fork_error_reply_exits_1);
    ADD("/tools/vmfork/ls/json-prints-query-vmfork",
        ls_json_prints_query_vmfork);
    ADD("/tools/vmfork/ls/prints-identity-and-table",
        ls_prints_identity_and_table);
    ADD("/tools/vmfork/wait/returns-on-exited-event",
        wait_returns_on_exited_event);
    ADD("/tools/vmfork/wait/reports-child-that-exited-already",
        wait_reports_child_that_exited_already);
    ADD("/tools/vmfork/wait/times-out-exits-3", wait_times_out_exits_3);
    ADD("/tools/vmfork/wait/refuses-pid-that-is-not-a-child",
        wait_refuses_pid_that_is_not_a_child);
    ADD("/tools/vmfork/kill/sends-quit-on-the-child-monitor",
        kill_sends_quit_on_the_child_monitor);
    ADD("/tools/vmfork/kill/with-signal-kills-the-child",
        kill_with_signal_kills_the_child);
    ADD("/tools/vmfork/kill/with-signal-refuses-pid-that-is-not-a-child",
        kill_with_signal_refuses_pid_that_is_not_a_child);
    ADD("/tools/vmfork/bad-usage-exits-2", vmfork_bad_usage_exits_2);
    ADD("/tools/vmfork/missing-socket-exits-3",
        vmfork_missing_socket_exits_3);
    return g_test_run();
}
