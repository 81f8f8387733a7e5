/*
 * vmfork (the tool): what its command files share.
 *
 * vmfork.c has fork, ls, wait and kill; pool.c the clone pool (pool, take,
 * release, pool-status); serve.c the per-connection server (serve); migrate.c
 * moving a clone to another host (migrate).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef VMFORK_TOOL_H
#define VMFORK_TOOL_H

#include "tools-common.h"

#define EVENT_READY "VMFORK_CHILD_READY"
#define EVENT_EXITED "VMFORK_CHILD_EXITED"

/* tool_init() for a command; its --timeout defaults to "vmfork --timeout". */
void command_init(Tool *tool, const char *name, const char *params,
                  const char *summary, const char *description,
                  const GOptionEntry *entries);

/* Whether @spec is a --chardev argument, ID=TEMPLATE. */
gboolean chardev_spec_valid(const char *spec);

/*
 * vmfork's "chardevs" argument from --chardev ID=TEMPLATE (path) and
 * --chardev-log ID=TEMPLATE (logfile) arguments, one entry per ID.
 */
JsonArray *chardev_specs_to_json(char **specs, char **log_specs);

int cmd_pool(Tool *tool, int argc, char **argv);
int cmd_take(Tool *tool, int argc, char **argv);
int cmd_release(Tool *tool, int argc, char **argv);
int cmd_pool_status(Tool *tool, int argc, char **argv);
int cmd_serve(Tool *tool, int argc, char **argv);
int cmd_migrate(Tool *tool, int argc, char **argv);

#endif /* VMFORK_TOOL_H */
