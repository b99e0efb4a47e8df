#!/usr/bin/env python3
"""Run the Kamailio configuration tests in cfg-tests/tests/.

Usage: python3 cfg-tests/run.py [--pua PATH] [--c-pua | --ours] [-k SUBSTRING] [-v]

Every test runs in two variants:
  [ours]  loads the repo's pua.so (default <repo>/pua.so; env PUA_SO or
          --pua PATH override).  If that file is missing the variant FAILS.
  [c]     loads Debian's C pua.so (/usr/lib/x86_64-linux-gnu/kamailio/modules/pua.so),
          proving that the tests describe the C module's behaviour.
--c-pua runs only the [c] variants, --ours only the [ours] ones.

A test is a directory cfg-tests/tests/<name>/ with a test.py and its
kamailio.cfg template(s).  test.py defines either
    def run(t): ...                     one test called <name>
or
    CASES = [(case_name, data), ...]
    def run(t, data): ...               one test per case, <name>:<case_name>
`t` is a kamtest.TestContext; a test fails by raising kamtest.TestFailure
(kamtest.check(cond, msg)) or any other exception.  Work files go to
cfg-tests/work/<name>[-<case>]-<variant>/ (recreated on every run).

Per-test variant control (optional, in test.py):
    VARIANTS = ("ours",)        run only these variants of the test; a case
                                whose data is a dict may narrow it with
                                data["variants"]
    BEYOND_C = True             (or data["beyond_c"] per case) the test holds
                                our pua to more than the C module does: its
                                beyond-C assertions go through
                                t.beyond_c(fn); in [c] each must fail, and
                                the [c] variant PASSES as "C module shows
                                the bug: <reason>"; a [c] run of such a test
                                that records no C bug FAILS.

Output: one line per test and variant, `PASS <name> [<variant>]` or
`FAIL <name> [<variant>]: <reason>` (details indented below), then the line
`cfg-tests: N passed, M failed`.  A failed test prints the last
warning/error lines of each Kamailio log in its work dir.  A failed [c]
variant is run once more (printed as RERUN, listed at the end when the
second run passed); an [ours] failure is final.  Exit status 1 if anything failed or
nothing ran.  Runs sharing a work root (--work-root, default cfg-tests/work)
are serialised with a flock on <work root>/.lock.
"""

import argparse
import fcntl
import importlib.util
import os
import re
import shutil
import sys
import time
import traceback

sys.dont_write_bytecode = True   # no __pycache__ in the source tree

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import kamtest  # noqa: E402


def discover():
    tests_dir = os.path.join(HERE, "tests")
    found = []
    for name in sorted(os.listdir(tests_dir)):
        d = os.path.join(tests_dir, name)
        tp = os.path.join(d, "test.py")
        if not os.path.isfile(tp):
            continue
        spec = importlib.util.spec_from_file_location("cfgtest_" + name, tp)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cases = getattr(mod, "CASES", None)
        if cases is None:
            found.append((name, d, mod, None, None))
        else:
            for case_name, data in cases:
                found.append(("%s:%s" % (name, case_name), d, mod, case_name, data))
    return found


def lock_work_root(root, timeout=900):
    """Two runs sharing a work root would delete each other's work dirs (and
    ctl sockets) under running Kamailios: take an exclusive flock, waiting
    (bounded) for another run to finish."""
    os.makedirs(root, exist_ok=True)
    f = open(os.path.join(root, ".lock"), "a+")
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                print("cfg-tests: another run holds %s for more than %d s; giving up"
                      % (f.name, timeout), flush=True)
                print("cfg-tests: 0 passed, 1 failed", flush=True)
                sys.exit(1)
            if not said:
                f.seek(0)
                print("cfg-tests: waiting for another run using %s (%s)"
                      % (root, f.read().strip() or "?"), flush=True)
                said = True
            time.sleep(1)
    f.seek(0)
    f.truncate()
    f.write("pid %d\n" % os.getpid())
    f.flush()
    return f


def slug(s):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)


def case_attr(mod, data, key, mod_attr, default):
    if isinstance(data, dict) and key in data:
        return data[key]
    return getattr(mod, mod_attr, default)


