/*
 * vmfork: fork a running VM and manage its children, over QMP.
 *
 *   vmfork fork SOCKET [--count N] [--monitor TEMPLATE] [--serial TEMPLATE]
 *                      [--no-start] [--paused-parent] [--overlay-dir DIR]
 *                      [--chardev ID=TEMPLATE]...
 *                      [--chardev-log ID=TEMPLATE]...
 *                      [--json]
 *   vmfork ls   SOCKET [--json]
 *   vmfork wait SOCKET PID
 *   vmfork kill SOCKET PID [--signal SIG]
 *   vmfork pool, take, release, pool-status: the clone pool (pool.c)
 *   vmfork serve: a clone per TCP connection (serve.c)
 *   vmfork migrate: a clone to another host (migrate.c)
 *
 * SOCKET is the QMP socket of the VM that forks (the parent).  Waiting is
 * done on QMP events (VMFORK_CHILD_READY, VMFORK_CHILD_EXITED) read with
 * libqmp, never by polling.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "vmfork-tool.h"

/* --timeout given before the command ("vmfork --timeout MS fork ..."). */
static int top_timeout_ms = TOOL_DEFAULT_TIMEOUT_MS;

void command_init(Tool *tool, const char *name, const char *params,
                  const char *summary, const char *description,
                  const GOptionEntry *entries)
{
    tool_init(tool, name, params, summary, description, entries);
    tool->timeout_ms = top_timeout_ms;
}

gboolean chardev_spec_valid(const char *spec)
{
    const char *eq = strchr(spec, '=');

    return eq && eq != spec && eq[1];
}

/* The member @member of @id's entry in @chardevs, made if need be */
static void chardev_entry_set(JsonArray *chardevs, GHashTable *by_id,
                              const char *spec, const char *member)
{
    const char *eq = strchr(spec, '=');     /* chardev_spec_valid() */
    g_autofree char *id = g_strndup(spec, eq - spec);
    JsonObject *o = g_hash_table_lookup(by_id, id);

    if (!o) {
        o = json_object_new();
        json_object_set_string_member(o, "id", id);
        json_array_add_object_element(chardevs, o);
        g_hash_table_insert(by_id, g_strdup(id), o);
    }
    json_object_set_string_member(o, member, eq + 1);
}

JsonArray *chardev_specs_to_json(char **specs, char **log_specs)
{
    JsonArray *chardevs = json_array_new();
    g_autoptr(GHashTable) by_id = g_hash_table_new_full(g_str_hash,
                                                        g_str_equal, g_free,
                                                        NULL);

    for (char **c = specs; c && *c; c++) {
        chardev_entry_set(chardevs, by_id, *c, "path");
    }
    for (char **c = log_specs; c && *c; c++) {
        chardev_entry_set(chardevs, by_id, *c, "logfile");
    }
    return chardevs;
}

/* ---- query-vmfork ------------------------------------------------------ */

/* One entry of query-vmfork's "children". */
typedef struct {
    gint64 pid;
    gint64 clone_id;
    const char *monitor;
    const char *state;
    gboolean has_exit_status;
    gint64 exit_status;
} ChildInfo;

static gboolean child_info_from_json(JsonNode *node, ChildInfo *ci)
{
    JsonObject *o;

    memset(ci, 0, sizeof(*ci));
    if (!JSON_NODE_HOLDS_OBJECT(node)) {
        return FALSE;
    }
    o = json_node_get_object(node);
    ci->has_exit_status = tool_json_get_int(o, "exit-status",
                                            &ci->exit_status);
    return tool_json_get_int(o, "pid", &ci->pid) &&
           tool_json_get_int(o, "clone-id", &ci->clone_id) &&
           tool_json_get_string(o, "monitor", &ci->monitor) &&
           tool_json_get_string(o, "state", &ci->state);
}

