/*
 * libqmp: asynchronous QMP client
 *
 * A state machine driven by an event loop: the loop reports readiness and
 * deadlines (qmp_async_client_handle_*), the client answers with what it
 * wants next (QmpAsyncLoop hooks).  The reader, the rules that sort incoming
 * messages and the greeting are those of the synchronous client
 * (reader.c, protocol.c).  See qmp/async.h for the contract.
 *
 * Commands live in two queues: `commands`, those whose callback has not run
 * yet, in the order they were queued; `output`, those with bytes still to
 * write, in the order they are written.  A command is freed once it is in
 * neither.  Callbacks may re-enter the client (even free it): the entry
 * points hold a reference, and callbacks are only run once the client's
 * structures are consistent, with what they need copied out.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <qmp/async.h>
#include "qmp-private.h"

#define ASYNC_READ_CHUNK (64 * 1024)
/* How often connect() is retried while the server's backlog is full. */
#define ASYNC_CONNECT_RETRY_US (10 * 1000)

typedef enum {
    STATE_IDLE,             /* not connected yet */
    STATE_CONNECTING,       /* connect() to be retried at retry_at */
    STATE_GREETING,         /* waiting for the greeting */
    STATE_NEGOTIATING,      /* qmp_capabilities sent */
    STATE_CONNECTED,
    STATE_CLOSED,           /* for good */
} AsyncState;

typedef struct {
    GList commands_link;        /* in client->commands while awaiting */
    GList output_link;          /* in client->output while being written */
    gboolean in_commands;
    gboolean in_output;
    gboolean negotiation;       /* the internal qmp_capabilities */
    char *name;
    JsonObject *arguments;      /* a private copy, until it is sent */
    char *id;                   /* once sent */
    GString *text;              /* while in output */
    gsize written;
    int fd;                     /* to pass with the first byte, or -1 */
    gint64 deadline;            /* monotonic us, or -1 */
    QmpAsyncCommandFunc func;
    gpointer user_data;
} AsyncCommand;

/* A callback to run once the client is consistent again. */
typedef struct {
    QmpAsyncCommandFunc func;
    gpointer user_data;
    JsonNode *result;
    GError *error;
} Completion;

struct QmpAsyncClient {
    guint refs;
    gboolean freeing;
    AsyncState state;
    int fd;
    QmpReader *reader;
    QmpDispatch dispatch;
    QmpGreeting greeting;
    GError *end_error;          /* why the connection ended */

    /* connecting */
    char *path;
    struct sockaddr_un addr;
    int dirfd;
    char **capabilities;
    gint64 connect_deadline;
    gint64 retry_at;
    QmpAsyncConnectFunc connect_func;
    gpointer connect_data;

    QmpAsyncEventFunc event_func;
    gpointer event_data;
    QmpAsyncDisconnectFunc disconnect_func;
    gpointer disconnect_data;

    GQueue commands;            /* AsyncCommand, callback not run yet */
    GQueue output;              /* AsyncCommand, bytes left to write */

    gboolean has_loop;
    QmpAsyncLoop loop;
    gpointer loop_data;
    int watched_fd;             /* what the loop was told last */
    QmpAsyncIo io;
    gint64 timer;
};

static void client_shutdown(QmpAsyncClient *c, GError *err);

/* ---- lifetime of the client and of commands ---------------------------- */

static QmpAsyncClient *client_ref(QmpAsyncClient *c)
{
    c->refs++;
    return c;
}

static void client_unref(QmpAsyncClient *c)
{
    if (--c->refs > 0) {
        return;
    }
    qmp_reader_free(c->reader);
    qmp_dispatch_clear(&c->dispatch);
    qmp_greeting_clear(&c->greeting);
    g_clear_error(&c->end_error);
    g_free(c->path);
    g_strfreev(c->capabilities);
    g_free(c);
}

QmpAsyncClient *qmp_async_client_new(void)
{
    QmpAsyncClient *c = g_new0(QmpAsyncClient, 1);

    c->refs = 1;
    c->state = STATE_IDLE;
    c->fd = -1;
    c->dirfd = -1;
    c->reader = qmp_reader_new(0);
    qmp_dispatch_init(&c->dispatch);
    g_queue_init(&c->commands);
    g_queue_init(&c->output);
    c->watched_fd = -1;
    c->timer = -1;
    c->connect_deadline = -1;
    c->retry_at = -1;
    return c;
}

