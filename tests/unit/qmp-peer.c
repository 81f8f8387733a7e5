/*
 * A scripted QMP server for tests; see qmp-peer.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE             /* accept4, MSG_CMSG_CLOEXEC */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib-unix.h>

#include "qmp-peer.h"

#define PEER_MAX_FDS 4
#define QMP_PEER_ERROR g_quark_from_static_string("qmp-peer-error")

struct QmpPeer {
    char *dir;
    char *path;
    int listen_fd;
    int wake[2];                /* written by qmp_peer_free() to stop */
    QmpPeerStep *script;
    guint n_steps;
    GThread *thread;

    GMutex lock;                /* protects the fields below */
    GCond cond;
    gboolean done;
    gboolean removed;           /* socket and directory unlinked */
    char *failure;
    GPtrArray *received;        /* JsonNode * */
    GArray *fds;                /* int, -1 once stolen */

    /* Used by the thread only. */
    int conn;
    GString *inbuf;
    char *last_id;              /* JSON text of the last expected id */
    guint fds_claimed;
};

/* poll @fd (may be -1) and the wake pipe: 1 ready, 0 timeout, -1 stopped. */
static int peer_wait(QmpPeer *p, int fd, short events, int timeout_ms)
{
    for (;;) {
        struct pollfd pfd[2] = {
            { .fd = p->wake[0], .events = POLLIN },
            { .fd = fd, .events = events },
        };
        int r = poll(pfd, 2, timeout_ms);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 || pfd[0].revents) {
            return -1;
        }
        return r > 0 ? 1 : 0;
    }
}

static void peer_remove_files(QmpPeer *p)
{
    g_mutex_lock(&p->lock);
    if (!p->removed) {
        unlink(p->path);
        rmdir(p->dir);
        p->removed = TRUE;
    }
    g_mutex_unlock(&p->lock);
}

static char *peer_send(QmpPeer *p, const char *text, gsize len, int ms)
{
    gsize off = 0;

    while (off < len) {
        gsize chunk = ms > 0 ? 1 : len - off;
        ssize_t n = send(p->conn, text + off, chunk, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            if (peer_wait(p, p->conn, POLLOUT, -1) < 0) {
                return g_strdup("stopped");
            }
            continue;
        }
        if (n < 0) {
            return g_strdup_printf("send: %s", g_strerror(errno));
        }
        off += n;
        if (ms > 0 && off < len && peer_wait(p, -1, 0, ms) < 0) {
            return g_strdup("stopped");
        }
    }
    return NULL;
}

/* Reads more input into inbuf, collecting fds; *eof at end of stream. */
static char *peer_fill(QmpPeer *p, gboolean *eof)
{
    char buf[4096];
    union {
        char buf[CMSG_SPACE(sizeof(int) * PEER_MAX_FDS)];
        struct cmsghdr align;
    } control;

    *eof = FALSE;
    for (;;) {
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr msg = {
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = control.buf,
            .msg_controllen = sizeof(control.buf),
        };
        ssize_t n = recvmsg(p->conn, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            if (peer_wait(p, p->conn, POLLIN, -1) < 0) {
                return g_strdup("stopped");
            }
            continue;
        }
        if (n < 0 && errno == ECONNRESET) {
            n = 0;
        }
        if (n < 0) {
            return g_strdup_printf("recvmsg: %s", g_strerror(errno));
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c;
             c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                guint nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                int fds[PEER_MAX_FDS];

                memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
                g_mutex_lock(&p->lock);
                g_array_append_vals(p->fds, fds, nfds);
                g_mutex_unlock(&p->lock);
            }
        }
        if (n == 0) {
            *eof = TRUE;
        }
        g_string_append_len(p->inbuf, buf, n);
        return NULL;
    }
}

/* The client's next message (one per line) in *msg, NULL at end of stream. */
static char *peer_read_message(QmpPeer *p, JsonNode **msg)
{
    *msg = NULL;
    for (;;) {
        char *nl = memchr(p->inbuf->str, '\n', p->inbuf->len);
        gboolean eof;
        char *failure;

        if (nl) {
            g_autofree char *line = g_strndup(p->inbuf->str,
                                              nl - p->inbuf->str);
            g_autoptr(GError) err = NULL;

            g_string_erase(p->inbuf, 0, nl - p->inbuf->str + 1);
            *msg = json_from_string(line, &err);
            if (!*msg || !JSON_NODE_HOLDS_OBJECT(*msg)) {
                g_clear_pointer(msg, json_node_unref);
                return g_strdup_printf("client sent a line that is not a "
                                       "JSON object: '%s'", line);
            }
            g_mutex_lock(&p->lock);
            g_ptr_array_add(p->received, json_node_ref(*msg));
            g_mutex_unlock(&p->lock);
            return NULL;
        }
        failure = peer_fill(p, &eof);
        if (failure) {
            return failure;
        }
        if (eof) {
            if (p->inbuf->len) {
                return g_strdup_printf("client closed after a partial line "
                                       "'%s'", p->inbuf->str);
            }
            return NULL;
        }
    }
}