/* The "children" array of a query-vmfork or vmfork return value, or NULL. */
static JsonArray *query_children(JsonNode *info)
{
    JsonNode *children;

    if (!JSON_NODE_HOLDS_OBJECT(info)) {
        return NULL;
    }
    children = json_object_get_member(json_node_get_object(info), "children");
    if (!children || !JSON_NODE_HOLDS_ARRAY(children)) {
        return NULL;
    }
    return json_node_get_array(children);
}

/* Runs query-vmfork; NULL after reporting the error in *rc. */
static JsonNode *query_vmfork(const Tool *tool, QmpClient *client, int *rc)
{
    g_autoptr(GError) err = NULL;
    JsonNode *info = qmp_execute(client, "query-vmfork", NULL,
                                 tool->timeout_ms, &err);

    if (!info) {
        *rc = tool_report_error(tool, err, "query-vmfork");
        return NULL;
    }
    if (!query_children(info)) {
        tool_message(tool, "query-vmfork: unexpected reply (no "
                     "\"children\" array)");
        json_node_unref(info);
        *rc = TOOL_EXIT_IO;
        return NULL;
    }
    return info;
}

/*
 * Finds @pid among the children in @info (from query_vmfork()).
 * Returns: TRUE with *@ci filled (pointing into @info); FALSE after
 * reporting that @pid is not a child of the VM at @socket_path (*rc = 2) or
 * that the reply is malformed (*rc = 3).
 */
static gboolean find_child(const Tool *tool, JsonNode *info, int pid,
                           const char *socket_path, ChildInfo *ci, int *rc)
{
    JsonArray *children = query_children(info);

    for (guint i = 0; i < json_array_get_length(children); i++) {
        if (!child_info_from_json(json_array_get_element(children, i), ci)) {
            tool_message(tool, "query-vmfork: unexpected reply (child %u "
                         "lacks pid, clone-id, monitor or state)", i);
            *rc = TOOL_EXIT_IO;
            return FALSE;
        }
        if (ci->pid == pid) {
            return TRUE;
        }
    }
    tool_message(tool, "pid %d is not a child of the VM at %s", pid,
                 socket_path);
    *rc = TOOL_EXIT_USAGE;
    return FALSE;
}

static void print_exited(int pid, gint64 status)
{
    printf("pid %d exited with status %" G_GINT64_FORMAT "\n", pid, status);
    fflush(stdout);
}

/*
 * Waits until @deadline for VMFORK_CHILD_EXITED of @pid on @client and
 * prints "pid PID exited with status S".
 * Returns: an exit code (0 when the event came).
 */
static int wait_child_exited(const Tool *tool, QmpClient *client, int pid,
                             gint64 deadline)
{
    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) ev = qmp_wait_event(client, EVENT_EXITED,
                                                tool_remaining_ms(deadline),
                                                &err);
        gint64 ev_pid, status;

        if (!ev) {
            if (g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
                tool_message(tool, "timed out after %d ms waiting for pid "
                             "%d to exit", tool->timeout_ms, pid);
                return TOOL_EXIT_IO;
            }
            return tool_report_error(tool, err, "waiting for "
                                     EVENT_EXITED);
        }
        if (tool_json_get_int(qmp_event_data(ev), "pid", &ev_pid) &&
            ev_pid == pid) {
            if (!tool_json_get_int(qmp_event_data(ev), "status", &status)) {
                tool_message(tool, EVENT_EXITED " of pid %d has no status",
                             pid);
                return TOOL_EXIT_IO;
            }
            print_exited(pid, status);
            return TOOL_EXIT_OK;
        }
    }
}

/* ---- vmfork fork ------------------------------------------------------- */

static int fork_count = 1;
static char *fork_monitor;
static char *fork_serial;
static gboolean fork_no_start;
static gboolean fork_paused_parent;
static char *fork_overlay_dir;
static int fork_hostfwd_offset = -1;
static char **fork_chardevs;
static char **fork_chardev_logs;
static gboolean fork_no_wait;
static gboolean opt_json;

