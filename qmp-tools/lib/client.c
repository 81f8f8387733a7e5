/*
 * libqmp: synchronous QMP client
 *
 * A non-blocking unix socket, a QmpReader for the input, poll() with a
 * monotonic deadline for every wait.  See qmp/qmp.h for the contract (id
 * matching, event queue, which errors leave the client usable).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE             /* O_PATH */
#include <errno.h>
#include <fcntl.h>
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
    JsonNode *greeting;         /* the greeting message */
    JsonObject *greeting_qmp;   /* its "QMP" member, owned by greeting */
    char *version;              /* "MAJOR.MINOR.MICRO" */
    int major, minor, micro;
    char *package;
    guint64 last_id;            /* ids are "libqmp-<last_id + 1>" */
    GHashTable *abandoned;      /* ids of commands given up on (timed out) */
    gboolean eof;               /* recv() returned 0 */
    GError *send_error;         /* set: no command can be sent any more */
    GError *recv_error;         /* set: nothing more can be read */
};

/* ---- deadlines -------------------------------------------------------- */

/* -1 for no deadline, else an absolute g_get_monotonic_time() value. */
static gint64 deadline_from_timeout(int timeout_ms)
{
    if (timeout_ms < 0) {
        return -1;
    }
    return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

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

static char *describe_message(JsonNode *msg)
{
    g_autofree char *text = json_to_string(msg, FALSE);

    if (strlen(text) > 200) {
        return g_strdup_printf("%.200s...", text);
    }
    return g_steal_pointer(&text);
}

static void client_protocol_error(QmpClient *c, GError **errp, JsonNode *msg,
                                  const char *what)
{
    g_autofree char *text = describe_message(msg);

    client_set_error(c, TRUE, errp, QMP_ERROR_PROTOCOL, "%s: %s", what, text);
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

static gboolean node_is_string(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) &&
           json_node_get_value_type(node) == G_TYPE_STRING;
}

/*
 * Sorts out a message read from the peer; takes ownership of @msg.
 * Events are queued.  A reply with id @want_id (when non-NULL) is returned
 * in *reply.  Late replies to abandoned commands are dropped.  Anything else
 * is a protocol error that breaks the connection (returns FALSE).
 */
static gboolean client_dispatch(QmpClient *c, JsonNode *msg,
                                const char *want_id, JsonNode **reply,
                                GError **errp)
{
    JsonObject *obj = json_node_get_object(msg);
    JsonNode *id;
    const char *what = NULL;

    *reply = NULL;
    if (json_object_has_member(obj, "event")) {
        if (!node_is_string(json_object_get_member(obj, "event"))) {
            what = "event name is not a string";
            goto fail;
        }
        g_queue_push_tail(&c->events, msg);
        return TRUE;
    }
    if (!json_object_has_member(obj, "return") &&
        !json_object_has_member(obj, "error")) {
        what = "unexpected message (neither a reply nor an event)";
        goto fail;
    }
    id = json_object_get_member(obj, "id");
    if (id) {
        const char *s = node_is_string(id) ? json_node_get_string(id) : NULL;

        if (want_id && s && strcmp(s, want_id) == 0) {
            *reply = msg;
            return TRUE;
        }
        if (s && g_hash_table_remove(c->abandoned, s)) {
            json_node_unref(msg);       /* late reply to a timed out command */
            return TRUE;
        }
        what = "reply with an unexpected id";
        goto fail;
    }
    if (want_id && json_object_has_member(obj, "error")) {
        *reply = msg;       /* QEMU could not read the request's id */
        return TRUE;
    }
    what = "reply without an id";
fail:
    client_protocol_error(c, errp, msg, what);
    json_node_unref(msg);
    return FALSE;
}

/* The "return" value of a reply, or its error as QMP_ERROR_COMMAND. */
static JsonNode *client_reply_result(QmpClient *c, JsonNode *reply,
                                     GError **errp)
{
    JsonObject *obj = json_node_get_object(reply);
    JsonNode *err;
    JsonObject *eobj;

    if (json_object_has_member(obj, "return")) {
        return json_object_dup_member(obj, "return");
    }
    err = json_object_get_member(obj, "error");
    if (!JSON_NODE_HOLDS_OBJECT(err)) {
        client_protocol_error(c, errp, reply, "error reply is not an object");
        return NULL;
    }
    eobj = json_node_get_object(err);
    if (!node_is_string(json_object_get_member(eobj, "class")) ||
        !node_is_string(json_object_get_member(eobj, "desc"))) {
        client_protocol_error(c, errp, reply,
                              "error reply without class or desc");
        return NULL;
    }
    qmp_error_set_command(errp, json_object_get_string_member(eobj, "class"),
                          json_object_get_string_member(eobj, "desc"));
    return NULL;
}

/* ---- output ----------------------------------------------------------- */

static ssize_t send_with_fd(int sock, const char *data, gsize len, int fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    struct cmsghdr *cmsg;

    memset(&control, 0, sizeof(control));
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

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
            n = send_with_fd(c->fd, data, len, fd);
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

/* {"execute": ..., "arguments": ..., "id": ...} and a newline. */
static GString *build_command(const char *command, JsonObject *arguments,
                              const char *id)
{
    g_autoptr(JsonObject) obj = json_object_new();
    g_autoptr(JsonNode) node = NULL;
    g_autoptr(JsonGenerator) gen = json_generator_new();
    GString *text = g_string_new(NULL);

    json_object_set_string_member(obj, "execute", command);
    if (arguments) {
        json_object_set_object_member(obj, "arguments",
                                      json_object_ref(arguments));
    }
    json_object_set_string_member(obj, "id", id);
    node = json_node_init_object(json_node_alloc(), obj);
    json_generator_set_root(gen, node);
    json_generator_to_gstring(gen, text);
    g_string_append_c(text, '\n');
    return text;
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
    id = g_strdup_printf("libqmp-%" G_GUINT64_FORMAT, ++c->last_id);
    text = build_command(command, arguments, id);
    if (!client_send(c, text->str, text->len, fd, deadline, command, errp)) {
        return NULL;
    }
    what = g_strdup_printf("the reply to '%s'", command);
    while (!reply) {
        GError *err = NULL;
        JsonNode *msg = client_read_message(c, deadline, what, &err);

        if (!msg) {
            if (g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
                g_hash_table_add(c->abandoned, g_steal_pointer(&id));
            }
            g_propagate_error(errp, err);
            return NULL;
        }
        if (!client_dispatch(c, msg, id, &reply, errp)) {
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
                          deadline_from_timeout(timeout_ms), errp);
}

JsonNode *qmp_execute_with_fd(QmpClient *client, const char *command,
                              JsonObject *arguments, int fd, int timeout_ms,
                              GError **errp)
{
    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(command != NULL, NULL);
    if (fd < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "cannot pass fd %d to '%s'", fd, command);
        return NULL;
    }
    return client_execute(client, command, arguments, fd,
                          deadline_from_timeout(timeout_ms), errp);
}

JsonNode *qmp_execute_json(QmpClient *client, const char *command,
                           const char *arguments_json, int timeout_ms,
                           GError **errp)
{
    g_autoptr(JsonParser) parser = NULL;
    g_autoptr(GError) err = NULL;
    JsonNode *root;

    g_return_val_if_fail(client != NULL, NULL);
    g_return_val_if_fail(command != NULL, NULL);
    if (!arguments_json || !*arguments_json) {
        return qmp_execute(client, command, NULL, timeout_ms, errp);
    }
    parser = json_parser_new();
    if (!json_parser_load_from_data(parser, arguments_json, -1, &err)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "arguments of '%s' are not valid JSON: %s", command,
                    err->message);
        return NULL;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "arguments of '%s' must be a JSON object", command);
        return NULL;
    }
    return qmp_execute(client, command, json_node_get_object(root),
                       timeout_ms, errp);
}

