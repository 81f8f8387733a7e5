/*
 * vmfork-bench: timestamped guest output
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One reader thread reads every guest serial stream as soon as bytes
 * arrive and notes, for each line, the host time at which its first byte
 * and its newline were read.  QEMU's serial emulation writes byte by byte,
 * so the first byte of a tick line leaves QEMU right after the guest wrote
 * it.  Two kinds of streams:
 *   - sockets (a serial chardev connected to a listener of ours): epoll;
 *   - files (vmfork's `serial` template, the child's serial0 output): read
 *     every 5 ms (and when inotify says the file was created) until the
 *     first tick line, then at once on every write (an inotify watch on the
 *     file) for `prompt_ns`, then no more.  Only the guest timestamps count
 *     for the first line; the prompt reads are for the clock offset.  This
 *     bounds the reader's work when a hundred children print at once.
 * The thread holds the lock while it reads and parses a batch; the main
 * thread waits on a condition variable.
 */

#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

struct Stream {
    char *name;
    GuestKind guest;
    int fd;
    bool is_file;
    char *path;             /* file streams */
    char *base;             /* basename, matched against inotify names */
    int wd;                 /* watch of the directory */
    int fwd;                /* watch of the file (prompt reading) */
    gint64 prompt_ns;       /* how long to read promptly */
    gint64 prompt_until;
    bool stopped;
    bool eof;
    GString *partial;
    gint64 partial_first_ns;
    GArray *lines;          /* Line */
    GPtrArray *texts;       /* owns Line.text */
};

static GMutex lock;
static GCond cond;
static GThread *reader;
static int epfd = -1, inofd = -1, wake[2] = { -1, -1 };
static GHashTable *live;        /* Stream* set */
static GPtrArray *files;        /* active file streams */
static GHashTable *dir_wds;     /* dir path -> wd */
static GHashTable *file_wds;    /* wd -> Stream* (prompt reading) */
static volatile bool quit;
static char marker_ino, marker_wake;

/* ---- Parsing ------------------------------------------------------------ */

static bool parse_u64(const char *s, int base, guint64 *out, const char **end)
{
    char *e;

    if (!g_ascii_isxdigit(*s)) {
        return false;
    }
    errno = 0;
    *out = g_ascii_strtoull(s, &e, base);
    if (errno || e == s) {
        return false;
    }
    *end = e;
    return true;
}

static void parse_line(Stream *s, char *text, gint64 first, gint64 end)
{
    Line l = { .first_ns = first, .end_ns = end, .kind = LINE_OTHER };
    gsize len = strlen(text);
    guint64 a, b;
    const char *p;

    while (len && (text[len - 1] == '\r' || text[len - 1] == '\n')) {
        text[--len] = 0;
    }
    if (s->guest == GUEST_LINUX && text[0] == 'T' && text[1] == ' ' &&
        g_ascii_isdigit(text[2]) && parse_u64(text + 2, 10, &a, &p) &&
        *p == ' ' && g_ascii_isdigit(p[1]) && parse_u64(p + 1, 10, &b, &p) &&
        !*p) {
        l.kind = LINE_TICK;
        l.seq = a;
        l.guest_ns = b;
    } else if (s->guest == GUEST_TINY && text[0] == 'C' && text[1] == ' ' &&
               g_ascii_isdigit(text[2]) && parse_u64(text + 2, 10, &a, &p) &&
               *p == ' ' && strlen(p + 1) == 16 &&
               parse_u64(p + 1, 16, &b, &p) && !*p) {
        l.kind = LINE_TICK;
        l.seq = a;
        l.tsc = b;
        l.guest_ns = (gint64)((long double)b * 1e9L / (long double)tsc_hz());
    } else {
        l.kind = LINE_OTHER;
    }
    if (l.kind == LINE_TICK && s->is_file && s->fwd < 0 && s->prompt_ns) {
        s->fwd = inotify_add_watch(inofd, s->path, IN_MODIFY);
        if (s->fwd >= 0) {
            g_hash_table_insert(file_wds, GINT_TO_POINTER(s->fwd), s);
        }
        s->prompt_until = first + s->prompt_ns;
    }
    if (l.kind != LINE_TICK) {
        if ((s->guest == GUEST_LINUX && g_str_has_prefix(text, "READY ")) ||
            (s->guest == GUEST_TINY && g_str_equal(text, "TINY READY"))) {
            l.kind = LINE_READY;
        } else if (s->guest == GUEST_LINUX &&
                   (g_str_equal(text, "OK") || g_str_has_prefix(text, "OK ") ||
                    g_str_has_prefix(text, "ERR"))) {
            l.kind = LINE_REPLY;
        } else if (s->guest == GUEST_TINY && text[0] && strchr("WHE", text[0]) &&
                   text[1] == ' ') {
            l.kind = LINE_REPLY;
        }
        l.text = g_strdup(text);
        g_ptr_array_add(s->texts, (char *)l.text);
    }
    g_array_append_val(s->lines, l);
}