static const GOptionEntry fork_entries[] = {
    { "count", 'n', 0, G_OPTION_ARG_INT, &fork_count,
      "Fork N children (default 1)", "N" },
    { "monitor", 'm', 0, G_OPTION_ARG_FILENAME, &fork_monitor,
      "Path template of each child's QMP socket: %i is the child's index, "
      "%p its pid (default: SOCKET.fork-%p)", "TEMPLATE" },
    { "serial", 's', 0, G_OPTION_ARG_FILENAME, &fork_serial,
      "Path template (%i, %p) of a file for each child's serial output",
      "TEMPLATE" },
    { "no-start", 0, 0, G_OPTION_ARG_NONE, &fork_no_start,
      "Leave the children paused until 'cont' on their own monitor", NULL },
    { "paused-parent", 0, 0, G_OPTION_ARG_NONE, &fork_paused_parent,
      "Keep the parent paused afterwards, as a template", NULL },
    { "overlay-dir", 'o', 0, G_OPTION_ARG_FILENAME, &fork_overlay_dir,
      "Create the qcow2 overlays of writable disks in DIR", "DIR" },
    { "hostfwd-offset", 0, 0, G_OPTION_ARG_INT, &fork_hostfwd_offset,
      "Shift each child's user-network host forward ports by N * (index "
      "+ 1)", "N" },
    { "chardev", 'c', 0, G_OPTION_ARG_FILENAME_ARRAY, &fork_chardevs,
      "Where each child's unix socket chardev ID listens: a path template "
      "(%i, %p); repeat for several (default: its path + .fork-PID)",
      "ID=TEMPLATE" },
    { "chardev-log", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &fork_chardev_logs,
      "Where each child logs what chardev ID logs (logfile=): a file path "
      "template (%i, %p), required for a log on a pipe such as libvirt's "
      "to virtlogd (default: the log's path + .fork-PID)", "ID=TEMPLATE" },
    { "no-wait", 0, 0, G_OPTION_ARG_NONE, &fork_no_wait,
      "Do not wait for the children's " EVENT_READY " events", NULL },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
      "Print the result as one JSON object", NULL },
    { NULL }
};

#define FORK_DESCRIPTION \
    "Sends the QMP command vmfork to the VM at SOCKET, then waits for each " \
    "child's " EVENT_READY " event (bounded by --timeout).  Prints one line " \
    "per child:\n" \
    "  pid PID clone-id ID monitor PATH ready MS ms\n" \
    "where MS is the time from sending the command to the child's READY " \
    "event, then \"forked N children in MS ms\" with the round trip of the " \
    "command.  With --json: {\"children\": [{\"pid\", \"clone-id\", " \
    "\"monitor\", \"ready_ms\"}], \"command_ms\"}.\n" \
    "A child that exits before it is ready makes the exit status 1.\n" \
    "\n" TOOL_HELP_EXIT_CODES

typedef struct {
    gint64 pid;
    gint64 clone_id;
    const char *monitor;        /* owned by the reply */
    double ready_ms;            /* < 0: not ready */
    gboolean exited;            /* exited before it was ready */
    gint64 exit_status;
} ForkedChild;

static JsonObject *fork_arguments(void)
{
    JsonObject *args = json_object_new();

    json_object_set_int_member(args, "count", fork_count);
    if (fork_monitor) {
        json_object_set_string_member(args, "monitor", fork_monitor);
    }
    if (fork_serial) {
        json_object_set_string_member(args, "serial", fork_serial);
    }
    if (fork_no_start) {
        json_object_set_boolean_member(args, "start", FALSE);
    }
    if (fork_paused_parent) {
        json_object_set_string_member(args, "parent", "paused");
    }
    if (fork_overlay_dir) {
        json_object_set_string_member(args, "overlay-dir", fork_overlay_dir);
    }
    if (fork_hostfwd_offset >= 0) {
        json_object_set_int_member(args, "hostfwd-offset",
                                   fork_hostfwd_offset);
    }
    if (fork_chardevs || fork_chardev_logs) {
        json_object_set_array_member(args, "chardevs",
                                     chardev_specs_to_json(fork_chardevs,
                                                           fork_chardev_logs));
    }
    return args;
}

