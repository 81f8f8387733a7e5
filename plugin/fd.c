/*
 * vmfork: make the file descriptors a forked child inherited private
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * After fork() every fd of the child refers to the same open file
 * description as the parent's fd with that number.  For the kernel objects
 * that QEMU and GLib use to signal and wait, that is cross-talk: the child
 * reading an eventfd steals the parent's wakeup, an epoll_ctl() in the
 * child changes the parent's interest list, the child accept()s the
 * parent's monitor clients or reads their commands.
 *
 * The rule, by kind of object, applied by fd number before the child's
 * main loop polls again (owners keep using the same fd numbers):
 *
 * - eventfd: replaced by a new eventfd with the same counter and flags,
 *   read from /proc/self/fdinfo without consuming the parent's count;
 * - epoll: replaced by a new epoll instance with the same interest list
 *   (fdinfo lists each target fd, its events and data), which then refers
 *   to the child's objects at those fd numbers;
 * - socket: detached, replaced by one end of a new socketpair whose other
 *   end the child keeps and never writes.  The old owner sees an idle
 *   connection: nothing to read, no hang-up, and a listener that never
 *   has a client.  Its eventual cleanup neither shuts down the parent's
 *   connection nor unlinks the parent's socket path (the replacement has
 *   no address).  Subsystems that need a live socket in the child create
 *   a new one (the child's monitor, its chardevs).
 *
 * - signalfd: replaced by a new signalfd with the same mask.  A read or
 *   poll of a shared one already concerns the caller's own signals, but
 *   the mask would still be one object for two processes;
 * - a pidfile of this process or an ancestor (QEMU's -pidfile, libvirt's):
 *   replaced by /dev/null.  Its lock stays with the parent (fcntl() locks
 *   do not pass to a child) and the child must never write it.  So is the
 *   copy in a monitor fd set of a chardev log's pipe, when the chardev
 *   handler asks (vmfork_fd_release_fdset_copies()).
 *
 * Everything else is left as it is: regular files (shared offsets are
 * handled by their owners), pipes, /dev/kvm (the accelerator rebuilds the
 * VM).
 */

#include "qemu/osdep.h"
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include "qapi/error.h"
#include "qapi/qapi-commands-misc.h"
#include "vmfork-internal.h"
#include "trace.h"

/* The kept ends of the socketpairs that replaced inherited sockets */
static GArray *detached_socket_peers;

/* /proc/self/fdinfo while vmfork_fd_make_private() runs (see there) */
static int fdinfo_dir = -1;

/* Read /proc/self/fdinfo/FD into a string */
static char *fdinfo_read(int fd, Error **errp)
{
    g_autofree char *name = g_strdup_printf("%d", fd);
    g_autoptr(GString) contents = g_string_new(NULL);
    char buf[4096];
    ssize_t n;
    int info = openat(fdinfo_dir, name, O_RDONLY | O_CLOEXEC);

    if (info < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot read "
                         "/proc/self/fdinfo/%d", fd);
        return NULL;
    }
    while ((n = read(info, buf, sizeof(buf))) > 0 ||
           (n < 0 && errno == EINTR)) {
        g_string_append_len(contents, buf, MAX(n, 0));
    }
    close(info);
    if (n < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot read "
                         "/proc/self/fdinfo/%d", fd);
        return NULL;
    }
    return g_string_free(g_steal_pointer(&contents), false);
}

/* The "flags:" field of fdinfo (octal open flags, O_CLOEXEC included) */
static bool fdinfo_flags(const char *info, int *flags)
{
    const char *p = strstr(info, "flags:");

    return p && sscanf(p, "flags: %o", (unsigned int *)flags) == 1;
}

/* Put NEWFD at number FD (closing NEWFD), with FD's close-on-exec flag */
static bool fd_replace(int fd, int newfd, int flags, Error **errp)
{
    if (dup3(newfd, fd, flags & O_CLOEXEC) < 0) {
        error_setg_errno(errp, errno, "vmfork: dup3() over fd %d failed", fd);
        close(newfd);
        return false;
    }
    close(newfd);
    return true;
}

