/*
 * libqmp: synchronous QMP client
 *
 *   g_autoptr(GError) err = NULL;
 *   g_autoptr(QmpClient) qmp = qmp_connect_unix("/run/vm.qmp", 5000, &err);
 *   if (!qmp) { g_printerr("%s\n", err->message); return 3; }
 *   g_autoptr(JsonNode) ret = qmp_execute_json(qmp, "query-status", NULL,
 *                                              5000, &err);
 *   if (!ret) { g_printerr("%s\n", err->message); return 1; }
 *
 * Ids.  Every command gets a fresh id, the string "libqmp-N" with N counting
 * from 1 on each connection, and its reply is matched by that id.  A message
 * read while waiting for a reply is handled as follows:
 *   - an event (a "event" member) is appended to the client's event queue;
 *   - a reply ("return" or "error") whose id is the awaited one is the reply;
 *   - a reply whose id belongs to a command of this client that timed out
 *     earlier (a late reply) is dropped silently;
 *   - a reply without an id that is an error is taken as the reply to the
 *     command in flight: QEMU leaves the id out only when it could not read
 *     the request;
 *   - anything else (a reply with an unknown id, a reply without id that is
 *     not an error, a message that is neither event nor reply) is a
 *     QMP_ERROR_PROTOCOL error, and the connection becomes unusable.
 * The same rules apply to messages read by qmp_next_event() and
 * qmp_wait_event(), with no command in flight.
 *
 * Events.  Events are kept in arrival order in a queue, whichever call read
 * them.  qmp_next_event() takes the oldest; qmp_wait_event() takes the oldest
 * one with a given name and leaves the others queued in order.
 *
 * Timeouts.  Every blocking call takes timeout_ms: -1 waits forever, 0 does
 * not block (only what is already received is looked at), n > 0 is a
 * deadline n milliseconds from the call on the monotonic clock, covering the
 * whole call (sending, waiting, reading).  The socket is non-blocking and
 * all waiting is poll().
 *
 * Errors.  Errors are QMP_ERROR values (qmp/error.h).  After an IO, CLOSED
 * or PROTOCOL error the connection is unusable: further commands fail with
 * a copy of that error.  Events received before the failure stay readable
 * with qmp_next_event()/qmp_wait_event(), which also go on reading what the
 * peer sent before it closed (so the SHUTDOWN event after "quit" is not
 * lost), and only then fail.
 *
 * Signals.  Writes use send(MSG_NOSIGNAL): a closed peer gives a
 * QMP_ERROR_CLOSED error, never SIGPIPE.  EINTR is retried.
 *
 * Threads.  A client has no global state but is not thread-safe: use each
 * client from one thread at a time.  Distinct clients are independent.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_QMP_H
#define QMP_QMP_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <qmp/error.h>
#include <qmp/reader.h>

G_BEGIN_DECLS

typedef struct QmpClient QmpClient;

/**
 * qmp_connect_unix:
 * @path: path of the QMP unix socket (a server socket of QEMU); paths longer
 *     than sun_path are handled
 * @timeout_ms: deadline for connecting, reading the greeting and
 *     negotiating; -1 waits forever
 * @errp: return location for an error, or NULL
 *
 * Connects, reads the greeting and leaves capabilities negotiation mode with
 * "qmp_capabilities" (no capability enabled).  The connection is made once;
 * a socket that does not exist yet or refuses is an IO error right away
 * (callers that wait for QEMU to come up retry).
 *
 * Returns: (transfer full) (nullable): a connected client in command mode,
 * free with qmp_close(); NULL on error: IO (connect failed), TIMEOUT,
 * CLOSED, PROTOCOL (not a QMP greeting), COMMAND (negotiation refused;
 * the message is prefixed "capabilities negotiation failed: ").
 */
QMP_API QmpClient *qmp_connect_unix(const char *path, int timeout_ms,
                                    GError **errp);

