/*
 * What the unit tests share: see test-util.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "test-util.h"

gboolean assert_json(JsonNode *node, const char *json)
{
    g_autoptr(JsonNode) expected = json_from_string(json, NULL);

    g_assert_nonnull(expected);
    g_assert_nonnull(node);
    if (node && expected && !json_node_equal(expected, node)) {
        g_autofree char *got = json_to_string(node, FALSE);

        g_test_message("expected %s, got %s", json, got);
        g_test_fail();
        return FALSE;
    }
    return node && expected;
}

gboolean peer_finished(QmpPeer *peer)
{
    g_autoptr(GError) err = NULL;
    gboolean ok = qmp_peer_finish(peer, TIMEOUT_MS, &err);

    g_assert_no_error(err);
    return ok;
}

gint64 elapsed_ms(gint64 start_us)
{
    return (g_get_monotonic_time() - start_us) / 1000;
}
