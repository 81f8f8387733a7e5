#!/usr/bin/python3
# vmfork under libvirt: a private libvirtd runs the patched QEMU with the
# Linux test guest; vmfork through `virsh qemu-monitor-command`, the events
# through `virsh qemu-monitor-event`, the children checked on their own
# monitors (qmp-call, $VMFORK_QMP_CALL) and through the guest agent,
# scripts/vmfork-virsh.sh exercised for fork, ls, kill and events, what
# `virsh destroy` does to a live child, and what vmfork does under a seccomp
# filter like the one libvirt's default sandbox gives a seccomp-enabled QEMU.
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Needs root.  When libvirtd or virsh is missing it installs, from Debian
# (no recommends): libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
# (VMFORK_NO_INSTALL=1: skip instead).  libvirt-daemon-system is not needed
# and not wanted here: it pulls in systemd and systemd-sysv, the daemon is
# started by this test, not by an init system.
#
# It skips (never passes) only when what it needs cannot be had: not root,
# the guest or QEMU artifacts not built, libvirt missing with
# VMFORK_NO_INSTALL=1 or without apt-get.  Otherwise installing libvirt,
# starting the private libvirtd, defining or starting a domain are test
# points: a failure there fails the test, with the reason and the logs.
#
# The libvirtd is private to the test and leaves the host's libvirt alone:
# it runs in its own mount namespace (unshare) where /etc/libvirt,
# /var/lib/libvirt, /run/libvirt, /var/log/libvirt, /var/cache/libvirt and
# /etc/passwd + /etc/group (with the libvirt-qemu user that the qemu driver
# looks up at start) are bind mounts of files in the test's directory.
# virsh reaches it at qemu+unix:///system?socket=DIR/run/libvirt-sock.
# Its qemu.conf: user/group root, security_driver "none",
# dynamic_ownership 0, seccomp_sandbox 0, and libvirt's default
# stdio_handler "logd": a private virtlogd, started in the same namespace,
# gets QEMU's output and the chardevs' logs through pipes, as on a host
# with libvirt-daemon-system.  Everything is stopped and removed at the
# end: the domains, their children, libvirtd and virtlogd, the cgroups
# libvirt made, the mount points made for the bind mounts, the directory.

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from xml.sax.saxutils import escape

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ecotest                                     # noqa: E402
from ecotest import check                          # noqa: E402

PLAN = 16
TIMEOUT = 30.0
# What the test runs, and the Debian package that has it (libvirt-daemon
# comes with libvirt-daemon-driver-qemu)
TOOLS = [('libvirtd', 'libvirt-daemon'), ('virsh', 'libvirt-clients'),
         ('virtlogd', 'libvirt-daemon'),
         ('unshare', 'util-linux'), ('mount', 'mount')]
# Bind-mounted in the private mount namespace: the mount point, our name
PRIVATE_DIRS = [('/etc/libvirt', 'etc'), ('/var/lib/libvirt', 'lib'),
                ('/run/libvirt', 'run'), ('/var/log/libvirt', 'log'),
                ('/var/cache/libvirt', 'cache')]
EVENT_RE = re.compile(r"event (VMFORK_CHILD_\w+) .*?for domain '[^']*': "
                      r"(\{.*\})\s*$")

LIBVIRTD_CONF = '''\
# vmfork ecosystem test: a private libvirtd
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
'''

QEMU_CONF = '''\
# vmfork ecosystem test.  QEMU runs as root with no security labels, so
# that it can read build/ in the checkout and create sockets in the test's
# directory.  seccomp_sandbox = 0: with a QEMU built with seccomp, libvirt's
# default sandbox has spawn=deny, which makes vmfork's fork() fail (EPERM).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
seccomp_sandbox = 0
stdio_handler = "logd"
'''


# An <emulator> that runs the patched QEMU under a seccomp filter with the
# process-spawning part of QEMU's own "-sandbox on,spawn=deny" (which
# libvirt's default seccomp_sandbox adds to a QEMU built with seccomp):
# fork, vfork and clone without CLONE_THREAD fail with EPERM, clone3 with
# ENOSYS (glibc then creates threads with clone).  execve stays allowed, for
# the exec of QEMU itself.  This QEMU build has no seccomp, so this is how
# the test shows what vmfork does in such a sandbox.
SECCOMP_EMULATOR = r'''#!/usr/bin/python3
import ctypes, os, struct, sys
LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
ALLOW, EPERM, ENOSYS = 0x7fff0000, 0x00050000 | 1, 0x00050000 | 38
prog = [
    (LD, 0, 0, 4),                    # 0: arch
    (JEQ, 0, 5, 0xc000003e),          # 1: not x86_64: allow (7)
    (LD, 0, 0, 0),                    # 2: syscall number
    (JEQ, 4, 0, 56),                  # 3: clone: look at its flags (8)
    (JEQ, 5, 0, 57),                  # 4: fork: EPERM (10)
    (JEQ, 4, 0, 58),                  # 5: vfork: EPERM (10)
    (JEQ, 5, 0, 435),                 # 6: clone3: ENOSYS (12)
    (RET, 0, 0, ALLOW),               # 7
    (LD, 0, 0, 16),                   # 8: clone flags (low 32 bits)
    (JSET, 1, 0, 0x00010000),         # 9: CLONE_THREAD: allow (11)
    (RET, 0, 0, EPERM),               # 10
    (RET, 0, 0, ALLOW),               # 11
    (RET, 0, 0, ENOSYS),              # 12
]
buf = b''.join(struct.pack('=HBBI', *i) for i in prog)
filt = ctypes.create_string_buffer(buf, len(buf))
fprog = struct.pack('=HxxxxxxQ', len(prog), ctypes.addressof(filt))
fp = ctypes.create_string_buffer(fprog, len(fprog))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
# Not for libvirt's capability probe, which runs QEMU with -daemonize (a
# fork); libvirt passes no -sandbox to the probe either
if '-daemonize' not in sys.argv and (
        libc.prctl(38, 1, 0, 0, 0) or
        libc.prctl(22, 2, ctypes.addressof(fp), 0, 0)):
    sys.exit('seccomp: %s' % os.strerror(ctypes.get_errno()))
os.execv(@QEMU@, [@QEMU@] + sys.argv[1:])
'''


def run(argv, timeout=60, check_rc=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       **kw)
    if check_rc and p.returncode != 0:
        raise ecotest.StepFailed('%s exited %d\nstdout: %s\nstderr: %s' %
                                 (' '.join(argv), p.returncode, p.stdout,
                                  p.stderr))
    return p


def read_text(path):
    """A file's text ('' while it does not exist)"""
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def fd_links(pid, fds=None):
    """The targets of process @pid's fds (those in @fds, or all)"""
    d = '/proc/%d/fd' % pid
    links = []
    for fd in fds if fds is not None else os.listdir(d):
        try:
            links.append(os.readlink('%s/%s' % (d, fd)))
        except FileNotFoundError:
            pass                # closed meanwhile
    return links


def tail(path, n=20):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''


def serial_xml(agent_sock, console_log=None):
    """The guest's two serial ports: its agent, and its console (on a
    socket, or a pty logged to @console_log, as virt-install writes a
    console with a <log>)"""
    if console_log:
        console = f'''    <serial type='pty'>
      <log file='{escape(console_log)}' append='off'/>
      <target port='1'/>
    </serial>
'''
    else:
        console = f'''    <serial type='unix'>
      <source mode='bind' path='{escape(agent_sock)}.console'/>
      <target port='1'/>
    </serial>
'''
    return f'''    <serial type='unix'>
      <source mode='bind' path='{escape(agent_sock)}'/>
      <target port='0'/>
    </serial>
''' + console