static void take_bytes(Stream *s, const char *buf, gsize n, gint64 t)
{
    for (gsize i = 0; i < n; i++) {
        if (s->partial->len == 0) {
            s->partial_first_ns = t;
        }
        if (buf[i] == '\n') {
            parse_line(s, s->partial->str, s->partial_first_ns, t);
            g_string_truncate(s->partial, 0);
        } else if (s->partial->len < 65536) {
            g_string_append_c(s->partial, buf[i]);
        }
    }
}

/* Read what is there (lock held) */
static bool read_stream(Stream *s)
{
    char buf[65536];
    bool got = false;

    if (s->stopped || s->eof) {
        return false;
    }
    if (s->is_file && s->fd < 0) {
        s->fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (s->fd < 0) {
            return false;
        }
    }
    for (;;) {
        ssize_t n = read(s->fd, buf, sizeof(buf));
        gint64 t = now_ns();

        if (n > 0) {
            take_bytes(s, buf, n, t);
            got = true;
            continue;
        }
        if (n == 0 && !s->is_file) {
            s->eof = true;
            epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            s->eof = true;
            if (!s->is_file) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
            }
        } else if (n < 0 && errno == EINTR) {
            continue;
        }
        break;
    }
    return got;
}

/* Stop reading a file (lock held) */
static void file_stop(Stream *s)
{
    s->stopped = true;
    g_ptr_array_remove_fast(files, s);
    if (s->fwd >= 0) {
        g_hash_table_remove(file_wds, GINT_TO_POINTER(s->fwd));
        inotify_rm_watch(inofd, s->fwd);
        s->fwd = -1;
    }
}

static void read_file(Stream *s)
{
    read_stream(s);
    if (s->prompt_until && now_ns() > s->prompt_until) {
        file_stop(s);
    }
}

/* The files named `name` in the directory watched by wd, or all (NULL) */
static void read_files(int wd, const char *name)
{
    for (guint i = files->len; i-- > 0;) {
        Stream *s = files->pdata[i];

        if (!name || (s->wd == wd && !strcmp(s->base, name))) {
            read_file(s);
        }
    }
}

static gpointer reader_main(gpointer data G_GNUC_UNUSED)
{
    struct epoll_event ev[64];
    gint64 last_scan = 0;

    /* A prompt reader: lines are timestamped when read */
    setpriority(PRIO_PROCESS, syscall(SYS_gettid), -10);
    while (!quit) {
        int n = epoll_wait(epfd, ev, G_N_ELEMENTS(ev), 5);
        bool changed = false;

        g_mutex_lock(&lock);
        for (int i = 0; i < n; i++) {
            void *p = ev[i].data.ptr;

            if (p == &marker_wake) {
                char c;

                while (read(wake[0], &c, 1) > 0) {
                    /* drained */
                }
            } else if (p == &marker_ino) {
                char buf[16384] __attribute__((aligned(8)));
                ssize_t len;

                while ((len = read(inofd, buf, sizeof(buf))) > 0) {
                    for (char *q = buf; q < buf + len;) {
                        struct inotify_event *ie = (struct inotify_event *)q;

                        Stream *fs = g_hash_table_lookup(
                            file_wds, GINT_TO_POINTER(ie->wd));

                        if (fs) {
                            read_file(fs);
                        } else if (ie->len) {
                            read_files(ie->wd, ie->name);
                        }
                        q += sizeof(*ie) + ie->len;
                    }
                }
                changed = true;
            } else if (g_hash_table_contains(live, p)) {
                changed |= read_stream(p);
            }
        }
        /* Files: also every 5 ms, in case events were merged */
        if (now_ns() - last_scan > 5000000) {
            read_files(-1, NULL);
            last_scan = now_ns();
        }
        (void)changed;
        g_cond_broadcast(&cond);
        g_mutex_unlock(&lock);
    }
    return NULL;
}

void streams_init(void)
{
    struct epoll_event ev = { .events = EPOLLIN };

    if (reader) {
        return;
    }
    live = g_hash_table_new(NULL, NULL);
    files = g_ptr_array_new();
    dir_wds = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    file_wds = g_hash_table_new(NULL, NULL);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    inofd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (pipe2(wake, O_NONBLOCK | O_CLOEXEC) < 0 || epfd < 0 || inofd < 0) {
        g_error("vmfork-bench: cannot set up the stream reader: %s",
                g_strerror(errno));
    }
    ev.data.ptr = &marker_ino;
    epoll_ctl(epfd, EPOLL_CTL_ADD, inofd, &ev);
    ev.data.ptr = &marker_wake;
    epoll_ctl(epfd, EPOLL_CTL_ADD, wake[0], &ev);
    reader = g_thread_new("stream-reader", reader_main, NULL);
}

void streams_shutdown(void)
{
    if (!reader) {
        return;
    }
    quit = true;
    if (write(wake[1], "q", 1) < 0) {
        /* the 5 ms timeout ends the loop anyway */
    }
    g_thread_join(reader);
    reader = NULL;
}

