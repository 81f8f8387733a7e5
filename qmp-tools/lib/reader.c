/*
 * libqmp: the QMP reader (bytes in, json-glib messages out)
 *
 * Framing only tracks where a top-level value ends; json-glib parses it.
 * See qmp/reader.h for the contract.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>

#include <qmp/reader.h>

/* Messages that grew the buffer past this give the memory back afterwards. */
#define READER_KEEP_CAPACITY (64 * 1024)

typedef enum {
    FRAME_TOP,      /* between values */
    FRAME_VALUE,    /* in an object, an array or a top-level string */
    FRAME_SCALAR,   /* in a bare top-level number, literal or junk */
} FrameState;

/* One entry of the output queue: a framed value's text, or an error. */
typedef struct {
    char *text;
    gsize len;
    GError *error;
} ReaderItem;

struct QmpReader {
    gsize max_message_size;
    FrameState state;
    guint depth;            /* open brackets of the current value */
    gboolean in_string;
    gboolean escape;        /* previous byte was a backslash in a string */
    gboolean skipping;      /* current value already reported: drop it */
    GString *cur;           /* text of the current value */
    GQueue items;           /* ReaderItem *, oldest first */
};

static void reader_item_free(ReaderItem *item)
{
    g_free(item->text);
    g_clear_error(&item->error);
    g_free(item);
}

QmpReader *qmp_reader_new(gsize max_message_size)
{
    QmpReader *reader = g_new0(QmpReader, 1);

    qmp_reader_set_max_message_size(reader, max_message_size);
    reader->state = FRAME_TOP;
    reader->cur = g_string_new(NULL);
    g_queue_init(&reader->items);
    return reader;
}

void qmp_reader_free(QmpReader *reader)
{
    if (!reader) {
        return;
    }
    g_queue_clear_full(&reader->items, (GDestroyNotify)reader_item_free);
    g_string_free(reader->cur, TRUE);
    g_free(reader);
}

void qmp_reader_set_max_message_size(QmpReader *reader, gsize max_message_size)
{
    g_return_if_fail(reader != NULL);
    reader->max_message_size = max_message_size ? max_message_size
                                      : QMP_READER_DEFAULT_MAX_MESSAGE_SIZE;
}

gsize qmp_reader_get_max_message_size(const QmpReader *reader)
{
    g_return_val_if_fail(reader != NULL, 0);
    return reader->max_message_size;
}

guint qmp_reader_pending(const QmpReader *reader)
{
    g_return_val_if_fail(reader != NULL, 0);
    return reader->items.length;
}

gboolean qmp_reader_in_message(const QmpReader *reader)
{
    g_return_val_if_fail(reader != NULL, FALSE);
    return reader->state != FRAME_TOP;
}

/* Queues an error for the current value and drops the rest of it. */
static void reader_reject_value(QmpReader *reader, GError *error)
{
    ReaderItem *item = g_new0(ReaderItem, 1);

    item->error = error;
    g_queue_push_tail(&reader->items, item);
    reader->skipping = TRUE;
    g_string_truncate(reader->cur, 0);
}

static void reader_append(QmpReader *reader, char c)
{
    if (reader->skipping) {
        return;
    }
    if (reader->cur->len >= reader->max_message_size) {
        reader_reject_value(reader,
            g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                        "message exceeds the maximum size of %" G_GSIZE_FORMAT
                        " bytes", reader->max_message_size));
        return;
    }
    g_string_append_c(reader->cur, c);
}

static void reader_begin_value(QmpReader *reader, FrameState state,
                               guint depth, gboolean in_string)
{
    reader->state = state;
    reader->depth = depth;
    reader->in_string = in_string;
    reader->escape = FALSE;
    reader->skipping = FALSE;
}

/* The current value is complete: queue its text (unless rejected). */
static void reader_end_value(QmpReader *reader)
{
    if (!reader->skipping) {
        ReaderItem *item = g_new0(ReaderItem, 1);

        item->len = reader->cur->len;
        item->text = g_strndup(reader->cur->str, reader->cur->len);
        g_queue_push_tail(&reader->items, item);
    }
    if (reader->cur->allocated_len > READER_KEEP_CAPACITY) {
        g_string_free(reader->cur, TRUE);
        reader->cur = g_string_new(NULL);
    } else {
        g_string_truncate(reader->cur, 0);
    }
    reader->skipping = FALSE;
    reader->state = FRAME_TOP;
}

static gboolean is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Characters that end a bare scalar (they start or separate other tokens). */
static gboolean ends_scalar(char c)
{
    return is_json_space(c) || (c && strchr("{}[],:\"", c));
}