class Agent:
    """The Linux guest's agent on a serial port (a unix socket)"""

    def __init__(self, path, timeout=TIMEOUT):
        self.sock = ecotest.connect_unix(path, timeout)
        self.buf = b''
        self.nonce = 0

    def close(self):
        self.sock.close()

    def _line(self, deadline):
        while b'\n' not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ecotest.StepFailed('agent connection closed')
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return line.decode('ascii', 'replace').strip('\r')

    def sync(self, timeout=90):
        """Wait until the agent answers.  A serial port drops what is sent
        while the guest does not read, and a line may be cut by a fork: ask
        `sh echo N<k>` (a unique reply) until the reply to the last request
        arrives; the agent answers in order, so nothing is pending then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.nonce += 1
            word = 'N%d' % self.nonce
            want = 'OK 0 ' + (word + '\n').encode().hex()
            self.sock.sendall(('\nsh echo %s\n' % word).encode())
            step = time.monotonic() + 2
            while True:
                line = self._line(min(step, deadline))
                if line is None:
                    break
                if line == want:
                    return
        raise ecotest.StepFailed('the guest agent did not answer in %d s'
                                 % timeout)

    def sh(self, command, timeout=TIMEOUT):
        """A guest shell command: its output (asserting status 0)"""
        status, _, out = self.cmd('sh ' + command, timeout).partition(' ')
        check(status == '0', 'guest: %r exited %s' % (command, status))
        return bytes.fromhex(out).decode()

    def cmd(self, line, timeout=TIMEOUT):
        """A command; the text after "OK " (asserting OK)"""
        self.sock.sendall((line + '\n').encode())
        deadline = time.monotonic() + timeout
        while True:
            r = self._line(deadline)
            check(r is not None, 'agent: no reply to %r' % line)
            if r.startswith('OK'):
                return r[3:]
            check(not r.startswith('ERR'), 'agent: %r -> %r' % (line, r))


class LibvirtTest:
    def __init__(self, tap, reaper, qemu, kernel, initrd, qmp_call, wrapper,
                 vmfork_tool):
        self.tap = tap
        self.vmfork_tool = vmfork_tool
        self.r = reaper
        self.qemu = qemu
        self.kernel = kernel
        self.initrd = initrd
        self.qmp_call = qmp_call
        self.wrapper = wrapper
        self.dom = 'vmfork-eco-%d' % os.getpid()
        # under the seccomp emulator (names up to 20 characters: libvirt
        # shortens longer ones in cgroup and directory names)
        self.sb_dom = 'vmfork-sb-%d' % os.getpid()
        # written the way virt-install writes a domain
        self.vi_dom = 'vmfork-vi-%d' % os.getpid()
        # where a clone is handed to libvirt
        self.adopt_dom = 'vmfork-ad-%d' % os.getpid()
        self.domains = []                     # defined so far
        self.d = reaper.dir
        self.sdir = reaper.path('s')          # sockets of the guests
        self.uri = 'qemu+unix:///system?socket=%s' % \
            reaper.path('run/libvirt-sock')
        self.libvirtd = None
        self.virtlogd_pid = reaper.path('run/virtlogd.pid')
        self.made_mountpoints = []
        self.cgroup_parents_before = set()
        self.qemu_pid = None
        self.qemu_pgid = None
        self.pgids = set()        # of every QEMU libvirt started for us
        self.children = {}        # pid -> reply entry, every child we made
        self.probes = set()       # children forked to probe the listener
        self.events_proc = None
        self.events_out = reaper.path('events.txt')
        self.parent_agent = None
        self.child_agent = None

    # --- setup ------------------------------------------------------------

    def virsh(self, *args, timeout=60, check_rc=True):
        return run(['virsh', '-c', self.uri] + list(args), timeout=timeout,
                   check_rc=check_rc)

    def start_libvirtd(self):
        """The private libvirtd, up and answering (a failed step if not)"""
        for _, name in PRIVATE_DIRS:
            os.makedirs(self.r.path(name), exist_ok=True)
        os.makedirs(self.sdir)
        with open(self.r.path('etc/libvirtd.conf'), 'w') as f:
            f.write(LIBVIRTD_CONF)
        with open(self.r.path('etc/qemu.conf'), 'w') as f:
            f.write(QEMU_CONF)
        # The qemu driver resolves its built-in default user libvirt-qemu
        # before it reads qemu.conf; libvirt-daemon-system would create it
        with open('/etc/passwd') as f:
            passwd = f.read()
        with open('/etc/group') as f:
            group = f.read()
        if not re.search(r'^libvirt-qemu:', passwd, re.M):
            passwd += ('libvirt-qemu:x:64055:64055:Libvirt Qemu:'
                       '/var/lib/libvirt:/usr/sbin/nologin\n')
        if not re.search(r'^libvirt-qemu:', group, re.M):
            group += 'libvirt-qemu:x:64055:\n'
        with open(self.r.path('passwd'), 'w') as f:
            f.write(passwd)
        with open(self.r.path('group'), 'w') as f:
            f.write(group)
        for mp, _ in PRIVATE_DIRS:
            if not os.path.isdir(mp):
                os.makedirs(mp)
                self.made_mountpoints.append(mp)
        self.r.on_cleanup(self.remove_mountpoints)
        for base in self.cgroup_roots():
            if os.path.isdir(os.path.join(base, 'machine')):
                self.cgroup_parents_before.add(base)
        self.r.on_cleanup(self.remove_cgroups)

        binds = [(self.r.path(name), mp) for mp, name in PRIVATE_DIRS]
        binds += [(self.r.path('passwd'), '/etc/passwd'),
                  (self.r.path('group'), '/etc/group')]
        script = 'set -e\n' + ''.join(
            'mount --bind "%s" "%s"\n' % b for b in binds) + \
            'virtlogd --daemon --pid-file "%s"\n' % self.virtlogd_pid + \
            'exec libvirtd --pid-file "%s"\n' % self.r.path('run/libvirtd.pid')
        self.libvirtd = self.r.spawn(
            ['unshare', '--mount', '--propagation', 'private', '--',
             '/bin/sh', '-c', script],
            stdout=open(self.r.path('libvirtd.out'), 'w'),
            stderr=subprocess.STDOUT)
        self.r.on_cleanup(self.stop_libvirtd)
        t0 = time.monotonic()
        end = t0 + 60
        while True:
            rc = self.libvirtd.poll()
            if rc is not None:
                raise ecotest.StepFailed('libvirtd exited (status %d) at '
                                         'start\n%s' %
                                         (rc, self.libvirtd_logs()))
            p = self.virsh('uri', check_rc=False, timeout=10)
            if p.returncode == 0:
                break
            check(time.monotonic() < end,
                  'libvirtd did not answer on %s in 60 s: %s\n%s' %
                  (self.uri, p.stderr.strip(), self.libvirtd_logs()))
            time.sleep(0.2)
        self.tap.diag('private libvirtd up in %.1f s at %s' %
                      (time.monotonic() - t0, self.uri))

    def libvirtd_logs(self, n=20):
        return ('libvirtd output (tail):\n%s\nlibvirtd.log (tail):\n%s' %
                (tail(self.r.path('libvirtd.out'), n).rstrip(),
                 tail(self.r.path('log/libvirtd.log'), n).rstrip()))

    # --- cleanup ---------------------------------------------------------

    @staticmethod
    def cgroup_roots():
        roots = ['/sys/fs/cgroup']
        try:
            roots += [os.path.join('/sys/fs/cgroup', d)
                      for d in os.listdir('/sys/fs/cgroup')]
        except OSError:
            pass
        return [r for r in roots if os.path.isfile(
            os.path.join(r, 'cgroup.procs'))]

    def domain_cgroups(self):
        """cgroup directories libvirt made for our domain (any hierarchy)"""
        found = []
        for base in self.cgroup_roots():
            m = os.path.join(base, 'machine')
            try:
                names = os.listdir(m)
            except OSError:
                continue
            for n in names:
                if any(n.endswith('-%s.libvirt-qemu' % d)
                       for d in (self.dom, self.sb_dom, self.vi_dom)):
                    found.append(os.path.join(m, n))
        return found

    def remove_cgroups(self):
        for top in self.domain_cgroups():
            for dirpath, _, _ in sorted(os.walk(top), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        for base in self.cgroup_roots():
            m = os.path.join(base, 'machine')
            if base not in self.cgroup_parents_before and os.path.isdir(m):
                try:
                    os.rmdir(m)
                except OSError:
                    pass

    def remove_mountpoints(self):
        for mp in reversed(self.made_mountpoints):
            try:
                os.rmdir(mp)
            except OSError as e:
                sys.stderr.write('cleanup: rmdir %s: %s\n' % (mp, e))

    def stop_libvirtd(self):
        self.stop_virtlogd()
        if self.libvirtd is None or self.libvirtd.poll() is not None:
            return
        self.libvirtd.terminate()
        try:
            self.libvirtd.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.libvirtd.kill()
            self.libvirtd.wait(timeout=5)

    def stop_virtlogd(self):
        """virtlogd, a daemon of its own (its pid file), once it is up"""
        try:
            with open(self.virtlogd_pid) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not ecotest.pid_wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
            ecotest.pid_wait_gone(pid, 5)

    def is_our_qemu(self, pid):
        """Is pid a QEMU of our domain (libvirt's "-name guest=NAME,...",
        which the children inherit)?"""
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                args = f.read().decode(errors='replace').split('\0')
        except OSError:
            return False
        names = [b for a, b in zip(args, args[1:]) if a == '-name']
        return os.path.realpath(args[0]) == os.path.realpath(self.qemu) and \
            any(n.split(',')[0] in ('guest=' + self.dom,
                                    'guest=' + self.sb_dom,
                                    'guest=' + self.vi_dom) for n in names)

    def kill_leftovers(self):
        """Every QEMU of our domain still alive: the children we know of,
        and anything in the process group of the QEMU libvirt started"""
        pids = set(self.children)
        for e in os.listdir('/proc'):
            if e.isdigit() and self._pgid(int(e)) in self.pgids:
                pids.add(int(e))
        for pid in pids:
            if self.is_our_qemu(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in pids:
            ecotest.pid_wait_gone(pid, 5)

    def cleanup_domain(self):
        if self.events_proc and self.events_proc.poll() is None:
            self.events_proc.terminate()
        for a in (self.parent_agent, self.child_agent):
            if a:
                a.close()
        if self.libvirtd and self.libvirtd.poll() is None:
            # children first: libvirt only stops the parent
            for pid in list(self.children):
                if self.is_our_qemu(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            for d in self.domains:
                self.virsh('destroy', d, check_rc=False)
                self.virsh('undefine', d, check_rc=False)
        self.kill_leftovers()

    # --- helpers ---------------------------------------------------------

    def qmp_virsh(self, cmd, args=None, dom=None):
        """QMP through `virsh qemu-monitor-command` on @dom (default: the
        first domain): the return value"""
        msg = {'execute': cmd}
        if args is not None:
            msg['arguments'] = args
        p = self.virsh('qemu-monitor-command', dom or self.dom,
                       json.dumps(msg))
        reply = json.loads(p.stdout)
        check('return' in reply, '%s via virsh: %s' % (cmd, reply))
        return reply['return']

    def qmp_child(self, sock, cmd, args=None):
        """QMP on a child's own monitor with qmp-call"""
        argv = [self.qmp_call, '-c', sock, cmd]
        if args is not None:
            argv.append(json.dumps(args))
        p = run(argv, check_rc=False)
        check(p.returncode == 0, 'qmp-call %s %s: exit %d: %s' %
              (sock, cmd, p.returncode, p.stderr.strip()))
        return json.loads(p.stdout) if p.stdout.strip() else None

    def wait_monitor(self, kid, timeout=TIMEOUT):
        """Until the child's monitor answers (what VMFORK_CHILD_READY says,
        for when no event listener runs)"""
        end = time.monotonic() + timeout
        while True:
            p = run([self.qmp_call, '-c', kid['monitor'], 'query-status'],
                    check_rc=False)
            if p.returncode == 0:
                return json.loads(p.stdout)
            check(time.monotonic() < end and not ecotest.pid_gone(kid['pid']),
                  "the child's monitor %s does not answer: %s" %
                  (kid['monitor'], p.stderr.strip()))
            time.sleep(0.1)

    def wrapper_run(self, *args, timeout=60):
        env = dict(os.environ, LIBVIRT_DEFAULT_URI=self.uri)
        p = run([self.wrapper] + list(args), timeout=timeout,
                check_rc=False, env=env)
        check(p.returncode == 0, 'vmfork-virsh.sh %s: exit %d\n%s%s' %
              (' '.join(args), p.returncode, p.stdout, p.stderr))
        return p.stdout

    def events(self):
        out = []
        try:
            with open(self.events_out) as f:
                for line in f:
                    m = EVENT_RE.search(line)
                    if m:
                        out.append((m.group(1), json.loads(m.group(2))))
        except FileNotFoundError:
            pass
        return out

    def wait_event(self, name, pid, timeout=TIMEOUT):
        ev = ecotest.wait_for(
            lambda: [d for n, d in self.events() if n == name and
                     d.get('pid') == pid], timeout)
        check(ev, '%s for pid %d not seen by virsh qemu-monitor-event in '
              '%.0f s; it printed:\n%s' % (name, pid, timeout,
                                            tail(self.events_out, 20)))
        return ev[0]

    def domain_log(self, dom=None):
        return tail(self.r.path('log/qemu/%s.log' % (dom or self.dom)), 400)

    def started(self, dom):
        """The QEMU pid of a domain that just started"""
        with open(self.r.path('run/qemu/%s.pid' % dom)) as f:
            pid = int(f.read().strip())
        self.pgids.add(os.getpgid(pid))
        return pid

    def child_cgroup_check(self, pid):
        def cg(p):
            with open('/proc/%d/cgroup' % p) as f:
                return f.read()
        check(cg(pid) == cg(self.qemu_pid),
              'the child is in other cgroups than its parent:\n%s\n%s' %
              (cg(pid), cg(self.qemu_pid)))
        line = [ln for ln in cg(pid).splitlines() if 'machine' in ln]
        self.tap.diag('child %d shares the parent\'s cgroups, e.g. %s' %
                      (pid, line[0] if line else cg(pid).splitlines()[0]))

    def fork_via_virsh(self, tmpl):
        ret = self.qmp_virsh('vmfork', {'monitor': tmpl})
        kids = ret['children']
        check(len(kids) == 1, 'vmfork: %s' % ret)
        for k in kids:
            self.children[k['pid']] = k
        if 'warning' in ret:
            self.tap.diag('vmfork warning: %s' % ret['warning'])
        return kids[0]

    # --- steps -----------------------------------------------------------

    def domcapabilities(self):
        v = run(['libvirtd', '--version']).stdout.strip()
        self.tap.diag('%s, virsh %s' % (v, run(['virsh', '--version'])
                                        .stdout.strip()))
        p = self.virsh('domcapabilities', '--emulatorbin', self.qemu,
                       '--virttype', 'qemu', '--arch', 'x86_64', timeout=120)
        m = re.search(r'<machine>([^<]+)</machine>', p.stdout)
        check(m and m.group(1).startswith('pc-'),
              'domcapabilities: no pc machine\n%s' % p.stdout[:2000])
        self.tap.diag('libvirt probed %s: default machine %s' %
                      (self.qemu, m.group(1)))

    def define(self, dom, emulator, agent_sock, qemu_args=(), pins=None):
        cmdline = ''.join("    <qemu:arg value='%s'/>\n" % escape(a)
                          for a in qemu_args)
        cputune = ("  <cputune><vcpupin vcpu='0' cpuset='%d'/>"
                   "<emulatorpin cpuset='%d'/></cputune>\n" %
                   (pins[1], pins[0])) if pins else ''

        if cmdline:
            cmdline = '  <qemu:commandline>\n%s  </qemu:commandline>\n' % \
                cmdline
        xml = f'''<domain type='qemu'
        xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(dom)}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
{cputune}  <genid/>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(self.kernel)}</kernel>
    <initrd>{escape(self.initrd)}</initrd>
    <cmdline>console=ttyS1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
{serial_xml(agent_sock)}    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
{cmdline}</domain>
'''
        path = self.r.path(dom + '.xml')
        with open(path, 'w') as f:
            f.write(xml)
        if not self.domains:
            self.r.on_cleanup(self.cleanup_domain)
        self.virsh('define', path)
        self.domains.append(dom)

    def start_domain(self):
        # With two CPUs: the vCPU on one, the emulator on the other
        cpus = sorted(os.sched_getaffinity(0))
        self.pins = (cpus[0], cpus[-1]) if len(cpus) > 1 else None
        self.define(self.dom, self.qemu, os.path.join(self.sdir, 'agent.sock'),
                    pins=self.pins)
        p = self.virsh('start', self.dom, check_rc=False, timeout=120)
        check(p.returncode == 0, 'virsh start: %s\n%s' %
              (p.stderr.strip(), self.domain_log()[-3000:]))
        self.qemu_pid = self.started(self.dom)
        self.qemu_pgid = os.getpgid(self.qemu_pid)
        log = self.domain_log()
        sandbox = re.search(r'^-sandbox (\S+)', log, re.M)
        self.tap.diag('QEMU pid %d; %s' % (
            self.qemu_pid, 'command line has -sandbox %s' % sandbox.group(1)
            if sandbox else 'no -sandbox on the command line (this QEMU has '
            'no seccomp support, or seccomp_sandbox = 0 without it)'))
        if sandbox and 'spawn=deny' in sandbox.group(1):
            self.tap.diag('spawn=deny: vmfork fork() will fail with EPERM')
        self.parent_agent = Agent(os.path.join(self.sdir, 'agent.sock'))
        self.parent_agent.sync()
        check(self.parent_agent.cmd('ping') == 'pong', 'ping')

    def fork(self):
        self.h_fork = self.parent_agent.cmd('fill a1')
        # The event listener first (it cannot replay events it missed)
        self.events_proc = self.r.spawn(
            [self.wrapper, '-c', self.uri, 'events', self.dom, '--timestamp'],
            stdout=open(self.events_out, 'w'), stderr=subprocess.STDOUT)
        self.wait_listener()
        tmpl = os.path.join(self.sdir, 'child-%i.sock')
        t0 = time.monotonic()
        self.child = self.fork_via_virsh(tmpl)
        self.tap.diag('virsh qemu-monitor-command vmfork: %.1f ms, child %d, '
                      'monitor %s' % ((time.monotonic() - t0) * 1000,
                                      self.child['pid'],
                                      self.child['monitor']))
        check(self.child['monitor'] == os.path.join(self.sdir, 'child-0.sock'),
              'monitor %s' % self.child['monitor'])
        check('is tainted: custom-monitor' in self.domain_log(),
              'libvirt did not log the custom-monitor taint')

    def wait_listener(self, timeout=TIMEOUT):
        """Until the event listener is known to be subscribed.  virsh
        qemu-monitor-event prints nothing once libvirtd has registered its
        callback, and libvirt does not replay events, so: fork a probe child
        that does not start, and end it (SIGKILL).  Its VMFORK_CHILD_READY
        and VMFORK_CHILD_EXITED, which the listener's regex matches, come
        out of the listener only if libvirtd had the callback registered
        when QEMU emitted them.  Repeat until a probe's event comes out.
        The probes stay in query-vmfork as exited children (self.probes);
        their clone IDs are their pids, and this domain has no disk, so they
        make no overlays."""
        t0 = time.monotonic()
        end = t0 + timeout
        while True:
            check(self.events_proc.poll() is None,
                  'vmfork-virsh.sh events exited: %s' % tail(self.events_out))
            ret = self.qmp_virsh('vmfork', {
                'monitor': os.path.join(self.sdir, 'probe-%p.sock'),
                'start': False})
            kid = ret['children'][0]
            self.children[kid['pid']] = kid
            self.probes.add(kid['pid'])
            check(self.is_our_qemu(kid['pid']), 'probe %s' % kid)
            os.kill(kid['pid'], signal.SIGKILL)
            seen = ecotest.wait_for(lambda: [
                (n, d['pid']) for n, d in self.events()
                if d.get('pid') in self.probes], 1.0)
            if seen:
                break
            check(time.monotonic() < end,
                  'no event of %d probe children came out of vmfork-virsh.sh '
                  'events in %.0f s; it printed:\n%s' %
                  (len(self.probes), timeout, tail(self.events_out)))
        for pid in self.probes:
            check(ecotest.pid_wait_gone(pid, 10), 'probe %d not reaped' % pid)
        self.tap.diag('event listener subscribed: %s of probe %d came out '
                      '(%d probe(s), %.2f s)' %
                      (seen[0][0], seen[0][1], len(self.probes),
                       time.monotonic() - t0))

    def ready_event(self):
        ev = self.wait_event('VMFORK_CHILD_READY', self.child['pid'])
        check(ev['monitor'] == self.child['monitor'] and
              ev['clone-id'] == self.child['clone-id'], 'READY %s' % ev)

    def child_monitor(self):
        c = self.child
        info = self.qmp_child(c['monitor'], 'query-vmfork')
        check(info['generation'] == 1 and info['parent-pid'] == self.qemu_pid
              and info['clone-id'] == c['clone-id'],
              'child query-vmfork %s (parent QEMU pid %d)' %
              (info, self.qemu_pid))
        st = self.qmp_child(c['monitor'], 'query-status')
        check(st['status'] == 'running', 'child status %s' % st)
        self.child_cgroup_check(c['pid'])
        if self.pins:
            self.child_pins_check(c)

    def child_pins_check(self, c):
        """<vcpupin> and <emulatorpin>: libvirt put the parent's vCPU thread
        on a CPU and in a cgroup of its own; the child's vCPU thread is
        there too, and its main thread where the parent's is"""
        def task(pid, tid, what):
            with open('/proc/%d/task/%d/%s' % (pid, tid, what)) as f:
                return f.read()

        def cpus(pid, tid):
            return [ln.split()[1] for ln in task(pid, tid, 'status')
                    .splitlines() if ln.startswith('Cpus_allowed_list:')][0]
        ptid = self.qmp_virsh('query-cpus-fast')[0]['thread-id']
        ctid = self.qmp_child(c['monitor'], 'query-cpus-fast')[0]['thread-id']
        want = (str(self.pins[0]), str(self.pins[1]))
        got = (cpus(c['pid'], c['pid']), cpus(c['pid'], ctid))
        check((cpus(self.qemu_pid, self.qemu_pid),
               cpus(self.qemu_pid, ptid)) == want,
              'libvirt did not pin the parent: %s' % (want,))
        check(got == want, 'the child\'s main thread and vCPU thread may run '
              'on CPUs %s, the parent\'s on %s' % (got, want))
        check(task(c['pid'], ctid, 'cgroup') == task(self.qemu_pid, ptid,
                                                     'cgroup'),
              'the child\'s vCPU thread is in other cgroups than the '
              'parent\'s:\n%s\n%s' % (task(c['pid'], ctid, 'cgroup'),
                                       task(self.qemu_pid, ptid, 'cgroup')))
        self.tap.diag('child %d: vCPU thread %d on CPU %s in the cgroups of '
                      'the parent\'s (%s), main thread on CPU %s' %
                      (c['pid'], ctid, got[1],
                       [ln for ln in task(c['pid'], ctid, 'cgroup')
                        .splitlines() if 'cpuset' in ln][:1], got[0]))

    def isolation(self):
        c = self.child
        sock = os.path.join(self.sdir, 'child-agent.sock')
        self.qmp_child(c['monitor'], 'chardev-change', {
            'id': 'charserial0',
            'backend': {'type': 'socket', 'data': {
                'addr': {'type': 'unix', 'data': {'path': sock}},
                'server': True, 'wait': False}}})
        self.child_agent = Agent(sock)
        self.child_agent.sync()
        pa, ca = self.parent_agent, self.child_agent
        h_child = ca.cmd('hash')
        check(h_child == self.h_fork, 'child hash %s, at the fork %s' %
              (h_child, self.h_fork))
        h_parent2 = pa.cmd('fill b2')
        check(h_parent2 != self.h_fork, 'fill b2 did not change the hash')
        check(ca.cmd('hash') == self.h_fork,
              'the child sees the parent\'s write')
        h_child3 = ca.cmd('fill c3')
        check(h_child3 != h_parent2, 'fill c3 hash equals fill b2\'s')
        check(pa.cmd('hash') == h_parent2, 'the parent sees the child\'s write')
        cid = ca.cmd('cloneid')
        self.tap.diag('child guest: clone-id via fw_cfg %r' % cid)

    def libvirt_view(self):
        st = self.virsh('domstate', self.dom).stdout.strip()
        check(st == 'running', 'virsh domstate: %s' % st)
        names = self.virsh('list', '--all', '--name').stdout.split()
        check(names == [self.dom], 'virsh list: %s' % names)
        info = self.qmp_virsh('query-vmfork')
        kid = [k for k in info['children'] if k['pid'] == self.child['pid']]
        check(kid and kid[0]['state'] == 'running', 'query-vmfork %s' % info)
        # Nor can libvirt adopt it: its qemu driver no longer attaches to a
        # QEMU it did not start (docs/migrate.md says so)
        p = self.virsh('qemu-attach', str(self.child['pid']), check_rc=False)
        check(p.returncode != 0 and 'not supported' in p.stderr,
              'virsh qemu-attach of the child: rc %d, %s' %
              (p.returncode, p.stderr.strip()))
        names = self.virsh('list', '--all', '--name').stdout.split()
        check(names == [self.dom], 'virsh list after qemu-attach: %s' % names)

    def adopt(self):
        """Hand the clone to libvirt: a domain of the same XML, started
        paused and waiting for a migration (-incoming defer through
        <qemu:commandline>), takes it in with vmfork migrate"""
        dom = self.adopt_dom
        sock = os.path.join(self.sdir, 'adopt-agent.sock')
        port = ecotest.free_port()
        c = self.fork_via_virsh(os.path.join(self.sdir, 'adoptee-%p.sock'))
        self.wait_monitor(c)
        child_sock = os.path.join(self.sdir, 'adoptee-agent.sock')
        self.qmp_child(c['monitor'], 'chardev-change', {
            'id': 'charserial0',
            'backend': {'type': 'socket', 'data': {
                'addr': {'type': 'unix', 'data': {'path': child_sock}},
                'server': True, 'wait': False}}})
        agent = Agent(child_sock)
        agent.sync()
        h_child = agent.cmd('fill d4')
        cid = agent.cmd('cloneid')
        agent.close()
        self.define(dom, self.qemu, sock, ('-incoming', 'defer'))
        p = self.virsh('start', dom, '--paused', check_rc=False, timeout=120)
        check(p.returncode == 0, 'virsh start --paused: %s\n%s' %
              (p.stderr.strip(), self.domain_log(dom)[-3000:]))
        self.started(dom)
        uri = 'tcp:127.0.0.1:%d' % port
        p = self.virsh('qemu-monitor-command', dom, json.dumps(
            {'execute': 'migrate-incoming', 'arguments': {'uri': uri}}))
        check('return' in json.loads(p.stdout), 'migrate-incoming: %s' %
              p.stdout)
        p = run([self.vmfork_tool, 'migrate', c['monitor'], '--to', uri],
                check_rc=False, timeout=120)
        check(p.returncode == 0, 'vmfork migrate: exit %d: %s%s' %
              (p.returncode, p.stdout, p.stderr))
        self.tap.diag('into libvirt: %s' % p.stdout.strip())
        check(ecotest.pid_wait_gone(c['pid'], 10), 'the clone did not quit')
        self.virsh('resume', dom)
        st = self.virsh('domstate', dom).stdout.strip()
        check(st == 'running', 'virsh domstate %s: %s' % (dom, st))
        agent = Agent(sock)
        agent.sync()
        h = agent.cmd('hash')
        cid2 = agent.cmd('cloneid')
        agent.close()
        check(h == h_child, "the domain's memory hash %s, the clone's %s" %
              (h, h_child))
        check(cid2 == cid, "the domain's clone id %r, the clone's %r" %
              (cid2, cid))
        names = sorted(self.virsh('list', '--name').stdout.split())
        check(dom in names, 'virsh list: %s' % names)
        # libvirt manages it like any domain of its own
        self.virsh('destroy', dom)
        st = self.virsh('domstate', dom).stdout.strip()
        check(st == 'shut off', 'after virsh destroy: %s' % st)

    def wrapper_fork_ls(self):
        out = self.wrapper_run('fork', self.dom, '--monitor',
                               os.path.join(self.sdir, 'wrap-%p.sock'))
        m = re.search(r'^pid (\d+) clone-id (\d+) monitor (\S+)$', out, re.M)
        check(m and re.search(r'^forked 1 child in [0-9.]+ ms$', out, re.M),
              'fork output:\n%s' % out)
        pid = int(m.group(1))
        self.children[pid] = {'pid': pid, 'monitor': m.group(3),
                              'clone-id': int(m.group(2))}
        check(m.group(3) == os.path.join(self.sdir, 'wrap-%d.sock' % pid),
              'monitor %s' % m.group(3))
        self.wrap_child = pid
        self.wait_event('VMFORK_CHILD_READY', pid)
        out = self.wrapper_run('ls', self.dom)
        check(out.startswith('clone-id 0 generation 0 parent-pid 0\n'),
              'ls:\n%s' % out)
        rows = {int(ln.split()[0]): ln.split() for ln in
                out.splitlines()[2:]}
        for p in (self.child['pid'], pid):
            check(p in rows and rows[p][2] == 'running',
                  'ls does not list %d running:\n%s' % (p, out))
        info = self.qmp_child(m.group(3), 'query-vmfork')
        check(info['generation'] == 1, 'query-vmfork %s' % info)

    def wrapper_kill(self):
        pid = self.wrap_child
        out = self.wrapper_run('kill', self.dom, str(pid))
        check(out.strip() == 'pid %d exited with status 0' % pid,
              'kill output: %r' % out)
        ev = self.wait_event('VMFORK_CHILD_EXITED', pid)
        check(ev['status'] == 0, 'EXITED %s' % ev)
        check(ecotest.pid_wait_gone(pid, 10), 'child %d not reaped' % pid)

    def quit_child(self):
        c = self.child
        self.child_agent.close()
        self.child_agent = None
        self.qmp_child(c['monitor'], 'quit')
        ev = self.wait_event('VMFORK_CHILD_EXITED', c['pid'])
        check(ev['status'] == 0, 'EXITED %s' % ev)
        check(ecotest.pid_wait_gone(c['pid'], 10), 'child not reaped')
        out = self.wrapper_run('ls', self.dom)
        rows = {int(ln.split()[0]): ln.split() for ln in
                out.splitlines()[2:]}
        ours = {c['pid'], self.wrap_child}
        check(set(rows) == ours | self.probes and
              all(rows[p][2] == 'exited' and rows[p][3] == '0' for p in ours)
              and all(rows[p][2] == 'exited' for p in self.probes),
              'ls (probe children %s):\n%s' % (sorted(self.probes), out))
        out = self.wrapper_run('kill', self.dom, '--all')
        check(out.strip() == 'no running child', 'kill --all: %r' % out)
        check(self.parent_agent.cmd('ping') == 'pong', 'parent agent')

    def destroy(self):
        self.parent_agent.close()
        self.parent_agent = None
        self.virsh('destroy', self.dom)
        st = self.virsh('domstate', self.dom).stdout.strip()
        check(st == 'shut off', 'domstate after destroy: %s' % st)
        check(ecotest.pid_wait_gone(self.qemu_pid, 10),
              'QEMU %d still there' % self.qemu_pid)
        left = [p for p in os.listdir('/proc') if p.isdigit() and
                self._pgid(int(p)) == self.qemu_pgid]
        check(not left, 'processes left in the QEMU group: %s' % left)
        check(not self.domain_cgroups(), 'libvirt left cgroups: %s' %
              self.domain_cgroups())

    @staticmethod
    def _pgid(pid):
        try:
            return os.getpgid(pid)
        except OSError:
            return None

    def destroy_with_child(self):
        """libvirt stops the QEMU it started; a child is not a domain.

        The outcome is decided, not observed: the child lives on.  libvirt
        9.0's virsh destroy (qemuProcessStop) ends the domain with
        qemuProcessKill(FORCE|NOCHECK), i.e. virProcessKillPainfullyDelay()
        on the QEMU pid alone: kill(pid, SIGTERM), SIGKILL if it is still
        there after 10 s; not its process group, which the child is in
        (strace of libvirtd shows no other kill()).  It then removes
        the domain's cgroups (virDomainCgroupRemoveCgroup): through
        systemd-machined that would be TerminateMachine, which kills every
        process of the machine's scope, the child too; this private libvirtd
        has no systemd, so its cgroups are plain cgroupfs directories, which
        it only rmdir()s, and that fails with EBUSY while the child is in
        them ("Failed to remove cgroup").  The qemu driver kills no cgroup
        (virCgroupKillPainfully is the LXC driver's)."""
        p = self.virsh('start', self.dom, check_rc=False, timeout=120)
        check(p.returncode == 0, 'virsh start: %s\n%s' %
              (p.stderr.strip(), self.domain_log()[-3000:]))
        self.qemu_pid = self.started(self.dom)
        self.qemu_pgid = os.getpgid(self.qemu_pid)
        # libvirt's own cgroupfs layout (machine/qemu-N-NAME.libvirt-qemu),
        # not a systemd-machined scope: what the outcome rests on
        cgs = self.domain_cgroups()
        check(cgs, 'the domain is not in cgroupfs directories of libvirt '
              '(machine/qemu-N-%s.libvirt-qemu): %s' %
              (self.dom, tail('/proc/%d/cgroup' % self.qemu_pid)))
        kid = self.fork_via_virsh(os.path.join(self.sdir, 'orphan-%i.sock'))
        pid = kid['pid']
        self.wait_monitor(kid)
        check(self._pgid(pid) == self.qemu_pgid,
              'the child is not in the QEMU\'s process group')
        self.virsh('destroy', self.dom)
        st = self.virsh('domstate', self.dom).stdout.strip()
        check(st == 'shut off', 'domstate after destroy: %s' % st)
        check(ecotest.pid_wait_gone(self.qemu_pid, 10), 'parent still there')
        # virsh destroy has returned: libvirt is done with the domain.  The
        # child lives on, an orphan, and still answers on its own monitor
        check(not ecotest.pid_gone(pid) and not ecotest.pid_is_zombie(pid),
              'virsh destroy ended the child %d too' % pid)
        info = self.qmp_child(kid['monitor'], 'query-vmfork')
        check(info['parent-pid'] == self.qemu_pid and
              info['clone-id'] == kid['clone-id'],
              'orphan query-vmfork %s (its parent was %d)' %
              (info, self.qemu_pid))
        st = self.qmp_child(kid['monitor'], 'query-status')
        check(st['status'] == 'running', 'orphan status %s' % st)
        # in the cgroups that libvirt could not remove because of it
        left = [c for c in cgs if os.path.isdir(c)]
        check(left == cgs, 'libvirt removed cgroups the child is in: %s' %
              sorted(set(cgs) - set(left)))
        for c in left:
            check(self.in_cgroup(pid, c), 'the orphan %d is not in %s' %
                  (pid, c))
        warn = [ln[ln.index('Failed'):] for ln in
                tail(self.r.path('log/libvirtd.log'), 50).splitlines()
                if 'Failed to remove cgroup' in ln]
        self.tap.diag('after virsh destroy the child %d lives on (parent %d '
                      'gone, new parent %s), running, in %d cgroups libvirt '
                      'could not remove%s' %
                      (pid, self.qemu_pid, self._ppid(pid), len(left),
                       ' (libvirtd.log: %s)' % warn[-1] if warn else ''))
        # quit on its own monitor is how an orphan is stopped.  Its parent
        # is now init (or the nearest subreaper), which reaps it
        self.qmp_child(kid['monitor'], 'quit')
        check(ecotest.pid_wait_gone(pid, 15),
              'orphan %d %s 15 s after quit (its parent: %s)' %
              (pid, 'exited but was not reaped' if ecotest.pid_is_zombie(pid)
               else 'still runs', self._ppid(pid)))
        # what libvirt could not remove while the child was there
        check(ecotest.wait_for(lambda: self.remove_cgroups() or
                               not self.domain_cgroups(), 10),
              'cgroups left: %s' % self.domain_cgroups())

    @staticmethod
    def in_cgroup(pid, top):
        """Is pid in the cgroup top or below it?"""
        for dirpath, _, files in os.walk(top):
            if 'cgroup.procs' in files:
                try:
                    with open(os.path.join(dirpath, 'cgroup.procs')) as f:
                        if str(pid) in f.read().split():
                            return True
                except OSError:
                    pass
        return False

    @staticmethod
    def _ppid(pid):
        """'PPID (COMM)' of pid, or '?'"""
        try:
            with open('/proc/%d/stat' % pid) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open('/proc/%d/comm' % ppid) as f:
                return '%d (%s)' % (ppid, f.read().strip())
        except (OSError, ValueError, IndexError):
            return '?'

    def seccomp_spawn_deny(self):
        """What vmfork does under libvirt's default seccomp sandbox"""
        emu = self.r.path('qemu-seccomp')
        with open(emu, 'w') as f:
            f.write(SECCOMP_EMULATOR.replace('@QEMU@', repr(self.qemu)))
        os.chmod(emu, 0o755)
        sock = os.path.join(self.sdir, 'sb-agent.sock')
        self.define(self.sb_dom, emu, sock)
        p = self.virsh('start', self.sb_dom, check_rc=False, timeout=120)
        check(p.returncode == 0, 'virsh start: %s\n%s' %
              (p.stderr.strip(), self.domain_log(self.sb_dom)[-3000:]))
        pid = self.started(self.sb_dom)
        agent = Agent(sock)
        try:
            agent.sync()
            h = agent.cmd('fill d4')
            p = self.virsh('qemu-monitor-command', self.sb_dom, json.dumps(
                {'execute': 'vmfork', 'arguments': {
                    'monitor': os.path.join(self.sdir, 'sb-%i.sock')}}))
            reply = json.loads(p.stdout)
            err = reply.get('error', {})
            check(err.get('class') == 'GenericError' and
                  'fork() failed: Operation not permitted' in
                  err.get('desc', ''), 'vmfork under spawn=deny: %s' % reply)
            self.tap.diag('vmfork under a spawn=deny filter: %s: %s' %
                          (err['class'], err['desc']))
            st = self.virsh('domstate', self.sb_dom).stdout.strip()
            check(st == 'running', 'domstate %s' % st)
            st = self.virsh('qemu-monitor-command', self.sb_dom,
                            '{"execute":"query-status"}').stdout
            check('"running":true' in st, 'query-status %s' % st)
            info = self.virsh('qemu-monitor-command', self.sb_dom,
                              '{"execute":"query-vmfork"}').stdout
            check('"children":[]' in info, 'query-vmfork %s' % info)
            check(agent.cmd('hash') == h and agent.cmd('ping') == 'pong',
                  'the guest did not run on untouched')
            kids = [e for e in os.listdir('/proc') if e.isdigit() and
                    self._pgid(int(e)) == self._pgid(pid) and int(e) != pid]
            check(not kids, 'processes next to the QEMU: %s' % kids)
        finally:
            agent.close()
        self.virsh('destroy', self.sb_dom)

    def virt_install_domain(self):
        """A domain as virt-install writes one (q35, qcow2 on virtio-blk
        with an IOThread, cache='none' and io='native' as tuned domains
        and OpenStack's have it, a SATA cdrom, a qemu-ga channel, a pty console
        with a <log>, VNC, virtio-rng, balloon, tablet, user network):
        forked with virsh qemu-monitor-command, each VM writes its own
        disk, each guest's channel carries its own line and its console
        its own log, every image passes qemu-img check"""
        qimg = os.path.join(os.path.dirname(self.qemu), 'qemu-img')
        disk, cd = self.r.path('vi-disk.qcow2'), self.r.path('vi-cd.iso')
        odir = self.r.path('vi-overlays')
        os.makedirs(odir)
        run([qimg, 'create', '-q', '-f', 'qcow2', disk, '64M'])
        run([qimg, 'create', '-q', '-f', 'raw', cd, '1M'])
        agent_sock = os.path.join(self.sdir, 'vi-agent.sock')
        qga = os.path.join(self.sdir, 'vi-qga.sock')
        vnc = os.path.join(self.sdir, 'vi-vnc.sock')
        console_log = self.r.path('vi-console.log')
        xml = f'''<domain type='qemu'>
  <name>{escape(self.vi_dom)}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <iothreads>1</iothreads>
  <genid/>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(self.kernel)}</kernel>
    <initrd>{escape(self.initrd)}</initrd>
    <cmdline>console=ttyS1 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{escape(self.qemu)}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'
              iothread='1' discard='unmap'/>
      <source file='{escape(disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(cd)}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' model='qemu-xhci' ports='15'/>
    <interface type='user'><model type='virtio'/></interface>
{serial_xml(agent_sock, console_log)}    <channel type='unix'>
      <source mode='bind' path='{escape(qga)}'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' socket='{escape(vnc)}'/>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
'''
        path = self.r.path(self.vi_dom + '.xml')
        with open(path, 'w') as f:
            f.write(xml)
        if not self.domains:
            self.r.on_cleanup(self.cleanup_domain)
        self.virsh('define', path)
        self.domains.append(self.vi_dom)
        p = self.virsh('start', self.vi_dom, check_rc=False, timeout=120)
        check(p.returncode == 0, 'virsh start: %s\n%s' %
              (p.stderr.strip(), self.domain_log(self.vi_dom)[-3000:]))
        vi_pid = self.started(self.vi_dom)
        log = self.domain_log(self.vi_dom)
        check('-blockdev' in log and 'iothread' in log and '-vnc' in log and
              'virtio-vga' in log and '"aio":"native"' in log and
              'logfile=/dev/fdset/' in log,
              'libvirt did not use -blockdev, an IOThread, Linux AIO, VNC, '
              'virtio-vga and virtlogd for the console\'s log:\n%s' %
              log[-3000:])
        pa = Agent(agent_sock)
        ca = None
        try:
            pa.sync()
            # The guest's virtio_gpu driver: its 2D resources are memfds
            # that each child must copy (ui/qemu-pixman.c)
            got = pa.sh('modprobe virtio-gpu && test -e /dev/dri/card0 && '
                        'echo loaded')
            check(got.strip() == 'loaded', 'virtio-gpu: %r' % got)
            pa.sh('printf before-the-fork | dd of=/dev/vda bs=512 seek=100 '
               'conv=fsync 2>/dev/null')
            # The console's <log> is a pipe to virtlogd: the child's log
            # goes where the command says
            p = self.virsh('qemu-monitor-command', self.vi_dom, json.dumps(
                {'execute': 'vmfork', 'arguments': {
                    'monitor': os.path.join(self.sdir, 'vi-child-%i.sock'),
                    'overlay-dir': odir,
                    'chardevs': [{'id': 'charserial1',
                                  'logfile': console_log + '.child-%p'}]}}))
            reply = json.loads(p.stdout)
            check('return' in reply, 'vmfork: %s' % reply)
            kid = reply['return']['children'][0]
            self.children[kid['pid']] = kid
            self.wait_monitor(kid)
            chans = {c['id']: c['path'] for c in kid['chardevs']}
            self.tap.diag('child %d: chardevs %s' % (kid['pid'], chans))
            check(chans.get('charchannel0') == qga + '.fork-%d' % kid['pid'],
                  'the qemu-ga channel is not listed: %s' % chans)
            csock = os.path.join(self.sdir, 'vi-child-agent.sock')
            self.qmp_child(kid['monitor'], 'chardev-change', {
                'id': 'charserial0', 'backend': {'type': 'socket', 'data': {
                    'addr': {'type': 'unix', 'data': {'path': csock}},
                    'server': True, 'wait': False}}})
            ca = Agent(csock)
            ca.sync()
            for a, word in ((pa, 'parent'), (ca, 'child')):
                a.sh('printf written-by-the-%s | dd of=/dev/vda bs=512 '
                   'seek=200 conv=fsync 2>/dev/null' % word)
            for a, word in ((pa, 'parent'), (ca, 'child')):
                got = a.sh('dd if=/dev/vda bs=512 skip=200 count=1 '
                         'iflag=direct 2>/dev/null | tr -d "\\000"')
                check(got == 'written-by-the-' + word, '%s reads %r' %
                      (word, got))
                got = a.sh('dd if=/dev/vda bs=512 skip=100 count=1 '
                         'iflag=direct 2>/dev/null | tr -d "\\000"')
                check(got == 'before-the-fork', '%s reads %r' % (word, got))
            # The console's log (a pty with a <log>): the parent's through
            # virtlogd, the child's its own file
            child_log = '%s.child-%d' % (console_log, kid['pid'])
            for a, word in ((pa, 'parent'), (ca, 'child')):
                a.sh('echo console-of-the-%s > /dev/ttyS1' % word)
            for path, word, other in ((console_log, 'parent', 'child'),
                                      (child_log, 'child', 'parent')):
                check(ecotest.wait_for(lambda: 'console-of-the-' + word in
                                       read_text(path), 10),
                      '%s: no line of the %s: %r' % (path, word,
                                                     read_text(path)))
                check('console-of-the-' + other not in read_text(path),
                      '%s has a line of the %s' % (path, other))
            # The console's pipe to virtlogd, in an fd set of the parent
            # (libvirt's /dev/fdset/N): no fd of the child holds it, or
            # virtlogd would see the parent's log end only with the child
            pipes = {t for t in fd_links(vi_pid, [
                f['fd'] for s in self.qmp_virsh('query-fdsets',
                                                dom=self.vi_dom)
                for f in s['fds']]) if t.startswith('pipe:')}
            check(pipes, 'no pipe in the fd sets of %s' % self.vi_dom)
            held = pipes & set(fd_links(kid['pid']))
            check(not held, 'the child holds the parent\'s log pipe %s' %
                  held)
            # The child's qemu-ga channel: its own socket carries its guest
            ch = ecotest.connect_unix(chans['charchannel0'], TIMEOUT)
            try:
                dev = ca.sh('for p in /sys/class/virtio-ports/*; do '
                         '[ "$(cat $p/name)" = org.qemu.guest_agent.0 ] && '
                         'echo /dev/${p##*/}; done').strip()
                check(dev.startswith('/dev/vport'), 'no channel in the guest')
                # the port is open on the host side once QEMU has the client
                check(ecotest.wait_for(lambda: any(
                    c['label'] == 'charchannel0' and
                    not c['filename'].startswith('disconnected:')
                    for c in self.qmp_child(kid['monitor'], 'query-chardev')),
                    10), 'the child did not accept the channel client')
                ca.sh('echo from-the-child > %s' % dev)
                ch.settimeout(TIMEOUT)
                got = b''
                while not got.endswith(b'\n'):
                    data = ch.recv(4096)
                    check(data, 'the child channel closed')
                    got += data
                check(got == b'from-the-child\n', 'child channel: %r' % got)
            finally:
                ch.close()
            self.qmp_child(kid['monitor'], 'quit')
            check(ecotest.pid_wait_gone(kid['pid'], 15), 'child not gone')
            self.paused_template_forks(odir)
        finally:
            pa.close()
            if ca:
                ca.close()
        self.virsh('destroy', self.vi_dom)
        for name in sorted(os.listdir(odir)) + [disk]:
            img = os.path.join(odir, name) if name != disk else disk
            p = run([qimg, 'check', '-q', img], check_rc=False)
            check(p.returncode == 0, 'qemu-img check %s: %s' %
                  (img, p.stdout + p.stderr))
        # the domain's two layers, the first child's overlay
        check(len(os.listdir(odir)) == 3, 'overlays: %s' % os.listdir(odir))
        self.tap.diag('overlays %s and the base pass qemu-img check' %
                      ', '.join(sorted(os.listdir(odir))))

    def paused_template_forks(self, odir):
        """The virt-install domain paused with virsh suspend and forked
        twice more, as a pool forks its template: the first of these forks
        gives its disk a new layer (the domain wrote the one it had), the
        second keeps it, and each reply names the child's overlay"""
        def chain():
            for b in self.qmp_virsh('query-block', dom=self.vi_dom):
                ins = b.get('inserted')
                if ins and not ins['ro']:
                    n, image = 0, ins['image']
                    while image:
                        n, image = n + 1, image.get('backing-image')
                    return n
            check(False, 'no writable disk in query-block')
        self.virsh('suspend', self.vi_dom)
        chains = []
        for i in range(2):
            kid = self.qmp_virsh('vmfork', {
                'monitor': os.path.join(self.sdir, 'vi-tmpl-%p.sock'),
                'overlay-dir': odir, 'start': False,
                'chardevs': [{'id': 'charserial1',
                              'logfile': self.r.path('vi-tmpl-%p.log')}]},
                dom=self.vi_dom)['children'][0]
            self.children[kid['pid']] = kid
            ov = kid.get('overlays', [])
            check(len(ov) == 1 and os.path.dirname(ov[0]) == odir and
                  os.path.exists(ov[0]), 'overlays of the child: %s' % ov)
            chains.append(chain())
            self.wait_monitor(kid)
            self.qmp_child(kid['monitor'], 'quit')
            check(ecotest.pid_wait_gone(kid['pid'], 15), 'child not gone')
            os.unlink(ov[0])
        self.tap.diag('paused with virsh suspend, forked twice more: %s '
                      'images in its chain' % ' then '.join(map(str, chains)))
        check(chains == [3, 3], 'the paused domain\'s chain: %s images after '
              'its forks, not 3 and 3' % chains)
        self.virsh('resume', self.vi_dom)

    def setup(self, need):
        if need:
            install(self.tap, need)
        self.start_libvirtd()

    def run(self, need):
        t = self.tap
        t.step('libvirt is installed%s; a private libvirtd starts in its '
               'own mount namespace' % (' (apt-get install ' + ' '.join(need)
                                        + ')' if need else ''),
               self.setup, need)
        t.step('libvirt probes the patched QEMU (virsh domcapabilities '
               '--emulatorbin)', self.domcapabilities)
        t.step('a libvirt domain (TCG, direct kernel boot, Linux guest) '
               'runs the patched QEMU; its agent answers', self.start_domain)
        t.step('vmfork via virsh qemu-monitor-command, once a probe child\'s '
               'event proved the event listener subscribed; the domain is '
               'tainted custom-monitor', self.fork)
        t.step('VMFORK_CHILD_READY via vmfork-virsh.sh events (virsh '
               'qemu-monitor-event)', self.ready_event)
        t.step("the child's own monitor answers: query-vmfork generation 1, "
               "parent-pid = the domain's QEMU; same cgroups; its vCPU "
               "thread pinned (<vcpupin>, <emulatorpin>) and in the cgroups "
               "of the parent's", self.child_monitor)
        t.step('memory isolation via the guest agent (child serial0 moved '
               'with chardev-change)', self.isolation)
        t.step("libvirt's view: the domain runs, the child is no domain, "
               'query-vmfork lists it, virsh qemu-attach cannot adopt it '
               '(not supported)', self.libvirt_view)
        t.step('vmfork-virsh.sh fork --monitor and ls', self.wrapper_fork_ls)
        t.step('vmfork-virsh.sh kill: SIGTERM, "exited with status 0", '
               'VMFORK_CHILD_EXITED, reaped', self.wrapper_kill)
        t.step("quit on the first child's monitor: EXITED status 0; ls shows "
               'both exited; kill --all finds none', self.quit_child)
        t.step('a clone handed to libvirt: vmfork migrate into a domain of '
               'the same XML started --paused with -incoming defer; after '
               'virsh resume it runs the clone (memory hash, clone id), the '
               'clone process is gone, virsh destroy ends it', self.adopt)
        t.step('virsh destroy: QEMU gone, no process left in its group, '
               'libvirt removed its cgroups', self.destroy)
        t.step('virsh destroy with a live child: the parent stops, the child '
               'lives on (libvirt kills the QEMU pid only) in the cgroups '
               'libvirt cannot remove; quit on its monitor ends it',
               self.destroy_with_child)
        t.step("seccomp like libvirt's default sandbox (spawn=deny): vmfork "
               'fails with EPERM, the domain runs on untouched',
               self.seccomp_spawn_deny)
        t.step('a domain as virt-install writes one (q35, -blockdev qcow2 on '
               'an IOThread with io=\'native\', SATA cdrom, qemu-ga '
               'channel, pty console with a log through virtlogd (the '
               'child\'s in its own file), VNC and virtio-vga with '
               'the guest\'s driver, rng, balloon, tablet, user net) forks: '
               'own disk data, own channel, own console log; paused (virsh '
               'suspend) and forked twice more, its disk keeps one layer; '
               'clean images', self.virt_install_domain)


