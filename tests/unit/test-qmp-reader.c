/*
 * Unit tests of the QMP reader (qmp/reader.h), fed directly: no socket.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>

#include <qmp/reader.h>

/* Takes the next item and checks that it is a message equal to @json. */
static void assert_next_message(QmpReader *r, const char *json)
{
    g_autoptr(JsonNode) expected = json_from_string(json, NULL);
    g_autoptr(JsonNode) msg = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *got = NULL;

    g_assert_nonnull(expected);
    g_assert_true(qmp_reader_next(r, &msg, &err));
    g_assert_no_error(err);
    g_assert_nonnull(msg);
    if (!msg) {
        return;
    }
    g_assert_true(JSON_NODE_HOLDS_OBJECT(msg));
    got = json_to_string(msg, FALSE);
    if (!json_node_equal(expected, msg)) {
        g_test_message("expected %s, got %s", json, got);
        g_test_fail();
    }
}

/* Takes the next item and checks that it is a PROTOCOL error about @what. */
static void assert_next_error(QmpReader *r, const char *what)
{
    g_autoptr(JsonNode) msg = NULL;
    g_autoptr(GError) err = NULL;

    g_assert_false(qmp_reader_next(r, &msg, &err));
    g_assert_null(msg);
    g_assert_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL);
    if (err && !strstr(err->message, what)) {
        g_test_message("error '%s' does not mention '%s'", err->message, what);
        g_test_fail();
    }
}

static void assert_no_message(QmpReader *r)
{
    g_autoptr(JsonNode) msg = NULL;
    g_autoptr(GError) err = NULL;

    g_assert_true(qmp_reader_next(r, &msg, &err));
    g_assert_no_error(err);
    g_assert_null(msg);
}

static void feed_str(QmpReader *r, const char *s)
{
    qmp_reader_feed(r, s, strlen(s));
}

static void reader_one_message_per_line(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    g_assert_cmpuint(qmp_reader_get_max_message_size(r), ==,
                     16 * 1024 * 1024);
    assert_no_message(r);
    feed_str(r, "{\"return\": {}, \"id\": \"libqmp-1\"}\r\n");
    g_assert_cmpuint(qmp_reader_pending(r), ==, 1);
    g_assert_false(qmp_reader_in_message(r));
    assert_next_message(r, "{\"return\": {}, \"id\": \"libqmp-1\"}");
    assert_no_message(r);
}

static void reader_several_messages_in_one_feed(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    feed_str(r, "{\"event\": \"STOP\"}\r\n{\"event\": \"RESUME\"}\r\n"
                "{\"return\": [1, 2]}{\"a\": {}}\n");
    g_assert_cmpuint(qmp_reader_pending(r), ==, 4);
    assert_next_message(r, "{\"event\": \"STOP\"}");
    assert_next_message(r, "{\"event\": \"RESUME\"}");
    assert_next_message(r, "{\"return\": [1, 2]}");
    assert_next_message(r, "{\"a\": {}}");
    assert_no_message(r);
}

static void reader_message_fed_one_byte_at_a_time(void)
{
    const char *text = "{\"return\": {\"status\": \"running\", "
                       "\"running\": true, \"n\": [1, {\"x\": \"}\"}]}}\r\n";
    g_autoptr(QmpReader) r = qmp_reader_new(0);
    size_t len = strlen(text);

    for (size_t i = 0; i < len; i++) {
        qmp_reader_feed(r, text + i, 1);
        if (i + 1 < len - 2) {
            /* Not complete before the closing brace. */
            g_assert_cmpuint(qmp_reader_pending(r), ==, 0);
            g_assert_true(qmp_reader_in_message(r));
        }
    }
    g_assert_cmpuint(qmp_reader_pending(r), ==, 1);
    g_assert_false(qmp_reader_in_message(r));
    assert_next_message(r, "{\"return\": {\"status\": \"running\", "
                           "\"running\": true, \"n\": [1, {\"x\": \"}\"}]}}");
}

