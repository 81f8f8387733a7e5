/*
 * libqmp: asynchronous (event-driven) QMP client
 *
 * The same protocol as the synchronous client (qmp/qmp.h), for programs that
 * run an event loop: nothing here blocks or waits.  The client does no I/O
 * of its own accord; an event loop drives it:
 *
 *   - the client tells the loop which fd to watch, for reading and/or
 *     writing, and when its next deadline is (QmpAsyncLoop), or the loop asks
 *     (qmp_async_client_get_fd(), _get_io(), _get_deadline());
 *   - the loop calls qmp_async_client_handle_read(), _handle_write() and
 *     _handle_timer() when the fd is readable, writable, or the deadline has
 *     passed.
 *
 * An adapter does this for a given loop: qmp/adapters/glib.h attaches a
 * client to a GMainContext.  With GLib:
 *
 *   static void on_status(QmpAsyncClient *qmp, JsonNode *result,
 *                         const GError *error, gpointer data)
 *   {
 *       if (error) { g_printerr("%s\n", error->message); return; }
 *       ... result is the "return" value, borrowed ...
 *   }
 *
 *   static void on_connected(QmpAsyncClient *qmp, const GError *error,
 *                            gpointer data)
 *   {
 *       if (error) { g_printerr("%s\n", error->message); return; }
 *       qmp_async_client_execute(qmp, "query-status", NULL, 5000,
 *                                on_status, data, NULL);
 *   }
 *
 *   QmpAsyncClient *qmp = qmp_async_client_new();
 *   qmp_async_client_set_event_callback(qmp, on_event, data);
 *   qmp_glib_attach(qmp, NULL);
 *   if (!qmp_async_client_connect_unix(qmp, "/run/vm.qmp", NULL, 5000,
 *                                      on_connected, data, &err)) ...
 *   g_main_loop_run(loop);
 *   ...
 *   qmp_async_client_free(qmp);
 *
 * Connecting.  qmp_async_client_connect_unix() and _connect_fd() start the
 * connection; reading the greeting and negotiating capabilities
 * ("qmp_capabilities") happen as the loop runs, and the connect callback
 * says how it ended.  A client makes one connection: to reconnect, free it
 * and make a new one.
 *
 * Commands.  qmp_async_client_execute() queues a command and returns at
 * once; its callback is called exactly once, from the loop (never from
 * within the call that queued the command): with the reply's "return" value,
 * or with an error.  Any number of commands may be outstanding; each has a
 * fresh id ("libqmp-N", N counting from 1 on the connection, the first one
 * being "qmp_capabilities"), and replies are matched by id whatever their
 * order.  Commands queued before the connection is ready are held, and sent
 * in order once negotiation has succeeded.
 *
 * Incoming messages are sorted by the same rules as the synchronous client
 * (see qmp/qmp.h, "Ids"): events go to the event callback; a reply goes to
 * the callback of the command with its id; a late reply to a command that
 * timed out is dropped; a reply without an id that is an error goes to the
 * oldest outstanding command (QEMU leaves the id out only when it could not
 * read the request, and answers in order); anything else is a PROTOCOL error
 * that ends the connection.  Callbacks run in the order the messages
 * arrived: an event sent before a reply is delivered before that reply's
 * callback runs.
 *
 * Timeouts.  Each command has its own timeout (-1 for none), counted from
 * the call that queued it: when it passes, the command's callback gets a
 * QMP_ERROR_TIMEOUT error and the client stays usable.  A command not
 * written at all by then is never sent ("timed out sending '<command>'"); one
 * partly written is written to the end ("timed out sending") and one sent
 * ("timed out waiting for the reply to '<command>'") has its reply dropped
 * when it comes.  Connecting has a timeout of its own, covering the
 * greeting and negotiation.
 *
 * End of the connection.  When the connection ends (the peer closes it, a
 * PROTOCOL or IO error, qmp_async_client_close(), qmp_async_client_free()),
 * every outstanding command's callback gets an error in the order the
 * commands were queued: QMP_ERROR_CLOSED when the peer or the client closed
 * the connection, else the error that ended it (a refused negotiation is a
 * CLOSED error for them).  Then the disconnect callback runs (or the connect
 * callback, when the connection was not ready yet).  Messages the peer sent
 * before closing are all delivered first.  Afterwards commands are refused
 * (FALSE, with the error that ended the connection).
 *
 * Callbacks.  Every callback may call any function of this API on the
 * client, qmp_async_client_free() included.  Values passed to callbacks are
 * borrowed for the duration of the call (json_node_ref() or g_error_copy()
 * them to keep them).
 *
 * Signals.  Writes use send(MSG_NOSIGNAL): a closed peer never raises
 * SIGPIPE.
 *
 * Threads.  No global state.  A client must be used from one thread, the
 * one running its loop; distinct clients are independent.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_ASYNC_H
#define QMP_ASYNC_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <qmp/error.h>
#include <qmp/qmp.h>             /* qmp_event_name(), qmp_event_data() */
#include <qmp/reader.h>