static bool replace_eventfd(int fd, Error **errp)
{
    g_autofree char *info = fdinfo_read(fd, errp);
    const char *p;
    uint64_t count;
    int flags, efd_flags = 0, newfd;

    if (!info) {
        return false;
    }
    p = strstr(info, "eventfd-count:");
    if (!fdinfo_flags(info, &flags) || !p ||
        sscanf(p, "eventfd-count: %" SCNx64, &count) != 1) {
        error_setg(errp, "vmfork: cannot parse fdinfo of eventfd %d", fd);
        return false;
    }
    p = strstr(info, "eventfd-semaphore:");
    if (p && strncmp(p, "eventfd-semaphore: 1", 20) == 0) {
        efd_flags |= EFD_SEMAPHORE;
    }
    if (flags & O_NONBLOCK) {
        efd_flags |= EFD_NONBLOCK;
    }
    /* eventfd() takes an unsigned int; larger counts are only seen in tests */
    newfd = eventfd(MIN(count, UINT_MAX), efd_flags | EFD_CLOEXEC);
    if (newfd < 0) {
        error_setg_errno(errp, errno, "vmfork: eventfd() failed");
        return false;
    }
    if (count > UINT_MAX) {
        uint64_t rest = count - UINT_MAX;

        if (write(newfd, &rest, sizeof(rest)) != sizeof(rest)) {
            error_setg_errno(errp, errno, "vmfork: eventfd write failed");
            close(newfd);
            return false;
        }
    }
    trace_vmfork_fd_eventfd(fd, count);
    return fd_replace(fd, newfd, flags, errp);
}

static bool replace_epoll(int fd, Error **errp)
{
    g_autofree char *info = fdinfo_read(fd, errp);
    const char *p;
    int flags, newfd, n = 0;

    if (!info) {
        return false;
    }
    if (!fdinfo_flags(info, &flags)) {
        error_setg(errp, "vmfork: cannot parse fdinfo of epoll fd %d", fd);
        return false;
    }
    newfd = epoll_create1(EPOLL_CLOEXEC);
    if (newfd < 0) {
        error_setg_errno(errp, errno, "vmfork: epoll_create1() failed");
        return false;
    }
    for (p = strstr(info, "tfd:"); p; p = strstr(p + 1, "tfd:")) {
        struct epoll_event ev = { 0 };
        unsigned int events;
        uint64_t data;
        int tfd;

        if (sscanf(p, "tfd: %d events: %x data: %" SCNx64,
                   &tfd, &events, &data) != 3) {
            error_setg(errp, "vmfork: cannot parse fdinfo of epoll fd %d", fd);
            close(newfd);
            return false;
        }
        ev.events = events;
        ev.data.u64 = data;
        if (epoll_ctl(newfd, EPOLL_CTL_ADD, tfd, &ev) < 0) {
            error_setg_errno(errp, errno,
                             "vmfork: cannot re-add fd %d to epoll fd %d",
                             tfd, fd);
            close(newfd);
            return false;
        }
        n++;
    }
    trace_vmfork_fd_epoll(fd, n);
    return fd_replace(fd, newfd, flags, errp);
}

static bool replace_signalfd(int fd, Error **errp)
{
    g_autofree char *info = fdinfo_read(fd, errp);
    const char *p;
    uint64_t bits;
    sigset_t mask;
    int flags, newfd;

    if (!info) {
        return false;
    }
    /* "sigmask:" is the mask in hex, signal N at bit N - 1 */
    p = strstr(info, "sigmask:");
    if (!fdinfo_flags(info, &flags) || !p ||
        sscanf(p, "sigmask: %" SCNx64, &bits) != 1) {
        error_setg(errp, "vmfork: cannot parse fdinfo of signalfd %d", fd);
        return false;
    }
    sigemptyset(&mask);
    for (int sig = 1; sig <= 64; sig++) {
        if (bits & (1ULL << (sig - 1))) {
            sigaddset(&mask, sig);
        }
    }
    newfd = signalfd(-1, &mask, SFD_CLOEXEC |
                     ((flags & O_NONBLOCK) ? SFD_NONBLOCK : 0));
    if (newfd < 0) {
        error_setg_errno(errp, errno, "vmfork: signalfd() failed");
        return false;
    }
    trace_vmfork_fd_signalfd(fd, bits);
    return fd_replace(fd, newfd, flags, errp);
}

/* An fd whose file the child must not hold: it keeps the number */
static bool replace_with_null(int fd, const char *what, Error **errp)
{
    int flags = fcntl(fd, F_GETFD);
    int newfd = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (newfd < 0 || flags < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot replace %s fd %d",
                         what, fd);
        if (newfd >= 0) {
            close(newfd);
        }
        return false;
    }
    return fd_replace(fd, newfd, (flags & FD_CLOEXEC) ? O_CLOEXEC : 0, errp);
}

/* The parent's pidfile: the child keeps the number, not the file */
static bool replace_pidfile(int fd, Error **errp)
{
    trace_vmfork_fd_pidfile(fd);
    return replace_with_null(fd, "pidfile", errp);
}