/**
 * qmp_connect_unix_with_caps:
 * @path: as for qmp_connect_unix()
 * @capabilities: (nullable) (array zero-terminated=1): capabilities to enable
 *     (e.g. {"oob", NULL}), sent as "qmp_capabilities" {"enable": [...]};
 *     NULL or empty enables none
 * @timeout_ms: as for qmp_connect_unix()
 * @errp: return location for an error, or NULL
 *
 * Like qmp_connect_unix() with capabilities.  Whether the server offers them
 * is the server's to check: a refusal is a QMP_ERROR_COMMAND error.
 *
 * Returns: as qmp_connect_unix().
 */
QMP_API QmpClient *qmp_connect_unix_with_caps(const char *path,
                                              const char *const *capabilities,
                                              int timeout_ms, GError **errp);

/**
 * qmp_connect_fd:
 * @fd: a connected stream socket (e.g. one end of a socketpair, or an
 *     accepted connection); the client takes ownership of it and closes it
 *     on error as well; it is made non-blocking
 * @capabilities: (nullable): as for qmp_connect_unix_with_caps()
 * @timeout_ms: as for qmp_connect_unix()
 * @errp: return location for an error, or NULL
 *
 * Reads the greeting and negotiates on an existing connection.
 *
 * Returns: as qmp_connect_unix().
 */
QMP_API QmpClient *qmp_connect_fd(int fd, const char *const *capabilities,
                                  int timeout_ms, GError **errp);

/**
 * qmp_close:
 * @client: (nullable): a client
 *
 * Closes the connection and frees the client with its queued events.  A
 * command that timed out is not waited for.
 */
QMP_API void qmp_close(QmpClient *client);

/**
 * qmp_execute:
 * @client: a client
 * @command: the command name, e.g. "query-status"
 * @arguments: (nullable) (transfer none): the command's "arguments" object,
 *     or NULL for none; not modified, the caller keeps its reference
 * @timeout_ms: deadline for sending and the reply (see "Timeouts")
 * @errp: return location for an error, or NULL
 *
 * Sends {"execute": @command, "arguments": @arguments, "id": "libqmp-N"}
 * and waits for the reply with that id; events read meanwhile are queued.
 *
 * On TIMEOUT waiting for the reply, the client stays usable and drops the
 * reply if it comes later.  On TIMEOUT while the command was only partly
 * written, the connection is unusable.
 *
 * Returns: (transfer full) (nullable): the reply's "return" value (an
 * object, often empty, or an array, ...), free with json_node_unref(); NULL
 * on error: COMMAND (the reply was an error: qmp_error_class() and
 * qmp_error_desc(); the message is "<class>: <desc>"), TIMEOUT, CLOSED, IO,
 * PROTOCOL.
 */
QMP_API JsonNode *qmp_execute(QmpClient *client, const char *command,
                              JsonObject *arguments, int timeout_ms,
                              GError **errp);

/**
 * qmp_execute_json:
 * @client: a client
 * @command: the command name
 * @arguments_json: (nullable): the arguments as JSON text that must be an
 *     object, e.g. "{\"device\": \"drive0\"}"; NULL or "" for none
 * @timeout_ms: as for qmp_execute()
 * @errp: return location for an error, or NULL
 *
 * qmp_execute() with the arguments given as text, parsed by json-glib.
 *
 * Returns: as qmp_execute(); also QMP_ERROR_INVALID (nothing sent) when
 * @arguments_json is not a JSON object.
 */
QMP_API JsonNode *qmp_execute_json(QmpClient *client, const char *command,
                                   const char *arguments_json, int timeout_ms,
                                   GError **errp);

/**
 * qmp_execute_with_fd:
 * @client: a client
 * @command: the command name, typically "getfd" or "add-fd"
 * @arguments: (nullable) (transfer none): as for qmp_execute()
 * @fd: a file descriptor to pass to the server; the caller keeps it (the
 *     server receives a duplicate) and may close it once this returns
 * @timeout_ms: as for qmp_execute()
 * @errp: return location for an error, or NULL
 *
 * qmp_execute(), with @fd sent as SCM_RIGHTS ancillary data on the first
 * byte of the command, which is where QEMU's monitor expects the fd for
 * "getfd" ({"fdname": "NAME"}) and "add-fd" ({"fdset-id": N}, optional).
 * Only meaningful on a unix socket.
 *
 * Returns: as qmp_execute().
 */