static void reader_pretty_printed_message(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    /* As a pretty=on monitor prints it. */
    feed_str(r, "{\n    \"return\": {\n        \"status\": \"running\",\n"
                "        \"singlestep\": false,\n        \"running\": true\n"
                "    },\n    \"id\": \"libqmp-2\"\n}\n"
                "{\n    \"timestamp\": {\n        \"seconds\": 1,\n"
                "        \"microseconds\": 2\n    },\n"
                "    \"event\": \"STOP\"\n}\n");
    assert_next_message(r, "{\"return\": {\"status\": \"running\", "
                           "\"singlestep\": false, \"running\": true}, "
                           "\"id\": \"libqmp-2\"}");
    assert_next_message(r, "{\"timestamp\": {\"seconds\": 1, "
                           "\"microseconds\": 2}, \"event\": \"STOP\"}");
    assert_no_message(r);
}

static void reader_brackets_and_escapes_in_strings(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    feed_str(r, "{\"desc\": \"a } b ] c { [ \\\" } \\\\\", "
                "\"n\": \"\\\\\"}\r\n{\"x\": \"\\u007d\"}\r\n");
    assert_next_message(r, "{\"desc\": \"a } b ] c { [ \\\" } \\\\\", "
                           "\"n\": \"\\\\\"}");
    assert_next_message(r, "{\"x\": \"}\"}");
    assert_no_message(r);
}

static void reader_partial_message_is_kept(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    feed_str(r, "  \r\n");
    g_assert_false(qmp_reader_in_message(r));
    feed_str(r, "{\"return\": {\"a\": \"{");
    g_assert_true(qmp_reader_in_message(r));
    assert_no_message(r);
    feed_str(r, "\"}}");
    g_assert_false(qmp_reader_in_message(r));
    assert_next_message(r, "{\"return\": {\"a\": \"{\"}}");
}

static void reader_invalid_json_then_recovers(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    feed_str(r, "{\"return\": tru}\r\n{\"return\": {}}\r\n");
    assert_next_error(r, "invalid JSON");
    assert_next_message(r, "{\"return\": {}}");
    assert_no_message(r);
}

static void reader_invalid_utf8_and_nul(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);
    static const char nul[] = "{\"a\": \"x\0y\"}\r\n";

    feed_str(r, "{\"a\": \"\xff\xfe\"}\r\n");
    qmp_reader_feed(r, nul, sizeof(nul) - 1);
    feed_str(r, "{\"ok\": 1}");
    assert_next_error(r, "not UTF-8");
    assert_next_error(r, "NUL");
    assert_next_message(r, "{\"ok\": 1}");
}

static void reader_top_level_non_object(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);

    feed_str(r, "[{\"a\": 1}]\r\n42\r\n\"str}\"\r\ntrue null } {\"ok\": 2}\n");
    assert_next_error(r, "got an array");
    assert_next_error(r, "got a number");
    assert_next_error(r, "got a string");
    assert_next_error(r, "got a boolean");
    assert_next_error(r, "got null");
    assert_next_error(r, "invalid JSON");
    assert_next_message(r, "{\"ok\": 2}");
    assert_no_message(r);
}

static void reader_oversized_message_is_rejected_early(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(64);
    g_autofree char *big = g_strnfill(100, 'x');
    g_autofree char *text = g_strdup_printf("{\"return\": \"%s\"}\r\n", big);

    /* Reported as soon as the limit is crossed, before the message ends. */
    qmp_reader_feed(r, text, 80);
    g_assert_cmpuint(qmp_reader_pending(r), ==, 1);
    assert_next_error(r, "exceeds the maximum size of 64 bytes");
    qmp_reader_feed(r, text + 80, strlen(text) - 80);
    g_assert_cmpuint(qmp_reader_pending(r), ==, 0);
    g_assert_false(qmp_reader_in_message(r));

    /* The limit itself is fine. */
    feed_str(r, "{\"return\": \"");
    {
        g_autofree char *fill = g_strnfill(64 - 14, 'y');
        g_autofree char *expect = g_strdup_printf("{\"return\": \"%s\"}", fill);

        feed_str(r, fill);
        feed_str(r, "\"}");
        assert_next_message(r, expect);
    }
    assert_no_message(r);
}