/* Does @msg contain every member of @pattern with an equal value? */
static gboolean json_matches(JsonNode *pattern, JsonNode *msg)
{
    if (JSON_NODE_HOLDS_OBJECT(pattern)) {
        JsonObject *po, *mo;
        g_autoptr(GList) members = NULL;

        if (!msg || !JSON_NODE_HOLDS_OBJECT(msg)) {
            return FALSE;
        }
        po = json_node_get_object(pattern);
        mo = json_node_get_object(msg);
        members = json_object_get_members(po);
        for (GList *l = members; l; l = l->next) {
            if (!json_matches(json_object_get_member(po, l->data),
                              json_object_get_member(mo, l->data))) {
                return FALSE;
            }
        }
        return TRUE;
    }
    return msg && json_node_equal(pattern, msg);
}

static char *peer_expect(QmpPeer *p, guint step, const char *pattern_text,
                         gboolean want_fd)
{
    g_autoptr(JsonNode) pattern = json_from_string(pattern_text, NULL);
    g_autoptr(JsonNode) msg = NULL;
    g_autofree char *text = NULL;
    JsonNode *id;
    char *failure;

    if (!pattern) {
        return g_strdup_printf("step %u: bad pattern '%s'", step,
                               pattern_text);
    }
    failure = peer_read_message(p, &msg);
    if (failure) {
        return failure;
    }
    if (!msg) {
        return g_strdup_printf("step %u: client closed the connection, "
                               "expected %s", step, pattern_text);
    }
    text = json_to_string(msg, FALSE);
    if (!json_matches(pattern, msg)) {
        return g_strdup_printf("step %u: expected %s, got %s", step,
                               pattern_text, text);
    }
    id = json_object_get_member(json_node_get_object(msg), "id");
    g_free(p->last_id);
    p->last_id = id ? json_to_string(id, FALSE) : g_strdup("null");
    if (want_fd) {
        guint nfds;

        g_mutex_lock(&p->lock);
        nfds = p->fds->len;
        g_mutex_unlock(&p->lock);
        if (nfds <= p->fds_claimed) {
            return g_strdup_printf("step %u: no fd came with %s", step, text);
        }
        p->fds_claimed = nfds;
    }
    return NULL;
}

static char *peer_play(QmpPeer *p)
{
    char *failure = NULL;
    JsonNode *extra = NULL;

    if (peer_wait(p, p->listen_fd, POLLIN, -1) < 0) {
        return g_strdup("stopped before a client connected");
    }
    p->conn = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (p->conn < 0) {
        return g_strdup_printf("accept: %s", g_strerror(errno));
    }
    peer_remove_files(p);

    for (guint i = 0; i < p->n_steps; i++) {
        const QmpPeerStep *s = &p->script[i];
        g_autoptr(GString) text = NULL;

        switch (s->op) {
        case QMP_PEER_SEND:
        case QMP_PEER_SEND_BYTEWISE:
            text = g_string_new(s->text);
            g_string_replace(text, "$id", p->last_id, 0);
            failure = peer_send(p, text->str, text->len,
                                s->op == QMP_PEER_SEND_BYTEWISE ? MAX(s->ms, 1)
                                                                : 0);
            break;
        case QMP_PEER_EXPECT:
        case QMP_PEER_EXPECT_FD:
            failure = peer_expect(p, i, s->text, s->op == QMP_PEER_EXPECT_FD);
            break;
        case QMP_PEER_SLEEP:
            if (peer_wait(p, -1, 0, s->ms) < 0) {
                failure = g_strdup("stopped");
            }
            break;
        case QMP_PEER_CLOSE:
            return NULL;
        case QMP_PEER_END:
            g_assert_not_reached();
        }
        if (failure) {
            return failure;
        }
    }
    /* END: the client may only close the connection now. */
    failure = peer_read_message(p, &extra);
    if (!failure && extra) {
        g_autofree char *text = json_to_string(extra, FALSE);

        failure = g_strdup_printf("unexpected message after the end of the "
                                  "script: %s", text);
        json_node_unref(extra);
    }
    return failure;
}

static gpointer peer_thread(gpointer data)
{
    QmpPeer *p = data;
    char *failure = peer_play(p);

    if (p->conn >= 0) {
        close(p->conn);
        p->conn = -1;
    }
    g_mutex_lock(&p->lock);
    p->failure = failure;
    p->done = TRUE;
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
    return NULL;
}

