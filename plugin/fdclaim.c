/*
 * vmfork: the fd safety net
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * After every handler's check, each fd of the process must be claimed by
 * a handler (which forks what it owns, see handler.h) or be of a kind
 * that is harmless to share with a child:
 *
 * - the standard input, output and error QEMU was started with (the
 *   child's input becomes /dev/null; output is shared as any daemon's);
 * - files and devices open read-only;
 * - /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom;
 * - eventfds, epoll instances and signalfds, which fd.c replaces in the
 *   child;
 * - pidfds, which only tell when a process exits;
 * - a regular file's or a pipe's fd in a monitor fd set (add-fd) when a
 *   handler claimed an fd of the same file or pipe: the one that
 *   qemu_open() of /dev/fdset/N duplicated for it (libvirt passes chardev
 *   files and logs so, and a log's pipe to virtlogd, which the chardev
 *   handler replaces in a child with a file of its own); the child keeps
 *   the set's copy of a file, unused, as the set does, and that of a pipe
 *   on /dev/null (chardev.c);
 * - pidfiles of this process (or of the QEMU it was forked from): QEMU's
 *   -pidfile and the one libvirt hands down, open for their lock, which
 *   fork() does not pass on (fd.c gives the child /dev/null instead);
 *   one this QEMU may no longer read (it wrote it as root, then
 *   -run-with user= dropped its privileges) is known by its lock.
 * - the report files of ASan and UBSan (log_path in ASAN_OPTIONS and
 *   UBSAN_OPTIONS), which each process reopens under its own pid.
 *
 * Anything else (a file open for writing, a socket, a device node, a
 * pipe, an io_uring, a timerfd) that no handler claims refuses the fork,
 * naming the fd, its path and what vmfork knows of its owner: a backend
 * that holds an fd and has no fork rule cannot be forked by accident.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-misc.h"
#include "vmfork-internal.h"

static bool is_harmless_device(const char *target)
{
    static const char *const devices[] = {
        "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
        "/dev/urandom", NULL
    };

    return g_strv_contains(devices, target);
}

static bool is_harmless_anon(const char *target)
{
    return g_str_equal(target, "anon_inode:[eventfd]") ||
           g_str_equal(target, "anon_inode:[eventpoll]") ||
           g_str_equal(target, "anon_inode:[signalfd]") ||
           g_str_equal(target, "anon_inode:[pidfd]");
}

/*
 * Whether this process holds a POSIX write lock on all of @fd's file, as
 * QEMU holds one on its pidfile (qemu_write_pidfile(): lockf()); block
 * image locks are OFD locks on a few bytes
 */
static bool ours_locked_whole(int fd)
{
    g_autofree char *path = g_strdup_printf("/proc/self/fdinfo/%d", fd);
    g_auto(GStrv) lines = vmfork_read_lines(path);

    for (char **l = lines; l && *l; l++) {
        /* "lock:\t1: POSIX  ADVISORY  WRITE 1006 fe:00:10993819 0 EOF" */
        int pid, end = 0;

        if (sscanf(*l, "lock: %*d: POSIX %*s WRITE %d %*s 0 EOF%n", &pid,
                   &end) == 1 && end && !(*l)[end] && pid == getpid()) {
            return true;
        }
    }
    return false;
}

/*
 * The pidfiles known by their lock (fd, device, inode), as the parent saw
 * them: a child holds no lock (fcntl() locks are the process's)
 */
typedef struct LockedPidfile {
    int fd;
    dev_t dev;
    ino_t ino;
} LockedPidfile;

static GArray *locked_pidfiles;

static bool is_locked_pidfile(int fd, const struct stat *st)
{
    LockedPidfile seen = { .fd = fd, .dev = st->st_dev, .ino = st->st_ino };

    for (guint i = 0; locked_pidfiles && i < locked_pidfiles->len; i++) {
        LockedPidfile *l = &g_array_index(locked_pidfiles, LockedPidfile, i);

        if (l->fd == fd && l->dev == seen.dev && l->ino == seen.ino) {
            return true;
        }
    }
    if (!ours_locked_whole(fd)) {
        return false;
    }
    if (!locked_pidfiles) {
        locked_pidfiles = g_array_new(false, false, sizeof(LockedPidfile));
    }
    g_array_append_val(locked_pidfiles, seen);
    return true;
}

