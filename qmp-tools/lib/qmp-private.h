/*
 * libqmp: helpers shared between the library's layers (not installed)
 *
 * The synchronous client (client.c) and the asynchronous one (async.c) do
 * their own I/O but follow the same protocol rules, which live here once:
 *   - error.c:    QMP error replies as QMP_ERROR_COMMAND errors;
 *   - protocol.c: command ids, how an incoming message is sorted (event,
 *                 reply to which command, late reply, protocol error), reply
 *                 results, the greeting, the text of a command;
 *   - socket.c:   deadlines, unix socket addresses, fd passing.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_PRIVATE_H
#define QMP_PRIVATE_H

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <json-glib/json-glib.h>
#include <qmp/error.h>

/* ---- error.c ---------------------------------------------------------- */

/*
 * Sets *errp (if errp is non-NULL) to a QMP_ERROR_COMMAND error for a QMP
 * error reply with the given class and description.  The message is
 * "<class>: <desc>".
 */
void qmp_error_set_command(GError **errp, const char *klass, const char *desc);

/* ---- protocol.c: sorting incoming messages ------------------------------ */

/*
 * The commands of one connection that await a reply, and those given up on.
 *
 * Ids are "libqmp-N", N counting from 1 on each connection.  A message read
 * from the server is sorted by qmp_dispatch_sort():
 *   - an event (a "event" member, which must be a string): QMP_MESSAGE_EVENT;
 *   - a reply ("return" or "error") whose id is that of a command awaiting
 *     its reply: QMP_MESSAGE_REPLY, and the command no longer awaits;
 *   - a reply whose id is that of a command given up on (a late reply):
 *     QMP_MESSAGE_LATE, to be dropped;
 *   - a reply without an id that is an error: the reply to the oldest
 *     command awaiting one (QEMU leaves the id out only when it could not
 *     read the request, and answers in order);
 *   - anything else (a reply with an unknown id, a reply without id that is
 *     not an error or with no command awaiting a reply, a message that is
 *     neither event nor reply): QMP_MESSAGE_INVALID with a
 *     QMP_ERROR_PROTOCOL error; the connection is to be given up.
 */
typedef enum {
    QMP_MESSAGE_EVENT,
    QMP_MESSAGE_REPLY,
    QMP_MESSAGE_LATE,
    QMP_MESSAGE_INVALID,
} QmpMessageKind;

typedef struct {
    guint64 last_id;            /* ids are "libqmp-<last_id + 1>" */
    GHashTable *awaiting;       /* id -> QmpDispatchEntry */
    GHashTable *abandoned;      /* ids of commands given up on */
} QmpDispatch;

void qmp_dispatch_init(QmpDispatch *d);
void qmp_dispatch_clear(QmpDispatch *d);

/*
 * A fresh id for a command about to be sent, which from now on awaits its
 * reply; @data is handed back by qmp_dispatch_sort() with the reply.
 * Returns: (transfer full): the id.
 */
char *qmp_dispatch_add(QmpDispatch *d, gpointer data);

/* The command @id was given up on after it was sent: drop its reply. */
void qmp_dispatch_abandon(QmpDispatch *d, const char *id);

/* The command @id was not sent after all, or is no concern any more. */
void qmp_dispatch_forget(QmpDispatch *d, const char *id);

/* The number of commands awaiting a reply. */
guint qmp_dispatch_n_awaiting(const QmpDispatch *d);

/*
 * Sorts @msg (not consumed) by the rules above.  For QMP_MESSAGE_REPLY,
 * *data is the data given to qmp_dispatch_add() for that command.  For
 * QMP_MESSAGE_INVALID, *errp is set.
 */
QmpMessageKind qmp_dispatch_sort(QmpDispatch *d, JsonNode *msg,
                                 gpointer *data, GError **errp);

/*
 * The "return" value of a reply (transfer full), or NULL with its error as
 * a QMP_ERROR_COMMAND error, or NULL with a QMP_ERROR_PROTOCOL error when
 * the error reply is malformed.
 */
JsonNode *qmp_reply_result(JsonNode *reply, GError **errp);

/* A QMP_ERROR_PROTOCOL error "<what>: <the message, shortened>". */
void qmp_set_protocol_error(GError **errp, JsonNode *msg, const char *what);

gboolean qmp_node_is_string(JsonNode *node);

/* ---- protocol.c: the greeting and commands ------------------------------ */

typedef struct {
    JsonNode *message;          /* the greeting message */
    JsonObject *qmp;            /* its "QMP" member, owned by message */
    char *version;              /* "MAJOR.MINOR.MICRO" */
    int major, minor, micro;
    char *package;
} QmpGreeting;

/*
 * Checks that @msg is a QMP greeting and keeps it in @g (which must be
 * empty); takes ownership of @msg in any case.  FALSE with a PROTOCOL error
 * when it is not a greeting.
 */
gboolean qmp_greeting_take(QmpGreeting *g, JsonNode *msg, GError **errp);
void qmp_greeting_clear(QmpGreeting *g);
const char *qmp_greeting_version(const QmpGreeting *g, int *major,
                                 int *minor, int *micro);
gboolean qmp_greeting_has_capability(const QmpGreeting *g, const char *name);

/*
 * The arguments of "qmp_capabilities" enabling @capabilities, or NULL when
 * there are none (transfer full).
 */
JsonObject *qmp_capabilities_arguments(const char *const *capabilities);

/* {"execute": ..., "arguments": ..., "id": ...} and a newline. */
GString *qmp_build_command(const char *command, JsonObject *arguments,
                           const char *id);

/*
 * Parses @arguments_json (NULL or "" for none) into *arguments (transfer
 * full, NULL for none).  FALSE with a QMP_ERROR_INVALID error when it is not
 * a JSON object.
 */
gboolean qmp_parse_arguments(const char *command, const char *arguments_json,
                             JsonObject **arguments, GError **errp);

/* ---- socket.c --------------------------------------------------------- */

/* -1 for timeout_ms < 0, else now + timeout_ms on the monotonic clock (us). */
gint64 qmp_deadline_from_timeout(int timeout_ms);

/* Sets O_NONBLOCK; FALSE with a QMP_ERROR_IO error. */
gboolean qmp_set_nonblocking(int fd, GError **errp);

/*
 * Fills @addr for connecting to @path.  A path longer than sun_path is
 * reached through its directory: *dirfd is then an fd of the directory that
 * must stay open until connect() returns, and be closed by the caller
 * (otherwise *dirfd is -1).  FALSE with an IO or INVALID error.
 */
gboolean qmp_unix_address(const char *path, struct sockaddr_un *addr,
                          int *dirfd, GError **errp);

/* A new non-blocking, close-on-exec unix stream socket, or -1 (IO error). */
int qmp_unix_socket(GError **errp);

/* FALSE with a QMP_ERROR_INVALID error when @fd cannot be an fd to pass. */
gboolean qmp_check_fd_to_pass(int fd, const char *command, GError **errp);

/* sendmsg() of @data with @fd attached as SCM_RIGHTS, MSG_NOSIGNAL. */
ssize_t qmp_send_with_fd(int sock, const char *data, gsize len, int fd);

#endif /* QMP_PRIVATE_H */
