/*
 * libqmp: the protocol rules shared by the synchronous and asynchronous
 * clients (see qmp-private.h): ids, sorting incoming messages, reply
 * results, the greeting, the text of a command.  No I/O here.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>

#include "qmp-private.h"

/* Longest excerpt of a message quoted in an error. */
#define DESCRIBE_MAX 200

typedef struct {
    guint64 seq;                /* N of "libqmp-N": smaller is older */
    gpointer data;
} QmpDispatchEntry;

gboolean qmp_node_is_string(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) &&
           json_node_get_value_type(node) == G_TYPE_STRING;
}

void qmp_set_protocol_error(GError **errp, JsonNode *msg, const char *what)
{
    g_autofree char *text = json_to_string(msg, FALSE);

    if (strlen(text) > DESCRIBE_MAX) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: %.*s...", what,
                    DESCRIBE_MAX, text);
    } else {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: %s", what, text);
    }
}

/* ---- ids and sorting -------------------------------------------------- */

void qmp_dispatch_init(QmpDispatch *d)
{
    d->last_id = 0;
    d->awaiting = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        g_free);
    d->abandoned = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                         NULL);
}

void qmp_dispatch_clear(QmpDispatch *d)
{
    g_clear_pointer(&d->awaiting, g_hash_table_destroy);
    g_clear_pointer(&d->abandoned, g_hash_table_destroy);
}

char *qmp_dispatch_add(QmpDispatch *d, gpointer data)
{
    QmpDispatchEntry *entry = g_new0(QmpDispatchEntry, 1);
    char *id;

    entry->seq = ++d->last_id;
    entry->data = data;
    id = g_strdup_printf("libqmp-%" G_GUINT64_FORMAT, entry->seq);
    g_hash_table_insert(d->awaiting, g_strdup(id), entry);
    return id;
}

void qmp_dispatch_abandon(QmpDispatch *d, const char *id)
{
    if (g_hash_table_remove(d->awaiting, id)) {
        g_hash_table_add(d->abandoned, g_strdup(id));
    }
}

void qmp_dispatch_forget(QmpDispatch *d, const char *id)
{
    g_hash_table_remove(d->awaiting, id);
}

guint qmp_dispatch_n_awaiting(const QmpDispatch *d)
{
    return g_hash_table_size(d->awaiting);
}

/* The id of the oldest command awaiting a reply, or NULL. */
static const char *dispatch_oldest(QmpDispatch *d)
{
    GHashTableIter iter;
    gpointer key, value;
    const char *oldest = NULL;
    guint64 oldest_seq = G_MAXUINT64;

    g_hash_table_iter_init(&iter, d->awaiting);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        QmpDispatchEntry *entry = value;

        if (entry->seq <= oldest_seq) {
            oldest_seq = entry->seq;
            oldest = key;
        }
    }
    return oldest;
}

/* Hands back the data of the command @id and stops awaiting its reply. */
static void dispatch_take(QmpDispatch *d, const char *id, gpointer *data)
{
    QmpDispatchEntry *entry = g_hash_table_lookup(d->awaiting, id);

    *data = entry->data;
    g_hash_table_remove(d->awaiting, id);
}

QmpMessageKind qmp_dispatch_sort(QmpDispatch *d, JsonNode *msg,
                                 gpointer *data, GError **errp)
{
    JsonObject *obj = json_node_get_object(msg);
    JsonNode *id;
    const char *what;

    *data = NULL;
    if (json_object_has_member(obj, "event")) {
        if (!qmp_node_is_string(json_object_get_member(obj, "event"))) {
            what = "event name is not a string";
            goto invalid;
        }
        return QMP_MESSAGE_EVENT;
    }
    if (!json_object_has_member(obj, "return") &&
        !json_object_has_member(obj, "error")) {
        what = "unexpected message (neither a reply nor an event)";
        goto invalid;
    }
    id = json_object_get_member(obj, "id");
    if (id) {
        const char *s = qmp_node_is_string(id) ? json_node_get_string(id)
                                               : NULL;

        if (s && g_hash_table_contains(d->awaiting, s)) {
            dispatch_take(d, s, data);
            return QMP_MESSAGE_REPLY;
        }
        if (s && g_hash_table_remove(d->abandoned, s)) {
            return QMP_MESSAGE_LATE;
        }
        what = "reply with an unexpected id";
        goto invalid;
    }
    if (json_object_has_member(obj, "error")) {
        const char *oldest = dispatch_oldest(d);

        if (oldest) {
            dispatch_take(d, oldest, data);
            return QMP_MESSAGE_REPLY;
        }
    }
    what = "reply without an id";
invalid:
    qmp_set_protocol_error(errp, msg, what);
    return QMP_MESSAGE_INVALID;
}

