#!/usr/bin/env python3
"""Compare QEMU's own test results, patched tree against the release.

Reads meson's JSON test logs (meson-logs/<logbase>.json, one object per
test) of both trees and the suites of each test (meson-info/
intro-tests.json), and classifies every test by name:

  same         both trees gave the same outcome (OK/OK, SKIP/SKIP)
  release-too  it does not pass on the release either ("fails on the
               release too"): not a difference
  better       the patched tree does better than the release
  new          the test exists on the patched tree only
  difference   the patched tree does worse (the release passes and the
               patched tree fails, times out, skips or lacks the test, or
               both pass but a TAP subtest that passes on the release is
               skipped or missing on the patched tree), then:
                 explained    listed in the expected file with a reason
                 flaky        did as well as on the release when run again
                 unexplained  none of these: fails check-qemu

The expected file has one test name a line, then its reason; '#' starts a
comment.  Writes results.json and results.txt into OUTDIR and exits 1 when
an unexplained difference exists (2 on bad input).

  check-qemu-compare.py --release LOG --patched LOG --intro JSON
      [--intro JSON] [--retry LOG] [--expected FILE] --suites "a b c"
      --outdir DIR [--candidates] [--meta KEY=VALUE]...

--candidates prints the names of the tests that differ and are not
explained (the ones to run again), one a line, and writes nothing.
"""
import argparse
import json
import os
import re
import sys

PASS = {"OK", "EXPECTEDFAIL"}
# How good an outcome is: a difference is a worse outcome on the patched tree.
RANK = {"OK": 0, "EXPECTEDFAIL": 0, "SKIP": 1}
MISSING = "MISSING"


def rank(result):
    if result == MISSING:
        return 3
    return RANK.get(result, 2)  # FAIL, TIMEOUT, ERROR, UNEXPECTEDPASS, ...


def split_name(full):
    """meson logs 'qemu:qtest+qtest-x86_64 / qtest-x86_64/qom-test':
    the project, the test's suites, and its name."""
    if " / " in full:
        head, name = full.split(" / ", 1)
        suites = head.split(":", 1)[-1].split("+")
        return name, suites
    return full, []


def read_log(path):
    tests = {}
    if not path or not os.path.exists(path):
        return tests
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                t = json.loads(line)
                t["name"], t["suites"] = split_name(t["name"])
                tests[t["name"]] = t
    return tests


def read_expected(path):
    expected = {}
    if not path or not os.path.exists(path):
        return expected
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) < 2:
                sys.exit(f"{path}:{n}: '{parts[0]}' has no reason")
            expected[parts[0]] = parts[1]
    return expected


def suites_of(logs, intro_paths, wanted):
    """name -> the first of the wanted suites the test is in."""
    out = {}
    for log in logs:
        for name, t in log.items():
            for s in t["suites"]:
                if s in wanted and name not in out:
                    out[name] = s
    for path in intro_paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for t in json.load(f):
                for s in t["suite"]:
                    s = s.split(":", 1)[-1]
                    if s in wanted and t["name"] not in out:
                        out[t["name"]] = s
    return out


TAP_LINE = re.compile(r"^(not )?ok\s+\d+\s*-?\s*([^#]*?)\s*(#\s*(SKIP|TODO)\b.*)?$", re.I)


def passed_subtests(t):
    """The names of the TAP subtests a test passed (ok, not skipped)."""
    out = set()
    for line in (t.get("stdout") or "").splitlines():
        m = TAP_LINE.match(line)
        if m and not m.group(1) and not m.group(3):
            out.add(m.group(2))
    return out