static void reader_default_limit_is_16_mib(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);
    gsize n = QMP_READER_DEFAULT_MAX_MESSAGE_SIZE;
    g_autofree char *text = g_malloc(n + 1);

    /* 16 MiB + 1 bytes: one over. */
    memset(text, ' ', n + 1);
    memcpy(text, "{\"a\": \"", 7);
    text[n - 1] = '"';
    text[n] = '}';
    qmp_reader_feed(r, text, n + 1);
    assert_next_error(r, "exceeds the maximum size");
    g_assert_false(qmp_reader_in_message(r));

    /* 16 MiB exactly: accepted. */
    text[n - 2] = '"';
    text[n - 1] = '}';
    qmp_reader_feed(r, text, n);
    {
        g_autoptr(JsonNode) msg = NULL;
        g_autoptr(GError) err = NULL;

        g_assert_true(qmp_reader_next(r, &msg, &err));
        g_assert_no_error(err);
        g_assert_nonnull(msg);
    }
}

static void reader_deep_nesting_is_rejected(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(0);
    g_autoptr(GString) s = g_string_new("{\"a\": ");

    for (int i = 0; i < 2000; i++) {
        g_string_append_c(s, '[');
    }
    for (int i = 0; i < 2000; i++) {
        g_string_append_c(s, ']');
    }
    g_string_append(s, "}\r\n{\"ok\": 3}\r\n");
    qmp_reader_feed(r, s->str, s->len);
    assert_next_error(r, "nested deeper than 1024");
    assert_next_message(r, "{\"ok\": 3}");
    assert_no_message(r);
}

static void reader_set_max_message_size(void)
{
    g_autoptr(QmpReader) r = qmp_reader_new(10);

    g_assert_cmpuint(qmp_reader_get_max_message_size(r), ==, 10);
    qmp_reader_set_max_message_size(r, 0);
    g_assert_cmpuint(qmp_reader_get_max_message_size(r), ==,
                     QMP_READER_DEFAULT_MAX_MESSAGE_SIZE);
    feed_str(r, "{\"return\": \"longer than ten\"}");
    assert_next_message(r, "{\"return\": \"longer than ten\"}");
}

static void reader_free_with_pending_items(void)
{
    QmpReader *r = qmp_reader_new(8);

    feed_str(r, "{\"a\": 1} {\"too\": \"long\"} [1] {\"b\": ");
    g_assert_cmpuint(qmp_reader_pending(r), ==, 3);
    qmp_reader_free(r);     /* nothing leaks (checked under ASan/valgrind) */
    qmp_reader_free(NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_set_nonfatal_assertions();

    g_test_add_func("/reader/one-message-per-line", reader_one_message_per_line);
    g_test_add_func("/reader/several-messages-in-one-feed",
                    reader_several_messages_in_one_feed);
    g_test_add_func("/reader/message-fed-one-byte-at-a-time",
                    reader_message_fed_one_byte_at_a_time);
    g_test_add_func("/reader/pretty-printed-message",
                    reader_pretty_printed_message);
    g_test_add_func("/reader/brackets-and-escapes-in-strings",
                    reader_brackets_and_escapes_in_strings);
    g_test_add_func("/reader/partial-message-is-kept",
                    reader_partial_message_is_kept);
    g_test_add_func("/reader/invalid-json-then-recovers",
                    reader_invalid_json_then_recovers);
    g_test_add_func("/reader/invalid-utf8-and-nul",
                    reader_invalid_utf8_and_nul);
    g_test_add_func("/reader/top-level-non-object",
                    reader_top_level_non_object);
    g_test_add_func("/reader/oversized-message-is-rejected-early",
                    reader_oversized_message_is_rejected_early);
    g_test_add_func("/reader/default-limit-is-16-mib",
                    reader_default_limit_is_16_mib);
    g_test_add_func("/reader/deep-nesting-is-rejected",
                    reader_deep_nesting_is_rejected);
    g_test_add_func("/reader/set-max-message-size",
                    reader_set_max_message_size);
    g_test_add_func("/reader/free-with-pending-items",
                    reader_free_with_pending_items);
    return g_test_run();
}
