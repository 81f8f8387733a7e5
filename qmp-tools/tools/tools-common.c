/*
 * Helpers shared by the command-line tools; see tools-common.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE             /* strchrnul */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools-common.h"

#ifndef VMFORK_VERSION
#define VMFORK_VERSION "unknown"
#endif

void tool_init(Tool *tool, const char *name, const char *params,
               const char *summary, const char *description,
               const GOptionEntry *entries)
{
    const GOptionEntry common[] = {
        { "timeout", 't', 0, G_OPTION_ARG_INT, &tool->timeout_ms,
          "Give up after MS milliseconds per step (connecting, each "
          "command, waiting for events); -1 waits forever (default 10000)",
          "MS" },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &tool->version,
          "Print the version and exit", NULL },
        { NULL }
    };

    memset(tool, 0, sizeof(*tool));
    tool->name = name;
    tool->params = params;
    tool->timeout_ms = TOOL_DEFAULT_TIMEOUT_MS;
    g_set_prgname(name);
    tool->ctx = g_option_context_new(params);
    g_option_context_set_summary(tool->ctx, summary);
    g_option_context_set_description(tool->ctx, description);
    if (entries) {
        g_option_context_add_main_entries(tool->ctx, entries, NULL);
    }
    /* The entries are copied, so the local array is fine. */
    g_option_context_add_main_entries(tool->ctx, common, NULL);
}

void tool_clear(Tool *tool)
{
    g_clear_pointer(&tool->ctx, g_option_context_free);
}

static void tool_print_short_usage(const Tool *tool)
{
    fprintf(stderr, "Usage: %s [OPTION...] %s\n", tool->name, tool->params);
    fprintf(stderr, "Try '%s --help' for more information.\n", tool->name);
}

static void tool_vmessage(const Tool *tool, const char *fmt, va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);

    fprintf(stderr, "%s: %s\n", tool->name, msg);
}

void tool_message(const Tool *tool, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tool_vmessage(tool, fmt, ap);
    va_end(ap);
}

int tool_usage_error(const Tool *tool, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tool_vmessage(tool, fmt, ap);
    va_end(ap);
    tool_print_short_usage(tool);
    return TOOL_EXIT_USAGE;
}

int tool_parse(Tool *tool, int *argc, char ***argv, int min_args,
               int max_args)
{
    g_autoptr(GError) err = NULL;
    int nargs;

    if (!g_option_context_parse(tool->ctx, argc, argv, &err)) {
        return tool_usage_error(tool, "%s", err->message);
    }
    if (tool->version) {
        g_autofree char *prog = g_strdup(tool->name);

        *strchrnul(prog, ' ') = '\0';
        printf("%s (vmfork) %s\n", prog, VMFORK_VERSION);
        exit(TOOL_EXIT_OK);
    }
    if (tool->timeout_ms == 0 || tool->timeout_ms < -1) {
        return tool_usage_error(tool, "--timeout must be a number of "
                                "milliseconds > 0, or -1");
    }
    nargs = *argc - 1;
    if (nargs < min_args) {
        return tool_usage_error(tool, "missing argument%s",
                                nargs + 1 < min_args ? "s" : "");
    }
    if (nargs > max_args) {
        return tool_usage_error(tool, "unexpected argument '%s'",
                                (*argv)[1 + max_args]);
    }
    return TOOL_EXIT_OK;
}

int tool_report_error(const Tool *tool, const GError *err,
                      const char *context)
{
    const char *klass = qmp_error_class(err);

    if (klass) {
        /* The contract: a QMP error is "CLASS: DESC" on stderr. */
        fprintf(stderr, "%s: %s\n", klass, qmp_error_desc(err));
        return TOOL_EXIT_QMP;
    }
    if (context) {
        fprintf(stderr, "%s: %s: %s\n", tool->name, context, err->message);
    } else {
        fprintf(stderr, "%s: %s\n", tool->name, err->message);
    }
    if (g_error_matches(err, QMP_ERROR, QMP_ERROR_INVALID)) {
        return TOOL_EXIT_USAGE;
    }
    return TOOL_EXIT_IO;
}

QmpClient *tool_connect(const Tool *tool, const char *path, int *exit_code)
{
    g_autoptr(GError) err = NULL;
    QmpClient *client = qmp_connect_unix(path, tool->timeout_ms, &err);

    if (!client) {
        /* Name the path, unless libqmp's message does already. */
        *exit_code = tool_report_error(tool, err,
                                       strstr(err->message, path) ? NULL
                                                                  : path);
    }
    return client;
}

void tool_print_json(JsonNode *node, gboolean pretty)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;

    json_generator_set_root(gen, node);
    json_generator_set_pretty(gen, pretty);
    json_generator_set_indent(gen, 2);
    text = json_generator_to_data(gen, NULL);
    fputs(text, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

gboolean tool_stdout_is_tty(void)
{
    return isatty(STDOUT_FILENO);
}

gboolean tool_parse_pid(const char *text, int *pid)
{
    guint64 value;

    if (!g_ascii_string_to_unsigned(text, 10, 1, G_MAXINT, &value, NULL)) {
        return FALSE;
    }
    *pid = (int)value;
    return TRUE;
}

gint64 tool_deadline(const Tool *tool)
{
    if (tool->timeout_ms < 0) {
        return -1;
    }
    return g_get_monotonic_time() + (gint64)tool->timeout_ms * 1000;
}

int tool_remaining_ms(gint64 deadline)
{
    gint64 left;

    if (deadline < 0) {
        return -1;
    }
    left = deadline - g_get_monotonic_time();
    if (left <= 0) {
        return 0;
    }
    return (int)MIN((left + 999) / 1000, G_MAXINT);
}

double tool_elapsed_ms(gint64 start_us, gint64 end_us)
{
    return (double)(end_us - start_us) / 1000.0;
}

gboolean tool_json_get_int(JsonObject *obj, const char *member,
                           gint64 *value)
{
    JsonNode *node = obj ? json_object_get_member(obj, member) : NULL;

    if (!node || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_INT64) {
        return FALSE;
    }
    *value = json_node_get_int(node);
    return TRUE;
}

gboolean tool_json_get_string(JsonObject *obj, const char *member,
                              const char **value)
{
    JsonNode *node = obj ? json_object_get_member(obj, member) : NULL;

    if (!node || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_STRING) {
        return FALSE;
    }
    *value = json_node_get_string(node);
    return TRUE;
}
