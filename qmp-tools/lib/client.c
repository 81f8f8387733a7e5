/*
 * libqmp: synchronous QMP client
 *
 * A non-blocking unix socket, a QmpReader for the input, poll() with a
 * monotonic deadline for every wait.  See qmp/qmp.h for the contract (id
 * matching, event queue, which errors leave the client usable); the rules
 * that sort incoming messages are protocol.c's, shared with the
 * asynchronous client.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <qmp/qmp.h>
#include "qmp-private.h"

#define QMP_READ_CHUNK (64 * 1024)

struct QmpClient {
    int fd;
    QmpReader *reader;
    GQueue events;              /* JsonNode * (whole event messages), oldest first */
    QmpGreeting greeting;
    QmpDispatch dispatch;       /* ids; the command in flight, if any */
    gboolean eof;               /* recv() returned 0 */
    GError *send_error;         /* set: no command can be sent any more */
    GError *recv_error;         /* set: nothing more can be read */
};

/* ---- deadlines -------------------------------------------------------- */

/* Milliseconds left for poll(), rounded up so we never wake up early. */
static int deadline_remaining_ms(gint64 deadline)
{
    gint64 left;

    if (deadline < 0) {
        return -1;
    }
    left = deadline - g_get_monotonic_time();
    if (left <= 0) {
        return 0;
    }
    return (int)MIN((left + 999) / 1000, G_MAXINT);
}

/* poll() one fd until ready or the deadline: 1 ready, 0 timeout, -1 errno. */
static int wait_fd(int fd, short events, gint64 deadline)
{
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = events };
        int r = poll(&pfd, 1, deadline_remaining_ms(deadline));

        if (r < 0 && errno == EINTR) {
            continue;
        }
        return r;
    }
}

/* ---- failure state ---------------------------------------------------- */

/* The connection is unusable in both directions from now on. */
static void client_break(QmpClient *c, const GError *err)
{
    if (!c->send_error) {
        c->send_error = g_error_copy(err);
    }
    if (!c->recv_error) {
        c->recv_error = g_error_copy(err);
    }
}

static void client_set_error(QmpClient *c, gboolean both, GError **errp,
                             int code, const char *fmt, ...) G_GNUC_PRINTF(5, 6);

/* Reports an error; marks the connection broken (both ways, or send only). */
static void client_set_error(QmpClient *c, gboolean both, GError **errp,
                             int code, const char *fmt, ...)
{
    va_list ap;
    GError *err;

    va_start(ap, fmt);
    err = g_error_new_valist(QMP_ERROR, code, fmt, ap);
    va_end(ap);
    if (both) {
        client_break(c, err);
    } else if (!c->send_error) {
        c->send_error = g_error_copy(err);
    }
    g_propagate_error(errp, err);
}

/* ---- input ------------------------------------------------------------ */

/*
 * Reads what is available into the reader, waiting until something is or
 * the deadline.  Sets c->eof at end of stream.  On TIMEOUT the client stays
 * usable; other errors break it.
 */
static gboolean client_fill(QmpClient *c, gint64 deadline, const char *what,
                            GError **errp)
{
    char buf[QMP_READ_CHUNK];

    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

        if (n > 0) {
            qmp_reader_feed(c->reader, buf, n);
            return TRUE;
        }
        if (n == 0 || errno == ECONNRESET) {
            c->eof = TRUE;
            return TRUE;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = wait_fd(c->fd, POLLIN, deadline);

            if (r == 0) {
                g_set_error(errp, QMP_ERROR, QMP_ERROR_TIMEOUT,
                            "timed out waiting for %s", what);
                return FALSE;
            }
            if (r < 0) {
                client_set_error(c, TRUE, errp, QMP_ERROR_IO, "poll: %s",
                                 g_strerror(errno));
                return FALSE;
            }
            continue;
        }
        client_set_error(c, TRUE, errp, QMP_ERROR_IO, "recv: %s",
                         g_strerror(errno));
        return FALSE;
    }
}

/* The next message from the peer (caller owns it), or NULL with an error. */
static JsonNode *client_read_message(QmpClient *c, gint64 deadline,
                                     const char *what, GError **errp)
{
    for (;;) {
        JsonNode *msg = NULL;
        GError *err = NULL;

        if (c->recv_error) {
            g_propagate_error(errp, g_error_copy(c->recv_error));
            return NULL;
        }
        if (!qmp_reader_next(c->reader, &msg, &err)) {
            client_break(c, err);
            g_propagate_error(errp, err);
            return NULL;
        }
        if (msg) {
            return msg;
        }
        if (c->eof) {
            client_set_error(c, TRUE, errp, QMP_ERROR_CLOSED,
                             qmp_reader_in_message(c->reader)
                             ? "connection closed by the peer in the middle of a message"
                             : "connection closed by the peer");
            return NULL;
        }
        if (!client_fill(c, deadline, what, errp)) {
            return NULL;
        }
    }
}

