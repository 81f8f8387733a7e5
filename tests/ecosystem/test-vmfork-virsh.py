#!/usr/bin/python3
# scripts/vmfork-virsh.sh against a scripted virsh: argument handling, the
# JSON it sends, how it reads replies (monitor paths with quotes, spaces,
# brackets, escapes), its output, exit codes, and kill's checks.  No
# libvirt, no QEMU, no root: this runs everywhere.  test-libvirt.py runs
# the same script against a real libvirtd.
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ecotest                                     # noqa: E402
from ecotest import check                          # noqa: E402

# The scripted virsh: it logs its arguments (one JSON array per line) and
# answers from a state file.  query-vmfork lists each child as running
# while its process exists, then as exited with status 143.
FAKE_VIRSH = r'''#!/usr/bin/python3
import json, os, sys
state_path = os.environ['FAKE_VIRSH_STATE']
with open(state_path) as f:
    st = json.load(f)
with open(os.environ['FAKE_VIRSH_LOG'], 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\n')
args = sys.argv[1:]
if args[:1] == ['-c']:
    args = args[2:]
if st.get('broken'):
    sys.stderr.write('error: failed to connect to the hypervisor\n')
    sys.exit(1)
cmd = args[0]
if cmd == 'dominfo':
    if args[1] not in (st['domain'], '1'):
        sys.stderr.write("error: failed to get domain '%s'\n" % args[1])
        sys.exit(1)
    print('Id:             1\nName:           %s\nState:          running'
          % st['domain'])
elif cmd == 'qemu-monitor-command':
    dom = args[args.index('--domain') + 1]
    msg = json.loads(args[args.index('--cmd') + 1])
    if dom not in (st['domain'], '1'):
        sys.stderr.write("error: failed to get domain '%s'\n" % dom)
        sys.exit(1)
    if msg['execute'] == 'vmfork':
        if 'error' in st:
            print(json.dumps({'id': 'libvirt-9', 'error': st['error']},
                             separators=(',', ':')))
            sys.exit(0)
        ret = {'children': st['children']}
        if 'warning' in st:
            ret['warning'] = st['warning']
    elif msg['execute'] == 'query-vmfork':
        kids = []
        for c in st['children']:
            c = dict(c)
            if os.path.exists('/proc/%d' % c['pid']) and \
                    open('/proc/%d/stat' % c['pid']).read().rsplit(
                        ')', 1)[1].split()[0] != 'Z':
                c['state'] = 'running'
            else:
                c['state'] = 'exited'
                c['exit-status'] = 143
            kids.append(c)
        ret = {'parent-pid': 0, 'children': kids, 'clone-id': 0,
               'generation': 0}
    else:
        print(json.dumps({'id': 'libvirt-9', 'error': {
            'class': 'CommandNotFound',
            'desc': "The command %s has not been found" % msg['execute']}}))
        sys.exit(0)
    print(json.dumps({'return': ret, 'id': 'libvirt-9'},
                     separators=(',', ':')))
elif cmd == 'qemu-monitor-event':
    print("event VMFORK_CHILD_READY at 1.000001 for domain '%s': {}"
          % st['domain'])
else:
    sys.stderr.write('fake virsh: %s?\n' % cmd)
    sys.exit(1)
'''

ODD = '/tmp/odd dir/"q" [b] \\ x%p.sock'


