/*
 * libFuzzer target: the QMP reader (qmp/reader.h) and the rules that sort
 * what it returns (protocol.c), on arbitrary bytes from a server.
 *
 * Each input is fed to three readers: all at once, in chunks split at
 * pseudo-random points (seeded by a hash of the input, so a crash
 * reproduces), and one byte at a time (inputs up to 4 KiB).  Besides
 * crashing, leaking or undefined behaviour (ASan, UBSan), any difference in
 * what the three return (messages, errors, in the same order) aborts:
 * framing must not depend on how the bytes arrive.  Every message is then
 * sorted as the clients sort it (event, reply, late reply, protocol error),
 * its result extracted and tried as a greeting.
 *
 * Build and run: scripts/fuzz.sh [SECONDS], or
 *   CC=clang meson setup build/fuzz -Dfuzz=true
 *   meson test -C build/fuzz --suite fuzz
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qmp/reader.h>
#include "qmp-private.h"

#define BYTEWISE_MAX 4096

/* FNV-1a: the seed of the pseudo-random choices, a function of the input. */
static guint64 hash_input(const uint8_t *data, size_t size)
{
    guint64 h = 14695981039346656037ull;

    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * 1099511628211ull;
    }
    return h;
}

/* xorshift64 */
static guint64 next_random(guint64 *state)
{
    guint64 x = *state ? *state : 0x9e3779b97f4a7c15ull;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

static void fail(const char *what, const char *a, const char *b)
{
    fprintf(stderr, "fuzz-reader: %s\n  %s\n  %s\n", what, a ? a : "(none)",
            b ? b : "(none)");
    abort();
}

/* Takes every queued item, as "M <json>" or "E <error message>". */
static void drain(QmpReader *reader, GPtrArray *items)
{
    for (;;) {
        JsonNode *msg = NULL;
        GError *err = NULL;
        guint pending = qmp_reader_pending(reader);

        if (!qmp_reader_next(reader, &msg, &err)) {
            if (msg || !err || err->domain != QMP_ERROR ||
                err->code != QMP_ERROR_PROTOCOL) {
                fail("qmp_reader_next() failed without a PROTOCOL error",
                     err ? err->message : NULL, NULL);
            }
            g_ptr_array_add(items, g_strdup_printf("E %s", err->message));
            g_error_free(err);
        } else if (msg) {
            g_autofree char *text = NULL;

            if (!JSON_NODE_HOLDS_OBJECT(msg)) {
                fail("a message that is not an object", NULL, NULL);
            }
            text = json_to_string(msg, FALSE);
            g_ptr_array_add(items, g_strdup_printf("M %s", text));
            json_node_unref(msg);
        } else {
            if (pending != 0) {
                fail("nothing returned with items pending", NULL, NULL);
            }
            return;
        }
        if (qmp_reader_pending(reader) != pending - 1) {
            fail("qmp_reader_pending() did not go down by one", NULL, NULL);
        }
    }
}

typedef enum {
    FEED_WHOLE,
    FEED_CHUNKS,
    FEED_BYTES,
} FeedMode;

/* Feeds @data to a new reader as @mode says; returns the items. */
static GPtrArray *run_reader(const uint8_t *data, size_t size,
                             gsize max_size, FeedMode mode, guint64 seed,
                             gboolean *in_message)
{
    GPtrArray *items = g_ptr_array_new_with_free_func(g_free);
    QmpReader *reader = qmp_reader_new(max_size);
    size_t off = 0;

    while (off < size) {
        size_t len = size - off;

        if (mode == FEED_BYTES) {
            len = 1;
        } else if (mode == FEED_CHUNKS) {
            size_t chunk = 1 + next_random(&seed) % 64;

            len = MIN(len, chunk);
        }
        qmp_reader_feed(reader, data + off, len);
        off += len;
        /* Take items now and then, or let them queue up. */
        if (mode == FEED_CHUNKS && next_random(&seed) % 2) {
            drain(reader, items);
        }
    }
    qmp_reader_feed(reader, "", 0);
    drain(reader, items);
    *in_message = qmp_reader_in_message(reader);
    qmp_reader_free(reader);
    return items;
}

static void compare(GPtrArray *whole, GPtrArray *other, const char *how)
{
    for (guint i = 0; i < MAX(whole->len, other->len); i++) {
        const char *a = i < whole->len ? whole->pdata[i] : NULL;
        const char *b = i < other->len ? other->pdata[i] : NULL;

        if (!a || !b || strcmp(a, b) != 0) {
            fail(how, a, b);
        }
    }
}

/* Sorts and interprets a message the way the clients do. */
static void sort_message(QmpDispatch *d, JsonNode *msg)
{
    GError *err = NULL;
    gpointer data = NULL;
    QmpGreeting greeting = { 0 };
    JsonNode *result;

    switch (qmp_dispatch_sort(d, msg, &data, &err)) {
    case QMP_MESSAGE_EVENT:
    case QMP_MESSAGE_LATE:
        if (err) {
            fail("an error with an event or late reply", err->message, NULL);
        }
        break;
    case QMP_MESSAGE_REPLY:
        if (err || (data != GINT_TO_POINTER(1) && data != GINT_TO_POINTER(3))) {
            fail("a reply to a command not awaiting one", NULL, NULL);
        }
        result = qmp_reply_result(msg, &err);
        if (!result == !err) {
            fail("a reply gave both or neither result and error", NULL, NULL);
        }
        if (g_error_matches(err, QMP_ERROR, QMP_ERROR_COMMAND) &&
            (!qmp_error_class(err) || !qmp_error_desc(err))) {
            fail("a COMMAND error without class or desc", err->message, NULL);
        }
        if (result) {
            json_node_unref(result);
        }
        break;
    case QMP_MESSAGE_INVALID:
        if (!g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL)) {
            fail("an invalid message without a PROTOCOL error", NULL, NULL);
        }
        break;
    }
    g_clear_error(&err);

    if (qmp_greeting_take(&greeting, json_node_ref(msg), &err)) {
        if (!qmp_greeting_version(&greeting, NULL, NULL, NULL) ||
            !greeting.package) {
            fail("a greeting without version or package", NULL, NULL);
        }
        qmp_greeting_has_capability(&greeting, "oob");
    }
    qmp_greeting_clear(&greeting);
    g_clear_error(&err);
}