def have(cmd):
    return shutil.which(cmd, path=os.environ.get('PATH', '') +
                        ':/usr/sbin:/sbin') is not None


def packages_needed():
    """The Debian packages to install for what is missing here"""
    need = [pkg for tool, pkg in TOOLS if not have(tool)]
    if 'libvirt-daemon' in need:
        need.append('libvirt-daemon-driver-qemu')
    elif have('dpkg-query'):
        # Debian's libvirtd without its qemu driver starts, but has no
        # qemu domains
        p = subprocess.run(['dpkg-query', '-W', '-f',
                            '${Package} ${db:Status-Status}\n',
                            'libvirt-daemon', 'libvirt-daemon-driver-qemu'],
                           capture_output=True, text=True)
        st = dict(ln.split(None, 1) for ln in p.stdout.splitlines()
                  if len(ln.split(None, 1)) == 2)
        if st.get('libvirt-daemon') == 'installed' and \
                st.get('libvirt-daemon-driver-qemu') != 'installed':
            need.append('libvirt-daemon-driver-qemu')
    return need


def install(tap, packages):
    """apt-get install packages (a failed step if it does not work)"""
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    argv = ['apt-get', 'install', '-y', '-q', '--no-install-recommends'] + \
        packages
    t0 = time.monotonic()
    tap.diag('installing %s (apt-get, no recommends)' % ' '.join(packages))
    p = subprocess.run(argv, capture_output=True, text=True, env=env,
                       timeout=600)
    if p.returncode != 0:
        # stale package lists: update once and try again
        u = subprocess.run(['apt-get', 'update', '-q'], capture_output=True,
                           text=True, env=env, timeout=600)
        p = subprocess.run(argv, capture_output=True, text=True, env=env,
                           timeout=600)
        check(p.returncode == 0, '%s exited %d (also after apt-get update, '
              'which exited %d)\n%s' %
              (' '.join(argv), p.returncode, u.returncode,
               '\n'.join((u.stderr + p.stdout + p.stderr)
                         .splitlines()[-30:])))
    tap.diag('installed in %.1f s' % (time.monotonic() - t0))
    left = [tool for tool, _ in TOOLS if not have(tool)]
    check(not left, '%s still missing after installing %s' %
          (' and '.join(left), ' '.join(packages)))