static AsyncCommand *command_new(const char *name, gint64 deadline,
                                 QmpAsyncCommandFunc func, gpointer user_data)
{
    AsyncCommand *cmd = g_new0(AsyncCommand, 1);

    cmd->commands_link.data = cmd;
    cmd->output_link.data = cmd;
    cmd->name = g_strdup(name);
    cmd->fd = -1;
    cmd->deadline = deadline;
    cmd->func = func;
    cmd->user_data = user_data;
    return cmd;
}

static void command_free(AsyncCommand *cmd)
{
    if (cmd->fd >= 0) {
        close(cmd->fd);
    }
    if (cmd->arguments) {
        json_object_unref(cmd->arguments);
    }
    if (cmd->text) {
        g_string_free(cmd->text, TRUE);
    }
    g_free(cmd->name);
    g_free(cmd->id);
    g_free(cmd);
}

/* Gives @cmd its id and queues its text for writing. */
static void command_send(QmpAsyncClient *c, AsyncCommand *cmd)
{
    cmd->id = qmp_dispatch_add(&c->dispatch, cmd);
    cmd->text = qmp_build_command(cmd->name, cmd->arguments, cmd->id);
    g_clear_pointer(&cmd->arguments, json_object_unref);
    g_queue_push_tail_link(&c->output, &cmd->output_link);
    cmd->in_output = TRUE;
}

/* Takes @cmd out of the commands queue: its callback is about to run. */
static void command_take(QmpAsyncClient *c, AsyncCommand *cmd)
{
    if (cmd->in_commands) {
        g_queue_unlink(&c->commands, &cmd->commands_link);
        cmd->in_commands = FALSE;
    }
    if (!cmd->in_output) {
        command_free(cmd);
    }
}

/* Takes @cmd out of the output queue; its bytes are written or dropped. */
static void command_unqueue(QmpAsyncClient *c, AsyncCommand *cmd)
{
    g_queue_unlink(&c->output, &cmd->output_link);
    cmd->in_output = FALSE;
    if (cmd->text) {
        g_string_free(cmd->text, TRUE);
        cmd->text = NULL;
    }
    if (cmd->fd >= 0) {
        close(cmd->fd);
        cmd->fd = -1;
    }
    if (!cmd->in_commands) {
        command_free(cmd);
    }
}

/* The completion of @cmd (taken out of the client); result/error owned. */
static Completion command_completion(QmpAsyncClient *c, AsyncCommand *cmd,
                                     JsonNode *result, GError *error)
{
    Completion done = {
        .func = cmd->func,
        .user_data = cmd->user_data,
        .result = result,
        .error = error,
    };

    command_take(c, cmd);
    return done;
}

static void completion_run(QmpAsyncClient *c, Completion *done)
{
    if (done->func) {
        done->func(c, done->result, done->error, done->user_data);
    }
    g_clear_pointer(&done->result, json_node_unref);
    g_clear_error(&done->error);
}

/* ---- telling the loop ------------------------------------------------- */

static gboolean state_reads(AsyncState state)
{
    return state == STATE_GREETING || state == STATE_NEGOTIATING ||
           state == STATE_CONNECTED;
}

static gboolean state_connecting(AsyncState state)
{
    return state == STATE_CONNECTING || state == STATE_GREETING ||
           state == STATE_NEGOTIATING;
}

static gint64 earliest(gint64 a, gint64 b)
{
    if (a < 0) {
        return b;
    }
    if (b < 0) {
        return a;
    }
    return MIN(a, b);
}

static gint64 client_next_deadline(QmpAsyncClient *c)
{
    gint64 deadline = -1;

    if (c->state == STATE_CLOSED) {
        return -1;
    }
    for (GList *l = c->commands.head; l; l = l->next) {
        deadline = earliest(deadline, ((AsyncCommand *)l->data)->deadline);
    }
    if (state_connecting(c->state)) {
        deadline = earliest(deadline, c->connect_deadline);
    }
    if (c->state == STATE_CONNECTING) {
        deadline = earliest(deadline, c->retry_at);
    }
    return deadline;
}

