/*
 * libqmp: helpers shared between the library's layers (not installed)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QMP_PRIVATE_H
#define QMP_PRIVATE_H

#include <qmp/error.h>

/*
 * Sets *errp (if errp is non-NULL) to a QMP_ERROR_COMMAND error for a QMP
 * error reply with the given class and description.  The message is
 * "<class>: <desc>".
 */
void qmp_error_set_command(GError **errp, const char *klass, const char *desc);

#endif /* QMP_PRIVATE_H */
