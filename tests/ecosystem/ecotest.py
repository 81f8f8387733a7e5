# ecotest: TAP output, processes and files for the ecosystem tests
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The ecosystem tests drive the patched QEMU with tools that are not ours
# (QEMU's own Python QMP package and qmp-shell, libvirt).  They are Python
# scripts run by meson with the TAP protocol.  This module gives them:
#
# - Tap: the plan, "ok"/"not ok" lines, skips, diagnostics.  Steps run in
#   order; once one fails, the later ones (which depend on it) are reported
#   as skipped, so the test fails on the first real failure only.
# - Reaper: this process becomes a child subreaper, so that vmfork children
#   whose parent QEMU died are re-parented to us and can be reaped.  Every
#   process started here gets its own session; cleanup() kills each group,
#   reaps every child and removes the test's directory, also on an
#   exception, SIGTERM (meson's timeout) or SIGINT.
# - paths: where the artifacts and the QEMU source tree are.

import atexit
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

PR_SET_CHILD_SUBREAPER = 36


class StepFailed(Exception):
    pass


def check(cond, msg):
    """Fail the current step with msg unless cond holds"""
    if not cond:
        raise StepFailed(msg)


class Tap:
    def __init__(self, chain=True):
        self.n = 0
        self.planned = None
        self.failed = None       # description of the first failed step
        self.chain = chain       # False: steps do not depend on each other

    @staticmethod
    def _out(line):
        sys.stdout.write(line + '\n')
        sys.stdout.flush()

    def diag(self, msg):
        for line in str(msg).splitlines() or ['']:
            self._out('# ' + line)

    def plan(self, n):
        self.planned = n
        self._out('1..%d' % n)

    def skip_all(self, reason):
        """Nothing can run: the whole test is skipped (never passes)"""
        self._out('1..0 # SKIP ' + reason.replace('\n', ' '))

    def ok(self, desc):
        self.n += 1
        self._out('ok %d - %s' % (self.n, desc))

    def not_ok(self, desc, why=None):
        self.n += 1
        self._out('not ok %d - %s' % (self.n, desc))
        if why:
            self.diag(why)
        if self.failed is None:
            self.failed = desc

    def skip(self, desc, reason):
        self.n += 1
        self._out('ok %d - %s # SKIP %s' % (self.n, desc,
                                             reason.replace('\n', ' ')))

    def step(self, desc, fn, *args):
        """Run fn(*args) as one test point.  Returns its result, or None
        when it failed or was skipped."""
        if self.chain and self.failed is not None:
            self.skip(desc, 'an earlier step failed: ' + self.failed)
            return None
        t0 = time.monotonic()
        try:
            r = fn(*args)
        except StepFailed as e:
            self.not_ok(desc, str(e))
            return None
        except Exception:                          # noqa: BLE001
            self.not_ok(desc, traceback.format_exc())
            return None
        self.ok('%s (%.2f s)' % (desc, time.monotonic() - t0))
        return r

    async def astep(self, desc, fn, *args):
        """step() for a coroutine function"""
        if self.chain and self.failed is not None:
            self.skip(desc, 'an earlier step failed: ' + self.failed)
            return None
        t0 = time.monotonic()
        try:
            r = await fn(*args)
        except StepFailed as e:
            self.not_ok(desc, str(e))
            return None
        except Exception:                          # noqa: BLE001
            self.not_ok(desc, traceback.format_exc())
            return None
        self.ok('%s (%.2f s)' % (desc, time.monotonic() - t0))
        return r

    def finish(self):
        """Points never reached (an exception outside step()) fail"""
        if self.planned is None:
            return
        while self.n < self.planned:
            self.not_ok('not reached')


