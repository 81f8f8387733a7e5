/*
 * vmfork migrate: move a clone to another host with QEMU's own migration.
 *
 *   vmfork migrate CHILD_SOCKET --to URI [--postcopy]
 *                  [--mirror DEVICE=nbd:HOST:PORT:exportname=NAME]...
 *                  [--keep-source] [--json]
 *
 * A clone is a normal QEMU process, so it moves as any VM does: the
 * destination runs the same command line with -incoming, and this command
 * drives the source (the clone's own monitor, CHILD_SOCKET):
 *
 *   1. for each --mirror: blockdev-add an NBD client of the destination's
 *      export, blockdev-mirror the disk to it (write-blocking, so that it
 *      stays in sync), and wait for BLOCK_JOB_READY;
 *   2. migrate-set-capabilities (events; postcopy-ram with --postcopy),
 *      migrate, and with --postcopy migrate-start-postcopy at once: the
 *      clone runs at the destination as soon as its device state is
 *      there, its memory fetched on demand;
 *   3. MIGRATION events until completed (or failed), query-migrate;
 *   4. block-job-cancel of the mirrors (complete without switching);
 *   5. quit on the source, unless --keep-source.
 *
 * The clone's identity (clone id, generation, VM generation ID) moves in
 * the section vmfork-identity; docs/migrate.md has the destination's side.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <string.h>

#include "vmfork-tool.h"

static char *migrate_to;
static gboolean migrate_postcopy;
static char **migrate_mirrors;
static gboolean migrate_keep_source;
static int migrate_wait_ms = 600000;
static gboolean migrate_json;

static const GOptionEntry migrate_entries[] = {
    { "to", 0, 0, G_OPTION_ARG_STRING, &migrate_to,
      "The destination's -incoming URI (tcp:HOST:PORT, ...)", "URI" },
    { "postcopy", 'p', 0, G_OPTION_ARG_NONE, &migrate_postcopy,
      "Post-copy: run at the destination at once, memory fetched on demand "
      "(the destination needs -global migration.x-postcopy-ram=on)", NULL },
    { "mirror", 'm', 0, G_OPTION_ARG_STRING_ARRAY, &migrate_mirrors,
      "Copy the disk DEVICE (a node name or a device's id) to the "
      "destination's NBD export first; repeat for several",
      "DEVICE=nbd:HOST:PORT:exportname=NAME" },
    { "keep-source", 0, 0, G_OPTION_ARG_NONE, &migrate_keep_source,
      "Leave the source QEMU (paused) instead of quitting it", NULL },
    { "wait", 'w', 0, G_OPTION_ARG_INT, &migrate_wait_ms,
      "Wait up to MS for the mirrors to be ready and for the migration to "
      "end (default 600000)", "MS" },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &migrate_json,
      "Print the result as one JSON object", NULL },
    { NULL }
};

#define MIGRATE_DESCRIPTION \
    "Migrates the clone whose QMP socket is CHILD_SOCKET to a QEMU started " \
    "with the same command line and -incoming URI on the destination " \
    "(docs/migrate.md), then quits the source.  Prints\n" \
    "  migrated in MS ms, downtime MS ms[, running at the destination " \
    "after MS ms]\n" \
    "The clone keeps its clone id, generation and VM generation ID.\n" \
    "\n" TOOL_HELP_EXIT_CODES

typedef struct {
    char *device;
    char *host;
    char *port;
    char *export;
    char *node;                 /* the NBD client node */
    char *job;
} Mirror;

/* "DEVICE=nbd:HOST:PORT:exportname=NAME"; FALSE if it is not that. */
static gboolean mirror_parse(const char *spec, Mirror *m)
{
    g_auto(GStrv) parts = NULL;
    const char *eq = strchr(spec, '=');

    if (!eq || eq == spec || !g_str_has_prefix(eq + 1, "nbd:")) {
        return FALSE;
    }
    parts = g_strsplit(eq + 1 + 4, ":", 3);
    if (g_strv_length(parts) != 3 || !parts[0][0] || !parts[1][0] ||
        !g_str_has_prefix(parts[2], "exportname=") ||
        !parts[2][strlen("exportname=")]) {
        return FALSE;
    }
    m->device = g_strndup(spec, eq - spec);
    m->host = g_strdup(parts[0]);
    m->port = g_strdup(parts[1]);
    m->export = g_strdup(parts[2] + strlen("exportname="));
    return TRUE;
}

static void mirror_clear(Mirror *m)
{
    g_free(m->device);
    g_free(m->host);
    g_free(m->port);
    g_free(m->export);
    g_free(m->node);
    g_free(m->job);
}

/* Runs @command; FALSE after reporting its error in *rc. */
static gboolean run(const Tool *tool, QmpClient *qmp, const char *command,
                    const char *args_json, JsonNode **ret, int *rc)
{
    g_autoptr(GError) err = NULL;
    JsonNode *r = qmp_execute_json(qmp, command, args_json, tool->timeout_ms,
                                   &err);

    if (!r) {
        *rc = tool_report_error(tool, err, command);
        return FALSE;
    }
    if (ret) {
        *ret = r;
    } else {
        json_node_unref(r);
    }
    return TRUE;
}

