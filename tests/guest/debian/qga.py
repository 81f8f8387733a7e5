#!/usr/bin/env python3
"""Run one command on a QEMU guest agent (qemu-ga) over its chardev socket.

usage: qga.py [--timeout S] [--no-reply] SOCKET COMMAND ['{"arg": 1}']

SOCKET is the unix socket of the QEMU chardev behind the virtio-serial
port org.qemu.guest_agent.0 (-chardev socket,server=on,wait=off).  The
agent sends no greeting and may not be running yet, and requests written
before it opens the port wait in QEMU until it does.  So this first
synchronises: it sends guest-sync-delimited with a new random id every
second until a reply comes, then waits for the reply to the last one it
sent, so that nothing stale is left on the channel; then it sends COMMAND
and prints its "return" value as JSON.  It keeps trying to connect until
the socket exists.  --no-reply: for commands that do not answer
(guest-shutdown, guest-suspend-*): send and return.

Exit status: 0 ok, 1 the agent answered with an error, 2 usage error,
3 connection error or timeout (default 300 s, for all of it together).
Python 3 standard library only.
"""
import json
import random
import socket
import sys
import time


class Timeout(Exception):
    pass


class Agent:
    def __init__(self, path, deadline):
        self.deadline = deadline
        self.buf = b""
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise Timeout("cannot connect to %s" % path)
                time.sleep(0.1)

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, until):
        """The next JSON message, or None at time `until`."""
        dec = json.JSONDecoder()
        while True:
            # guest-sync-delimited replies start with 0xff: skip it, and
            # anything before it (a partial reply from before a reset).
            i = self.buf.rfind(b"\xff")
            if i >= 0:
                self.buf = self.buf[i + 1:]
            text = self.buf.decode("utf-8", "replace").lstrip()
            if text:
                try:
                    obj, end = dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return obj
                except ValueError:
                    pass
            left = min(until, self.deadline) - time.monotonic()
            if left <= 0:
                if time.monotonic() > self.deadline:
                    raise Timeout("no answer from the guest agent")
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise Timeout("the guest agent's socket was closed")
            self.buf += data

    def sync(self):
        sent = []
        while True:
            sent.append(random.randrange(1, 2**31))
            self.send({"execute": "guest-sync-delimited", "arguments": {"id": sent[-1]}})
            msg = self.recv(time.monotonic() + 1.0)
            if msg is not None and msg.get("return") in sent:
                break
        while msg is None or msg.get("return") != sent[-1]:
            msg = self.recv(self.deadline)


def main(argv):
    timeout, no_reply = 300.0, False
    args = []
    it = iter(argv)
    for a in it:
        if a == "--timeout":
            timeout = float(next(it, "x"))
        elif a == "--no-reply":
            no_reply = True
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        else:
            args.append(a)
    if len(args) not in (2, 3):
        print("usage: qga.py [--timeout S] [--no-reply] SOCKET COMMAND ['{\"arg\": 1}']",
              file=sys.stderr)
        return 2
    cmd = {"execute": args[1]}
    if len(args) == 3:
        cmd["arguments"] = json.loads(args[2])
    try:
        agent = Agent(args[0], time.monotonic() + timeout)
        agent.sync()
        agent.send(cmd)
        if no_reply:
            return 0
        msg = agent.recv(agent.deadline)
    except (Timeout, OSError) as e:
        print("qga: %s" % e, file=sys.stderr)
        return 3
    if "error" in msg:
        print("qga: %s: %s" % (args[1], msg["error"].get("desc", msg["error"])), file=sys.stderr)
        return 1
    print(json.dumps(msg.get("return")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
