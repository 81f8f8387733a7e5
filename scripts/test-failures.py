#!/usr/bin/env python3
#
# What each failed test of a meson run said, printed last
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later
#
# meson's --print-errorlogs prints a TAP test's stderr only, in the middle
# of the run's output, and CI keeps only the tail of that.  This prints,
# after the summary, each failed test's "not ok" lines, its error messages
# (GLib's "ERROR:", Python's tracebacks, sanitizer reports) and the last
# lines it wrote, from meson's testlog.json.
#
# Usage: test-failures.py BUILDDIR [LINES]

import json
import os
import sys

PASSED = ('OK', 'SKIP', 'EXPECTEDFAIL')


def interesting(line):
    return (line.startswith('not ok') or line.startswith('Bail out') or
            'ERROR' in line or 'Error' in line or 'assert' in line or
            'Traceback' in line or 'Sanitizer' in line or
            line.startswith('# FAIL') or line.startswith('# check failed'))


def main():
    build = sys.argv[1]
    tail = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    path = os.path.join(build, 'meson-logs', 'testlog.json')
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            tests = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        print('test-failures: %s' % e)
        return 0
    failed = [t for t in tests if t.get('result') not in PASSED]
    for t in failed:
        out = (t.get('stdout') or '') + (t.get('stderr') or '')
        lines = out.splitlines()
        print('=' * 78)
        print('%s: %s after %.1f s (exit %s)' %
              (t['name'], t['result'], t.get('duration', 0),
               t.get('returncode')))
        print('-- its failures and errors (the first 60):')
        for line in [x for x in lines if interesting(x)][:60]:
            print('   ' + line[:400])
        print('-- its last %d lines:' % tail)
        for line in lines[-tail:]:
            print('   ' + line[:400])
    if failed:
        print('=' * 78)
        print('%d failed; whole output in %s' %
              (len(failed), os.path.join(build, 'meson-logs', 'testlog.txt')))
    return 0


if __name__ == '__main__':
    sys.exit(main())