/* Fills @children from the vmfork reply; FALSE if it is malformed. */
static gboolean fork_parse_reply(JsonNode *ret, GArray *children)
{
    JsonArray *array = query_children(ret);

    if (!array) {
        return FALSE;
    }
    for (guint i = 0; i < json_array_get_length(array); i++) {
        JsonNode *node = json_array_get_element(array, i);
        JsonObject *o = JSON_NODE_HOLDS_OBJECT(node) ?
                        json_node_get_object(node) : NULL;
        ForkedChild c = { .ready_ms = -1 };

        if (!tool_json_get_int(o, "pid", &c.pid) ||
            !tool_json_get_int(o, "clone-id", &c.clone_id) ||
            !tool_json_get_string(o, "monitor", &c.monitor)) {
            return FALSE;
        }
        g_array_append_val(children, c);
    }
    return TRUE;
}

static ForkedChild *fork_find(GArray *children, gint64 pid)
{
    for (guint i = 0; i < children->len; i++) {
        ForkedChild *c = &g_array_index(children, ForkedChild, i);

        if (c->pid == pid) {
            return c;
        }
    }
    return NULL;
}

/*
 * Takes events until every child is ready or has exited.  An event is timed
 * when libqmp hands it over: one that arrived together with the reply
 * counts from the reply.
 */
static int fork_wait_ready(const Tool *tool, QmpClient *client,
                           GArray *children, gint64 sent_us)
{
    gint64 deadline = tool_deadline(tool);
    guint pending = children->len;
    int rc = TOOL_EXIT_OK;

    while (pending) {
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) ev = qmp_next_event(client,
                                                tool_remaining_ms(deadline),
                                                &err);
        gint64 now = g_get_monotonic_time();
        const char *name;
        ForkedChild *c;
        gint64 pid;

        if (!ev) {
            if (g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
                tool_message(tool, "timed out after %d ms waiting for %u "
                             "child(ren) to be ready", tool->timeout_ms,
                             pending);
                return TOOL_EXIT_IO;
            }
            return tool_report_error(tool, err, "waiting for " EVENT_READY);
        }
        name = qmp_event_name(ev);
        if (!tool_json_get_int(qmp_event_data(ev), "pid", &pid)) {
            continue;
        }
        c = fork_find(children, pid);
        if (!c || c->ready_ms >= 0 || c->exited) {
            continue;
        }
        if (g_str_equal(name, EVENT_READY)) {
            c->ready_ms = tool_elapsed_ms(sent_us, now);
            pending--;
        } else if (g_str_equal(name, EVENT_EXITED)) {
            c->exited = TRUE;
            c->exit_status = -1;
            tool_json_get_int(qmp_event_data(ev), "status", &c->exit_status);
            tool_message(tool, "child %" G_GINT64_FORMAT " exited with "
                         "status %" G_GINT64_FORMAT " before it was ready",
                         c->pid, c->exit_status);
            rc = TOOL_EXIT_QMP;
            pending--;
        }
    }
    return rc;
}

static void fork_print_human(GArray *children, double command_ms)
{
    for (guint i = 0; i < children->len; i++) {
        ForkedChild *c = &g_array_index(children, ForkedChild, i);

        printf("pid %" G_GINT64_FORMAT " clone-id %" G_GINT64_FORMAT
               " monitor %s", c->pid, c->clone_id, c->monitor);
        if (c->ready_ms >= 0) {
            printf(" ready %.3f ms", c->ready_ms);
        } else if (c->exited) {
            printf(" exited with status %" G_GINT64_FORMAT, c->exit_status);
        }
        putchar('\n');
    }
    printf("forked %u %s in %.3f ms\n", children->len,
           children->len == 1 ? "child" : "children", command_ms);
    fflush(stdout);
}