/*
 * Sorts out a message read from the peer (protocol.c's rules); takes
 * ownership of @msg.  Events are queued, late replies dropped, the reply to
 * the command in flight is returned in *reply.  Anything else is a protocol
 * error that breaks the connection (returns FALSE).
 */
static gboolean client_dispatch(QmpClient *c, JsonNode *msg, JsonNode **reply,
                                GError **errp)
{
    GError *err = NULL;
    gpointer data;

    *reply = NULL;
    switch (qmp_dispatch_sort(&c->dispatch, msg, &data, &err)) {
    case QMP_MESSAGE_EVENT:
        g_queue_push_tail(&c->events, msg);
        return TRUE;
    case QMP_MESSAGE_REPLY:
        *reply = msg;
        return TRUE;
    case QMP_MESSAGE_LATE:
        json_node_unref(msg);       /* late reply to a timed out command */
        return TRUE;
    case QMP_MESSAGE_INVALID:
        break;
    }
    client_break(c, err);
    g_propagate_error(errp, err);
    json_node_unref(msg);
    return FALSE;
}

/* The "return" value of a reply, or its error; a malformed one breaks. */
static JsonNode *client_reply_result(QmpClient *c, JsonNode *reply,
                                     GError **errp)
{
    GError *err = NULL;
    JsonNode *result = qmp_reply_result(reply, &err);

    if (g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL)) {
        client_break(c, err);
    }
    if (err) {
        g_propagate_error(errp, err);
    }
    return result;
}

/* ---- output ----------------------------------------------------------- */

/*
 * Writes all of @data, @fd (if >= 0) attached to its first byte.  A command
 * left half-written breaks the connection; one not started does not.
 */
