#!/usr/bin/python3
# vmfork with QEMU's own QMP clients, unchanged: the qemu.qmp Python package
# (async QMPClient with its event API, and the legacy synchronous
# QEMUMonitorProtocol that iotests use) and qmp-shell fed on stdin, all
# taken from the pinned QEMU source tree.
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Environment: VMFORK_QEMU, VMFORK_TINY (artifacts), VMFORK_QEMU_SRC (the
# QEMU source tree; default: the build cache's, see ecotest.qemu_src()).
# Skips with the reason when one is missing.  TAP on stdout.

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # leave the QEMU tree and ours unchanged
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ecotest                                     # noqa: E402
from ecotest import check                          # noqa: E402

TIMEOUT = 30.0          # seconds for any one QMP exchange or event
PLAN = 13
EVENTS = ('VMFORK_CHILD_READY', 'VMFORK_CHILD_EXITED')


def tick_lines(path):
    """The tiny guest's counter lines ("C <seq> <tsc>") in a serial file"""
    try:
        with open(path, 'rb') as f:
            data = f.read().decode('ascii', 'replace')
    except FileNotFoundError:
        return []
    return [ln for ln in data.split('\n')[:-1] if ln.startswith('C ')]


def shell_replies(out):
    """qmp-shell's answers: with stdin not a terminal it prints the prompt
    "(QEMU) " without a newline, then the reply as one JSON line"""
    replies = []
    for chunk in out.split('(QEMU) ')[1:]:
        line = chunk.split('\n', 1)[0].strip()
        if line.startswith('{'):
            replies.append(json.loads(line))
    return replies


class QmpClientsTest:
    def __init__(self, tap, reaper, qemu, tiny, src):
        self.tap = tap
        self.r = reaper
        self.qemu = qemu
        self.tiny = tiny
        self.src = src
        self.qmp_sock = reaper.path('qmp.sock')
        self.shell_sock = reaper.path('shell.sock')
        self.serial = reaper.path('serial.log')
        self.proc = None
        self.client = None
        self.listener = None
        self.seen = []           # events read from the listener so far
        self.child1 = None
        self.shell_child = None
        self.legacy_children = []

    # --- helpers -----------------------------------------------------

    async def event(self, name, pid, timeout=TIMEOUT):
        """The event name whose data.pid is pid (seen earlier or next)"""
        end = time.monotonic() + timeout
        while True:
            for ev in self.seen:
                if ev['event'] == name and ev['data'].get('pid') == pid:
                    return ev
            left = end - time.monotonic()
            check(left > 0, '%s for pid %d not seen in %.0f s (saw: %s)' %
                  (name, pid, timeout, [dict(e) for e in self.seen]))
            try:
                ev = await asyncio.wait_for(self.listener.get(), left)
            except asyncio.TimeoutError:
                continue
            self.seen.append(ev)

    async def qmp(self, client, cmd, args=None):
        return await asyncio.wait_for(client.execute(cmd, args), TIMEOUT)

    async def connect(self, path, name):
        from qemu.qmp import QMPClient
        client = QMPClient(name)
        end = time.monotonic() + TIMEOUT
        while True:
            try:
                await asyncio.wait_for(client.connect(path), TIMEOUT)
                return client
            except Exception:                      # noqa: BLE001
                if time.monotonic() >= end or \
                        (self.proc and self.proc.poll() is not None):
                    raise
                await asyncio.sleep(0.05)

    async def quit_child(self, client):
        """quit on a child's own monitor; QEMU closes the connection after
        the reply, which the client may report as an error: ignore it"""
        await self.qmp(client, 'quit')
        try:
            await asyncio.wait_for(client.disconnect(), TIMEOUT)
        except Exception:                          # noqa: BLE001
            pass

    def run_shell(self, sock, commands, timeout=60):
        """qmp-shell, unchanged, from the QEMU tree, commands on stdin.
        After "quit", QEMU hangs up; qmp-shell's own close at the end of
        its input then may die with EOFError (with any QEMU, forked or
        not): that is accepted once every command got its reply."""
        env = dict(os.environ)
        env['PYTHONPATH'] = os.path.join(self.src, 'python')
        env['HOME'] = self.r.dir            # its history file goes there
        p = subprocess.run(
            [sys.executable, os.path.join(self.src, 'scripts/qmp/qmp-shell'),
             sock],
            input=''.join(c + '\n' for c in commands), env=env,
            capture_output=True, text=True, timeout=timeout,
            start_new_session=True)
        replies = shell_replies(p.stdout)
        eof_after_quit = (commands[-1] == 'quit' and
                          len(replies) == len(commands) and
                          p.stderr.rstrip().endswith('EOFError'))
        check(p.returncode == 0 or eof_after_quit,
              'qmp-shell exited %d\nstdout: %s\nstderr: %s'
              % (p.returncode, p.stdout, p.stderr))
        check(len(replies) == len(commands),
              'qmp-shell gave %d replies to %d commands:\n%s\n%s' %
              (len(replies), len(commands), p.stdout, p.stderr))
        return replies

    def check_info(self, info, generation, clone_id, parent_pid):
        check(info['generation'] == generation and
              info['clone-id'] == clone_id and
              info['parent-pid'] == parent_pid,
              'query-vmfork: %s; expected generation %d, clone-id %d, '
              'parent-pid %d' % (info, generation, clone_id, parent_pid))

    # --- steps -------------------------------------------------------

    async def boot(self):
        from qemu.qmp import EventListener
        argv = [self.qemu, '-accel', 'tcg', '-M', 'pc', '-m', '64',
                '-nodefaults', '-display', 'none', '-name', 'eco-qmp',
                '-qmp', 'unix:%s,server=on,wait=off' % self.qmp_sock,
                '-qmp', 'unix:%s,server=on,wait=off' % self.shell_sock,
                '-serial', 'file:' + self.serial,
                '-kernel', self.tiny]
        self.tap.diag('running: tiny guest under tcg')
        self.proc = self.r.spawn(argv, stdout=subprocess.DEVNULL,
                                 stderr=open(self.r.path('qemu.err'), 'w'))
        self.client = await self.connect(self.qmp_sock, 'parent')
        self.listener = EventListener(EVENTS)
        self.client.register_listener(self.listener)
        ver = self.client.greeting.QMP.version['qemu']
        self.tap.diag('qemu.qmp connected to QEMU %d.%d.%d' %
                      (ver['major'], ver['minor'], ver['micro']))
        check(ecotest.wait_for(lambda: len(tick_lines(self.serial)) >= 3, 20),
              'the tiny guest printed no counter lines in 20 s')

    async def query_original(self):
        info = await self.qmp(self.client, 'query-vmfork')
        self.check_info(info, 0, 0, 0)
        check(info['children'] == [], 'children: %s' % info['children'])

    async def fork_qmp(self):
        tmpl = self.r.path('py-%i.sock')
        ret = await self.qmp(self.client, 'vmfork', {'monitor': tmpl})
        kids = ret['children']
        check(len(kids) == 1, 'vmfork returned %s' % ret)
        c = kids[0]
        check(c['monitor'] == self.r.path('py-0.sock'),
              'monitor %s, expected %s' % (c['monitor'],
                                           self.r.path('py-0.sock')))
        check(c['pid'] > 0 and c['pid'] != self.proc.pid, 'pid %s' % c['pid'])
        self.child1 = c
        self.tap.diag('child %d, monitor %s, clone-id %d' %
                      (c['pid'], c['monitor'], c['clone-id']))

    async def ready_event(self):
        c = self.child1
        ev = await self.event('VMFORK_CHILD_READY', c['pid'])
        check(ev['data']['monitor'] == c['monitor'] and
              ev['data']['clone-id'] == c['clone-id'],
              'event data %s, vmfork said %s' % (dict(ev['data']), c))

    async def child_monitor(self):
        c = self.child1
        self.child1_client = await self.connect(c['monitor'], 'child')
        info = await self.qmp(self.child1_client, 'query-vmfork')
        self.check_info(info, 1, c['clone-id'], self.proc.pid)
        check(info['children'] == [], 'child lists children %s' %
              info['children'])
        st = await self.qmp(self.child1_client, 'query-status')
        check(st['status'] == 'running', 'child status %s' % st)

    async def child_guest_runs(self):
        path = '%s.fork-%d' % (self.serial, self.child1['pid'])
        check(ecotest.wait_for(lambda: len(tick_lines(path)) >= 3, 20),
              'the child wrote no counter lines to %s in 20 s' % path)

    async def quit_child1(self):
        pid = self.child1['pid']
        await self.quit_child(self.child1_client)
        ev = await self.event('VMFORK_CHILD_EXITED', pid)
        check(ev['data']['status'] == 0, 'exit status %s' % dict(ev['data']))
        check(ecotest.pid_wait_gone(pid, 10),
              'child %d not reaped (zombie: %s)' %
              (pid, ecotest.pid_is_zombie(pid)))
        info = await self.qmp(self.client, 'query-vmfork')
        kid = [k for k in info['children'] if k['pid'] == pid]
        check(len(kid) == 1 and kid[0]['state'] == 'exited' and
              kid[0].get('exit-status') == 0,
              'parent query-vmfork: %s' % info)

    async def shell_fork(self):
        r = await asyncio.to_thread(self.run_shell, self.shell_sock,
                                    ['query-vmfork', 'vmfork count=1'])
        check('return' in r[0] and r[0]['return']['generation'] == 0,
              'query-vmfork: %s' % r[0])
        check('return' in r[1] and len(r[1]['return']['children']) == 1,
              'vmfork: %s' % r[1])
        c = r[1]['return']['children'][0]
        want = '%s.fork-%d' % (self.shell_sock, c['pid'])
        check(c['monitor'] == want, 'default monitor %s, expected %s' %
              (c['monitor'], want))
        self.shell_child = c
        self.tap.diag('qmp-shell: child %d, monitor %s' % (c['pid'],
                                                           c['monitor']))

    async def shell_child_quit(self):
        c = self.shell_child
        # qmp-shell cannot wait for the socket: READY says it is there
        await self.event('VMFORK_CHILD_READY', c['pid'])
        r = await asyncio.to_thread(self.run_shell, c['monitor'],
                                    ['query-vmfork', 'query-status', 'quit'])
        check('return' in r[0], 'query-vmfork: %s' % r[0])
        self.check_info(r[0]['return'], 1, c['clone-id'], self.proc.pid)
        check(r[1].get('return', {}).get('status') == 'running',
              'query-status: %s' % r[1])
        check(r[2] == {'return': {}}, 'quit: %s' % r[2])

    async def shell_child_events(self):
        c = self.shell_child
        ready = await self.event('VMFORK_CHILD_READY', c['pid'])
        check(ready['data']['monitor'] == c['monitor'], 'READY %s' %
              dict(ready['data']))
        ev = await self.event('VMFORK_CHILD_EXITED', c['pid'])
        check(ev['data']['status'] == 0, 'EXITED %s' % dict(ev['data']))
        check(ecotest.pid_wait_gone(c['pid'], 10), 'child not reaped')

    def legacy_phase(self):
        """The synchronous legacy API (in its own thread and event loop)"""
        from qemu.qmp.legacy import QEMUMonitorProtocol
        tmpl = self.r.path('leg-%i.sock')
        with QEMUMonitorProtocol(self.shell_sock) as mon:
            mon.connect()
            mon.settimeout(TIMEOUT)
            ret = mon.cmd('vmfork', count=2, monitor=tmpl)
            kids = ret['children']
            check(len(kids) == 2 and
                  [k['monitor'] for k in kids] ==
                  [self.r.path('leg-0.sock'), self.r.path('leg-1.sock')],
                  'vmfork count=2: %s' % ret)
            self.legacy_children = kids
            pids = {k['pid'] for k in kids}

            def pull(name, want):
                got = set()
                end = time.monotonic() + TIMEOUT
                while got != want:
                    left = end - time.monotonic()
                    check(left > 0, '%s for %s: only %s' % (name, want, got))
                    try:
                        ev = mon.pull_event(wait=float(left))
                    except asyncio.TimeoutError:
                        continue
                    if ev['event'] == name:
                        got.add(ev['data']['pid'])
                        if name == 'VMFORK_CHILD_EXITED':
                            check(ev['data']['status'] == 0, 'event %s' % ev)
                return got

            pull('VMFORK_CHILD_READY', pids)
            for k in kids:
                cm = QEMUMonitorProtocol(k['monitor'])
                cm.connect()
                cm.settimeout(TIMEOUT)
                info = cm.cmd('query-vmfork')
                self.check_info(info, 1, k['clone-id'], self.proc.pid)
                cm.cmd('quit')
                try:
                    # QEMU hangs up after "quit": the close reports EOF,
                    # as QEMU's own python/qemu/machine expects too
                    cm.close()
                except EOFError:
                    pass
            pull('VMFORK_CHILD_EXITED', pids)
        for pid in pids:
            check(ecotest.pid_wait_gone(pid, 10), 'child %d not reaped' % pid)

    async def legacy(self):
        await asyncio.to_thread(self.legacy_phase)

    async def parent_runs_on(self):
        st = await self.qmp(self.client, 'query-status')
        check(st['status'] == 'running', 'parent status %s' % st)
        n0 = len(tick_lines(self.serial))
        check(ecotest.wait_for(lambda: len(tick_lines(self.serial)) > n0 + 3,
                               20), 'the parent guest stopped ticking')
        info = await self.qmp(self.client, 'query-vmfork')
        self.check_info(info, 0, 0, 0)
        states = [(k['state'], k.get('exit-status')) for k in info['children']]
        check(len(states) == 4 and all(s == ('exited', 0) for s in states),
              'children of the parent: %s' % info['children'])

    async def quit_parent(self):
        await self.quit_child(self.client)   # same dance as for a child
        rc = await asyncio.to_thread(self.proc.wait, TIMEOUT)
        check(rc == 0, 'parent QEMU exited %d' % rc)
        # Nothing is left of the family: no process in its group
        try:
            os.killpg(self.proc.pid, 0)
            check(False, 'processes left in group %d' % self.proc.pid)
        except ProcessLookupError:
            pass
        left = [f for f in os.listdir(self.r.dir) if f.endswith('.sock') or
                '.sock.' in f]
        if left:
            self.tap.diag('socket files left after every QEMU exited: %s'
                          % left)
        check(not os.path.exists(self.qmp_sock) and
              not os.path.exists(self.shell_sock),
              'the parent left its monitor sockets: %s' % left)

    async def run(self):
        t = self.tap
        try:
            await t.astep('QEMU (tiny guest, TCG) boots and qemu.qmp '
                          'QMPClient connects', self.boot)
            await t.astep('query-vmfork via qemu.qmp on the original VM: '
                          'generation 0, no children', self.query_original)
            await t.astep('vmfork via qemu.qmp: one child, its monitor from '
                          'the %i template', self.fork_qmp)
            await t.astep('VMFORK_CHILD_READY through the qemu.qmp event '
                          'API, with pid, clone-id and monitor',
                          self.ready_event)
            await t.astep("the child's own monitor answers (qemu.qmp): "
                          'query-vmfork generation 1, running',
                          self.child_monitor)
            await t.astep('the child guest runs (its serial file .fork-PID '
                          'gets counter lines)', self.child_guest_runs)
            await t.astep("quit on the child's monitor: VMFORK_CHILD_EXITED "
                          'status 0, child reaped, listed as exited',
                          self.quit_child1)
            await t.astep('qmp-shell on stdin forks via a second monitor; '
                          'default child monitor is SOCKET.fork-PID',
                          self.shell_fork)
            await t.astep("qmp-shell on the child's socket: query-vmfork "
                          'generation 1, query-status, quit',
                          self.shell_child_quit)
            await t.astep('qemu.qmp saw VMFORK_CHILD_READY and '
                          'VMFORK_CHILD_EXITED for the qmp-shell child',
                          self.shell_child_events)
            await t.astep('legacy QEMUMonitorProtocol: vmfork count=2, '
                          'pull_event READY/EXITED, children quit',
                          self.legacy)
            await t.astep('the parent runs on: running, its guest ticks, '
                          '4 children listed exited with status 0',
                          self.parent_runs_on)
            await t.astep('quit the parent: exit 0, no process left, its '
                          'sockets removed', self.quit_parent)
        finally:
            for c in (self.client, getattr(self, 'child1_client', None)):
                if c is not None:
                    try:
                        await asyncio.wait_for(c.disconnect(), 5)
                    except Exception:              # noqa: BLE001
                        pass


def main():
    tap = ecotest.Tap()
    qemu_bin = ecotest.artifact('VMFORK_QEMU', 'qemu/qemu-system-x86_64')
    tiny = ecotest.artifact('VMFORK_TINY', 'guest/tiny/tiny.elf')
    src = ecotest.qemu_src()
    why = (ecotest.missing_file(qemu_bin, 'the patched QEMU') or
           ecotest.missing_file(tiny, 'the tiny test guest') or
           ecotest.missing_file(os.path.join(src, 'python/qemu/qmp/__init__.py'),
                                "QEMU's python/qemu/qmp (set VMFORK_QEMU_SRC "
                                'to the QEMU source tree)') or
           ecotest.missing_file(os.path.join(src, 'scripts/qmp/qmp-shell'),
                                "QEMU's scripts/qmp/qmp-shell"))
    if why is None and sys.version_info < (3, 9):
        why = 'python %s is too old (qemu.qmp and this test need 3.9)' % \
            sys.version.split()[0]
    if why is None:
        sys.path.insert(0, os.path.join(src, 'python'))
        try:
            importlib.import_module('qemu.qmp')
            importlib.import_module('qemu.qmp.legacy')
        except ImportError as e:
            why = 'cannot import qemu.qmp from %s: %s' % (src, e)
    if why:
        tap.skip_all(why)
        return 0
    tap.diag('python %s (%s), qemu.qmp from %s' %
             (sys.version.split()[0], sys.executable, src))
    reaper = ecotest.Reaper('vmfork-eco-qmp.')
    tap.plan(PLAN)
    try:
        asyncio.run(QmpClientsTest(tap, reaper, qemu_bin, tiny, src).run())
    finally:
        tap.finish()
        reaper.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