/* Tells the loop what the client wants now, if that changed. */
static void client_update_loop(QmpAsyncClient *c, gboolean force)
{
    QmpAsyncIo io = QMP_ASYNC_IO_NONE;
    int fd = c->state == STATE_CLOSED ? -1 : c->fd;
    gint64 deadline = client_next_deadline(c);

    if (state_reads(c->state)) {
        io |= QMP_ASYNC_IO_READ;
        if (!g_queue_is_empty(&c->output)) {
            io |= QMP_ASYNC_IO_WRITE;
        }
    }
    if (force || fd != c->watched_fd || io != c->io) {
        c->watched_fd = fd;
        c->io = io;
        if (c->has_loop && c->loop.watch) {
            c->loop.watch(c->loop_data, fd, io);
        }
    }
    if (force || deadline != c->timer) {
        c->timer = deadline;
        if (c->has_loop && c->loop.set_timer) {
            c->loop.set_timer(c->loop_data, deadline);
        }
    }
}

static void client_detach_loop(QmpAsyncClient *c)
{
    if (c->has_loop) {
        c->has_loop = FALSE;
        if (c->loop.detach) {
            c->loop.detach(c->loop_data);
        }
        c->loop_data = NULL;
    }
}

void qmp_async_client_set_loop(QmpAsyncClient *client,
                               const QmpAsyncLoop *loop, gpointer loop_data)
{
    g_return_if_fail(client != NULL);
    client_detach_loop(client);
    if (loop) {
        client->loop = *loop;
        client->loop_data = loop_data;
        client->has_loop = TRUE;
        client_update_loop(client, TRUE);
    }
}

/* ---- the end of the connection ---------------------------------------- */

static void client_close_fds(QmpAsyncClient *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->dirfd >= 0) {
        close(c->dirfd);
        c->dirfd = -1;
    }
}

static GError *closed_by_peer(QmpAsyncClient *c)
{
    return g_error_new_literal(QMP_ERROR, QMP_ERROR_CLOSED,
                               qmp_reader_in_message(c->reader)
                               ? "connection closed by the peer in the middle "
                                 "of a message"
                               : "connection closed by the peer");
}

/*
 * Ends the connection for good with @err (taken; NULL: closed by the
 * client): fails every outstanding command, then runs the connect or
 * disconnect callback.
 */
static void client_shutdown(QmpAsyncClient *c, GError *err)
{
    AsyncState was = c->state;
    gboolean local = err == NULL;
    g_autoptr(GError) connect_err = NULL;
    g_autoptr(GArray) done = NULL;
    AsyncCommand *cmd;

    if (was == STATE_CLOSED) {
        g_clear_error(&err);
        return;
    }
    if (local) {
        err = g_error_new_literal(QMP_ERROR, QMP_ERROR_CLOSED,
                                  "connection closed by the client");
    }
    c->state = STATE_CLOSED;
    c->end_error = err;
    client_close_fds(c);
    if (state_connecting(was)) {
        connect_err = g_error_copy(err);
        if (was == STATE_NEGOTIATING) {
            g_prefix_error(&connect_err, "capabilities negotiation failed: ");
        }
    }
    while ((cmd = g_queue_peek_head(&c->output))) {
        command_unqueue(c, cmd);
    }
    done = g_array_new(FALSE, FALSE, sizeof(Completion));
    while ((cmd = g_queue_peek_head(&c->commands))) {
        GError *cmd_err;
        Completion one;

        if (g_error_matches(err, QMP_ERROR, QMP_ERROR_COMMAND)) {
            /* Negotiation refused: not these commands' own error reply. */
            cmd_err = g_error_new_literal(QMP_ERROR, QMP_ERROR_CLOSED,
                                          connect_err ? connect_err->message
                                                      : err->message);
        } else {
            cmd_err = g_error_copy(err);
        }
        one = command_completion(c, cmd, NULL, cmd_err);
        g_array_append_val(done, one);
    }
    qmp_dispatch_clear(&c->dispatch);
    client_update_loop(c, FALSE);

    for (guint i = 0; i < done->len; i++) {
        completion_run(c, &g_array_index(done, Completion, i));
    }
    if (state_connecting(was) && c->connect_func) {
        QmpAsyncConnectFunc func = c->connect_func;

        c->connect_func = NULL;
        func(c, connect_err, c->connect_data);
    } else if (was == STATE_CONNECTED && c->disconnect_func) {
        c->disconnect_func(c, local ? NULL : err, c->disconnect_data);
    }
}

void qmp_async_client_close(QmpAsyncClient *client)
{
    g_return_if_fail(client != NULL);
    client_ref(client);
    client_shutdown(client, NULL);
    client_unref(client);
}