QmpPeer *qmp_peer_start(const QmpPeerStep *script)
{
    QmpPeer *p = g_new0(QmpPeer, 1);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autoptr(GError) err = NULL;
    guint n = 0;

    while (script[n].op != QMP_PEER_END && script[n].op != QMP_PEER_CLOSE) {
        n++;
    }
    if (script[n].op == QMP_PEER_CLOSE) {
        n++;
    }
    p->n_steps = n;
    p->script = g_new0(QmpPeerStep, n + 1);
    for (guint i = 0; i < n; i++) {
        p->script[i] = script[i];
        p->script[i].text = g_strdup(script[i].text);
    }
    g_mutex_init(&p->lock);
    g_cond_init(&p->cond);
    p->received = g_ptr_array_new_with_free_func((GDestroyNotify)json_node_unref);
    p->fds = g_array_new(FALSE, FALSE, sizeof(int));
    p->inbuf = g_string_new(NULL);
    p->last_id = g_strdup("null");
    p->conn = -1;

    p->dir = g_dir_make_tmp("qmp-peer-XXXXXX", &err);
    if (!p->dir) {
        g_error("qmp-peer: %s", err->message);
    }
    p->path = g_build_filename(p->dir, "qmp.sock", NULL);
    g_assert(strlen(p->path) < sizeof(addr.sun_path));
    strcpy(addr.sun_path, p->path);
    p->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                          0);
    if (p->listen_fd < 0 ||
        bind(p->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(p->listen_fd, 1) < 0 || !g_unix_open_pipe(p->wake, FD_CLOEXEC,
                                                          NULL)) {
        int e = errno;

        rmdir(p->dir);
        g_error("qmp-peer: cannot listen on %s: %s", p->path, g_strerror(e));
    }
    p->thread = g_thread_new("qmp-peer", peer_thread, p);
    return p;
}

const char *qmp_peer_path(QmpPeer *peer)
{
    return peer->path;
}

gboolean qmp_peer_finish(QmpPeer *peer, int timeout_ms, GError **errp)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    gboolean ok;

    g_mutex_lock(&peer->lock);
    while (!peer->done && g_cond_wait_until(&peer->cond, &peer->lock, end)) {
    }
    if (!peer->done) {
        g_set_error(errp, QMP_PEER_ERROR, 0,
                    "qmp-peer: the script did not finish within %d ms",
                    timeout_ms);
        ok = FALSE;
    } else if (peer->failure) {
        g_set_error(errp, QMP_PEER_ERROR, 0, "qmp-peer: %s",
                    peer->failure);
        ok = FALSE;
    } else {
        ok = TRUE;
    }
    g_mutex_unlock(&peer->lock);
    return ok;
}

guint qmp_peer_n_received(QmpPeer *peer)
{
    guint n;

    g_mutex_lock(&peer->lock);
    n = peer->received->len;
    g_mutex_unlock(&peer->lock);
    return n;
}

JsonNode *qmp_peer_received(QmpPeer *peer, guint index)
{
    JsonNode *msg = NULL;

    g_mutex_lock(&peer->lock);
    if (index < peer->received->len) {
        msg = g_ptr_array_index(peer->received, index);
    }
    g_mutex_unlock(&peer->lock);
    return msg;
}

int qmp_peer_steal_fd(QmpPeer *peer, guint index)
{
    int fd = -1;

    g_mutex_lock(&peer->lock);
    if (index < peer->fds->len) {
        fd = g_array_index(peer->fds, int, index);
        g_array_index(peer->fds, int, index) = -1;
    }
    g_mutex_unlock(&peer->lock);
    return fd;
}

void qmp_peer_free(QmpPeer *peer)
{
    if (!peer) {
        return;
    }
    if (peer->thread) {
        ssize_t n;

        do {
            n = write(peer->wake[1], "x", 1);
        } while (n < 0 && errno == EINTR);
        g_thread_join(peer->thread);
    }
    peer_remove_files(peer);
    close(peer->listen_fd);
    close(peer->wake[0]);
    close(peer->wake[1]);
    for (guint i = 0; i < peer->fds->len; i++) {
        if (g_array_index(peer->fds, int, i) >= 0) {
            close(g_array_index(peer->fds, int, i));
        }
    }
    g_array_free(peer->fds, TRUE);
    g_ptr_array_free(peer->received, TRUE);
    for (guint i = 0; i < peer->n_steps; i++) {
        g_free((char *)peer->script[i].text);
    }
    g_free(peer->script);
    g_string_free(peer->inbuf, TRUE);
    g_free(peer->last_id);
    g_free(peer->failure);
    g_free(peer->path);
    g_free(peer->dir);
    g_mutex_clear(&peer->lock);
    g_cond_clear(&peer->cond);
    g_free(peer);
}