G_BEGIN_DECLS

typedef struct QmpAsyncClient QmpAsyncClient;

/**
 * QmpAsyncIo:
 * @QMP_ASYNC_IO_NONE: do not watch the fd
 * @QMP_ASYNC_IO_READ: call qmp_async_client_handle_read() when it is
 *     readable (or on hang-up or error)
 * @QMP_ASYNC_IO_WRITE: call qmp_async_client_handle_write() when it is
 *     writable
 *
 * What the client wants to hear about its fd; flags that can be or-ed.
 * Watching is level-triggered: as long as the fd is readable and READ is
 * wanted, the loop keeps calling qmp_async_client_handle_read().
 */
typedef enum {
    QMP_ASYNC_IO_NONE = 0,
    QMP_ASYNC_IO_READ = 1 << 0,
    QMP_ASYNC_IO_WRITE = 1 << 1,
} QmpAsyncIo;

/**
 * QmpAsyncLoop:
 * @watch: the client now wants @io on @fd; @fd is -1 (and @io NONE) once
 *     the connection is closed.  Replaces what the previous call asked for,
 *     including another fd.
 * @set_timer: call qmp_async_client_handle_timer() once the monotonic clock
 *     (g_get_monotonic_time()) reaches @deadline, in microseconds; -1 for
 *     no timer.  Replaces the previous timer.
 * @detach: the client lets go of the loop (it is freed, or another loop is
 *     set): undo what @watch and @set_timer set up and free @loop_data.
 *     Not called with the client half-freed: the client may not be used
 *     from here.
 *
 * The hooks by which a client tells an event loop what to do.  The client
 * calls them only when what it wants changes, from within any function of
 * this API (including from within the handle functions).  An adapter fills
 * this in; see qmp/adapters/glib.h.
 */
typedef struct {
    void (*watch)(gpointer loop_data, int fd, QmpAsyncIo io);
    void (*set_timer)(gpointer loop_data, gint64 deadline);
    void (*detach)(gpointer loop_data);
} QmpAsyncLoop;

/**
 * QmpAsyncConnectFunc:
 * @client: the client
 * @error: (nullable): NULL when the client is connected and in command mode;
 *     else why it could not connect: TIMEOUT, CLOSED, IO, PROTOCOL (not a
 *     QMP greeting), COMMAND (negotiation refused; the message is prefixed
 *     "capabilities negotiation failed: "); the connection is then closed
 * @user_data: as given to the connect function
 *
 * Called once, from the loop, when connecting has ended.
 */
typedef void (*QmpAsyncConnectFunc)(QmpAsyncClient *client,
                                    const GError *error, gpointer user_data);

/**
 * QmpAsyncCommandFunc:
 * @client: the client
 * @result: (nullable) (transfer none): the reply's "return" value (an
 *     object, often empty, an array, ...), or NULL on error
 * @error: (nullable): NULL on success; else COMMAND (an error reply:
 *     qmp_error_class() and qmp_error_desc() give its parts; the client
 *     stays usable), TIMEOUT (the client stays usable), CLOSED, IO, PROTOCOL
 * @user_data: as given to qmp_async_client_execute()
 *
 * Called once per command, from the loop, when the command has completed.
 */
typedef void (*QmpAsyncCommandFunc)(QmpAsyncClient *client, JsonNode *result,
                                    const GError *error, gpointer user_data);

/**
 * QmpAsyncEventFunc:
 * @client: the client
 * @event: (transfer none): the whole event message, an object with "event",
 *     "data" (optional) and "timestamp"; see qmp_event_name() and
 *     qmp_event_data()
 * @user_data: as given to qmp_async_client_set_event_callback()
 *
 * Called for each event, in arrival order.
 */
