/*
 * libqmp: the GLib adapter for the asynchronous client (qmp/adapters/glib.h)
 *
 * A GSource with no prepare or check function: GLib dispatches it when its
 * unix fd has events or its ready time has come, and the dispatch function
 * hands both to the client.  The client calls the hooks below to change
 * the fd's events and the ready time.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <qmp/adapters/glib.h>

typedef struct {
    GSource source;
    QmpAsyncClient *client;     /* NULL once detached */
    gpointer tag;               /* the watched fd's tag, or NULL */
    int fd;
} QmpGlibSource;

static GIOCondition io_condition(QmpAsyncIo io)
{
    GIOCondition cond = 0;

    if (io & QMP_ASYNC_IO_READ) {
        cond |= G_IO_IN | G_IO_HUP | G_IO_ERR;
    }
    if (io & QMP_ASYNC_IO_WRITE) {
        cond |= G_IO_OUT | G_IO_ERR;
    }
    return cond;
}

static void glib_watch(gpointer loop_data, int fd, QmpAsyncIo io)
{
    QmpGlibSource *s = loop_data;

    if (g_source_is_destroyed(&s->source)) {
        return;
    }
    /* No interest, no watch: a hung-up fd would otherwise wake us forever. */
    if (s->tag && (fd != s->fd || io == QMP_ASYNC_IO_NONE)) {
        g_source_remove_unix_fd(&s->source, s->tag);
        s->tag = NULL;
    }
    s->fd = fd;
    if (fd < 0 || io == QMP_ASYNC_IO_NONE) {
        return;
    }
    if (s->tag) {
        g_source_modify_unix_fd(&s->source, s->tag, io_condition(io));
    } else {
        s->tag = g_source_add_unix_fd(&s->source, fd, io_condition(io));
    }
}

static void glib_set_timer(gpointer loop_data, gint64 deadline)
{
    QmpGlibSource *s = loop_data;

    if (!g_source_is_destroyed(&s->source)) {
        g_source_set_ready_time(&s->source, deadline);
    }
}

static void glib_detach(gpointer loop_data)
{
    QmpGlibSource *s = loop_data;

    s->client = NULL;
    g_source_destroy(&s->source);
    g_source_unref(&s->source);
}

static gboolean glib_dispatch(GSource *source, GSourceFunc callback,
                              gpointer user_data)
{
    QmpGlibSource *s = (QmpGlibSource *)source;
    GIOCondition revents = s->tag ? g_source_query_unix_fd(source, s->tag)
                                  : 0;
    gint64 ready = g_source_get_ready_time(source);

    (void)callback;
    (void)user_data;
    /* Each call may detach the client (it may be freed by a callback). */
    if (s->client && (revents & (G_IO_IN | G_IO_HUP | G_IO_ERR))) {
        qmp_async_client_handle_read(s->client);
    }
    if (s->client && (revents & G_IO_OUT)) {
        qmp_async_client_handle_write(s->client);
    }
    if (s->client && ready >= 0 && ready <= g_source_get_time(source)) {
        qmp_async_client_handle_timer(s->client);
    }
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs glib_source_funcs = {
    .dispatch = glib_dispatch,
};

GSource *qmp_glib_attach(QmpAsyncClient *client, GMainContext *context)
{
    static const QmpAsyncLoop hooks = {
        .watch = glib_watch,
        .set_timer = glib_set_timer,
        .detach = glib_detach,
    };
    GSource *source;
    QmpGlibSource *s;

    g_return_val_if_fail(client != NULL, NULL);
    source = g_source_new(&glib_source_funcs, sizeof(QmpGlibSource));
    s = (QmpGlibSource *)source;
    s->client = client;
    s->fd = -1;
    g_source_set_name(source, "libqmp");
    g_source_attach(source, context);
    /* The client now owns our reference; its watch and timer apply now. */
    qmp_async_client_set_loop(client, &hooks, s);
    return source;
}