/* One byte inside an object, an array or a top-level string. */
static void reader_value_byte(QmpReader *reader, char c)
{
    reader_append(reader, c);
    if (reader->in_string) {
        if (reader->escape) {
            reader->escape = FALSE;
        } else if (c == '\\') {
            reader->escape = TRUE;
        } else if (c == '"') {
            reader->in_string = FALSE;
            if (reader->depth == 0) {
                reader_end_value(reader);
            }
        }
        return;
    }
    switch (c) {
    case '"':
        reader->in_string = TRUE;
        break;
    case '{':
    case '[':
        reader->depth++;
        if (reader->depth > QMP_READER_MAX_DEPTH && !reader->skipping) {
            reader_reject_value(reader,
                g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                            "message nested deeper than %d levels",
                            QMP_READER_MAX_DEPTH));
        }
        break;
    case '}':
    case ']':
        reader->depth--;
        if (reader->depth == 0) {
            reader_end_value(reader);
        }
        break;
    default:
        break;
    }
}

void qmp_reader_feed(QmpReader *reader, const void *buf, gsize len)
{
    const char *p = buf;
    gsize i = 0;

    g_return_if_fail(reader != NULL);
    g_return_if_fail(buf != NULL || len == 0);

    while (i < len) {
        char c = p[i];

        switch (reader->state) {
        case FRAME_TOP:
            i++;
            if (is_json_space(c)) {
                break;
            }
            if (c == '{' || c == '[') {
                reader_begin_value(reader, FRAME_VALUE, 1, FALSE);
                reader_append(reader, c);
            } else if (c == '"') {
                reader_begin_value(reader, FRAME_VALUE, 0, TRUE);
                reader_append(reader, c);
            } else if (c && strchr("}],:", c)) {
                /* A stray separator is a value of its own, and invalid. */
                reader_begin_value(reader, FRAME_VALUE, 0, FALSE);
                reader_append(reader, c);
                reader_end_value(reader);
            } else {
                reader_begin_value(reader, FRAME_SCALAR, 0, FALSE);
                reader_append(reader, c);
            }
            break;
        case FRAME_SCALAR:
            if (ends_scalar(c)) {
                reader_end_value(reader);   /* c is looked at again at top */
            } else {
                reader_append(reader, c);
                i++;
            }
            break;
        case FRAME_VALUE:
            reader_value_byte(reader, c);
            i++;
            break;
        }
    }
}

/* A short printable excerpt of a message, for error messages. */
static char *excerpt(const char *text, gsize len)
{
    g_autofree char *head = g_strndup(text, MIN(len, 60));
    g_autofree char *escaped = g_strescape(head, NULL);

    return g_strdup_printf("'%s%s'", escaped, len > 60 ? "..." : "");
}

static const char *json_kind(JsonNode *node)
{
    switch (json_node_get_node_type(node)) {
    case JSON_NODE_OBJECT:
        return "an object";
    case JSON_NODE_ARRAY:
        return "an array";
    case JSON_NODE_NULL:
        return "null";
    case JSON_NODE_VALUE:
        break;
    }
    switch (json_node_get_value_type(node)) {
    case G_TYPE_STRING:
        return "a string";
    case G_TYPE_BOOLEAN:
        return "a boolean";
    default:
        return "a number";
    }
}

static JsonNode *parse_message(const char *text, gsize len, GError **errp)
{
    g_autoptr(JsonParser) parser = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *what = excerpt(text, len);
    JsonNode *root;

    if (memchr(text, '\0', len)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "invalid JSON (NUL byte) in message %s", what);
        return NULL;
    }
    if (!g_utf8_validate(text, len, NULL)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "invalid JSON (not UTF-8) in message %s", what);
        return NULL;
    }
    parser = json_parser_new();
    if (!json_parser_load_from_data(parser, text, len, &err)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "invalid JSON (%s) in message %s", err->message, what);
        return NULL;
    }
    root = json_parser_steal_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "expected a JSON object, got %s %s",
                    root ? json_kind(root) : "nothing", what);
        if (root) {
            json_node_unref(root);
        }
        return NULL;
    }
    return root;
}

gboolean qmp_reader_next(QmpReader *reader, JsonNode **message, GError **errp)
{
    ReaderItem *item;
    gboolean ok = TRUE;

    g_return_val_if_fail(message != NULL, FALSE);
    *message = NULL;
    g_return_val_if_fail(reader != NULL, FALSE);

    item = g_queue_pop_head(&reader->items);
    if (!item) {
        return TRUE;
    }
    if (item->error) {
        g_propagate_error(errp, g_steal_pointer(&item->error));
        ok = FALSE;
    } else {
        *message = parse_message(item->text, item->len, errp);
        ok = *message != NULL;
    }
    reader_item_free(item);
    return ok;
}