static gboolean client_send(QmpClient *c, const char *data, gsize len, int fd,
                            gint64 deadline, const char *command,
                            GError **errp)
{
    gsize off = 0;

    if (c->send_error) {
        g_propagate_error(errp, g_error_copy(c->send_error));
        return FALSE;
    }
    while (off < len) {
        ssize_t n;

        if (off == 0 && fd >= 0) {
            n = qmp_send_with_fd(c->fd, data, len, fd);
        } else {
            n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        }
        if (n >= 0) {
            off += n;
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = wait_fd(c->fd, POLLOUT, deadline);

            if (r == 0) {
                if (off > 0) {
                    client_set_error(c, FALSE, errp, QMP_ERROR_TIMEOUT,
                                     "timed out sending '%s' (partly sent, "
                                     "connection unusable)", command);
                } else {
                    g_set_error(errp, QMP_ERROR, QMP_ERROR_TIMEOUT,
                                "timed out sending '%s'", command);
                }
                return FALSE;
            }
            if (r < 0) {
                client_set_error(c, TRUE, errp, QMP_ERROR_IO, "poll: %s",
                                 g_strerror(errno));
                return FALSE;
            }
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            /* What the peer sent before closing can still be read. */
            client_set_error(c, FALSE, errp, QMP_ERROR_CLOSED,
                             "connection closed by the peer");
            return FALSE;
        }
        if (off == 0 && fd >= 0 && errno == EBADF) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                        "cannot pass fd %d: %s", fd, g_strerror(errno));
            return FALSE;
        }
        client_set_error(c, TRUE, errp, QMP_ERROR_IO, "send: %s",
                         g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

/* ---- commands --------------------------------------------------------- */

static JsonNode *client_execute(QmpClient *c, const char *command,
                                JsonObject *arguments, int fd, gint64 deadline,
                                GError **errp)
{
    g_autofree char *id = NULL;
    g_autofree char *what = NULL;
    g_autoptr(GString) text = NULL;
    JsonNode *reply = NULL;
    JsonNode *result;

    if (c->send_error) {
        g_propagate_error(errp, g_error_copy(c->send_error));
        return NULL;
    }
    id = qmp_dispatch_add(&c->dispatch, NULL);
    text = qmp_build_command(command, arguments, id);
    if (!client_send(c, text->str, text->len, fd, deadline, command, errp)) {
        qmp_dispatch_forget(&c->dispatch, id);
        return NULL;
    }
    what = g_strdup_printf("the reply to '%s'", command);
    while (!reply) {
        GError *err = NULL;
        JsonNode *msg = client_read_message(c, deadline, what, &err);

        if (!msg) {
            if (g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
                qmp_dispatch_abandon(&c->dispatch, id);
            } else {
                qmp_dispatch_forget(&c->dispatch, id);
            }
            g_propagate_error(errp, err);
            return NULL;
        }
        if (!client_dispatch(c, msg, &reply, errp)) {
            qmp_dispatch_forget(&c->dispatch, id);
            return NULL;
        }
    }
    result = client_reply_result(c, reply, errp);
    json_node_unref(reply);
    return result;
}

JsonNode *qmp_execute(QmpClient *client, const char *command,
                      JsonObject *arguments, int timeout_ms, GError **errp)
{
    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(command != NULL, NULL);
    return client_execute(client, command, arguments, -1,
                          qmp_deadline_from_timeout(timeout_ms), errp);
}

JsonNode *qmp_execute_with_fd(QmpClient *client, const char *command,
                              JsonObject *arguments, int fd, int timeout_ms,
                              GError **errp)
{
    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(command != NULL, NULL);
    if (!qmp_check_fd_to_pass(fd, command, errp)) {
        return NULL;
    }
    return client_execute(client, command, arguments, fd,
                          qmp_deadline_from_timeout(timeout_ms), errp);
}

JsonNode *qmp_execute_json(QmpClient *client, const char *command,
                           const char *arguments_json, int timeout_ms,
                           GError **errp)
{
    g_autoptr(JsonObject) arguments = NULL;

    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(command != NULL, NULL);
    if (!qmp_parse_arguments(command, arguments_json, &arguments, errp)) {
        return NULL;
    }
    return qmp_execute(client, command, arguments, timeout_ms, errp);
}

/* ---- events ----------------------------------------------------------- */

JsonNode *qmp_next_event(QmpClient *client, int timeout_ms, GError **errp)
{
    gint64 deadline = qmp_deadline_from_timeout(timeout_ms);

    g_return_val_if_fail(client != NULL, NULL);
    while (g_queue_is_empty(&client->events)) {
        JsonNode *reply;
        JsonNode *msg = client_read_message(client, deadline, "an event", errp);

        if (!msg || !client_dispatch(client, msg, &reply, errp)) {
            return NULL;
        }
    }
    return g_queue_pop_head(&client->events);
}

JsonNode *qmp_wait_event(QmpClient *client, const char *name, int timeout_ms,
                         GError **errp)
{
    gint64 deadline = qmp_deadline_from_timeout(timeout_ms);
    g_autofree char *what = NULL;

    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(name != NULL, NULL);
    for (GList *l = client->events.head; l; l = l->next) {
        if (strcmp(qmp_event_name(l->data), name) == 0) {
            JsonNode *event = l->data;

            g_queue_delete_link(&client->events, l);
            return event;
        }
    }
    what = g_strdup_printf("event %s", name);
    for (;;) {
        JsonNode *reply;
        guint queued = client->events.length;
        JsonNode *msg = client_read_message(client, deadline, what, errp);

        if (!msg || !client_dispatch(client, msg, &reply, errp)) {
            return NULL;
        }
        /* A new event went to the tail; take it back if it is the one. */
        if (client->events.length > queued &&
            strcmp(qmp_event_name(client->events.tail->data), name) == 0) {
            return g_queue_pop_tail(&client->events);
        }
    }
}

guint qmp_client_events_queued(const QmpClient *client)
{
    g_return_val_if_fail(client != NULL, 0);
    return client->events.length;
}

const char *qmp_event_name(JsonNode *event)
{
    g_return_val_if_fail(event != NULL && JSON_NODE_HOLDS_OBJECT(event), NULL);
    return json_object_get_string_member(json_node_get_object(event), "event");
}

JsonObject *qmp_event_data(JsonNode *event)
{
    JsonNode *data;

    g_return_val_if_fail(event != NULL && JSON_NODE_HOLDS_OBJECT(event), NULL);
    data = json_object_get_member(json_node_get_object(event), "data");
    return data && JSON_NODE_HOLDS_OBJECT(data) ? json_node_get_object(data)
                                                : NULL;
}

/* ---- connection ------------------------------------------------------- */

static QmpClient *client_new(int fd, const char *const *capabilities,
                             gint64 deadline, GError **errp)
{
    QmpClient *c;
    JsonNode *msg;
    JsonNode *ret;
    GError *err = NULL;
    g_autoptr(JsonObject) args = qmp_capabilities_arguments(capabilities);

    if (!qmp_set_nonblocking(fd, errp)) {
        close(fd);
        return NULL;
    }
    c = g_new0(QmpClient, 1);
    c->fd = fd;
    c->reader = qmp_reader_new(0);
    g_queue_init(&c->events);
    qmp_dispatch_init(&c->dispatch);

    msg = client_read_message(c, deadline, "the QMP greeting", &err);
    if (!msg) {
        goto fail;
    }
    if (!qmp_greeting_take(&c->greeting, msg, &err)) {
        client_break(c, err);
        goto fail;
    }
    ret = client_execute(c, "qmp_capabilities", args, -1, deadline, &err);
    if (!ret) {
        g_prefix_error(&err, "capabilities negotiation failed: ");
        goto fail;
    }
    json_node_unref(ret);
    return c;

fail:
    g_propagate_error(errp, err);
    qmp_close(c);
    return NULL;
}

QmpClient *qmp_connect_fd(int fd, const char *const *capabilities,
                          int timeout_ms, GError **errp)
{
    g_return_val_if_fail(fd >= 0, NULL);
    return client_new(fd, capabilities, qmp_deadline_from_timeout(timeout_ms),
                      errp);
}

/* A connected non-blocking socket, or -1 with an error. */
static int unix_connect(const char *path, gint64 deadline, GError **errp)
{
    struct sockaddr_un addr;
    int dirfd;
    int fd = -1;

    if (!qmp_unix_address(path, &addr, &dirfd, errp)) {
        return -1;
    }
    fd = qmp_unix_socket(errp);
    if (fd < 0) {
        goto fail;
    }
    for (;;) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
            break;
        }
        if (errno == EAGAIN) {
            /* The server's backlog is full: try again until the deadline. */
            int left = deadline_remaining_ms(deadline);

            if (left == 0) {
                g_set_error(errp, QMP_ERROR, QMP_ERROR_TIMEOUT,
                            "timed out connecting to %s", path);
                goto fail;
            }
            g_usleep(1000 * (left < 0 ? 10 : MIN(left, 10)));
            continue;
        }
        if (errno == EINPROGRESS || errno == EINTR) {
            int r = wait_fd(fd, POLLOUT, deadline);
            int soerr = 0;
            socklen_t len = sizeof(soerr);

            if (r == 0) {
                g_set_error(errp, QMP_ERROR, QMP_ERROR_TIMEOUT,
                            "timed out connecting to %s", path);
                goto fail;
            }
            if (r < 0 ||
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) {
                soerr = errno;
            }
            if (soerr) {
                errno = soerr;
                goto connect_failed;
            }
            break;
        }
connect_failed:
        g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "cannot connect to %s: %s",
                    path, g_strerror(errno));
        goto fail;
    }
    if (dirfd >= 0) {
        close(dirfd);
    }
    return fd;

