/*
 * libqmp: socket and clock helpers shared by the synchronous and
 * asynchronous clients (see qmp-private.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE             /* O_PATH */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "qmp-private.h"

gint64 qmp_deadline_from_timeout(int timeout_ms)
{
    if (timeout_ms < 0) {
        return -1;
    }
    return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

gboolean qmp_set_nonblocking(int fd, GError **errp)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "fcntl: %s",
                    g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

gboolean qmp_unix_address(const char *path, struct sockaddr_un *addr,
                          int *dirfd, GError **errp)
{
    g_autofree char *proxy = NULL;
    const char *target = path;

    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    *dirfd = -1;
    if (strlen(path) >= sizeof(addr->sun_path)) {
        /* Too long for sun_path: go through the directory's fd. */
        g_autofree char *dir = g_path_get_dirname(path);
        g_autofree char *base = g_path_get_basename(path);

        *dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (*dirfd < 0) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_IO,
                        "cannot connect to %s: %s", path, g_strerror(errno));
            return FALSE;
        }
        proxy = g_strdup_printf("/proc/self/fd/%d/%s", *dirfd, base);
        target = proxy;
        if (strlen(target) >= sizeof(addr->sun_path)) {
            g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                        "socket name too long: %s", path);
            close(*dirfd);
            *dirfd = -1;
            return FALSE;
        }
    }
    memcpy(addr->sun_path, target, strlen(target) + 1);
    return TRUE;
}

int qmp_unix_socket(GError **errp)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_IO, "socket: %s",
                    g_strerror(errno));
    }
    return fd;
}

gboolean qmp_check_fd_to_pass(int fd, const char *command, GError **errp)
{
    if (fd < 0) {
        g_set_error(errp, QMP_ERROR, QMP_ERROR_INVALID,
                    "cannot pass fd %d to '%s'", fd, command);
        return FALSE;
    }
    return TRUE;
}

ssize_t qmp_send_with_fd(int sock, const char *data, gsize len, int fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    struct cmsghdr *cmsg;

    memset(&control, 0, sizeof(control));
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}