/* ---- events ----------------------------------------------------------- */

JsonNode *qmp_next_event(QmpClient *client, int timeout_ms, GError **errp)
{
    gint64 deadline = deadline_from_timeout(timeout_ms);

    g_return_val_if_fail(client != NULL, NULL);
    while (g_queue_is_empty(&client->events)) {
        JsonNode *reply;
        JsonNode *msg = client_read_message(client, deadline, "an event", errp);

        if (!msg || !client_dispatch(client, msg, NULL, &reply, errp)) {
            return NULL;
        }
    }
    return g_queue_pop_head(&client->events);
}

JsonNode *qmp_wait_event(QmpClient *client, const char *name, int timeout_ms,
                         GError **errp)
{
    gint64 deadline = deadline_from_timeout(timeout_ms);
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

        if (!msg || !client_dispatch(client, msg, NULL, &reply, errp)) {
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

static gboolean get_int_member(JsonObject *obj, const char *name, int *out)
{
    JsonNode *node = obj ? json_object_get_member(obj, name) : NULL;

    if (!node || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_INT64) {
        return FALSE;
    }
    *out = (int)json_node_get_int(node);
    return TRUE;
}

static JsonObject *get_object_member(JsonObject *obj, const char *name)
{
    JsonNode *node = obj ? json_object_get_member(obj, name) : NULL;

    return node && JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node)
                                                : NULL;
}

/* Checks the greeting and keeps it (takes ownership of @msg). */
static gboolean client_take_greeting(QmpClient *c, JsonNode *msg,
                                     GError **errp)
{
    JsonObject *qmp = get_object_member(json_node_get_object(msg), "QMP");
    JsonObject *version = get_object_member(qmp, "version");
    JsonObject *qemu = get_object_member(version, "qemu");
    JsonNode *package = version ? json_object_get_member(version, "package")
                                : NULL;
    JsonNode *caps = qmp ? json_object_get_member(qmp, "capabilities") : NULL;

    if (!qemu || !get_int_member(qemu, "major", &c->major) ||
        !get_int_member(qemu, "minor", &c->minor) ||
        !get_int_member(qemu, "micro", &c->micro) ||
        (package && !node_is_string(package)) ||
        (caps && !JSON_NODE_HOLDS_ARRAY(caps))) {
        client_protocol_error(c, errp, msg, "not a QMP greeting");
        json_node_unref(msg);
        return FALSE;
    }
    c->greeting = msg;
    c->greeting_qmp = qmp;
    c->version = g_strdup_printf("%d.%d.%d", c->major, c->minor, c->micro);
    c->package = g_strdup(package ? json_node_get_string(package) : "");
    return TRUE;
}

static QmpClient *client_new(int fd, const char *const *capabilities,
                             gint64 deadline, GError **errp)
{
    QmpClient *c;
    JsonNode *msg;
    JsonNode *ret;
    GError *err = NULL;
    g_autoptr(JsonObject) args = NULL;
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "fcntl: %s",
                    g_strerror(errno));
        close(fd);
        return NULL;
    }
    c = g_new0(QmpClient, 1);
    c->fd = fd;
    c->reader = qmp_reader_new(0);
    g_queue_init(&c->events);
    c->abandoned = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    msg = client_read_message(c, deadline, "the QMP greeting", &err);
    if (!msg) {
        goto fail;
    }
    if (!client_take_greeting(c, msg, &err)) {
        goto fail;
    }
    if (capabilities && capabilities[0]) {
        JsonArray *enable = json_array_new();

        for (const char *const *cap = capabilities; *cap; cap++) {
            json_array_add_string_element(enable, *cap);
        }
        args = json_object_new();
        json_object_set_array_member(args, "enable", enable);
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
    return client_new(fd, capabilities, deadline_from_timeout(timeout_ms),
                      errp);
}