JsonNode *qmp_reply_result(JsonNode *reply, GError **errp)
{
    JsonObject *obj = json_node_get_object(reply);
    JsonNode *err;
    JsonObject *eobj;

    if (json_object_has_member(obj, "return")) {
        return json_object_dup_member(obj, "return");
    }
    err = json_object_get_member(obj, "error");
    if (!JSON_NODE_HOLDS_OBJECT(err)) {
        qmp_set_protocol_error(errp, reply, "error reply is not an object");
        return NULL;
    }
    eobj = json_node_get_object(err);
    if (!qmp_node_is_string(json_object_get_member(eobj, "class")) ||
        !qmp_node_is_string(json_object_get_member(eobj, "desc"))) {
        qmp_set_protocol_error(errp, reply,
                               "error reply without class or desc");
        return NULL;
    }
    qmp_error_set_command(errp, json_object_get_string_member(eobj, "class"),
                          json_object_get_string_member(eobj, "desc"));
    return NULL;
}

/* ---- the greeting ----------------------------------------------------- */

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

gboolean qmp_greeting_take(QmpGreeting *g, JsonNode *msg, GError **errp)
{
    JsonObject *qmp = get_object_member(json_node_get_object(msg), "QMP");
    JsonObject *version = get_object_member(qmp, "version");
    JsonObject *qemu = get_object_member(version, "qemu");
    JsonNode *package = version ? json_object_get_member(version, "package")
                                : NULL;
    JsonNode *caps = qmp ? json_object_get_member(qmp, "capabilities") : NULL;

    if (!qemu || !get_int_member(qemu, "major", &g->major) ||
        !get_int_member(qemu, "minor", &g->minor) ||
        !get_int_member(qemu, "micro", &g->micro) ||
        (package && !qmp_node_is_string(package)) ||
        (caps && !JSON_NODE_HOLDS_ARRAY(caps))) {
        qmp_set_protocol_error(errp, msg, "not a QMP greeting");
        json_node_unref(msg);
        return FALSE;
    }
    g->message = msg;
    g->qmp = qmp;
    g->version = g_strdup_printf("%d.%d.%d", g->major, g->minor, g->micro);
    g->package = g_strdup(package ? json_node_get_string(package) : "");
    return TRUE;
}

void qmp_greeting_clear(QmpGreeting *g)
{
    g_clear_pointer(&g->message, json_node_unref);
    g->qmp = NULL;
    g_clear_pointer(&g->version, g_free);
    g_clear_pointer(&g->package, g_free);
    g->major = g->minor = g->micro = 0;
}

const char *qmp_greeting_version(const QmpGreeting *g, int *major,
                                 int *minor, int *micro)
{
    if (major) {
        *major = g->major;
    }
    if (minor) {
        *minor = g->minor;
    }
    if (micro) {
        *micro = g->micro;
    }
    return g->version;
}

gboolean qmp_greeting_has_capability(const QmpGreeting *g, const char *name)
{
    JsonNode *caps = g->qmp ? json_object_get_member(g->qmp, "capabilities")
                            : NULL;
    JsonArray *array;

    if (!caps || !JSON_NODE_HOLDS_ARRAY(caps)) {
        return FALSE;
    }
    array = json_node_get_array(caps);
    for (guint i = 0; i < json_array_get_length(array); i++) {
        JsonNode *cap = json_array_get_element(array, i);

        if (qmp_node_is_string(cap) &&
            strcmp(json_node_get_string(cap), name) == 0) {
            return TRUE;
        }
    }
    return FALSE;
}

/* ---- commands --------------------------------------------------------- */

JsonObject *qmp_capabilities_arguments(const char *const *capabilities)
{
    JsonObject *args;
    JsonArray *enable;

    if (!capabilities || !capabilities[0]) {
        return NULL;
    }
    enable = json_array_new();
    for (const char *const *cap = capabilities; *cap; cap++) {
        json_array_add_string_element(enable, *cap);
    }
    args = json_object_new();
    json_object_set_array_member(args, "enable", enable);
    return args;
}

GString *qmp_build_command(const char *command, JsonObject *arguments,
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

gboolean qmp_parse_arguments(const char *command, const char *arguments_json,
                             JsonObject **arguments, GError **errp)
{
    g_autoptr(JsonParser) parser = NULL;
    g_autoptr(GError) err = NULL;
    JsonNode *root;

    *arguments = NULL;
    if (!arguments_json || !*arguments_json) {
        return TRUE;
    }
    parser = json_parser_new();
    if (!json_parser_load_from_data(parser, arguments_json, -1, &err)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "arguments of '%s' are not valid JSON: %s", command,
                    err->message);
        return FALSE;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "arguments of '%s' must be a JSON object", command);
        return FALSE;
    }
    *arguments = json_object_ref(json_node_get_object(root));
    return TRUE;
}