typedef void (*QmpAsyncEventFunc)(QmpAsyncClient *client, JsonNode *event,
                                  gpointer user_data);

/**
 * QmpAsyncDisconnectFunc:
 * @client: the client
 * @error: (nullable): why the connection ended: CLOSED (the peer closed it),
 *     IO or PROTOCOL; NULL when the client closed it
 *     (qmp_async_client_close() or qmp_async_client_free())
 * @user_data: as given to qmp_async_client_set_disconnect_callback()
 *
 * Called once when a connection that was ready has ended, after the
 * callbacks of the outstanding commands.
 */
typedef void (*QmpAsyncDisconnectFunc)(QmpAsyncClient *client,
                                       const GError *error,
                                       gpointer user_data);

/**
 * qmp_async_client_new:
 *
 * Returns: (transfer full): a new client, not connected and not attached to
 * a loop; free with qmp_async_client_free().
 */
QMP_API QmpAsyncClient *qmp_async_client_new(void);

/**
 * qmp_async_client_free:
 * @client: (nullable): a client
 *
 * Closes the connection as qmp_async_client_close() does (outstanding
 * commands get CLOSED errors, then the disconnect callback runs with a NULL
 * error), lets go of the loop (QmpAsyncLoop.detach) and frees the client.
 * May be called from any of the client's callbacks: the memory is released
 * once the callback has returned.
 */
QMP_API void qmp_async_client_free(QmpAsyncClient *client);

/**
 * qmp_async_client_set_loop:
 * @client: a client
 * @loop: (nullable): the hooks of an event loop, copied; NULL to drive the
 *     client by hand (see qmp_async_client_get_io())
 * @loop_data: passed to the hooks
 *
 * Attaches @client to an event loop; adapters call this.  A loop attached
 * before is detached first.  @loop's watch and set_timer hooks are called
 * at once with what the client wants now.
 */
QMP_API void qmp_async_client_set_loop(QmpAsyncClient *client,
                                       const QmpAsyncLoop *loop,
                                       gpointer loop_data);

/**
 * qmp_async_client_set_event_callback:
 * @client: a client
 * @func: (nullable): called for each event; NULL drops events
 * @user_data: passed to @func
 *
 * Sets where events go.  Events that arrive with no callback set are
 * dropped.
 */
QMP_API void qmp_async_client_set_event_callback(QmpAsyncClient *client,
                                                 QmpAsyncEventFunc func,
                                                 gpointer user_data);

/**
 * qmp_async_client_set_disconnect_callback:
 * @client: a client
 * @func: (nullable): called when a ready connection ends
 * @user_data: passed to @func
 *
 * Sets the callback for the end of the connection.
 */
QMP_API void qmp_async_client_set_disconnect_callback(
    QmpAsyncClient *client, QmpAsyncDisconnectFunc func, gpointer user_data);

/**
 * qmp_async_client_connect_unix:
 * @client: a client that has not connected yet
 * @path: path of the QMP unix socket; paths longer than sun_path are handled
 * @capabilities: (nullable) (array zero-terminated=1): capabilities to
 *     enable, as for qmp_connect_unix_with_caps(); NULL enables none
 * @timeout_ms: deadline for connecting, reading the greeting and
 *     negotiating, from now; -1 for none
 * @func: (nullable): called once connecting has ended
 * @user_data: passed to @func
 * @errp: return location for an error, or NULL
 *
 * Starts connecting.  A socket that does not exist or refuses is an error
 * right away; a server whose backlog is full is retried until the deadline.
 *
 * Returns: TRUE when connecting has started (@func will be called); FALSE
 * with an error (IO, INVALID: a path too long, or a client that has already
 * connected) when it could not start, and then @func is never called.
 */
QMP_API gboolean qmp_async_client_connect_unix(QmpAsyncClient *client,
                                               const char *path,
                                               const char *const *capabilities,
                                               int timeout_ms,
                                               QmpAsyncConnectFunc func,
                                               gpointer user_data,
                                               GError **errp);

/**
 * qmp_async_client_connect_fd:
 * @client: a client that has not connected yet
 * @fd: a connected stream socket; the client takes ownership of it (closes
 *     it on error as well) and makes it non-blocking
 * @capabilities: (nullable): as for qmp_async_client_connect_unix()
 * @timeout_ms: as for qmp_async_client_connect_unix()
 * @func: (nullable): as for qmp_async_client_connect_unix()
 * @user_data: passed to @func
 * @errp: return location for an error, or NULL
 *
 * Reads the greeting and negotiates on an existing connection.
 *
 * Returns: as qmp_async_client_connect_unix().
 */