def main():
    tap = ecotest.Tap()
    os.environ['PATH'] = os.environ.get('PATH', '') + ':/usr/sbin:/sbin'
    qemu = ecotest.artifact('VMFORK_QEMU', 'qemu/qemu-system-x86_64')
    kernel = ecotest.artifact('VMFORK_LINUX_KERNEL', 'guest/linux/vmlinux')
    initrd = ecotest.artifact('VMFORK_LINUX_INITRD',
                              'guest/linux/initramfs.img')
    qmp_call = os.environ.get('VMFORK_QMP_CALL') or \
        ecotest.artifact('VMFORK_QMP_CALL', 'tools/qmp-call')
    wrapper = os.environ.get('VMFORK_VIRSH_WRAPPER') or \
        os.path.join(ecotest.top_dir(), 'scripts/vmfork-virsh.sh')
    # Skip only for what cannot be had here; as root, with libvirt
    # installed or installable, a failure to set it up fails the test
    why = None
    if os.geteuid() != 0:
        why = ('needs root: it runs a private system-mode libvirtd in its own '
               'mount namespace (and installs libvirt when missing)')
    why = why or ecotest.missing_file(qemu, 'the patched QEMU') or \
        ecotest.missing_file(kernel, 'the Linux test guest kernel') or \
        ecotest.missing_file(initrd, 'the Linux test guest initramfs') or \
        ecotest.missing_file(qmp_call, 'qmp-call') or \
        ecotest.missing_file(wrapper, 'scripts/vmfork-virsh.sh')
    need = [] if why else packages_needed()
    if why is None and need:
        missing = ', '.join(tool for tool, _ in TOOLS if not have(tool)) or \
            'the libvirt qemu driver'
        if os.environ.get('VMFORK_NO_INSTALL', '') not in ('', '0'):
            why = ('%s missing and VMFORK_NO_INSTALL is set (apt-get install '
                   '--no-install-recommends %s)' % (missing, ' '.join(need)))
        elif not have('apt-get'):
            why = ('%s missing and no apt-get to install %s' %
                   (missing, ' '.join(need)))
    if why:
        tap.skip_all(why)
        return 0

    reaper = ecotest.Reaper('vmfork-eco-lv.', subreaper=False)
    vmfork_tool = os.environ.get('VMFORK_TOOL') or \
        ecotest.artifact('VMFORK_TOOL', 'tools/vmfork')
    test = LibvirtTest(tap, reaper, qemu, kernel, initrd, qmp_call, wrapper,
                       vmfork_tool)
    try:
        tap.plan(PLAN)
        test.run(need)
        tap.finish()
    finally:
        log = tail(reaper.path('log/libvirtd.log'), 15)
        if tap.failed and log:
            tap.diag('libvirtd.log (tail):\n' + log)
        log = test.domain_log()[-2000:]
        if tap.failed and log:
            tap.diag('domain log (tail):\n' + log)
        reaper.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
