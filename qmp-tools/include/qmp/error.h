/*
 * libqmp: error domain
 *
 * Every fallible libqmp function reports failure through a GError in the
 * QMP_ERROR domain and a NULL/FALSE return value.  For a QMP error reply
 * (QMP_ERROR_COMMAND) the error's "class" and "desc" members stay
 * accessible through qmp_error_class() and qmp_error_desc(); they survive
 * g_error_copy() and g_propagate_error(), because the domain is an extended
 * GError domain (GLib >= 2.68).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_ERROR_H
#define QMP_ERROR_H

#include <glib.h>

G_BEGIN_DECLS

/* Marks the symbols of the public API (the library hides everything else). */
#if defined(__GNUC__)
#define QMP_API __attribute__((visibility("default")))
#else
#define QMP_API
#endif

/**
 * QMP_ERROR:
 *
 * The error domain of libqmp.
 */
#define QMP_ERROR (qmp_error_quark())

/**
 * QmpErrorCode:
 * @QMP_ERROR_COMMAND: the server answered with a QMP error reply.  The
 *     message reads "<class>: <desc>" (possibly with a prefix naming what
 *     was being done, e.g. during capabilities negotiation);
 *     qmp_error_class() and qmp_error_desc() return the two parts.  The
 *     connection stays usable.
 * @QMP_ERROR_IO: a system call on the socket failed (connect, send, recv,
 *     poll); the message includes strerror().  The connection is unusable.
 * @QMP_ERROR_CLOSED: the peer closed the connection, at a message boundary
 *     or in the middle of a message.  The connection is unusable.
 * @QMP_ERROR_TIMEOUT: the deadline passed.  Whether the connection stays
 *     usable is said by each function (it does, unless a command was only
 *     partly sent).
 * @QMP_ERROR_PROTOCOL: the peer sent something that is not valid QMP: invalid
 *     JSON, a message over the size limit, a top-level value that is not an
 *     object, an unexpected greeting, a reply with an unknown id.  The
 *     connection is unusable.
 * @QMP_ERROR_INVALID: the caller passed invalid input (for instance an
 *     arguments text that is not a JSON object, or a socket path that is too
 *     long).  Nothing was sent; the connection stays usable.
 *
 * Error codes of the #QMP_ERROR domain.
 */
typedef enum {
    QMP_ERROR_COMMAND,
    QMP_ERROR_IO,
    QMP_ERROR_CLOSED,
    QMP_ERROR_TIMEOUT,
    QMP_ERROR_PROTOCOL,
    QMP_ERROR_INVALID,
} QmpErrorCode;

/**
 * qmp_error_quark:
 *
 * Returns: the quark of the #QMP_ERROR domain.  Thread-safe.
 */
QMP_API GQuark qmp_error_quark(void);

/**
 * qmp_error_class:
 * @error: (nullable): any #GError
 *
 * Returns: (transfer none) (nullable): the "class" member of the QMP error
 * reply ("GenericError", "CommandNotFound", ...) when @error is a
 * QMP_ERROR_COMMAND error; NULL for any other error or for NULL.  The string
 * is owned by @error.
 */
QMP_API const char *qmp_error_class(const GError *error);

/**
 * qmp_error_desc:
 * @error: (nullable): any #GError
 *
 * Returns: (transfer none) (nullable): the "desc" member of the QMP error
 * reply when @error is a QMP_ERROR_COMMAND error; NULL otherwise.  The string
 * is owned by @error.
 */
QMP_API const char *qmp_error_desc(const GError *error);

G_END_DECLS

#endif /* QMP_ERROR_H */
