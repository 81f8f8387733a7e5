/*
 * libqmp: error domain
 *
 * QMP_ERROR is an extended GError domain: each error carries the class and
 * description of a QMP error reply, so that they travel with the GError
 * through g_error_copy() and g_propagate_error().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qmp-private.h"

typedef struct {
    char *klass;
    char *desc;
} QmpErrorPrivate;

static void qmp_error_private_init(QmpErrorPrivate *priv)
{
    priv->klass = NULL;
    priv->desc = NULL;
}

static void qmp_error_private_copy(const QmpErrorPrivate *src,
                                   QmpErrorPrivate *dest)
{
    dest->klass = g_strdup(src->klass);
    dest->desc = g_strdup(src->desc);
}

static void qmp_error_private_clear(QmpErrorPrivate *priv)
{
    g_clear_pointer(&priv->klass, g_free);
    g_clear_pointer(&priv->desc, g_free);
}

G_DEFINE_EXTENDED_ERROR(QmpError, qmp_error)

void qmp_error_set_command(GError **errp, const char *klass, const char *desc)
{
    GError *err;
    QmpErrorPrivate *priv;

    if (!errp) {
        return;
    }
    err = g_error_new(QMP_ERROR, QMP_ERROR_COMMAND, "%s: %s", klass, desc);
    priv = qmp_error_get_private(err);
    priv->klass = g_strdup(klass);
    priv->desc = g_strdup(desc);
    g_propagate_error(errp, err);
}

const char *qmp_error_class(const GError *error)
{
    if (!error || !g_error_matches(error, QMP_ERROR, QMP_ERROR_COMMAND)) {
        return NULL;
    }
    return qmp_error_get_private(error)->klass;
}

const char *qmp_error_desc(const GError *error)
{
    if (!error || !g_error_matches(error, QMP_ERROR, QMP_ERROR_COMMAND)) {
        return NULL;
    }
    return qmp_error_get_private(error)->desc;
}