static Stream *stream_new(GuestKind guest, const char *name)
{
    Stream *s = g_new0(Stream, 1);

    s->name = g_strdup(name);
    s->guest = guest;
    s->fd = -1;
    s->wd = -1;
    s->fwd = -1;
    s->partial = g_string_new(NULL);
    s->lines = g_array_new(false, true, sizeof(Line));
    s->texts = g_ptr_array_new_with_free_func(g_free);
    return s;
}

Stream *stream_socket(int fd, GuestKind guest, const char *name)
{
    Stream *s = stream_new(guest, name);
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };

    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    s->fd = fd;
    ev.data.ptr = s;
    g_mutex_lock(&lock);
    g_hash_table_add(live, s);
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    g_mutex_unlock(&lock);
    return s;
}

Stream *stream_file(const char *path, GuestKind guest, gint64 prompt_ns)
{
    Stream *s = stream_new(guest, path);
    g_autofree char *dir = g_path_get_dirname(path);
    gpointer wdp;

    s->is_file = true;
    s->prompt_ns = prompt_ns;
    s->path = g_strdup(path);
    s->base = g_path_get_basename(path);
    g_mutex_lock(&lock);
    if (g_hash_table_lookup_extended(dir_wds, dir, NULL, &wdp)) {
        s->wd = GPOINTER_TO_INT(wdp);
    } else {
        s->wd = inotify_add_watch(inofd, dir, IN_CREATE);
        g_hash_table_insert(dir_wds, g_strdup(dir), GINT_TO_POINTER(s->wd));
    }
    g_hash_table_add(live, s);
    g_ptr_array_add(files, s);
    read_stream(s);
    g_mutex_unlock(&lock);
    return s;
}

void stream_stop(Stream *s)
{
    if (!s) {
        return;
    }
    g_mutex_lock(&lock);
    if (!s->stopped) {
        if (s->is_file) {
            file_stop(s);
        } else {
            s->stopped = true;
            if (s->fd >= 0 && !s->eof) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
            }
        }
    }
    g_mutex_unlock(&lock);
}

void stream_free(Stream *s)
{
    if (!s) {
        return;
    }
    stream_stop(s);
    g_mutex_lock(&lock);
    g_hash_table_remove(live, s);
    g_mutex_unlock(&lock);
    if (s->fd >= 0) {
        close(s->fd);
    }
    g_string_free(s->partial, true);
    g_array_free(s->lines, true);
    g_ptr_array_free(s->texts, true);
    g_free(s->name);
    g_free(s->path);
    g_free(s->base);
    g_free(s);
}

int stream_fd(Stream *s)
{
    return s->fd;
}

const char *stream_name(Stream *s)
{
    return s->name;
}

guint stream_count(Stream *s)
{
    guint n;

    g_mutex_lock(&lock);
    n = s->lines->len;
    g_mutex_unlock(&lock);
    return n;
}

GArray *stream_lines(Stream *s, guint from)
{
    GArray *a = g_array_new(false, true, sizeof(Line));

    g_mutex_lock(&lock);
    if (from < s->lines->len) {
        g_array_append_vals(a, &g_array_index(s->lines, Line, from),
                            s->lines->len - from);
    }
    g_mutex_unlock(&lock);
    return a;
}

GArray *stream_lines_since(Stream *s, gint64 t_ns)
{
    GArray *a = g_array_new(false, true, sizeof(Line));
    guint lo = 0, hi;

    g_mutex_lock(&lock);
    /* first_ns only grows along a stream: binary search */
    hi = s->lines->len;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;

        if (g_array_index(s->lines, Line, mid).first_ns < t_ns) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < s->lines->len) {
        g_array_append_vals(a, &g_array_index(s->lines, Line, lo),
                            s->lines->len - lo);
    }
    g_mutex_unlock(&lock);
    return a;
}

gint stream_wait(Stream *s, guint from, int mask, gint64 deadline_ns,
                 Line *out)
{
    gint found = -1;
    guint i = from;

    g_mutex_lock(&lock);
    for (;;) {
        for (; i < s->lines->len; i++) {
            Line *l = &g_array_index(s->lines, Line, i);

            if (l->kind & mask) {
                found = i;
                if (out) {
                    *out = *l;
                }
                break;
            }
        }
        if (found >= 0 || now_ns() >= deadline_ns || s->eof || s->stopped ||
            procs_interrupted()) {
            break;
        }
        g_cond_wait_until(&cond, &lock, g_get_monotonic_time() +
                          MIN((deadline_ns - now_ns()) / 1000, 50000));
    }
    g_mutex_unlock(&lock);
    return found;
}

bool stream_wait_past(Stream *s, gint64 t, gint64 deadline_ns)
{
    bool ok = false;

    g_mutex_lock(&lock);
    for (;;) {
        if (s->lines->len &&
            g_array_index(s->lines, Line, s->lines->len - 1).first_ns >= t) {
            ok = true;
            break;
        }
        if (now_ns() >= deadline_ns || s->eof || s->stopped ||
            procs_interrupted()) {
            break;
        }
        g_cond_wait_until(&cond, &lock, g_get_monotonic_time() +
                          MIN((deadline_ns - now_ns()) / 1000, 50000));
    }
    g_mutex_unlock(&lock);
    return ok;
}