static void fork_print_json(GArray *children, double command_ms)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) root = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "children");
    json_builder_begin_array(b);
    for (guint i = 0; i < children->len; i++) {
        ForkedChild *c = &g_array_index(children, ForkedChild, i);

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "pid");
        json_builder_add_int_value(b, c->pid);
        json_builder_set_member_name(b, "clone-id");
        json_builder_add_int_value(b, c->clone_id);
        json_builder_set_member_name(b, "monitor");
        json_builder_add_string_value(b, c->monitor);
        json_builder_set_member_name(b, "ready_ms");
        if (c->ready_ms >= 0) {
            json_builder_add_double_value(b, c->ready_ms);
        } else {
            json_builder_add_null_value(b);
        }
        if (c->exited) {
            json_builder_set_member_name(b, "exit-status");
            json_builder_add_int_value(b, c->exit_status);
        }
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_set_member_name(b, "command_ms");
    json_builder_add_double_value(b, command_ms);
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    tool_print_json(root, tool_stdout_is_tty());
}

static int cmd_fork(Tool *tool, int argc, char **argv)
{
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(JsonObject) args = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) children = g_array_new(FALSE, TRUE,
                                             sizeof(ForkedChild));
    gint64 sent_us, reply_us;
    double command_ms;
    int rc;

    command_init(tool, "vmfork fork", "SOCKET",
              "Fork the VM at SOCKET into one or more children.",
              FORK_DESCRIPTION, fork_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    if (fork_count < 1) {
        return tool_usage_error(tool, "--count must be at least 1");
    }
    if (fork_hostfwd_offset < -1) {
        return tool_usage_error(tool, "--hostfwd-offset must not be "
                                "negative");
    }
    for (char **c = fork_chardevs; c && *c; c++) {
        if (!chardev_spec_valid(*c)) {
            return tool_usage_error(tool, "--chardev takes ID=TEMPLATE");
        }
    }
    for (char **c = fork_chardev_logs; c && *c; c++) {
        if (!chardev_spec_valid(*c)) {
            return tool_usage_error(tool, "--chardev-log takes ID=TEMPLATE");
        }
    }

    client = tool_connect(tool, argv[1], &rc);
    if (!client) {
        return rc;
    }
    args = fork_arguments();
    sent_us = g_get_monotonic_time();
    ret = qmp_execute(client, "vmfork", args, tool->timeout_ms, &err);
    reply_us = g_get_monotonic_time();
    if (!ret) {
        return tool_report_error(tool, err, "vmfork");
    }
    command_ms = tool_elapsed_ms(sent_us, reply_us);
    if (!fork_parse_reply(ret, children)) {
        g_autofree char *text = json_to_string(ret, FALSE);

        tool_message(tool, "vmfork: unexpected reply %s", text);
        return TOOL_EXIT_IO;
    }
    if (!fork_no_wait) {
        rc = fork_wait_ready(tool, client, children, sent_us);
    }
    /* Print what is known even after a failure: the children exist. */
    if (opt_json) {
        fork_print_json(children, command_ms);
    } else {
        fork_print_human(children, command_ms);
    }
    return rc;
}

/* ---- vmfork ls --------------------------------------------------------- */

static const GOptionEntry ls_entries[] = {
    { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
      "Print query-vmfork's return value as JSON", NULL },
    { NULL }
};

#define LS_DESCRIPTION \
    "Prints this VM's clone-id, generation and parent pid, then a table " \
    "of the children forked from it (query-vmfork).\n" \
    "\n" TOOL_HELP_EXIT_CODES