void qmp_async_client_free(QmpAsyncClient *client)
{
    if (!client || client->freeing) {
        return;             /* already being freed (from a callback) */
    }
    client->freeing = TRUE;
    client_shutdown(client, NULL);
    client_detach_loop(client);
    client_unref(client);
}

/* ---- input ------------------------------------------------------------ */

static void negotiation_done(QmpAsyncClient *c, JsonNode *result,
                             const GError *error, gpointer user_data);

static void client_take_greeting(QmpAsyncClient *c, JsonNode *msg)
{
    GError *err = NULL;
    AsyncCommand *cmd;

    if (!qmp_greeting_take(&c->greeting, msg, &err)) {
        client_shutdown(c, err);
        return;
    }
    c->state = STATE_NEGOTIATING;
    cmd = command_new("qmp_capabilities", c->connect_deadline,
                      negotiation_done, NULL);
    cmd->negotiation = TRUE;
    cmd->arguments = qmp_capabilities_arguments(
        (const char *const *)c->capabilities);
    g_queue_push_head_link(&c->commands, &cmd->commands_link);
    cmd->in_commands = TRUE;
    command_send(c, cmd);
}

/* A reply to @cmd: run its callback. */
static void client_complete(QmpAsyncClient *c, AsyncCommand *cmd,
                            JsonNode *reply)
{
    GError *err = NULL;
    JsonNode *result = qmp_reply_result(reply, &err);
    gboolean malformed = g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    Completion done;

    done = command_completion(c, cmd, result,
                              malformed ? g_error_copy(err) : err);
    completion_run(c, &done);
    if (malformed) {
        client_shutdown(c, err);
    }
}

/* Handles the complete messages the reader holds, in order. */
static void client_process_input(QmpAsyncClient *c)
{
    while (state_reads(c->state)) {
        JsonNode *msg = NULL;
        GError *err = NULL;
        gpointer data;

        if (!qmp_reader_next(c->reader, &msg, &err)) {
            client_shutdown(c, err);
            return;
        }
        if (!msg) {
            return;
        }
        if (c->state == STATE_GREETING) {
            client_take_greeting(c, msg);
            continue;
        }
        switch (qmp_dispatch_sort(&c->dispatch, msg, &data, &err)) {
        case QMP_MESSAGE_EVENT:
            if (c->event_func) {
                c->event_func(c, msg, c->event_data);
            }
            break;
        case QMP_MESSAGE_REPLY:
            client_complete(c, data, msg);
            break;
        case QMP_MESSAGE_LATE:
            break;          /* the reply to a command that timed out */
        case QMP_MESSAGE_INVALID:
            client_shutdown(c, err);
            break;
        }
        json_node_unref(msg);
    }
}

/*
 * Reads once.  Returns FALSE when there is nothing more to read for now:
 * the socket would block, or the connection has ended.
 */
static gboolean client_read_once(QmpAsyncClient *c)
{
    char buf[ASYNC_READ_CHUNK];
    ssize_t n;

    do {
        n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        qmp_reader_feed(c->reader, buf, n);
        client_process_input(c);
        return state_reads(c->state);
    }
    if (n == 0 || errno == ECONNRESET) {
        client_shutdown(c, closed_by_peer(c));
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        client_shutdown(c, g_error_new(QMP_ERROR, QMP_ERROR_IO, "recv: %s",
                                       g_strerror(errno)));
    }
    return FALSE;
}

void qmp_async_client_handle_read(QmpAsyncClient *client)
{
    g_return_if_fail(client != NULL);
    client_ref(client);
    if (state_reads(client->state)) {
        client_read_once(client);
    }
    client_update_loop(client, FALSE);
    client_unref(client);
}

/* ---- output ----------------------------------------------------------- */

