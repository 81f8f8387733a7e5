/*
 * What the unit tests that run against a scripted QMP peer (qmp-peer.h)
 * share: assertion macros that leave a test early, the text of an event,
 * and checks of JSON and of the peer's script.
 *
 * The tests make assertions non-fatal (g_test_set_nonfatal_assertions()) so
 * that their fixture teardown always runs; these helpers assume it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <glib.h>
#include <json-glib/json-glib.h>

#include "qmp-peer.h"

/* How long a test waits for what should come at once. */
#define TIMEOUT_MS 5000

/* Asserts @cond and leaves the test when it does not hold. */
#define REQUIRE(cond) \
    do { \
        gboolean ok_ = (cond); \
        g_assert_true(ok_ && #cond); \
        if (!ok_) { \
            return; \
        } \
    } while (0)

/* Asserts that @err is unset and leaves the test when it is set. */
#define REQUIRE_NO_ERROR(err) \
    do { \
        g_assert_no_error(err); \
        if (err) { \
            return; \
        } \
    } while (0)

/* A QMP event @name with @data (a JSON literal), as QEMU sends it. */
#define EVENT(name, data) \
    "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 1}, " \
    "\"event\": \"" name "\", \"data\": " data "}\r\n"

/*
 * Checks that @node is JSON equal to the text @json (which must parse);
 * a NULL @node fails.  Returns whether it is.
 */
gboolean assert_json(JsonNode *node, const char *json);

/*
 * Checks that @peer played its script to the end within TIMEOUT_MS (close
 * the client, or let the tool exit, first).  Returns whether it did.
 */
gboolean peer_finished(QmpPeer *peer);

/* Milliseconds since @start_us, a g_get_monotonic_time(). */
gint64 elapsed_ms(gint64 start_us);

#endif /* TEST_UTIL_H */
