/*
 * libqmp: drive a QmpAsyncClient from a GLib main loop
 *
 *   QmpAsyncClient *qmp = qmp_async_client_new();
 *   qmp_glib_attach(qmp, NULL);            // the global default context
 *   qmp_async_client_connect_unix(qmp, path, NULL, 5000, on_connected,
 *                                 data, &err);
 *   g_main_loop_run(loop);
 *   ...
 *   qmp_async_client_free(qmp);            // also removes the source
 *
 * The adapter is one GSource per client: it watches the client's socket
 * with g_source_add_unix_fd() for what the client wants (QmpAsyncIo) and
 * uses the source's ready time for the client's next deadline.  All the
 * client's callbacks run from that source's dispatch, in the thread that
 * iterates the context.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_ADAPTERS_GLIB_H
#define QMP_ADAPTERS_GLIB_H

#include <glib.h>
#include <qmp/async.h>

G_BEGIN_DECLS

/**
 * qmp_glib_attach:
 * @client: a client
 * @context: (nullable): the context whose loop drives @client; NULL for the
 *     global default context
 *
 * Attaches @client to @context through a new GSource, replacing any loop
 * the client was attached to (see qmp_async_client_set_loop()).  The client
 * owns the source: qmp_async_client_free(), or attaching the client to
 * another loop, destroys it.  Do not destroy it yourself; to detach the
 * client, call qmp_async_client_set_loop(@client, NULL, NULL).
 *
 * Returns: (transfer none): the source, owned by @client, e.g. for
 * g_source_set_priority() (its priority is G_PRIORITY_DEFAULT).
 */
QMP_API GSource *qmp_glib_attach(QmpAsyncClient *client,
                                 GMainContext *context);

G_END_DECLS

#endif /* QMP_ADAPTERS_GLIB_H */