class Reaper:
    """Processes and files of one test, removed at cleanup()"""

    def __init__(self, prefix, subreaper=True):
        # Unix socket paths must stay under 108 bytes: a short directory
        self.dir = tempfile.mkdtemp(prefix=prefix, dir='/tmp')
        self.groups = []          # process group ids (one per session)
        self.procs = []           # Popen objects
        self.extra_cleanup = []   # callables, run last first
        self.done = False
        # Not for a test whose processes daemonize on purpose (libvirt's
        # QEMU): it would become our child, and its zombie would look alive
        # to whoever watches it (libvirtd) until we reap it.
        if subreaper:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            except OSError:
                pass
        atexit.register(self.cleanup)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        # Runs the finally clauses and atexit: cleanup() happens
        raise SystemExit(128 + signum)

    def path(self, name):
        return os.path.join(self.dir, name)

    def spawn(self, argv, **kw):
        """Start argv in a new session (so its vmfork children and their
        children can be killed with one killpg)"""
        kw.setdefault('stdin', subprocess.DEVNULL)
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        self.groups.append(p.pid)
        return p

    def on_cleanup(self, fn):
        self.extra_cleanup.append(fn)

    @staticmethod
    def _kill_group(pgid, sig):
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False

    def reap(self, timeout=0.0):
        """Reap every exited child; True if none is left"""
        end = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                if time.monotonic() >= end:
                    return False
                time.sleep(0.05)

    def cleanup(self):
        if self.done:
            return
        self.done = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fn in reversed(self.extra_cleanup):
            try:
                fn()
            except Exception:                      # noqa: BLE001
                sys.stderr.write('cleanup: ' + traceback.format_exc())
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for g in self.groups:
            self._kill_group(g, signal.SIGTERM)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            alive = [g for g in self.groups if self._kill_group(g, 0)]
            if not alive:
                break
            self.reap()
            time.sleep(0.05)
        for g in self.groups:
            self._kill_group(g, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not self.reap(timeout=5):
            sys.stderr.write('cleanup: some child processes did not exit\n')
        shutil.rmtree(self.dir, ignore_errors=True)


def pid_gone(pid):
    """Has pid exited and been reaped (by whoever is its parent)?"""
    # A zombie still has its /proc entry: gone means exited and reaped
    return not os.path.exists('/proc/%d' % pid)


def pid_wait_gone(pid, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pid_gone(pid):
            return True
        time.sleep(0.02)
    return pid_gone(pid)


def pid_is_zombie(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return False


def wait_for(pred, timeout, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() >= end:
            return r
        time.sleep(interval)


def top_dir():
    return os.environ.get('VMFORK_TOP') or \
        os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))


def artifact(env, rel):
    """An artifact: $env if set, otherwise build/<rel> in the checkout"""
    return os.environ.get(env) or os.path.join(top_dir(), 'build', rel)


def qemu_version():
    """QEMU_VERSION from scripts/common.sh (the pinned release)"""
    try:
        with open(os.path.join(top_dir(), 'scripts', 'common.sh')) as f:
            m = re.search(r'^QEMU_VERSION=([0-9.]+)\s*$', f.read(), re.M)
            if m:
                return m.group(1)
    except OSError:
        pass
    return '10.0.13'


def qemu_src():
    """The pinned QEMU source tree: $VMFORK_QEMU_SRC, or the build cache's
    (${VMFORK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfork}/qemu-VER/src,
    the same rule as scripts/common.sh)"""
    src = os.environ.get('VMFORK_QEMU_SRC')
    if src:
        return src
    cache = os.environ.get('VMFORK_CACHE')
    if not cache:
        xdg = os.environ.get('XDG_CACHE_HOME') or \
            os.path.join(os.path.expanduser('~'), '.cache')
        cache = os.path.join(xdg, 'vmfork')
    return os.path.join(cache, 'qemu-' + qemu_version(), 'src')


def missing_file(path, what):
    """None if path is a file, otherwise a reason to skip"""
    if os.path.isfile(path):
        return None
    return '%s not found at %s' % (what, path)


def free_port():
    """A TCP port free on 127.0.0.1 just now"""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def connect_unix(path, timeout):
    """A connected unix stream socket, retried until timeout"""
    import socket
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            if e.errno not in (errno.ENOENT, errno.ECONNREFUSED) or \
                    time.monotonic() >= end:
                raise
            time.sleep(0.05)