class WrapperTest:
    def __init__(self, tap, reaper, wrapper):
        self.tap = tap
        self.r = reaper
        self.wrapper = wrapper
        self.virsh = reaper.path('virsh')
        self.state = reaper.path('state.json')
        self.log = reaper.path('virsh.log')
        with open(self.virsh, 'w') as f:
            f.write(FAKE_VIRSH)
        os.chmod(self.virsh, 0o755)
        self.set_state()

    def set_state(self, **kw):
        st = {'domain': 'dom,1', 'children': []}
        st.update(kw)
        with open(self.state, 'w') as f:
            json.dump(st, f)

    def calls(self):
        """virsh's argument lists since the last call"""
        try:
            with open(self.log) as f:
                out = [json.loads(ln) for ln in f]
        except FileNotFoundError:
            return []
        os.unlink(self.log)
        return out

    def run(self, *args, rc=0):
        env = dict(os.environ, VIRSH=self.virsh, FAKE_VIRSH_STATE=self.state,
                   FAKE_VIRSH_LOG=self.log)
        p = subprocess.run([self.wrapper] + list(args), capture_output=True,
                           text=True, env=env, timeout=60)
        check(p.returncode == rc, '%s: exit %d, expected %d\nstdout: %s\n'
              'stderr: %s' % (' '.join(args), p.returncode, rc, p.stdout,
                              p.stderr))
        return p

    def sent(self):
        """The QMP commands the wrapper sent, and the -c options"""
        out = []
        for a in self.calls():
            if 'qemu-monitor-command' in a:
                out.append(json.loads(a[a.index('--cmd') + 1]))
        return out

    # --- steps -----------------------------------------------------------

    def help_usage(self):
        p = self.run('--help')
        check(p.stdout.startswith('Usage: vmfork-virsh.sh') and
              'fork DOMAIN' in p.stdout and 'events' in p.stdout, p.stdout)
        self.run('fork', '--help')
        for args in ([], ['frobnicate'], ['fork'], ['fork', 'd', 'e'],
                     ['fork', 'd', '--count', 'x'], ['fork', 'd', '--bogus'],
                     ['fork', 'd', '--arg', 'nojson'],
                     ['kill', 'd'], ['kill', 'd', '12x'],
                     ['kill', 'd', '5', '--signal', 'NOPE'],
                     ['kill', 'd', '5', '--all'], ['ls'],
                     ['events', 'd', '--timeout', 'soon'], ['-c']):
            p = self.run(*args, rc=2)
            check('vmfork-virsh.sh: ' in p.stderr, 'no message for %s: %r'
                  % (args, p.stderr))
        check(self.calls() == [], 'virsh was run on a usage error')

    def fork_args(self):
        self.set_state(children=[
            {'clone-id': 41, 'monitor': '/tmp/a-0.sock', 'pid': 41},
            {'pid': 42, 'monitor': ODD.replace('%p', '42'), 'clone-id': 42}])
        p = self.run('-c', 'qemu:///x', 'fork', 'dom,1', '--count', '2',
                     '--monitor', ODD, '--serial=/tmp/s-%i.log', '--no-start',
                     '--paused-parent', '--overlay-dir', '/tmp/o"v',
                     '--arg', 'hostfwd-offset=100', '--arg', 'x-y={"a":[1]}')
        calls = self.calls()
        check(calls and calls[0][:2] == ['-c', 'qemu:///x'],
              'virsh args %s' % calls)
        cmd = json.loads(calls[0][calls[0].index('--cmd') + 1])
        check(cmd == {'execute': 'vmfork', 'arguments': {
            'count': 2, 'monitor': ODD, 'serial': '/tmp/s-%i.log',
            'start': False, 'parent': 'paused', 'overlay-dir': '/tmp/o"v',
            'hostfwd-offset': 100, 'x-y': {'a': [1]}}}, 'sent %s' % cmd)
        lines = p.stdout.splitlines()
        check(lines[0] == 'pid 41 clone-id 41 monitor /tmp/a-0.sock' and
              lines[1] == 'pid 42 clone-id 42 monitor ' +
              ODD.replace('%p', '42') and
              lines[2].startswith('forked 2 children in ') and len(lines) == 3,
              'output:\n%s' % p.stdout)
        self.run('fork', 'dom,1')
        check(self.sent() == [{'execute': 'vmfork', 'arguments': {}}],
              'plain fork sent something else')

    def fork_json_warning(self):
        self.set_state(children=[{'pid': 7, 'monitor': '/m', 'clone-id': 7}],
                       warning='no vmgenid "device"')
        p = self.run('fork', 'dom,1', '--json')
        check(json.loads(p.stdout) == {
            'children': [{'pid': 7, 'monitor': '/m', 'clone-id': 7}],
            'warning': 'no vmgenid "device"'}, 'json: %r' % p.stdout)
        p = self.run('fork', 'dom,1')
        check('warning: no vmgenid "device"' in p.stderr, p.stderr)

    def errors(self):
        self.set_state(error={'class': 'GenericError',
                              'desc': 'vmfork: count must be between 1 and 256'})
        p = self.run('fork', 'dom,1', '--count', '300', rc=1)
        check('GenericError: vmfork: count must be between 1 and 256' in
              p.stderr, p.stderr)
        self.set_state(broken=True)
        self.run('fork', 'dom,1', rc=3)
        self.run('ls', 'dom,1', rc=3)
        self.set_state()
        self.run('ls', 'other', rc=3)
        self.calls()

    def ls(self):
        self.set_state(children=[
            {'pid': 999999999, 'monitor': '/tmp/gone.sock', 'clone-id': 5},
            {'pid': os.getpid(), 'monitor': ODD, 'clone-id': 6}])
        p = self.run('ls', 'dom,1')
        lines = p.stdout.splitlines()
        check(lines[0] == 'clone-id 0 generation 0 parent-pid 0' and
              lines[1].split() == ['PID', 'CLONE-ID', 'STATE', 'EXIT',
                                   'MONITOR'] and
              lines[2].split() == ['999999999', '5', 'exited', '143',
                                   '/tmp/gone.sock'] and
              lines[3].split(None, 4) == [str(os.getpid()), '6', 'running',
                                          '-', ODD], 'ls:\n%s' % p.stdout)
        p = self.run('ls', 'dom,1', '--json')
        check(json.loads(p.stdout)['children'][1]['monitor'] == ODD,
              p.stdout)

    def kill_checks(self):
        # A process that looks like a QEMU of domain "dom,1" (libvirt
        # doubles the comma), one that does not
        dom_like = self.r.spawn([sys.executable, '-c',
                                 'import time; time.sleep(60)',
                                 '-name', 'guest=dom,,1,debug-threads=on'])
        other = self.r.spawn([sys.executable, '-c',
                              'import time; time.sleep(60)',
                              '-name', 'guest=dom,,2,debug-threads=on'])
        self.set_state(children=[
            {'pid': dom_like.pid, 'monitor': '/m1', 'clone-id': 1},
            {'pid': other.pid, 'monitor': '/m2', 'clone-id': 2},
            {'pid': 999999999, 'monitor': '/m3', 'clone-id': 3}])
        p = self.run('kill', 'dom,1', '12345', rc=1)
        check('not a child' in p.stderr, p.stderr)
        p = self.run('kill', 'dom,1', '999999999', rc=1)
        check('already exited (status 143)' in p.stderr, p.stderr)
        p = self.run('kill', 'dom,1', str(other.pid), rc=3)
        check('is not a QEMU of domain' in p.stderr, p.stderr)
        check(other.poll() is None, 'the wrong process was signalled')
        # the domain by id: the name comes from dominfo
        p = self.run('kill', '1', str(dom_like.pid))
        check(p.stdout.strip() == 'pid %d exited with status 143' %
              dom_like.pid, 'kill: %r' % p.stdout)
        check(dom_like.wait(5) == -15, 'not ended by SIGTERM: %s' %
              dom_like.returncode)
        other.kill()
        other.wait(5)
        p = self.run('kill', 'dom,1', '--all')
        check(p.stdout.strip() == 'no running child', p.stdout)

    def kill_signal_timeout(self):
        stubborn = self.r.spawn([sys.executable, '-c',
                                 'import signal, time; '
                                 'signal.signal(signal.SIGUSR1, '
                                 'signal.SIG_IGN); time.sleep(60)',
                                 '-name', 'guest=dom,,1'])
        time.sleep(0.3)          # the handler is set
        self.set_state(children=[{'pid': stubborn.pid, 'monitor': '/m',
                                  'clone-id': 9}])
        t0 = time.monotonic()
        p = self.run('kill', 'dom,1', '--all', '--signal', 'SIGUSR1',
                     '--timeout', '1', rc=3)
        check('timed out' in p.stderr and time.monotonic() - t0 < 10,
              p.stderr)
        p = self.run('kill', 'dom,1', str(stubborn.pid), '-s', '9')
        check('exited with status 143' in p.stdout, p.stdout)
        stubborn.wait(5)

    def events(self):
        p = self.run('-c', 'test:///u', 'events', 'dom,1', '--timeout', '5',
                     '--timestamp')
        a = self.calls()[0]
        check(a[:3] == ['-c', 'test:///u', 'qemu-monitor-event'] and
              '--regex' in a and '--loop' in a and
              a[a.index('--event') + 1] == 'VMFORK_CHILD_(READY|EXITED)' and
              a[a.index('--timeout') + 1] == '5' and '--timestamp' in a and
              a[a.index('--domain') + 1] == 'dom,1', 'virsh args %s' % a)
        check('VMFORK_CHILD_READY' in p.stdout, p.stdout)
        self.run('events', '--once')
        a = self.calls()[0]
        check('--loop' not in a and '--domain' not in a, 'args %s' % a)

    def run_all(self):
        t = self.tap

        def fresh(fn):
            """each step starts with an empty virsh log and state"""
            def step():
                self.calls()
                self.set_state()
                return fn()
            return step
        t.step('--help, and usage errors exit 2 without running virsh',
               fresh(self.help_usage))
        t.step('fork: the vmfork arguments sent, -c passed to virsh, one '
               'line per child (odd monitor paths)', fresh(self.fork_args))
        t.step('fork --json prints the return value; a warning goes to '
               'stderr', fresh(self.fork_json_warning))
        t.step('a QMP error exits 1 with class and description; a virsh '
               'failure exits 3', fresh(self.errors))
        t.step('ls: identity line and one row per child', fresh(self.ls))
        t.step('kill: refuses unknown, exited and foreign pids; signals and '
               'waits for "exited"', fresh(self.kill_checks))
        t.step('kill --signal and --timeout', fresh(self.kill_signal_timeout))
        t.step('events: virsh qemu-monitor-event with the vmfork events',
               fresh(self.events))


def main():
    tap = ecotest.Tap(chain=False)
    wrapper = os.environ.get('VMFORK_VIRSH_WRAPPER') or \
        os.path.join(ecotest.top_dir(), 'scripts/vmfork-virsh.sh')
    why = ecotest.missing_file(wrapper, 'scripts/vmfork-virsh.sh')
    if why is None and not shutil.which('bash'):
        why = 'bash not found'
    if why:
        tap.skip_all(why)
        return 0
    reaper = ecotest.Reaper('vmfork-eco-wr.')
    tap.plan(8)
    try:
        WrapperTest(tap, reaper, wrapper).run_all()
        tap.finish()
    finally:
        reaper.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