/* A connected non-blocking socket, or -1 with an error. */
static int unix_connect(const char *path, gint64 deadline, GError **errp)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autofree char *proxy = NULL;
    const char *target = path;
    int dirfd = -1;
    int fd = -1;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        /* Too long for sun_path: go through the directory's fd. */
        g_autofree char *dir = g_path_get_dirname(path);
        g_autofree char *base = g_path_get_basename(path);

        dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_IO,
                        "cannot connect to %s: %s", path, g_strerror(errno));
            return -1;
        }
        proxy = g_strdup_printf("/proc/self/fd/%d/%s", dirfd, base);
        target = proxy;
        if (strlen(target) >= sizeof(addr.sun_path)) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                        "socket name too long: %s", path);
            goto fail;
        }
    }
    memcpy(addr.sun_path, target, strlen(target) + 1);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "socket: %s",
                    g_strerror(errno));
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
    gint64 deadline = deadline_from_timeout(timeout_ms);
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
    if (client->greeting) {
        json_node_unref(client->greeting);
    }
    g_free(client->version);
    g_free(client->package);
    g_hash_table_destroy(client->abandoned);
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
    return client->greeting_qmp;
}

const char *qmp_client_qemu_version(const QmpClient *client, int *major,
                                    int *minor, int *micro)
{
    g_return_val_if_fail(client != NULL, NULL);
    if (major) {
        *major = client->major;
    }
    if (minor) {
        *minor = client->minor;
    }
    if (micro) {
        *micro = client->micro;
    }
    return client->version;
}

const char *qmp_client_qemu_package(const QmpClient *client)
{
    g_return_val_if_fail(client != NULL, NULL);
    return client->package;
}

gboolean qmp_client_has_capability(const QmpClient *client, const char *name)
{
    JsonNode *caps;

    g_return_val_if_fail(client != NULL, FALSE);
    g_return_val_if_fail(name != NULL, FALSE);
    caps = json_object_get_member(client->greeting_qmp, "capabilities");
    if (!caps || !JSON_NODE_HOLDS_ARRAY(caps)) {
        return FALSE;
    }
    for (guint i = 0; i < json_array_get_length(json_node_get_array(caps)); i++) {
        JsonNode *cap = json_array_get_element(json_node_get_array(caps), i);

        if (node_is_string(cap) && strcmp(json_node_get_string(cap), name) == 0) {
            return TRUE;
        }
    }
    return FALSE;
}

void qmp_client_set_max_message_size(QmpClient *client, gsize max_message_size)
{
    g_return_if_fail(client != NULL);
    qmp_reader_set_max_message_size(client->reader, max_message_size);
}