void qmp_async_client_handle_write(QmpAsyncClient *client)
{
    QmpAsyncClient *c = client;

    g_return_if_fail(client != NULL);
    client_ref(c);
    while (state_reads(c->state) && !g_queue_is_empty(&c->output)) {
        AsyncCommand *cmd = g_queue_peek_head(&c->output);
        const char *data = cmd->text->str + cmd->written;
        gsize len = cmd->text->len - cmd->written;
        ssize_t n;

        if (cmd->written == 0 && cmd->fd >= 0) {
            n = qmp_send_with_fd(c->fd, data, len, cmd->fd);
        } else {
            n = send(c->fd, data, len, MSG_NOSIGNAL);
        }
        if (n >= 0) {
            cmd->written += n;
            if (cmd->written == cmd->text->len) {
                command_unqueue(c, cmd);
            }
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            /* Deliver what the peer sent before it went, then end. */
            while (state_reads(c->state) && client_read_once(c)) {
            }
            client_shutdown(c, g_error_new_literal(QMP_ERROR,
                                                   QMP_ERROR_CLOSED,
                                                   "connection closed by "
                                                   "the peer"));
            break;
        }
        client_shutdown(c, g_error_new(QMP_ERROR, QMP_ERROR_IO, "send: %s",
                                       g_strerror(errno)));
    }
    client_update_loop(c, FALSE);
    client_unref(c);
}

/* ---- commands --------------------------------------------------------- */

/*
 * A deep copy, so that the caller may change @obj while the command is held.
 * (A value json-glib cannot read back, such as a NaN, leaves it shared.)
 */
static JsonObject *copy_object(JsonObject *obj)
{
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), obj);
    g_autoptr(JsonNode) copy = NULL;
    g_autofree char *text = json_to_string(node, FALSE);

    copy = json_from_string(text, NULL);
    if (!copy || !JSON_NODE_HOLDS_OBJECT(copy)) {
        return json_object_ref(obj);
    }
    return json_object_ref(json_node_get_object(copy));
}

static gboolean client_queue(QmpAsyncClient *c, const char *command,
                             JsonObject *arguments, int fd, int timeout_ms,
                             QmpAsyncCommandFunc func, gpointer user_data,
                             GError **errp)
{
    AsyncCommand *cmd;
    int dup_fd = -1;

    if (c->state == STATE_CLOSED) {
        g_propagate_error(errp, g_error_copy(c->end_error));
        return FALSE;
    }
    if (fd >= 0) {
        dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (dup_fd < 0) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                        "cannot pass fd %d: %s", fd, g_strerror(errno));
            return FALSE;
        }
    }
    cmd = command_new(command, qmp_deadline_from_timeout(timeout_ms), func,
                      user_data);
    cmd->fd = dup_fd;
    g_queue_push_tail_link(&c->commands, &cmd->commands_link);
    cmd->in_commands = TRUE;
    if (c->state == STATE_CONNECTED) {
        cmd->arguments = arguments ? json_object_ref(arguments) : NULL;
        command_send(c, cmd);       /* the text is made now */
    } else if (arguments) {
        cmd->arguments = copy_object(arguments);    /* held */
    }
    client_update_loop(c, FALSE);
    return TRUE;
}

gboolean qmp_async_client_execute(QmpAsyncClient *client, const char *command,
                                  JsonObject *arguments, int timeout_ms,
                                  QmpAsyncCommandFunc func, gpointer user_data,
                                  GError **errp)
{
    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(command != NULL, FALSE);
    return client_queue(client, command, arguments, -1, timeout_ms, func,
                        user_data, errp);
}

gboolean qmp_async_client_execute_json(QmpAsyncClient *client,
                                       const char *command,
                                       const char *arguments_json,
                                       int timeout_ms,
                                       QmpAsyncCommandFunc func,
                                       gpointer user_data, GError **errp)
{
    g_autoptr(JsonObject) arguments = NULL;

    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(command != NULL, FALSE);
    if (!qmp_parse_arguments(command, arguments_json, &arguments, errp)) {
        return FALSE;
    }
    return client_queue(client, command, arguments, -1, timeout_ms, func,
                        user_data, errp);
}

gboolean qmp_async_client_execute_with_fd(QmpAsyncClient *client,
                                          const char *command,
                                          JsonObject *arguments, int fd,
                                          int timeout_ms,
                                          QmpAsyncCommandFunc func,
                                          gpointer user_data, GError **errp)
{
    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(command != NULL, FALSE);
    if (!qmp_check_fd_to_pass(fd, command, errp)) {
        return FALSE;
    }
    return client_queue(client, command, arguments, fd, timeout_ms, func,
                        user_data, errp);
}

/* ---- connecting ------------------------------------------------------- */