QMP_API gboolean qmp_async_client_connect_fd(QmpAsyncClient *client, int fd,
                                             const char *const *capabilities,
                                             int timeout_ms,
                                             QmpAsyncConnectFunc func,
                                             gpointer user_data,
                                             GError **errp);

/**
 * qmp_async_client_close:
 * @client: a client
 *
 * Closes the connection now, for good: output not yet written is dropped,
 * outstanding commands get a QMP_ERROR_CLOSED error, then the disconnect
 * callback runs with a NULL error (or, while still connecting, the connect
 * callback with a CLOSED error).  The callbacks run from within this call.
 * On a client that has not started connecting, the commands queued fail the
 * same way and it can no longer connect.  Does nothing when the client is
 * already closed.
 */
QMP_API void qmp_async_client_close(QmpAsyncClient *client);

/**
 * qmp_async_client_execute:
 * @client: a client
 * @command: the command name, e.g. "query-status"
 * @arguments: (nullable) (transfer none): the command's "arguments" object,
 *     or NULL for none; not modified, the caller keeps its reference
 * @timeout_ms: time for the reply from now, -1 for no limit
 * @func: (nullable): called once with the result; NULL ignores it
 * @user_data: passed to @func
 * @errp: return location for an error, or NULL
 *
 * Queues {"execute": @command, "arguments": @arguments, "id": "libqmp-N"};
 * it is written when the loop finds the socket writable (or, before the
 * connection is ready, once it is).
 *
 * Returns: TRUE when the command is queued (@func will be called); FALSE
 * when the connection has ended, with the error that ended it (CLOSED, IO,
 * PROTOCOL, ...), and then @func is never called.
 */
QMP_API gboolean qmp_async_client_execute(QmpAsyncClient *client,
                                          const char *command,
                                          JsonObject *arguments,
                                          int timeout_ms,
                                          QmpAsyncCommandFunc func,
                                          gpointer user_data, GError **errp);

/**
 * qmp_async_client_execute_json:
 * @client: a client
 * @command: the command name
 * @arguments_json: (nullable): the arguments as JSON text that must be an
 *     object; NULL or "" for none
 * @timeout_ms: as for qmp_async_client_execute()
 * @func: (nullable): as for qmp_async_client_execute()
 * @user_data: passed to @func
 * @errp: return location for an error, or NULL
 *
 * qmp_async_client_execute() with the arguments given as text.
 *
 * Returns: as qmp_async_client_execute(); also FALSE with QMP_ERROR_INVALID
 * (nothing queued) when @arguments_json is not a JSON object.
 */
QMP_API gboolean qmp_async_client_execute_json(QmpAsyncClient *client,
                                               const char *command,
                                               const char *arguments_json,
                                               int timeout_ms,
                                               QmpAsyncCommandFunc func,
                                               gpointer user_data,
                                               GError **errp);

/**
 * qmp_async_client_execute_with_fd:
 * @client: a client
 * @command: the command name, typically "getfd" or "add-fd"
 * @arguments: (nullable) (transfer none): as for qmp_async_client_execute()
 * @fd: a file descriptor to pass to the server with the command's first
 *     byte (SCM_RIGHTS); the client duplicates it, so the caller may close
 *     @fd as soon as this returns
 * @timeout_ms: as for qmp_async_client_execute()
 * @func: (nullable): as for qmp_async_client_execute()
 * @user_data: passed to @func
 * @errp: return location for an error, or NULL
 *
 * qmp_async_client_execute() passing a file descriptor, as
 * qmp_execute_with_fd() does.
 *
 * Returns: as qmp_async_client_execute(); also FALSE with QMP_ERROR_INVALID
 * when @fd cannot be duplicated.
 */
QMP_API gboolean qmp_async_client_execute_with_fd(QmpAsyncClient *client,
                                                  const char *command,
                                                  JsonObject *arguments,
                                                  int fd, int timeout_ms,
                                                  QmpAsyncCommandFunc func,
                                                  gpointer user_data,
                                                  GError **errp);