bool vmfork_fd_release_fdset_copies(dev_t dev, ino_t ino, Error **errp)
{
    FdsetInfoList *sets = qmp_query_fdsets(NULL);
    bool ok = true;

    for (FdsetInfoList *l = sets; ok && l; l = l->next) {
        for (FdsetFdInfoList *f = l->value->fds; ok && f; f = f->next) {
            struct stat st;
            int fd = f->value->fd;

            if (fstat(fd, &st) == 0 && st.st_dev == dev &&
                st.st_ino == ino) {
                trace_vmfork_fd_fdset_copy(fd, l->value->fdset_id);
                ok = replace_with_null(fd, "fd set", errp);
            }
        }
    }
    qapi_free_FdsetInfoList(sets);
    return ok;
}

static bool detach_socket(int fd, Error **errp)
{
    int sv[2];
    int fl = fcntl(fd, F_GETFL);
    int fdfl = fcntl(fd, F_GETFD);

    if (fl < 0 || fdfl < 0) {
        error_setg_errno(errp, errno, "vmfork: fcntl() on socket %d", fd);
        return false;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        error_setg_errno(errp, errno, "vmfork: socketpair() failed");
        return false;
    }
    if (fl & O_NONBLOCK) {
        fcntl(sv[0], F_SETFL, O_NONBLOCK);
    }
    if (!detached_socket_peers) {
        detached_socket_peers = g_array_new(false, false, sizeof(int));
    }
    g_array_append_val(detached_socket_peers, sv[1]);
    trace_vmfork_fd_socket(fd);
    return fd_replace(fd, sv[0], (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0, errp);
}

/*
 * Call @fn with each open fd and the target of its /proc/self/fd link.
 *
 * It allocates nothing: a new child lists its fds first, and each malloc()
 * there would take a free chunk of the heap that it shares with its parent,
 * a page copied for a few bytes.  The buffer of opendir() alone is 32 KiB,
 * and its request first consolidates the fast bins all over the heap.
 */
static bool fd_foreach(void (*fn)(int fd, const char *target, void *opaque),
                       void *opaque, Error **errp)
{
    /*
     * readlinkat() in the listed directory: a path from the root would
     * resolve /proc/self again for each fd, which in a new child is a
     * third of the time it spends on its fds
     */
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char entries[4096] QEMU_ALIGNED(8);
    char target[PATH_MAX];
    ssize_t n;

    if (dfd < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot list /proc/self/fd");
        return false;
    }
    while ((n = getdents64(dfd, entries, sizeof(entries))) > 0) {
        for (ssize_t off = 0; off < n; ) {
            struct dirent64 *de = (struct dirent64 *)(entries + off);
            ssize_t len;
            int fd;

            off += de->d_reclen;
            if (de->d_name[0] == '.' || (fd = atoi(de->d_name)) == dfd) {
                continue;   /* the listing's own fd */
            }
            len = readlinkat(dfd, de->d_name, target, sizeof(target) - 1);
            if (len < 0) {
                continue;   /* closed meanwhile */
            }
            target[len] = 0;
            fn(fd, target, opaque);
        }
    }
    if (n < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot list /proc/self/fd");
    }
    close(dfd);
    return n == 0;
}

static void fd_target_insert(int fd, const char *target, void *opaque)
{
    g_hash_table_insert(opaque, GINT_TO_POINTER(fd), g_strdup(target));
}

char *vmfork_fd_path(int fd, GError **err)
{
    g_autofree char *link = g_strdup_printf("/proc/self/fd/%d", fd);

    return g_file_read_link(link, err);
}

GHashTable *vmfork_fd_targets(Error **errp)
{
    GHashTable *targets = g_hash_table_new_full(NULL, NULL, NULL, g_free);

    if (!fd_foreach(fd_target_insert, targets, errp)) {
        g_hash_table_destroy(targets);
        return NULL;
    }
    return targets;
}

/* What an inherited fd is, for the rule that applies to it */
typedef enum {
    FD_EVENTFD,
    FD_SIGNALFD,
    FD_PIDFILE,
    FD_SOCKET,
    FD_EPOLL,
} FdKind;

typedef struct {
    int fd;
    FdKind kind;
} FdToReplace;

static void fd_classify(int fd, const char *target, void *opaque)
{
    FdToReplace f = { .fd = fd };

    if (g_str_equal(target, "anon_inode:[eventfd]")) {
        f.kind = FD_EVENTFD;
    } else if (g_str_equal(target, "anon_inode:[signalfd]")) {
        f.kind = FD_SIGNALFD;
    } else if (target[0] == '/' && vmfork_fd_is_own_pidfile(fd)) {
        f.kind = FD_PIDFILE;
    } else if (g_str_has_prefix(target, "socket:")) {
        f.kind = FD_SOCKET;
    } else if (g_str_equal(target, "anon_inode:[eventpoll]")) {
        f.kind = FD_EPOLL;
    } else {
        return;
    }
    g_array_append_val(opaque, f);
}

static bool fd_replace_one(const FdToReplace *f, Error **errp)
{
    switch (f->kind) {
    case FD_EVENTFD:
        return replace_eventfd(f->fd, errp);
    case FD_SIGNALFD:
        return replace_signalfd(f->fd, errp);
    case FD_PIDFILE:
        return replace_pidfile(f->fd, errp);
    case FD_SOCKET:
        return detach_socket(f->fd, errp);
    case FD_EPOLL:
        return replace_epoll(f->fd, errp);
    }
    g_assert_not_reached();
}

bool vmfork_fd_make_private(Error **errp)
{
    /* One allocation, big enough for QEMU's usual few dozen */
    g_autoptr(GArray) fds = g_array_sized_new(false, false,
                                              sizeof(FdToReplace), 64);
    bool ok = true;

    /*
     * All of them are listed first: the fds made here get numbers that the
     * listing could still show (the kept end of a socketpair), or are
     * dup3()'d over the listed ones.
     */
    if (!fd_foreach(fd_classify, fds, errp)) {
        return false;
    }
    /* Opened after the listing, which it is not in (as readlinkat above) */
    fdinfo_dir = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fdinfo_dir < 0) {
        error_setg_errno(errp, errno, "vmfork: cannot open /proc/self/fdinfo");
        return false;
    }
    /*
     * In the order of FdKind: the eventfds and signalfds first, so that
     * the epoll instances built last watch the new ones.
     */
    for (FdKind kind = FD_EVENTFD; ok && kind <= FD_EPOLL; kind++) {
        for (guint i = 0; ok && i < fds->len; i++) {
            const FdToReplace *f = &g_array_index(fds, FdToReplace, i);

            if (f->kind == kind) {
                ok = fd_replace_one(f, errp);
            }
        }
    }
    close(fdinfo_dir);
    fdinfo_dir = -1;
    return ok;
}