/* Starts the mirror of @m and waits until it is READY. */
static gboolean mirror_start(const Tool *tool, QmpClient *qmp, Mirror *m,
                             int index, gint64 deadline, int *rc)
{
    g_autofree char *add = NULL, *mirror = NULL;

    m->node = g_strdup_printf("vmfork-mirror-%d", index);
    m->job = g_strdup(m->node);
    add = g_strdup_printf("{\"driver\": \"nbd\", \"node-name\": \"%s\", "
                          "\"server\": {\"type\": \"inet\", \"host\": "
                          "\"%s\", \"port\": \"%s\"}, \"export\": \"%s\"}",
                          m->node, m->host, m->port, m->export);
    if (!run(tool, qmp, "blockdev-add", add, NULL, rc)) {
        return FALSE;
    }
    mirror = g_strdup_printf("{\"job-id\": \"%s\", \"device\": \"%s\", "
                             "\"target\": \"%s\", \"sync\": \"full\", "
                             "\"copy-mode\": \"write-blocking\"}",
                             m->job, m->device, m->node);
    if (!run(tool, qmp, "blockdev-mirror", mirror, NULL, rc)) {
        return FALSE;
    }
    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) ev = qmp_next_event(qmp,
                                                tool_remaining_ms(deadline),
                                                &err);
        const char *name, *id;

        if (!ev) {
            *rc = tool_report_error(tool, err, "waiting for the mirror");
            return FALSE;
        }
        name = qmp_event_name(ev);
        if (!tool_json_get_string(qmp_event_data(ev), "device", &id) ||
            !g_str_equal(id, m->job)) {
            continue;
        }
        if (g_str_equal(name, "BLOCK_JOB_READY")) {
            return TRUE;
        }
        if (g_str_equal(name, "BLOCK_JOB_COMPLETED") ||
            g_str_equal(name, "BLOCK_JOB_CANCELLED")) {
            const char *error = "ended before it was ready";

            tool_json_get_string(qmp_event_data(ev), "error", &error);
            tool_message(tool, "mirror of %s: %s", m->device, error);
            *rc = TOOL_EXIT_QMP;
            return FALSE;
        }
    }
}

static void mirrors_cancel(QmpClient *qmp, GArray *mirrors)
{
    for (guint i = 0; i < mirrors->len; i++) {
        Mirror *m = &g_array_index(mirrors, Mirror, i);
        gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        g_autofree char *args = NULL;
        g_autoptr(JsonNode) r = NULL;

        if (!m->job) {
            continue;
        }
        /*
         * A ready mirror cancelled completes without switching over
         * (BLOCK_JOB_COMPLETED), one not ready yet is cancelled
         */
        args = g_strdup_printf("{\"device\": \"%s\"}", m->job);
        r = qmp_execute_json(qmp, "block-job-cancel", args, 10000, NULL);
        while (r) {
            g_autoptr(JsonNode) ev = qmp_next_event(
                qmp, tool_remaining_ms(deadline), NULL);
            const char *name, *id;

            if (!ev) {
                break;
            }
            name = qmp_event_name(ev);
            if (tool_json_get_string(qmp_event_data(ev), "device", &id) &&
                g_str_equal(id, m->job) &&
                (g_str_equal(name, "BLOCK_JOB_COMPLETED") ||
                 g_str_equal(name, "BLOCK_JOB_CANCELLED"))) {
                break;
            }
        }
        /* The NBD client goes once the job let go of it */
        g_free(args);
        args = g_strdup_printf("{\"node-name\": \"%s\"}", m->node);
        g_clear_pointer(&r, json_node_unref);
        r = qmp_execute_json(qmp, "blockdev-del", args, 10000, NULL);
    }
}