/**
 * qmp_async_client_handle_read:
 * @client: a client
 *
 * For the loop: the fd is readable (or hung up).  Reads once what is
 * available (up to 64 KiB) and runs the callbacks of the complete messages.
 */
QMP_API void qmp_async_client_handle_read(QmpAsyncClient *client);

/**
 * qmp_async_client_handle_write:
 * @client: a client
 *
 * For the loop: the fd is writable.  Writes queued commands until the
 * socket would block.
 */
QMP_API void qmp_async_client_handle_write(QmpAsyncClient *client);

/**
 * qmp_async_client_handle_timer:
 * @client: a client
 *
 * For the loop: the deadline has passed.  Runs the callbacks of the commands
 * whose timeout has passed (and retries or fails connecting); calling it
 * early or more often does no harm.
 */
QMP_API void qmp_async_client_handle_timer(QmpAsyncClient *client);

/**
 * qmp_async_client_get_fd:
 * @client: a client
 *
 * Returns: the socket, owned by @client, or -1 when not connected (do not
 * read, write or close it).
 */
QMP_API int qmp_async_client_get_fd(const QmpAsyncClient *client);

/**
 * qmp_async_client_get_io:
 * @client: a client
 *
 * Returns: what the client wants to hear about its fd now (what the last
 * QmpAsyncLoop.watch call said), for loops that poll without hooks.
 */
QMP_API QmpAsyncIo qmp_async_client_get_io(const QmpAsyncClient *client);

/**
 * qmp_async_client_get_deadline:
 * @client: a client
 *
 * Returns: when qmp_async_client_handle_timer() is due, on the monotonic
 * clock in microseconds, or -1 for never (what the last
 * QmpAsyncLoop.set_timer call said).
 */
QMP_API gint64 qmp_async_client_get_deadline(const QmpAsyncClient *client);

/**
 * qmp_async_client_is_connected:
 * @client: a client
 *
 * Returns: TRUE between a successful connect callback and the end of the
 * connection.
 */
QMP_API gboolean qmp_async_client_is_connected(const QmpAsyncClient *client);

/**
 * qmp_async_client_outstanding:
 * @client: a client
 *
 * Returns: the number of commands whose callback has not run yet.
 */
QMP_API guint qmp_async_client_outstanding(const QmpAsyncClient *client);

/**
 * qmp_async_client_greeting:
 * @client: a client
 *
 * Returns: (transfer none) (nullable): the greeting's "QMP" object, owned
 * by @client; NULL before the greeting was read.
 */
QMP_API JsonObject *qmp_async_client_greeting(const QmpAsyncClient *client);

/**
 * qmp_async_client_qemu_version:
 * @client: a client
 * @major: (out) (optional): version.qemu.major of the greeting
 * @minor: (out) (optional): version.qemu.minor
 * @micro: (out) (optional): version.qemu.micro
 *
 * Returns: (transfer none) (nullable): the server's version as
 * "MAJOR.MINOR.MICRO", owned by @client; NULL (and zeros) before the
 * greeting was read.
 */
QMP_API const char *qmp_async_client_qemu_version(const QmpAsyncClient *client,
                                                  int *major, int *minor,
                                                  int *micro);

/**
 * qmp_async_client_qemu_package:
 * @client: a client
 *
 * Returns: (transfer none) (nullable): version.package of the greeting (may
 * be ""), owned by @client; NULL before the greeting was read.
 */
QMP_API const char *qmp_async_client_qemu_package(const QmpAsyncClient *client);

/**
 * qmp_async_client_has_capability:
 * @client: a client
 * @name: a capability name, e.g. "oob"
 *
 * Returns: TRUE when the greeting offered @name.
 */
QMP_API gboolean qmp_async_client_has_capability(const QmpAsyncClient *client,
                                                 const char *name);

/**
 * qmp_async_client_set_max_message_size:
 * @client: a client
 * @max_message_size: largest accepted message in bytes; 0 for the default
 *     (QMP_READER_DEFAULT_MAX_MESSAGE_SIZE)
 *
 * A larger message from the server is a QMP_ERROR_PROTOCOL error, which
 * ends the connection.
 */
QMP_API void qmp_async_client_set_max_message_size(QmpAsyncClient *client,
                                                   gsize max_message_size);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpAsyncClient, qmp_async_client_free)

G_END_DECLS

#endif /* QMP_ASYNC_H */
