/*
 * qmp-call: run one QMP command and print its return value as JSON.
 *
 *   qmp-call SOCKET COMMAND [JSON-ARGUMENTS]
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdio.h>
#include <unistd.h>

#include "tools-common.h"

static gboolean opt_compact;
static gboolean opt_pretty;
static int opt_fd = -1;

static const GOptionEntry qmp_call_entries[] = {
    { "compact", 'c', 0, G_OPTION_ARG_NONE, &opt_compact,
      "Print the result on one line (the default unless stdout is a "
      "terminal)", NULL },
    { "pretty", 'p', 0, G_OPTION_ARG_NONE, &opt_pretty,
      "Print the result indented (the default when stdout is a terminal)",
      NULL },
    { "fd", 0, 0, G_OPTION_ARG_INT, &opt_fd,
      "Pass the open file descriptor N with the command (SCM_RIGHTS), for "
      "getfd and add-fd", "N" },
    { NULL }
};

#define QMP_CALL_DESCRIPTION \
    "Connects to the QMP unix socket SOCKET, runs COMMAND with the " \
    "arguments JSON-ARGUMENTS (a JSON object; \"-\" reads it from stdin) " \
    "and prints the command's return value as JSON on stdout.  A QMP error " \
    "is printed as \"CLASS: DESC\" on stderr.\n" \
    "\n" \
    "Examples:\n" \
    "  qmp-call /run/vm.qmp query-status\n" \
    "  qmp-call /run/vm.qmp vmfork '{\"count\": 2}'\n" \
    "  qmp-call --fd 3 /run/vm.qmp getfd '{\"fdname\": \"disk\"}' " \
    "3</dev/null\n" \
    "\n" TOOL_HELP_EXIT_CODES

/* The arguments text: the command line's, or stdin's for "-". */
static char *read_arguments(const Tool *tool, const char *arg)
{
    g_autoptr(GIOChannel) in = NULL;
    g_autoptr(GError) err = NULL;
    char *text = NULL;
    gsize len;

    if (g_strcmp0(arg, "-") != 0) {
        return g_strdup(arg);
    }
    in = g_io_channel_unix_new(STDIN_FILENO);
    g_io_channel_set_encoding(in, NULL, NULL);
    if (g_io_channel_read_to_end(in, &text, &len, &err) !=
        G_IO_STATUS_NORMAL) {
        tool_message(tool, "cannot read the arguments from stdin: %s",
                     err ? err->message : "read failed");
        return NULL;
    }
    return text;
}

int main(int argc, char **argv)
{
    Tool tool;
    int rc;
    g_autofree char *args_text = NULL;
    g_autoptr(JsonNode) args = NULL;
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(GError) err = NULL;
    const char *socket_path, *command;

    setlocale(LC_ALL, "");
    tool_init(&tool, "qmp-call", "SOCKET COMMAND [JSON-ARGUMENTS]",
              "Run one QMP command and print its return value as JSON.",
              QMP_CALL_DESCRIPTION, qmp_call_entries);
    rc = tool_parse(&tool, &argc, &argv, 2, 3);
    if (rc) {
        goto out;
    }
    socket_path = argv[1];
    command = argv[2];
    if (opt_compact && opt_pretty) {
        rc = tool_usage_error(&tool, "--compact and --pretty exclude each "
                              "other");
        goto out;
    }
    if (!*command) {
        rc = tool_usage_error(&tool, "COMMAND is empty");
        goto out;
    }
    if (opt_fd != -1 && (opt_fd < 0 || fcntl(opt_fd, F_GETFD) < 0)) {
        rc = tool_usage_error(&tool, "--fd %d: not an open file descriptor",
                              opt_fd);
        goto out;
    }
    if (argc > 3) {
        args_text = read_arguments(&tool, argv[3]);
        if (!args_text) {
            rc = TOOL_EXIT_IO;
            goto out;
        }
        g_strstrip(args_text);
    }
    if (args_text && *args_text) {
        args = json_from_string(args_text, &err);
        if (!args || !JSON_NODE_HOLDS_OBJECT(args)) {
            rc = tool_usage_error(&tool, "JSON-ARGUMENTS must be a JSON "
                                  "object%s%s", err ? ": " : "",
                                  err ? err->message : "");
            goto out;
        }
    }

    client = tool_connect(&tool, socket_path, &rc);
    if (!client) {
        goto out;
    }
    if (opt_fd >= 0) {
        ret = qmp_execute_with_fd(client, command,
                                  args ? json_node_get_object(args) : NULL,
                                  opt_fd, tool.timeout_ms, &err);
    } else {
        ret = qmp_execute(client, command,
                          args ? json_node_get_object(args) : NULL,
                          tool.timeout_ms, &err);
    }
    if (!ret) {
        rc = tool_report_error(&tool, err, command);
        goto out;
    }
    tool_print_json(ret, opt_pretty || (!opt_compact && tool_stdout_is_tty()));
    rc = TOOL_EXIT_OK;
out:
    tool_clear(&tool);
    return rc;
}