/* The index in @files of the file (device and inode) fd is open on, or -1 */
static int file_index(int fd, const struct stat *files, guint n)
{
    struct stat st;

    if (fstat(fd, &st) < 0) {
        return -1;
    }
    for (guint i = 0; i < n; i++) {
        if (st.st_dev == files[i].st_dev && st.st_ino == files[i].st_ino) {
            return i;
        }
    }
    return -1;
}

/* The fds open on a path: not a socket, a pipe or an anonymous inode */
static void fd_add_if_path(int fd, const char *target, void *opaque)
{
    if (target[0] == '/') {
        g_array_append_val(opaque, fd);
    }
}

bool vmfork_fd_reopen_readonly(GPtrArray *paths, Error **errp)
{
    g_autoptr(GArray) fds = NULL;
    g_autofree struct stat *files = g_new(struct stat, paths->len);

    if (!paths->len) {
        return true;
    }
    for (guint i = 0; i < paths->len; i++) {
        if (stat(paths->pdata[i], &files[i]) < 0) {
            error_setg_errno(errp, errno, "vmfork: cannot stat '%s'",
                             (char *)paths->pdata[i]);
            return false;
        }
    }
    /* Listed first, as in vmfork_fd_make_private() */
    fds = g_array_new(false, false, sizeof(int));
    if (!fd_foreach(fd_add_if_path, fds, errp)) {
        return false;
    }
    for (guint j = 0; j < fds->len; j++) {
        int fd = g_array_index(fds, int, j);
        g_autofree char *self = NULL;
        int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD), newfd, i;
        const char *path;

        if (fl < 0 || fdfl < 0 || (fl & O_ACCMODE) == O_RDONLY ||
            (i = file_index(fd, files, paths->len)) < 0) {
            continue;
        }
        path = paths->pdata[i];
        /* The same file, with the same O_DIRECT/O_NONBLOCK, read-only */
        self = g_strdup_printf("/proc/self/fd/%d", fd);
        newfd = open(self, O_RDONLY | O_CLOEXEC |
                     (fl & (O_DIRECT | O_NONBLOCK | O_LARGEFILE)));
        if (newfd < 0) {
            error_setg_errno(errp, errno, "vmfork: cannot reopen '%s' "
                             "read-only", path);
            return false;
        }
        trace_vmfork_fd_readonly(fd, path);
        if (!fd_replace(fd, newfd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0,
                        errp)) {
            return false;
        }
    }
    return true;
}

/* The safety net: the kept ends of the socketpairs are ours */
void vmfork_fd_claim_detached(VmforkCheck *chk)
{
    for (guint i = 0; detached_socket_peers &&
                      i < detached_socket_peers->len; i++) {
        vmfork_check_claim_fd(chk, g_array_index(detached_socket_peers, int,
                                                 i),
                              "vmfork (a detached socket's peer)");
    }
}