static int cmd_ls(Tool *tool, int argc, char **argv)
{
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(JsonNode) info = NULL;
    JsonObject *o;
    JsonArray *children;
    gint64 clone_id = 0, generation = 0, parent_pid = 0;
    int rc;

    command_init(tool, "vmfork ls", "SOCKET",
              "List the children of the VM at SOCKET.", LS_DESCRIPTION,
              ls_entries);
    rc = tool_parse(tool, &argc, &argv, 1, 1);
    if (rc) {
        return rc;
    }
    client = tool_connect(tool, argv[1], &rc);
    if (!client) {
        return rc;
    }
    info = query_vmfork(tool, client, &rc);
    if (!info) {
        return rc;
    }
    if (opt_json) {
        tool_print_json(info, tool_stdout_is_tty());
        return TOOL_EXIT_OK;
    }

    o = json_node_get_object(info);
    tool_json_get_int(o, "clone-id", &clone_id);
    tool_json_get_int(o, "generation", &generation);
    tool_json_get_int(o, "parent-pid", &parent_pid);
    printf("clone-id %" G_GINT64_FORMAT " generation %" G_GINT64_FORMAT
           " parent-pid %" G_GINT64_FORMAT "\n", clone_id, generation,
           parent_pid);
    children = query_children(info);
    printf("%-8s %-8s %-8s %-5s %s\n", "PID", "CLONE-ID", "STATE", "EXIT",
           "MONITOR");
    for (guint i = 0; i < json_array_get_length(children); i++) {
        ChildInfo ci;
        g_autofree char *exit_text = NULL;

        if (!child_info_from_json(json_array_get_element(children, i), &ci)) {
            tool_message(tool, "query-vmfork: unexpected reply (child %u "
                         "lacks pid, clone-id, monitor or state)", i);
            return TOOL_EXIT_IO;
        }
        exit_text = ci.has_exit_status ?
                    g_strdup_printf("%" G_GINT64_FORMAT, ci.exit_status) :
                    g_strdup("-");
        printf("%-8" G_GINT64_FORMAT " %-8" G_GINT64_FORMAT " %-8s %-5s %s\n",
               ci.pid, ci.clone_id, ci.state, exit_text, ci.monitor);
    }
    fflush(stdout);
    return TOOL_EXIT_OK;
}

/* ---- vmfork wait ------------------------------------------------------- */

#define WAIT_DESCRIPTION \
    "Waits for the child PID of the VM at SOCKET to exit (its " \
    EVENT_EXITED " event, or query-vmfork when it has exited already) and " \
    "prints \"pid PID exited with status S\"; S is the exit code, or 128 " \
    "plus the number of the signal that ended it.  Exit status 3 when " \
    "--timeout passes first.\n" \
    "\n" TOOL_HELP_EXIT_CODES

static int cmd_wait(Tool *tool, int argc, char **argv)
{
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(JsonNode) info = NULL;
    ChildInfo ci;
    int pid, rc;

    command_init(tool, "vmfork wait", "SOCKET PID",
              "Wait for a child of the VM at SOCKET to exit.",
              WAIT_DESCRIPTION, NULL);
    rc = tool_parse(tool, &argc, &argv, 2, 2);
    if (rc) {
        return rc;
    }
    if (!tool_parse_pid(argv[2], &pid)) {
        return tool_usage_error(tool, "'%s' is not a pid", argv[2]);
    }
    /* Connected before asking, so that no EXITED event can be missed. */
    client = tool_connect(tool, argv[1], &rc);
    if (!client) {
        return rc;
    }
    info = query_vmfork(tool, client, &rc);
    if (!info || !find_child(tool, info, pid, argv[1], &ci, &rc)) {
        return rc;
    }
    if (g_str_equal(ci.state, "exited")) {
        print_exited(pid, ci.has_exit_status ? ci.exit_status : -1);
        return TOOL_EXIT_OK;
    }
    return wait_child_exited(tool, client, pid, tool_deadline(tool));
}

/* ---- vmfork kill ------------------------------------------------------- */

static char *kill_signal;
static gboolean kill_no_wait;

static const GOptionEntry kill_entries[] = {
    { "signal", 's', 0, G_OPTION_ARG_STRING, &kill_signal,
      "Send signal SIG (a name such as KILL, SIGTERM, or a number) with "
      "kill(2) instead of 'quit' on the child's monitor", "SIG" },
    { "no-wait", 0, 0, G_OPTION_ARG_NONE, &kill_no_wait,
      "Do not wait for the child's " EVENT_EXITED " event", NULL },
    { NULL }
};