fail:
    if (fd >= 0) {
        close(fd);
    }
    if (dirfd >= 0) {
        close(dirfd);
    }
    return -1;
}

QmpClient *qmp_connect_unix_with_caps(const char *path,
                                      const char *const *capabilities,
                                      int timeout_ms, GError **errp)
{
    gint64 deadline = qmp_deadline_from_timeout(timeout_ms);
    int fd;

    g_return_val_if_fail(path != NULL, NULL);
    fd = unix_connect(path, deadline, errp);
    if (fd < 0) {
        return NULL;
    }
    return client_new(fd, capabilities, deadline, errp);
}

QmpClient *qmp_connect_unix(const char *path, int timeout_ms, GError **errp)
{
    return qmp_connect_unix_with_caps(path, NULL, timeout_ms, errp);
}

void qmp_close(QmpClient *client)
{
    if (!client) {
        return;
    }
    if (client->fd >= 0) {
        close(client->fd);
    }
    qmp_reader_free(client->reader);
    g_queue_clear_full(&client->events, (GDestroyNotify)json_node_unref);
    qmp_greeting_clear(&client->greeting);
    qmp_dispatch_clear(&client->dispatch);
    g_clear_error(&client->send_error);
    g_clear_error(&client->recv_error);
    g_free(client);
}

/* ---- accessors -------------------------------------------------------- */

int qmp_client_get_fd(const QmpClient *client)
{
    g_return_val_if_fail(client != NULL, -1);
    return client->fd;
}

JsonObject *qmp_client_greeting(const QmpClient *client)
{
    g_return_val_if_fail(client != NULL, NULL);
    return client->greeting.qmp;
}

const char *qmp_client_qemu_version(const QmpClient *client, int *major,
                                    int *minor, int *micro)
{
    g_return_val_if_fail(client != NULL, NULL);
    return qmp_greeting_version(&client->greeting, major, minor, micro);
}

const char *qmp_client_qemu_package(const QmpClient *client)
{
    g_return_val_if_fail(client != NULL, NULL);
    return client->greeting.package;
}

gboolean qmp_client_has_capability(const QmpClient *client, const char *name)
{
    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(name != NULL, FALSE);
    return qmp_greeting_has_capability(&client->greeting, name);
}

void qmp_client_set_max_message_size(QmpClient *client, gsize max_message_size)
{
    g_return_if_fail(client != NULL);
    qmp_reader_set_max_message_size(client->reader, max_message_size);
}
