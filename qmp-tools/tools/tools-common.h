/*
 * Helpers shared by the command-line tools (qmp-call, vmfork): option
 * parsing with GOptionContext, the exit codes, error reporting, JSON output
 * and deadlines.
 *
 * Exit codes (every tool):
 *   0  success
 *   1  the server answered with a QMP error ("CLASS: DESC" on stderr), or a
 *      VM the command acted on reported a failure
 *   2  usage error (a message and a short usage on stderr)
 *   3  connection, I/O, protocol or timeout error
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_TOOLS_COMMON_H
#define QMP_TOOLS_COMMON_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <qmp/qmp.h>

G_BEGIN_DECLS

enum {
    TOOL_EXIT_OK = 0,
    TOOL_EXIT_QMP = 1,
    TOOL_EXIT_USAGE = 2,
    TOOL_EXIT_IO = 3,
};

#define TOOL_DEFAULT_TIMEOUT_MS 10000

/* Text for the end of every --help: the exit codes. */
#define TOOL_HELP_EXIT_CODES \
    "Exit status: 0 success, 1 QMP error (class and description on " \
    "stderr), 2 usage error, 3 connection, I/O or timeout error."

/*
 * One tool invocation (for vmfork: one subcommand): its name for messages,
 * its GOptionContext and the options every tool has.
 */
typedef struct {
    const char *name;           /* "qmp-call", "vmfork fork": messages, usage */
    const char *params;         /* positional arguments, for the usage line */
    GOptionContext *ctx;
    int timeout_ms;             /* --timeout, TOOL_DEFAULT_TIMEOUT_MS */
    gboolean version;           /* --version */
} Tool;

/*
 * Sets up @tool: a GOptionContext with @params as parameter string,
 * @summary and @description (both nullable) for --help, @entries
 * (nullable, NULL-terminated; they must outlive @tool) and the common
 * --timeout and --version options.  Sets the program name to @name, which
 * GLib prints in "Usage:" and in option errors.
 */
void tool_init(Tool *tool, const char *name, const char *params,
               const char *summary, const char *description,
               const GOptionEntry *entries);

/* Frees what tool_init() allocated. */
void tool_clear(Tool *tool);

/*
 * Parses the options in @argc and @argv (argv[0] is the program), leaving the
 * positional arguments in (*argv)[1..].  --help prints the help on stdout
 * and exits 0 (GLib does it); --version prints the version and exits 0.
 * Checks that there are @min_args to @max_args positional arguments and
 * that --timeout is valid.
 *
 * Returns: TOOL_EXIT_OK, or TOOL_EXIT_USAGE after printing the problem.
 */
int tool_parse(Tool *tool, int *argc, char ***argv, int min_args,
               int max_args);

/* Prints "NAME: MESSAGE" and the short usage on stderr; returns 2. */
int tool_usage_error(const Tool *tool, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

/* Prints "NAME: MESSAGE" on stderr. */
void tool_message(const Tool *tool, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/*
 * Reports @err on stderr and returns the matching exit code: a QMP error
 * reply is printed as "CLASS: DESC" (exit 1); any other error as
 * "NAME: [CONTEXT: ]MESSAGE" (exit 3, or 2 for QMP_ERROR_INVALID).
 * @context (nullable) says what was being done, e.g. "query-vmfork".
 */
int tool_report_error(const Tool *tool, const GError *err,
                      const char *context);

/*
 * Connects to the QMP socket @path within the tool's timeout.
 * Returns: the client, or NULL after reporting the error with *@exit_code
 * set (3, or 1 when negotiation was refused).
 */
QmpClient *tool_connect(const Tool *tool, const char *path, int *exit_code);

/*
 * Prints @node as JSON and a newline on stdout: indented by 2 when @pretty,
 * on one line otherwise.
 */
void tool_print_json(JsonNode *node, gboolean pretty);

/* Whether JSON output is pretty when not forced: stdout is a terminal. */
gboolean tool_stdout_is_tty(void);

/* Parses a process ID (a decimal number > 0); FALSE if it is not one. */
gboolean tool_parse_pid(const char *text, int *pid);

/*
 * Deadlines.  tool_deadline() turns the tool's timeout into an absolute
 * g_get_monotonic_time() value (-1: none); tool_remaining_ms() gives the
 * time left for a libqmp call (-1: forever, 0 when passed).
 */
gint64 tool_deadline(const Tool *tool);
int tool_remaining_ms(gint64 deadline);

/* Milliseconds from @start_us (a g_get_monotonic_time() value) to @end_us. */
double tool_elapsed_ms(gint64 start_us, gint64 end_us);

/*
 * Reads a JSON member that must be an integer: TRUE with *@value set, FALSE
 * when @obj lacks @member or it is not an integer.
 */
gboolean tool_json_get_int(JsonObject *obj, const char *member,
                           gint64 *value);

/* The same for a string (owned by @obj). */
gboolean tool_json_get_string(JsonObject *obj, const char *member,
                              const char **value);

G_END_DECLS

#endif /* QMP_TOOLS_COMMON_H */