def why(t):
    """A few lines that say why a test did not pass: TAP 'not ok' lines,
    assertion messages, and the tail of its output."""
    if not t:
        return []
    text = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
    lines = [l for l in text.splitlines() if l.strip()]
    keep = [l for l in lines
            if re.match(r"\s*not ok\b", l) or "ERROR:" in l or "assert" in l.lower()
            or "Bail out" in l or "FAILED" in l or "failed" in l]
    keep = keep[:8] or lines[-8:]
    return [l[:300] for l in keep]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", required=True)
    ap.add_argument("--patched", required=True)
    ap.add_argument("--retry")
    ap.add_argument("--intro", action="append", default=[])
    ap.add_argument("--expected")
    ap.add_argument("--suites", required=True)
    ap.add_argument("--outdir")
    ap.add_argument("--candidates", action="store_true")
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()

    wanted = a.suites.split()
    rel, pat, retry = read_log(a.release), read_log(a.patched), read_log(a.retry)
    if not rel or not pat:
        print("check-qemu-compare: a test log is missing or empty", file=sys.stderr)
        return 2
    expected = read_expected(a.expected)
    suite = suites_of([pat, rel], a.intro, wanted)

    tests = {}
    for name in sorted(set(rel) | set(pat)):
        r = rel[name]["result"] if name in rel else MISSING
        p = pat[name]["result"] if name in pat else MISSING
        e = {"suite": suite.get(name, "?"), "release": r, "patched": p}
        if r == MISSING:
            e["class"] = "new"
        elif rank(p) > rank(r):
            e["class"] = "difference"
            if name in expected:
                e["verdict"], e["reason"] = "explained", expected[name]
            elif name in retry and rank(retry[name]["result"]) <= rank(r):
                e["verdict"] = "flaky"
                e["retry"] = retry[name]["result"]
            else:
                e["verdict"] = "unexplained"
                if name in retry:
                    e["retry"] = retry[name]["result"]
            e["why"] = why(pat.get(name))
        elif p in PASS and r in PASS and (passed_subtests(rel[name]) - passed_subtests(pat[name])):
            # Both pass, but a subtest that passes on the release does not
            # on the patched tree (skipped there, or missing)
            lost = sorted(passed_subtests(rel[name]) - passed_subtests(pat[name]))
            e["class"] = "difference"
            e["subtests"] = lost
            if name in expected:
                e["verdict"], e["reason"] = "explained", expected[name]
            elif (name in retry and retry[name]["result"] in PASS and
                  not passed_subtests(rel[name]) - passed_subtests(retry[name])):
                e["verdict"] = "flaky"
                e["retry"] = retry[name]["result"]
            else:
                e["verdict"] = "unexplained"
            e["why"] = [f"subtest passed on the release only: {x}" for x in lost[:8]]
        elif rank(p) < rank(r):
            e["class"] = "better"
        elif r in PASS or r == "SKIP":
            e["class"] = "same"
        else:
            e["class"] = "release-too"
            e["why"] = why(pat.get(name))
            e["why_release"] = why(rel.get(name))
        if e["class"] != "difference" and name in expected:
            e["stale_expected"] = expected[name]
        tests[name] = e

    if a.candidates:
        for name, e in tests.items():
            if e.get("verdict") in ("unexplained", "flaky"):
                print(name)
        return 0

    counts = {}
    for name, e in tests.items():
        s = counts.setdefault(e["suite"], {"release": {}, "patched": {}})
        for tree in ("release", "patched"):
            s[tree][e[tree]] = s[tree].get(e[tree], 0) + 1
    stale = sorted(n for n in expected if n not in tests or "stale_expected" in tests[n])
    diffs = {n: e for n, e in tests.items() if e["class"] == "difference"}
    unexplained = sorted(n for n, e in diffs.items() if e["verdict"] == "unexplained")
    result = {
        "meta": dict(m.split("=", 1) for m in a.meta),
        "suites": wanted,
        "counts": counts,
        "tests": tests,
        "differences": sorted(diffs),
        "unexplained": unexplained,
        "flaky": sorted(n for n, e in diffs.items() if e["verdict"] == "flaky"),
        "release_too": sorted(n for n, e in tests.items() if e["class"] == "release-too"),
        "better": sorted(n for n, e in tests.items() if e["class"] == "better"),
        "new": sorted(n for n, e in tests.items() if e["class"] == "new"),
        "stale_expected": stale,
    }

    out = []
    def p(s=""):
        out.append(s)
    def fmt(c):
        order = ["OK", "SKIP", "FAIL", "TIMEOUT", "ERROR", MISSING]
        keys = [k for k in order if k in c] + sorted(k for k in c if k not in order)
        return ", ".join(f"{c[k]} {k}" for k in keys)
    p("QEMU's own suites, patched tree against the release (same machine, same flags)")
    for k, v in result["meta"].items():
        p(f"  {k}: {v}")
    p()
    p(f"{'suite':<14} {'release':<36} patched")
    for s in wanted:
        c = counts.get(s, {"release": {}, "patched": {}})
        p(f"{s:<14} {fmt(c['release']):<36} {fmt(c['patched'])}")
    p()
    def section(title, names, show_why=False, key="why"):
        if not names:
            return
        p(title)
        for n in names:
            e = tests[n] if n in tests else {}
            line = f"  {n}: release {e.get('release', '-')}, patched {e.get('patched', '-')}"
            if e.get("retry"):
                line += f", patched again {e['retry']}"
            p(line)
            if e.get("reason"):
                p(f"      reason: {e['reason']}")
            if show_why:
                for w in e.get(key, []):
                    p(f"      | {w}")
        p()
    section("UNEXPLAINED differences (they fail check-qemu):", unexplained, True)
    section("Explained differences (tests/qemu-suites.expected):",
            sorted(n for n, e in diffs.items() if e["verdict"] == "explained"))
    section("Flaky on the patched tree (did worse, then as well as the release when run again):",
            result["flaky"], True)
    section("Fails on the release too (not a difference):", result["release_too"], True,
            "why_release")
    section("Better on the patched tree:", result["better"])
    section("Only on the patched tree:", result["new"])
    if stale:
        p("Entries of the expected file that no longer differ (remove them):")
        for n in stale:
            p(f"  {n}")
        p()
    if unexplained:
        p(f"check-qemu: {len(unexplained)} unexplained difference(s)")
    else:
        p(f"check-qemu: no unexplained difference ({len(diffs)} explained or flaky)")
    text = "\n".join(out) + "\n"
    if a.outdir:
        os.makedirs(a.outdir, exist_ok=True)
        with open(os.path.join(a.outdir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        with open(os.path.join(a.outdir, "results.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    sys.stdout.write(text)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