def run_one(work_root, full_name, test_dir, mod, case_name, data, variant, verbose):
    work = os.path.join(work_root, "%s-%s" % (slug(full_name.replace(":", "-")), variant.name))
    if os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work)
    t = kamtest.TestContext(full_name, test_dir, work, variant, case_name)
    t0 = time.monotonic()
    reason = None
    try:
        if case_name is None:
            mod.run(t)
        else:
            mod.run(t, data)
    except kamtest.TestFailure as e:
        reason = str(e)
    except KeyboardInterrupt:
        t.cleanup()
        raise
    except Exception:
        reason = "exception:\n" + traceback.format_exc()
    finally:
        try:
            t.cleanup()
        except Exception:
            if reason is None:
                reason = "cleanup failed:\n" + traceback.format_exc()
    dt = time.monotonic() - t0
    tag = "%s [%s]" % (full_name, variant.name)
    beyond = case_attr(mod, data, "beyond_c", "BEYOND_C", False)
    if reason is None and beyond and not variant.is_ours and not t.c_bugs:
        reason = ("the test is declared BEYOND_C, but no t.beyond_c() check "
                  "showed a C module bug")
    if reason is None:
        if t.c_bugs:
            print("PASS %s: C module shows the bug: %s" % (tag, "; ".join(t.c_bugs)), flush=True)
        else:
            print("PASS %s" % tag, flush=True)
        if verbose:
            print("    (%.1f s, work dir %s)" % (dt, os.path.relpath(work, REPO)))
            for n in t.notes:
                print("    note: " + n)
        return True
    first, _, rest = reason.partition("\n")
    print("FAIL %s: %s" % (tag, first), flush=True)
    if rest:
        print("\n".join("    " + l for l in rest.splitlines()), flush=True)
    print("    (work dir %s)" % os.path.relpath(work, REPO), flush=True)
    print_log_excerpts(work)
    if verbose:
        for n in t.notes:
            print("    note: " + n)
    return False


LOG_INTERESTING = re.compile(r"WARNING|ERROR|CRITICAL|ALERT|BUG|signal|exited")


def print_log_excerpts(work, per_log=12):
    """A CI run keeps only its stdout: print the last interesting lines of
    every Kamailio log of a failed test, so a failure can be diagnosed from
    the CI output alone."""
    try:
        logs = sorted(f for f in os.listdir(work) if f.endswith(".log"))
    except OSError:
        return
    for name in logs:
        try:
            with open(os.path.join(work, name), errors="replace") as f:
                lines = [l.rstrip() for l in f if LOG_INTERESTING.search(l)]
        except OSError:
            continue
        if not lines:
            print("    %s: no warning/error lines" % name, flush=True)
            continue
        print("    %s: last %d of %d warning/error lines:"
              % (name, min(per_log, len(lines)), len(lines)), flush=True)
        for l in lines[-per_log:]:
            print("      " + l[:300], flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pua", help="pua.so for the [ours] variant "
                    "(default: $PUA_SO or <repo>/pua.so)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--c-pua", action="store_true",
                   help="run only the [c] variants (Debian's C pua.so)")
    g.add_argument("--ours", action="store_true", help="run only the [ours] variants")
    ap.add_argument("-k", dest="match", default="",
                    help="run only tests whose name contains this substring")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--work-root", default=os.path.join(HERE, "work"),
                    help="where the per-test work dirs go (default cfg-tests/work)")
    args = ap.parse_args()
    work_root = os.path.abspath(args.work_root)
    lock = lock_work_root(work_root)  # noqa: F841 (held until exit)

    ours_path = os.path.abspath(args.pua or os.environ.get("PUA_SO") or
                                os.path.join(REPO, "pua.so"))
    variants = []
    if not args.c_pua:
        variants.append(kamtest.Variant("ours", ours_path))
    if not args.ours:
        variants.append(kamtest.Variant("c", kamtest.C_PUA))

    kamtest.install_signal_handlers()
    passed = failed = 0
    flaky = []
    try:
        for full_name, d, mod, case_name, data in discover():
            if args.match not in full_name:
                continue
            allowed = case_attr(mod, data, "variants", "VARIANTS", None)
            for v in variants:
                if allowed is not None and v.name not in allowed:
                    continue
                ok = run_one(work_root, full_name, d, mod, case_name, data, v, args.verbose)
                if not ok and not v.is_ours:
                    # The [c] variants only prove that a test describes the
                    # C module; Debian's C module under CI load is not what
                    # we ship.  One re-run, reported loudly.  [ours] never
                    # gets a second chance.
                    print("RERUN %s [%s]: the C module's variant failed once "
                          "(above); running it again" % (full_name, v.name), flush=True)
                    ok = run_one(work_root, full_name, d, mod, case_name, data, v,
                                 args.verbose)
                    if ok:
                        flaky.append("%s [%s]" % (full_name, v.name))
                if ok:
                    passed += 1
                else:
                    failed += 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        failed += 1
    finally:
        kamtest._stop_all()
    if flaky:
        print("cfg-tests: passed only on the second run (C module variants): %s"
              % ", ".join(flaky), flush=True)
    print("cfg-tests: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