static void negotiation_done(QmpAsyncClient *c, JsonNode *result,
                             const GError *error, gpointer user_data)
{
    QmpAsyncConnectFunc func = c->connect_func;

    (void)result;
    (void)user_data;
    if (c->state != STATE_NEGOTIATING) {
        return;             /* ended: client_shutdown() tells connect_func */
    }
    if (error) {
        client_shutdown(c, g_error_copy(error));
        return;
    }
    c->state = STATE_CONNECTED;
    /* Commands queued meanwhile go out first, in order. */
    for (GList *l = c->commands.head; l; l = l->next) {
        AsyncCommand *cmd = l->data;

        if (!cmd->id) {
            command_send(c, cmd);
        }
    }
    c->connect_func = NULL;
    if (func) {
        func(c, NULL, c->connect_data);
    }
}

/* Ready to read the greeting on a connected socket. */
static void client_start_greeting(QmpAsyncClient *c)
{
    if (c->dirfd >= 0) {
        close(c->dirfd);
        c->dirfd = -1;
    }
    c->state = STATE_GREETING;
    c->retry_at = -1;
}

/*
 * One connect() attempt: TRUE when connected or to be retried (state
 * CONNECTING), FALSE with an IO error.
 */
static gboolean client_try_connect(QmpAsyncClient *c, GError **errp)
{
    if (connect(c->fd, (struct sockaddr *)&c->addr, sizeof(c->addr)) == 0 ||
        errno == EISCONN) {
        client_start_greeting(c);
        return TRUE;
    }
    if (errno == EAGAIN || errno == EINTR || errno == EINPROGRESS ||
        errno == EALREADY) {
        /* Backlog full (or in progress): try again shortly. */
        c->state = STATE_CONNECTING;
        c->retry_at = g_get_monotonic_time() + ASYNC_CONNECT_RETRY_US;
        return TRUE;
    }
    g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "cannot connect to %s: %s",
                c->path, g_strerror(errno));
    return FALSE;
}

static gboolean client_can_connect(QmpAsyncClient *c, GError **errp)
{
    if (c->state != STATE_IDLE) {
        g_set_error_literal(errp, QMP_ERROR, QMP_ERROR_INVALID,
                            "the client has already connected (or closed)");
        return FALSE;
    }
    return TRUE;
}

static void client_set_connect(QmpAsyncClient *c,
                               const char *const *capabilities,
                               int timeout_ms, QmpAsyncConnectFunc func,
                               gpointer user_data)
{
    c->capabilities = g_strdupv((char **)capabilities);
    c->connect_deadline = qmp_deadline_from_timeout(timeout_ms);
    c->connect_func = func;
    c->connect_data = user_data;
}

gboolean qmp_async_client_connect_unix(QmpAsyncClient *client,
                                       const char *path,
                                       const char *const *capabilities,
                                       int timeout_ms,
                                       QmpAsyncConnectFunc func,
                                       gpointer user_data, GError **errp)
{
    QmpAsyncClient *c = client;

    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(path != NULL, FALSE);
    if (!client_can_connect(c, errp) ||
        !qmp_unix_address(path, &c->addr, &c->dirfd, errp)) {
        return FALSE;
    }
    c->fd = qmp_unix_socket(errp);
    c->path = g_strdup(path);
    if (c->fd < 0 || !client_try_connect(c, errp)) {
        client_close_fds(c);
        g_clear_pointer(&c->path, g_free);
        c->state = STATE_IDLE;
        return FALSE;
    }
    client_set_connect(c, capabilities, timeout_ms, func, user_data);
    client_update_loop(c, FALSE);
    return TRUE;
}

gboolean qmp_async_client_connect_fd(QmpAsyncClient *client, int fd,
                                     const char *const *capabilities,
                                     int timeout_ms, QmpAsyncConnectFunc func,
                                     gpointer user_data, GError **errp)
{
    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(fd >= 0, FALSE);
    if (!client_can_connect(client, errp) || !qmp_set_nonblocking(fd, errp)) {
        close(fd);
        return FALSE;
    }
    client->fd = fd;
    client_start_greeting(client);
    client_set_connect(client, capabilities, timeout_ms, func, user_data);
    client_update_loop(client, FALSE);
    return TRUE;
}

/* ---- timeouts --------------------------------------------------------- */