static void sort_messages(const uint8_t *data, size_t size, gsize max_size)
{
    QmpReader *reader = qmp_reader_new(max_size);
    QmpDispatch d;
    char *id;

    /* Three commands sent; the second given up on. */
    qmp_dispatch_init(&d);
    for (int i = 1; i <= 3; i++) {
        id = qmp_dispatch_add(&d, GINT_TO_POINTER(i));
        if (i == 2) {
            qmp_dispatch_abandon(&d, id);
        }
        g_free(id);
    }
    qmp_reader_feed(reader, data, size);
    for (;;) {
        JsonNode *msg = NULL;
        GError *err = NULL;

        if (!qmp_reader_next(reader, &msg, &err)) {
            g_error_free(err);
            continue;
        }
        if (!msg) {
            break;
        }
        sort_message(&d, msg);
        json_node_unref(msg);
    }
    qmp_dispatch_clear(&d);
    qmp_reader_free(reader);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const gsize small_limits[] = { 1, 16, 64, 512 };
    guint64 seed = hash_input(data, size);
    gsize max_size = 0;
    gboolean in_whole, in_other;
    GPtrArray *whole, *other;

    /* One input in four also runs into a small size limit. */
    if (seed % 4 == 0) {
        max_size = small_limits[(seed >> 8) % G_N_ELEMENTS(small_limits)];
    }
    whole = run_reader(data, size, max_size, FEED_WHOLE, seed, &in_whole);

    other = run_reader(data, size, max_size, FEED_CHUNKS, seed, &in_other);
    compare(whole, other, "split at random points, the items differ");
    if (in_whole != in_other) {
        fail("split at random points, in_message differs", NULL, NULL);
    }
    g_ptr_array_unref(other);

    if (size <= BYTEWISE_MAX) {
        other = run_reader(data, size, max_size, FEED_BYTES, seed, &in_other);
        compare(whole, other, "fed byte by byte, the items differ");
        if (in_whole != in_other) {
            fail("fed byte by byte, in_message differs", NULL, NULL);
        }
        g_ptr_array_unref(other);
    }
    g_ptr_array_unref(whole);

    sort_messages(data, size, max_size);
    return 0;
}
