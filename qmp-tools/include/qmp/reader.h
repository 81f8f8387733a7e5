/*
 * libqmp: the QMP reader
 *
 * A reader turns a byte stream from a QMP server into complete messages.  It
 * does no I/O: feed it the bytes you read, in order, and take messages out.
 * The synchronous client (qmp/qmp.h) is built on it, and an event-loop client
 * can be built on it the same way.
 *
 * Framing.  QEMU sends one JSON object per message, normally one per line
 * terminated by "\r\n"; with a pretty=on monitor an object spans several
 * lines.  The reader therefore does not split on newlines: it finds the end
 * of each top-level JSON value by tracking bracket nesting outside
 * double-quoted strings (and backslash escapes inside them).  Whitespace
 * between values is skipped.  The text of each value is then parsed by
 * json-glib; the reader itself interprets nothing else.
 *
 * Errors.  Each problem is reported at its place in the stream, after the
 * messages that preceded it, and costs only the offending value: the reader
 * skips it and carries on with the next one.
 *   - a value longer than the maximum message size: reported as soon as the
 *     limit is crossed (its bytes are not kept), the rest of it is skipped;
 *   - a value nested deeper than QMP_READER_MAX_DEPTH: likewise;
 *   - a value that json-glib cannot parse, or that is not valid UTF-8, or
 *     that contains a NUL byte;
 *   - a top-level value that is not an object (array, string, number, ...).
 * All of them are QMP_ERROR_PROTOCOL errors.
 *
 * A reader has no global state; distinct readers may be used from distinct
 * threads, one reader must not be used from two threads at once.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_READER_H
#define QMP_READER_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <qmp/error.h>

G_BEGIN_DECLS

/** Default maximum size of one message, in bytes (16 MiB). */
#define QMP_READER_DEFAULT_MAX_MESSAGE_SIZE ((gsize)16 * 1024 * 1024)

/** Maximum nesting of arrays and objects in one message (as QEMU's own parser). */
#define QMP_READER_MAX_DEPTH 1024

typedef struct QmpReader QmpReader;

/**
 * qmp_reader_new:
 * @max_message_size: largest accepted message in bytes, whitespace between
 *     messages not counted; 0 for QMP_READER_DEFAULT_MAX_MESSAGE_SIZE.
 *
 * Returns: (transfer full): a new, empty reader; free with qmp_reader_free().
 */
QMP_API QmpReader *qmp_reader_new(gsize max_message_size);

/**
 * qmp_reader_free:
 * @reader: (nullable): a reader
 *
 * Frees @reader, its buffered bytes and the messages not taken yet.
 */
QMP_API void qmp_reader_free(QmpReader *reader);

/**
 * qmp_reader_set_max_message_size:
 * @reader: a reader
 * @max_message_size: new limit in bytes; 0 for the default
 *
 * Changes the limit for the messages not yet complete.
 */
QMP_API void qmp_reader_set_max_message_size(QmpReader *reader,
                                             gsize max_message_size);

/**
 * qmp_reader_get_max_message_size:
 * @reader: a reader
 *
 * Returns: the current limit in bytes.
 */
QMP_API gsize qmp_reader_get_max_message_size(const QmpReader *reader);

/**
 * qmp_reader_feed:
 * @reader: a reader
 * @buf: (array length=len): bytes received from the server
 * @len: number of bytes in @buf, may be 0
 *
 * Appends bytes to the stream.  Complete values found in them are queued for
 * qmp_reader_next(); a partial value is kept until the rest is fed.  Never
 * fails: problems are queued as errors in stream order (see above).
 * Memory held is bounded by the complete values not yet taken plus the
 * maximum message size.
 */
QMP_API void qmp_reader_feed(QmpReader *reader, const void *buf, gsize len);

/**
 * qmp_reader_next:
 * @reader: a reader
 * @message: (out) (transfer full) (nullable): the next message, a
 *     JSON_NODE_OBJECT node, or NULL when no complete message is queued
 * @errp: return location for an error, or NULL
 *
 * Takes the next item of the stream.
 *
 * Returns: TRUE with *@message set to the next message (the caller owns it,
 * free with json_node_unref()), or TRUE with *@message NULL when no complete
 * message is buffered yet; FALSE with *@message NULL and a QMP_ERROR_PROTOCOL
 * error when the next item was invalid.  After an error the reader carries
 * on: the next call returns what followed the invalid item.
 */
QMP_API gboolean qmp_reader_next(QmpReader *reader, JsonNode **message,
                                 GError **errp);

/**
 * qmp_reader_pending:
 * @reader: a reader
 *
 * Returns: the number of complete items (messages or errors) that
 * qmp_reader_next() will return without more input.
 */
QMP_API guint qmp_reader_pending(const QmpReader *reader);

/**
 * qmp_reader_in_message:
 * @reader: a reader
 *
 * Returns: TRUE when the reader holds the beginning of a value whose end has
 * not been fed yet.  At end of stream, TRUE means the peer closed the
 * connection in the middle of a message.
 */
QMP_API gboolean qmp_reader_in_message(const QmpReader *reader);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpReader, qmp_reader_free)

G_END_DECLS

#endif /* QMP_READER_H */