/* @cmd's timeout has passed: take it out of the client. */
static Completion command_expire(QmpAsyncClient *c, AsyncCommand *cmd)
{
    GError *err;

    if (cmd->in_output && cmd->written == 0) {
        /* Not a byte sent: never send it. */
        qmp_dispatch_forget(&c->dispatch, cmd->id);
        err = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                          "timed out sending '%s'", cmd->name);
        command_unqueue(c, cmd);
    } else if (cmd->id) {
        /* Sent, or partly: finish writing it and drop its reply. */
        qmp_dispatch_abandon(&c->dispatch, cmd->id);
        err = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                          cmd->in_output
                          ? "timed out sending '%s'"
                          : "timed out waiting for the reply to '%s'",
                          cmd->name);
    } else {
        err = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                          "timed out sending '%s' (not connected)",
                          cmd->name);
    }
    return command_completion(c, cmd, NULL, err);
}

void qmp_async_client_handle_timer(QmpAsyncClient *client)
{
    QmpAsyncClient *c = client;
    gint64 now = g_get_monotonic_time();
    g_autoptr(GArray) done = g_array_new(FALSE, FALSE, sizeof(Completion));
    g_autoptr(GError) err = NULL;
    GList *l;

    g_return_if_fail(client != NULL);
    client_ref(c);
    if (c->state == STATE_CONNECTING && c->retry_at <= now &&
        !client_try_connect(c, &err)) {
        client_shutdown(c, g_steal_pointer(&err));
    }
    if ((c->state == STATE_CONNECTING || c->state == STATE_GREETING) &&
        c->connect_deadline >= 0 && c->connect_deadline <= now) {
        if (c->state == STATE_CONNECTING) {
            err = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                              "timed out connecting to %s", c->path);
        } else {
            err = g_error_new_literal(QMP_ERROR, QMP_ERROR_TIMEOUT,
                                      "timed out waiting for the QMP "
                                      "greeting");
        }
        client_shutdown(c, g_steal_pointer(&err));
    }
    l = c->state == STATE_CLOSED ? NULL : c->commands.head;
    while (l) {
        AsyncCommand *cmd = l->data;

        l = l->next;
        if (cmd->deadline >= 0 && cmd->deadline <= now) {
            Completion one = command_expire(c, cmd);

            g_array_append_val(done, one);
        }
    }
    for (guint i = 0; i < done->len; i++) {
        completion_run(c, &g_array_index(done, Completion, i));
    }
    client_update_loop(c, FALSE);
    client_unref(c);
}

/* ---- accessors -------------------------------------------------------- */

void qmp_async_client_set_event_callback(QmpAsyncClient *client,
                                         QmpAsyncEventFunc func,
                                         gpointer user_data)
{
    g_return_if_fail(client != NULL);
    client->event_func = func;
    client->event_data = user_data;
}

void qmp_async_client_set_disconnect_callback(QmpAsyncClient *client,
                                              QmpAsyncDisconnectFunc func,
                                              gpointer user_data)
{
    g_return_if_fail(client != NULL);
    client->disconnect_func = func;
    client->disconnect_data = user_data;
}

int qmp_async_client_get_fd(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, -1);
    return client->state == STATE_CLOSED ? -1 : client->fd;
}

QmpAsyncIo qmp_async_client_get_io(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, QMP_ASYNC_IO_NONE);
    return client->io;
}

gint64 qmp_async_client_get_deadline(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, -1);
    return client->timer;
}

gboolean qmp_async_client_is_connected(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, FALSE);
    return client->state == STATE_CONNECTED;
}

guint qmp_async_client_outstanding(const QmpAsyncClient *client)
{
    guint n = 0;

    g_return_val_if_fail(client != NULL, 0);
    for (GList *l = client->commands.head; l; l = l->next) {
        n += !((AsyncCommand *)l->data)->negotiation;
    }
    return n;
}

JsonObject *qmp_async_client_greeting(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, NULL);
    return client->greeting.qmp;
}

const char *qmp_async_client_qemu_version(const QmpAsyncClient *client,
                                          int *major, int *minor, int *micro)
{
    g_return_val_if_fail(client != NULL, NULL);
    return qmp_greeting_version(&client->greeting, major, minor, micro);
}

const char *qmp_async_client_qemu_package(const QmpAsyncClient *client)
{
    g_return_val_if_fail(client != NULL, NULL);
    return client->greeting.package;
}

gboolean qmp_async_client_has_capability(const QmpAsyncClient *client,
                                         const char *name)
{
    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(name != NULL, FALSE);
    return qmp_greeting_has_capability(&client->greeting, name);
}

void qmp_async_client_set_max_message_size(QmpAsyncClient *client,
                                           gsize max_message_size)
{
    g_return_if_fail(client != NULL);
    qmp_reader_set_max_message_size(client->reader, max_message_size);
}