int cmd_migrate(Tool *tool, int argc, char **argv)
{
    g_autoptr(QmpClient) qmp = NULL;
    g_autoptr(GArray) mirrors = g_array_new(FALSE, TRUE, sizeof(Mirror));
    g_autoptr(JsonNode) info = NULL;
    g_autofree char *caps = NULL, *args = NULL;
    gint64 deadline, start_us, postcopy_us = -1, end_us;
    gint64 downtime = -1, total = -1;
    const char *status = NULL;
    JsonObject *o;
    int rc;

    command_init(tool, "vmfork migrate", "CHILD_SOCKET",
                 "Move a clone to another host.", MIGRATE_DESCRIPTION,
                 migrate_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    if (!migrate_to) {
        return tool_usage_error(tool, "--to URI is required");
    }
    if (migrate_wait_ms < 0) {
        return tool_usage_error(tool, "--wait must not be negative");
    }
    for (char **s = migrate_mirrors; s && *s; s++) {
        Mirror m = { 0 };

        if (!mirror_parse(*s, &m)) {
            return tool_usage_error(tool, "--mirror takes "
                                    "DEVICE=nbd:HOST:PORT:exportname=NAME, "
                                    "not '%s'", *s);
        }
        g_array_append_val(mirrors, m);
    }

    qmp = tool_connect(tool, argv[1], &rc);
    if (!qmp) {
        goto out;
    }
    deadline = g_get_monotonic_time() + migrate_wait_ms * 1000LL;
    start_us = g_get_monotonic_time();
    for (guint i = 0; i < mirrors->len; i++) {
        if (!mirror_start(tool, qmp, &g_array_index(mirrors, Mirror, i), i,
                          deadline, &rc)) {
            goto cancel;
        }
    }
    caps = g_strdup_printf("{\"capabilities\": [{\"capability\": \"events\", "
                           "\"state\": true}, {\"capability\": "
                           "\"postcopy-ram\", \"state\": %s}]}",
                           migrate_postcopy ? "true" : "false");
    args = g_strdup_printf("{\"uri\": \"%s\"}", migrate_to);
    if (!run(tool, qmp, "migrate-set-capabilities", caps, NULL, &rc) ||
        !run(tool, qmp, "migrate", args, NULL, &rc) ||
        (migrate_postcopy &&
         !run(tool, qmp, "migrate-start-postcopy", NULL, NULL, &rc))) {
        goto cancel;
    }
    /* MIGRATION events until it ends */
    while (!status) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) ev = qmp_wait_event(qmp, "MIGRATION",
                                                tool_remaining_ms(deadline),
                                                &err);
        const char *s;

        if (!ev) {
            rc = tool_report_error(tool, err, "waiting for the migration");
            goto cancel;
        }
        if (!tool_json_get_string(qmp_event_data(ev), "status", &s)) {
            continue;
        }
        if (g_str_equal(s, "postcopy-active")) {
            postcopy_us = g_get_monotonic_time();
        } else if (g_str_equal(s, "completed") || g_str_equal(s, "failed") ||
                   g_str_equal(s, "cancelled")) {
            status = g_intern_string(s);
        }
    }
    end_us = g_get_monotonic_time();
    if (!run(tool, qmp, "query-migrate", NULL, &info, &rc)) {
        goto cancel;
    }
    o = JSON_NODE_HOLDS_OBJECT(info) ? json_node_get_object(info) : NULL;
    tool_json_get_int(o, "downtime", &downtime);
    tool_json_get_int(o, "total-time", &total);
    if (!g_str_equal(status, "completed")) {
        const char *why = "?";

        tool_json_get_string(o, "error-desc", &why);
        tool_message(tool, "migration %s: %s", status, why);
        rc = TOOL_EXIT_QMP;
        goto cancel;
    }
    mirrors_cancel(qmp, mirrors);
    if (!migrate_keep_source) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) r = qmp_execute(qmp, "quit", NULL,
                                            tool->timeout_ms, &err);

        /* QEMU may close the connection before its reply gets out */
        if (!r && !g_error_matches(err, QMP_ERROR, QMP_ERROR_CLOSED)) {
            rc = tool_report_error(tool, err, "quit on the source");
            goto out;
        }
    }
    if (migrate_json) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        g_autoptr(JsonNode) root = NULL;

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "total_ms");
        json_builder_add_double_value(b, (end_us - start_us) / 1000.0);
        json_builder_set_member_name(b, "qemu_total_ms");
        json_builder_add_int_value(b, total);
        json_builder_set_member_name(b, "downtime_ms");
        json_builder_add_int_value(b, downtime);
        json_builder_set_member_name(b, "postcopy_ms");
        if (postcopy_us >= 0) {
            json_builder_add_double_value(b, (postcopy_us - start_us) /
                                          1000.0);
        } else {
            json_builder_add_null_value(b);
        }
        json_builder_set_member_name(b, "query-migrate");
        json_builder_add_value(b, json_node_copy(info));
        json_builder_end_object(b);
        root = json_builder_get_root(b);
        tool_print_json(root, tool_stdout_is_tty());
    } else {
        printf("migrated in %.3f ms, downtime %" G_GINT64_FORMAT " ms",
               (end_us - start_us) / 1000.0, downtime);
        if (postcopy_us >= 0) {
            printf(", running at the destination after %.3f ms",
                   (postcopy_us - start_us) / 1000.0);
        }
        printf("\n");
        fflush(stdout);
    }
    rc = TOOL_EXIT_OK;
    goto out;

cancel:
    /* The clone runs on here: no mirror or half migration left behind */
    if (qmp) {
        g_autoptr(JsonNode) r = qmp_execute(qmp, "migrate_cancel", NULL,
                                            10000, NULL);

        mirrors_cancel(qmp, mirrors);
    }
out:
    for (guint i = 0; i < mirrors->len; i++) {
        mirror_clear(&g_array_index(mirrors, Mirror, i));
    }
    return rc;
}