QMP_API JsonNode *qmp_execute_with_fd(QmpClient *client, const char *command,
                                      JsonObject *arguments, int fd,
                                      int timeout_ms, GError **errp);

/**
 * qmp_next_event:
 * @client: a client
 * @timeout_ms: how long to wait when no event is queued: -1 forever, 0 not
 *     at all
 * @errp: return location for an error, or NULL
 *
 * Takes the oldest event, reading from the connection when the queue is
 * empty.
 *
 * Returns: (transfer full) (nullable): the whole event message, an object
 * with "event", "data" (optional) and "timestamp", free with
 * json_node_unref(); NULL on error: TIMEOUT (no event in time; the client
 * stays usable), CLOSED (no more events will come), IO, PROTOCOL.
 */
QMP_API JsonNode *qmp_next_event(QmpClient *client, int timeout_ms,
                                 GError **errp);

/**
 * qmp_wait_event:
 * @client: a client
 * @name: the event name, e.g. "STOP"
 * @timeout_ms: as for qmp_next_event()
 * @errp: return location for an error, or NULL
 *
 * Takes the oldest event named @name, from the queue or from the
 * connection.  Other events stay queued, in order.
 *
 * Returns: (transfer full) (nullable): as qmp_next_event().
 */
QMP_API JsonNode *qmp_wait_event(QmpClient *client, const char *name,
                                 int timeout_ms, GError **errp);

/**
 * qmp_client_events_queued:
 * @client: a client
 *
 * Returns: the number of events received and not taken yet (does not read).
 */
QMP_API guint qmp_client_events_queued(const QmpClient *client);

/**
 * qmp_client_get_fd:
 * @client: a client
 *
 * Returns: the socket, owned by @client (for poll() or getsockopt(); do not
 * read, write or close it).
 */
QMP_API int qmp_client_get_fd(const QmpClient *client);

/**
 * qmp_client_greeting:
 * @client: a client
 *
 * Returns: (transfer none): the greeting's "QMP" object ({"version": ...,
 * "capabilities": [...]}), owned by @client.
 */
QMP_API JsonObject *qmp_client_greeting(const QmpClient *client);

/**
 * qmp_client_qemu_version:
 * @client: a client
 * @major: (out) (optional): version.qemu.major of the greeting
 * @minor: (out) (optional): version.qemu.minor
 * @micro: (out) (optional): version.qemu.micro
 *
 * Returns: (transfer none): the server's version as "MAJOR.MINOR.MICRO",
 * owned by @client.
 */
QMP_API const char *qmp_client_qemu_version(const QmpClient *client,
                                            int *major, int *minor,
                                            int *micro);

/**
 * qmp_client_qemu_package:
 * @client: a client
 *
 * Returns: (transfer none): version.package of the greeting (may be ""),
 * owned by @client.
 */
QMP_API const char *qmp_client_qemu_package(const QmpClient *client);

/**
 * qmp_client_has_capability:
 * @client: a client
 * @name: a capability name, e.g. "oob"
 *
 * Returns: TRUE when the greeting offered @name.
 */
QMP_API gboolean qmp_client_has_capability(const QmpClient *client,
                                           const char *name);

/**
 * qmp_client_set_max_message_size:
 * @client: a client
 * @max_message_size: largest accepted message in bytes; 0 for the default
 *     (QMP_READER_DEFAULT_MAX_MESSAGE_SIZE)
 *
 * A larger message from the server is a QMP_ERROR_PROTOCOL error.
 */
QMP_API void qmp_client_set_max_message_size(QmpClient *client,
                                             gsize max_message_size);

/**
 * qmp_event_name:
 * @event: an event as returned by qmp_next_event()
 *
 * Returns: (transfer none): its "event" member, owned by @event.
 */
QMP_API const char *qmp_event_name(JsonNode *event);

/**
 * qmp_event_data:
 * @event: an event as returned by qmp_next_event()
 *
 * Returns: (transfer none) (nullable): its "data" object, owned by @event,
 * or NULL when it has none.
 */
QMP_API JsonObject *qmp_event_data(JsonNode *event);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpClient, qmp_close)

G_END_DECLS

#endif /* QMP_QMP_H */
