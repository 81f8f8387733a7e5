/*
 * A scripted QMP server for tests (no QEMU).
 *
 * The peer listens on a unix socket in a fresh temporary directory, accepts
 * one client (then removes the socket and the directory at once) and plays a
 * script in a thread of the test process:
 *
 *   static const QmpPeerStep script[] = {
 *       PEER_GREETING,
 *       PEER_NEGOTIATE,
 *       PEER_EXPECT("{\"execute\": \"stop\"}"),
 *       PEER_SEND("{\"event\": \"STOP\", \"timestamp\": {...}}\r\n"),
 *       PEER_REPLY("{}"),
 *       PEER_END,
 *   };
 *   QmpPeer *peer = qmp_peer_start(script);
 *   ... qmp_connect_unix(qmp_peer_path(peer), ...) ...; qmp_close(client);
 *   g_assert_no_error(... qmp_peer_finish(peer, 5000, &err) ...);
 *   qmp_peer_free(peer);
 *
 * Steps:
 *   SEND(text)            writes text as is; "$id" in it is replaced by the
 *                         JSON of the "id" of the last message EXPECTed
 *                         ("null" when it had none)
 *   SEND_BYTEWISE(text, ms)  the same, one byte per write, ms apart
 *   EXPECT(pattern)       reads the client's next message (one JSON object
 *                         per line) and checks that it matches pattern: each
 *                         member of the pattern must be in the message with an
 *                         equal value (objects compared the same way,
 *                         recursively; other values exactly)
 *   EXPECT_FD(pattern)    the same, and an fd (SCM_RIGHTS) must have arrived
 *                         with it; see qmp_peer_steal_fd()
 *   SLEEP(ms)             waits
 *   CLOSE                 closes the connection; the script ends there
 *   END                   end of the script: the peer then waits for the
 *                         client to close, and any further message from the
 *                         client is a failure
 *
 * A script failure (a mismatch, the client closing early) ends the script,
 * closes the connection, and is reported by qmp_peer_finish().  The peer
 * never aborts the test process.  qmp_peer_free() stops the thread at any
 * step, joins it, and removes whatever is left on the file system, so a test
 * can call it from a fixture teardown after a failed assertion.
 */
#ifndef QMP_PEER_H
#define QMP_PEER_H

#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    QMP_PEER_END = 0,
    QMP_PEER_SEND,
    QMP_PEER_SEND_BYTEWISE,
    QMP_PEER_EXPECT,
    QMP_PEER_EXPECT_FD,
    QMP_PEER_SLEEP,
    QMP_PEER_CLOSE,
} QmpPeerOp;

typedef struct {
    QmpPeerOp op;
    const char *text;
    int ms;
} QmpPeerStep;

#define PEER_SEND(text)              { QMP_PEER_SEND, (text), 0 }
#define PEER_SEND_BYTEWISE(text, ms) { QMP_PEER_SEND_BYTEWISE, (text), (ms) }
#define PEER_EXPECT(pattern)         { QMP_PEER_EXPECT, (pattern), 0 }
#define PEER_EXPECT_FD(pattern)      { QMP_PEER_EXPECT_FD, (pattern), 0 }
#define PEER_SLEEP(ms)               { QMP_PEER_SLEEP, NULL, (ms) }
#define PEER_CLOSE                   { QMP_PEER_CLOSE, NULL, 0 }
#define PEER_END                     { QMP_PEER_END, NULL, 0 }

/* The greeting of QEMU 10.0.13 as packaged by Debian, as QEMU sends it. */
#define QMP_PEER_GREETING_TEXT \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 13, \"minor\": 0, " \
    "\"major\": 10}, \"package\": \"Debian 1:10.0.13+ds-0+deb13u1\"}, " \
    "\"capabilities\": [\"oob\"]}}\r\n"

#define PEER_GREETING PEER_SEND(QMP_PEER_GREETING_TEXT)
/* A success reply to the last expected command; ret is a JSON literal. */
#define PEER_REPLY(ret) PEER_SEND("{\"return\": " ret ", \"id\": $id}\r\n")
/* An error reply to the last expected command. */
#define PEER_ERROR_REPLY(klass, desc) \
    PEER_SEND("{\"error\": {\"class\": \"" klass "\", \"desc\": \"" desc \
              "\"}, \"id\": $id}\r\n")
/* Capabilities negotiation with no capability. */
#define PEER_NEGOTIATE \
    PEER_EXPECT("{\"execute\": \"qmp_capabilities\"}"), PEER_REPLY("{}")

typedef struct QmpPeer QmpPeer;

/*
 * Starts a peer playing @script (copied; terminated by PEER_END or
 * PEER_CLOSE).  Fails the test process with g_error() only when the socket
 * cannot be set up at all.
 */
QmpPeer *qmp_peer_start(const QmpPeerStep *script);

/* The socket path for qmp_connect_unix(); removed once a client connects. */
const char *qmp_peer_path(QmpPeer *peer);

/*
 * Waits up to @timeout_ms for the script to end (after END, that is when the
 * client has closed the connection: close the client first).
 * Returns TRUE when the script ran as written; FALSE with an error that says
 * which step failed and why, or that the peer did not finish in time.
 */
gboolean qmp_peer_finish(QmpPeer *peer, int timeout_ms, GError **errp);

/* After qmp_peer_finish(): the messages the client sent, in order. */
guint qmp_peer_n_received(QmpPeer *peer);
JsonNode *qmp_peer_received(QmpPeer *peer, guint index);   /* borrowed */

/*
 * After qmp_peer_finish(): the @index-th fd received (0-based), which the
 * caller now owns; -1 if there is none.
 */
int qmp_peer_steal_fd(QmpPeer *peer, guint index);

/* Stops the script wherever it is, joins the thread, closes and removes all. */
void qmp_peer_free(QmpPeer *peer);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpPeer, qmp_peer_free)

#endif /* QMP_PEER_H */