#define KILL_DESCRIPTION \
    "Stops the child PID of the VM at SOCKET: sends 'quit' on the child's " \
    "own QMP monitor (its \"monitor\" in query-vmfork), or with --signal " \
    "sends a signal after checking that PID is a running child of that " \
    "VM.  Then waits for the child's " EVENT_EXITED " event on SOCKET and " \
    "prints \"pid PID exited with status S\".\n" \
    "\n" TOOL_HELP_EXIT_CODES

static const struct {
    const char *name;
    int number;
} signal_names[] = {
    { "HUP", SIGHUP }, { "INT", SIGINT }, { "QUIT", SIGQUIT },
    { "ILL", SIGILL }, { "TRAP", SIGTRAP }, { "ABRT", SIGABRT },
    { "BUS", SIGBUS }, { "FPE", SIGFPE }, { "KILL", SIGKILL },
    { "USR1", SIGUSR1 }, { "SEGV", SIGSEGV }, { "USR2", SIGUSR2 },
    { "PIPE", SIGPIPE }, { "ALRM", SIGALRM }, { "TERM", SIGTERM },
    { "CONT", SIGCONT }, { "STOP", SIGSTOP }, { "TSTP", SIGTSTP },
};

/* "KILL", "SIGKILL", "kill" or "9"; -1 when it is not a signal. */
static int parse_signal(const char *text)
{
    guint64 number;

    if (g_ascii_string_to_unsigned(text, 10, 1, SIGRTMAX, &number, NULL)) {
        return (int)number;
    }
    if (g_ascii_strncasecmp(text, "SIG", 3) == 0) {
        text += 3;
    }
    for (gsize i = 0; i < G_N_ELEMENTS(signal_names); i++) {
        if (g_ascii_strcasecmp(text, signal_names[i].name) == 0) {
            return signal_names[i].number;
        }
    }
    return -1;
}

/* Sends "quit" on the child's own monitor. */
static int kill_by_quit(const Tool *tool, const ChildInfo *ci,
                        gint64 deadline)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(QmpClient) child = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autofree char *context = NULL;

    child = qmp_connect_unix(ci->monitor, tool_remaining_ms(deadline), &err);
    if (!child) {
        context = g_strdup_printf("cannot connect to the monitor of pid %"
                                  G_GINT64_FORMAT " (%s)", ci->pid,
                                  ci->monitor);
        return tool_report_error(tool, err, context);
    }
    ret = qmp_execute(child, "quit", NULL, tool_remaining_ms(deadline), &err);
    /* QEMU may close the connection before its reply gets out. */
    if (!ret && !g_error_matches(err, QMP_ERROR, QMP_ERROR_CLOSED)) {
        context = g_strdup_printf("quit on the monitor of pid %"
                                  G_GINT64_FORMAT, ci->pid);
        return tool_report_error(tool, err, context);
    }
    return TOOL_EXIT_OK;
}

static int cmd_kill(Tool *tool, int argc, char **argv)
{
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(JsonNode) info = NULL;
    gint64 deadline;
    ChildInfo ci;
    int pid, sig = 0, rc;

    command_init(tool, "vmfork kill", "SOCKET PID",
              "Stop a child of the VM at SOCKET.", KILL_DESCRIPTION,
              kill_entries);
    rc = tool_parse(tool, &argc, &argv, 2, 2);
    if (rc) {
        return rc;
    }
    if (!tool_parse_pid(argv[2], &pid)) {
        return tool_usage_error(tool, "'%s' is not a pid", argv[2]);
    }
    if (kill_signal) {
        sig = parse_signal(kill_signal);
        if (sig < 0) {
            return tool_usage_error(tool, "'%s' is not a signal",
                                    kill_signal);
        }
    }
    /* Connected first, so that the EXITED event cannot be missed. */
    client = tool_connect(tool, argv[1], &rc);
    if (!client) {
        return rc;
    }
    deadline = tool_deadline(tool);
    info = query_vmfork(tool, client, &rc);
    if (!info || !find_child(tool, info, pid, argv[1], &ci, &rc)) {
        return rc;
    }
    if (g_str_equal(ci.state, "exited")) {
        /* Nothing left to stop; never signal a pid that may be reused. */
        print_exited(pid, ci.has_exit_status ? ci.exit_status : -1);
        return TOOL_EXIT_OK;
    }
    if (kill_signal) {
        /* ESRCH: it exited since query-vmfork; its event is on its way. */
        if (kill(pid, sig) < 0 && errno != ESRCH) {
            tool_message(tool, "kill(%d, %d): %s", pid, sig,
                         g_strerror(errno));
            return TOOL_EXIT_IO;
        }
    } else {
        rc = kill_by_quit(tool, &ci, deadline);
        if (rc) {
            return rc;
        }
    }
    if (kill_no_wait) {
        return TOOL_EXIT_OK;
    }
    return wait_child_exited(tool, client, pid, deadline);
}