/* A small regular file that holds this process's pid (or an ancestor's) */
bool vmfork_fd_is_own_pidfile(int fd)
{
    char path[32], buf[32];
    struct stat st;
    ssize_t n;
    int rfd;
    gint64 pid;
    char *end;

    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        st.st_size >= sizeof(buf)) {
        return false;
    }
    /* Read it anew: QEMU's own is open write-only */
    g_snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    rfd = open(path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) {
        /*
         * Written before -run-with user= dropped QEMU's privileges, it is
         * root's, mode 0600: known by QEMU's lock on it
         */
        return errno == EACCES && is_locked_pidfile(fd, &st);
    }
    n = pread(rfd, buf, sizeof(buf) - 1, 0);
    close(rfd);
    if (n <= 0) {
        return false;
    }
    buf[n] = 0;
    pid = g_ascii_strtoll(buf, &end, 10);
    return end != buf && (*end == 0 || g_str_equal(end, "\n")) &&
           vmfork_pid_is_ours(pid);
}

/* A sanitizer's report file: log_path=PREFIX, the file PREFIX.PID */
static bool is_sanitizer_report(const char *target)
{
    static const char *const vars[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS" };

    for (size_t i = 0; i < G_N_ELEMENTS(vars); i++) {
        const char *opts = g_getenv(vars[i]);
        const char *p = opts ? strstr(opts, "log_path=") : NULL;
        g_autofree char *prefix = NULL;

        if (!p) {
            continue;
        }
        p += strlen("log_path=");
        prefix = g_strndup(p, strcspn(p, ":"));
        if (*prefix && g_str_has_prefix(target, prefix) &&
            target[strlen(prefix)] == '.') {
            return true;
        }
    }
    return false;
}

/* What the monitor's fd sets say of @fd, or NULL */
static char *fdset_owner(FdsetInfoList *sets, int fd)
{
    for (FdsetInfoList *l = sets; l; l = l->next) {
        for (FdsetFdInfoList *f = l->value->fds; f; f = f->next) {
            if (f->value->fd == fd) {
                return g_strdup_printf("in fd set %" PRId64 " of add-fd",
                                       l->value->fdset_id);
            }
        }
    }
    return NULL;
}

/* Is @fd a regular file or a pipe that a handler claimed an fd of? */
static bool is_claimed_file(VmforkCheck *chk, int fd)
{
    GHashTableIter iter;
    gpointer key;
    struct stat st, claimed;

    if (fstat(fd, &st) < 0 ||
        !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode))) {
        return false;
    }
    g_hash_table_iter_init(&iter, chk->fd_owner);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
        if (fstat(GPOINTER_TO_INT(key), &claimed) == 0 &&
            claimed.st_dev == st.st_dev && claimed.st_ino == st.st_ino) {
            return true;
        }
    }
    return false;
}

void vmfork_fd_safety_net(VmforkCheck *chk)
{
    FdsetInfoList *sets = NULL;
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, chk->fd_target);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        const char *target = value;
        g_autofree char *owner = NULL;
        int fd = GPOINTER_TO_INT(key);
        int fl;

        if (fd <= STDERR_FILENO ||
            g_hash_table_contains(chk->fd_owner, key) ||
            is_harmless_anon(target) || is_harmless_device(target)) {
            continue;
        }
        fl = fcntl(fd, F_GETFL);
        if (target[0] == '/' && fl >= 0 && (fl & O_ACCMODE) == O_RDONLY) {
            continue;           /* read-only: shared as it is */
        }
        if (target[0] == '/' &&
            (vmfork_fd_is_own_pidfile(fd) || is_sanitizer_report(target))) {
            continue;
        }
        if (!sets) {
            sets = qmp_query_fdsets(NULL);
        }
        owner = fdset_owner(sets, fd);
        if (owner && is_claimed_file(chk, fd)) {
            continue;
        }
        vmfork_check_refuse(chk, "fd %d (%s%s)%s%s has no fork rule: no "
                            "part of the VM claims it", fd, target,
                            target[0] == '/' ? ", open for writing" : "",
                            owner ? ", " : "", owner ? owner : "");
    }
    qapi_free_FdsetInfoList(sets);
}