/* ---- main -------------------------------------------------------------- */

static const struct {
    const char *name;
    int (*run)(Tool *tool, int argc, char **argv);
} commands[] = {
    { "fork", cmd_fork },
    { "ls", cmd_ls },
    { "wait", cmd_wait },
    { "kill", cmd_kill },
    { "pool", cmd_pool },
    { "take", cmd_take },
    { "release", cmd_release },
    { "pool-status", cmd_pool_status },
    { "serve", cmd_serve },
    { "migrate", cmd_migrate },
};

#define MAIN_DESCRIPTION \
    "Commands:\n" \
    "  fork SOCKET [--count N] [--monitor TEMPLATE] [--serial TEMPLATE]\n" \
    "              [--no-start] [--paused-parent] [--overlay-dir DIR] " \
    "[--json]\n" \
    "              [--chardev ID=TEMPLATE]...\n" \
    "              [--chardev-log ID=TEMPLATE]...\n" \
    "                     fork the VM into children\n" \
    "  ls SOCKET [--json] list the children and this VM's identity\n" \
    "  wait SOCKET PID    wait for a child to exit\n" \
    "  kill SOCKET PID [--signal SIG]\n" \
    "                     stop a child\n" \
    "  pool SOCKET [--listen POOL] [--size N]\n" \
    "                     keep N pre-forked children ready to hand out\n" \
    "  take POOL [--no-start] [--json]\n" \
    "                     take a child from a pool\n" \
    "  release POOL PID   end a child taken from a pool\n" \
    "  pool-status POOL [--json]\n" \
    "                     a pool's counts, latencies and children\n" \
    "  serve --listen [ADDR:]PORT --pool POOL --guest-port P\n" \
    "                     a fresh clone from POOL for each TCP connection\n" \
    "  migrate CHILD_SOCKET --to URI [--postcopy]\n" \
    "                     move a clone to another host\n" \
    "\n" \
    "SOCKET is the QMP unix socket of the VM that forks; POOL the unix " \
    "socket of a 'vmfork pool'.  " \
    "'vmfork COMMAND --help' describes each command.\n" \
    "\n" TOOL_HELP_EXIT_CODES

int main(int argc, char **argv)
{
    Tool top, sub = { 0 };
    int rc;

    setlocale(LC_ALL, "");
    tool_init(&top, "vmfork", "COMMAND [ARGUMENT...]",
              "Fork a running VM and manage its children over QMP.",
              MAIN_DESCRIPTION, NULL);
    /* Stop at the command: its options are parsed by its own context. */
    g_option_context_set_strict_posix(top.ctx, TRUE);
    rc = tool_parse(&top, &argc, &argv, 1, G_MAXINT);
    if (rc) {
        goto out;
    }
    top_timeout_ms = top.timeout_ms;
    rc = -1;
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (g_str_equal(argv[1], commands[i].name)) {
            /* argv[1] (the command) becomes the sub-parser's argv[0]. */
            rc = commands[i].run(&sub, argc - 1, argv + 1);
            break;
        }
    }
    if (rc < 0) {
        rc = tool_usage_error(&top, "unknown command '%s'", argv[1]);
    }
out:
    tool_clear(&sub);
    tool_clear(&top);
    return rc;
}
