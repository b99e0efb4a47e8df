#!/usr/bin/env python3
"""db_mode 2: SQL statements per PUBLISH, our pua.so against Debian's C pua.so.

Usage:
  python3 bench/dbonly_queries.py                  # 3 rounds x (ours, C) x 200 publications
  python3 bench/dbonly_queries.py --count 500 --pua /tmp/pua.so
  python3 bench/dbonly_queries.py --no-refresh     # skip the pua.cleanup pass
  python3 bench/dbonly_queries.py --shapes         # also print every statement shape
  python3 bench/dbonly_queries.py --concurrency 4  # RPCs in parallel (wall time only)

A benchmark, not a test: nothing is asserted; see bench/README.md
("db_mode 2: queries per PUBLISH").  For each module (ours: --pua, default
<repo>/pua.so, copied to the work dir first; C: Debian's
/usr/lib/x86_64-linux-gnu/kamailio/modules/pua.so), in turn:

  * a private PostgreSQL (cfg-tests/pgsql.py) with log_statement=all,
    log_min_duration_statement=-1 and log_connections=on: the server logs
    every statement any client sends, with the backend's PID;
  * a client Kamailio (the cfg below): pua db_mode 2 on that server, pua_rpc,
    jsonrpcs over xhttp (pua.publish answers when the 200 is in),
    update_period 3600 (the clean-up timer would first run after 3595 s, so
    it never runs here; every row granted 60 s is due for pua.cleanup),
    db_table_lock_write 1 (both modules' default; --lock-write 0 to change);
  * a Python peer (cfg-tests/sip.py) as outbound proxy, answering each
    PUBLISH 200 with a new SIP-ETag and Expires min(asked, 60).

Workload (the same for both), N = --count presentities sip:bench<i>@..:
  initial  N x pua.publish (expires 3600, id "qbench-<i>", PIDF body,
           etag "."; C's db_mode 2 finds a publication by its id alone, so
           every presentity has its own)
  modify   2N x pua.publish with a new body and the etag of the last 200
  refresh  one pua.cleanup: every row is due (expires < now + 3600) and
           should live on (desired_expires > expires): N PUBLISHes with
           SIP-If-Match and no body; the phase ends when the peer has
           answered N of them and the log is quiet (--no-refresh: skipped)
  remove   N x pua.publish expires 0 with the etag of the last 200
Before each phase and after the last one, the script waits until the
server's log has been quiet for 1 s (bounded), then runs
`SELECT 'pua-bench-mark <phase>'` through psql.  Statements logged between
two marks by Kamailio's backends (every backend but psql's, told apart by the
application_name of the `connection authorized` line) are that phase's;
they are counted by kind from their first keyword: SELECT, INSERT, UPDATE,
DELETE, txn (BEGIN/START/COMMIT/END/ROLLBACK/LOCK/SAVEPOINT/RELEASE) and
other.  An idle second before the first phase is counted too (expected 0).

Output: a table per module and the ratio ours/C: statements per operation
for each phase and per PUBLISH overall (every phase's statements over every
PUBLISH sent: initial + modify + refresh + remove), from round 1 (the
counts are deterministic; a later round that differs is noted); wall time
per operation, median over --rounds runs (default 3, ours and C
alternating), for information only: sequential RPCs unless --concurrency,
and for the refresh phase the time from pua.cleanup until the peer answered
the N-th refresh, divided by N (the PUBLISHes go out together).  Work files
in bench/work/dbonly-queries/ (git-ignored): per round and module
(r<round>-<module>/) the PostgreSQL log (pg-<module>.log), the rendered cfg
and Kamailio's log; results.json, and results.md with the statement shapes
(literals replaced by ?) counted per phase.

Python 3 standard library only; root on 127.0.0.1; needs Debian's
postgresql-15 and kamailio-postgres-modules (kamailio-headers/install-deps.sh).
Every process it starts is stopped by its PID (kamtest / pgsql), every wait
is bounded.
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "cfg-tests"))

import kamtest  # noqa: E402
import pgsql  # noqa: E402
import sip  # noqa: E402

WORK = os.path.join(HERE, "work", "dbonly-queries")

UPDATE_PERIOD = 3600    # s: timer at +3595 s (never here); due = expires < now + 3600
GRANT = 60              # s: the peer grants min(asked, GRANT)
ASK = 3600              # s: what pua.publish asks
PRES_ID = "qbench-%d"   # one id per presentity (the C module finds a row by id)
RPC_TIMEOUT = 10.0      # s per pua.publish
QUIET_S = 1.0           # s without a new log line before a mark
QUIET_MAX_S = 30.0      # s bound for that wait
REFRESH_WAIT_S = 60.0   # s bound for the refresh PUBLISHes to be answered
MARK = "pua-bench-mark"
PHASES = ("idle", "initial", "modify", "refresh", "remove")
KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "txn", "other")
TXN_WORDS = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "LOCK", "SAVEPOINT",
             "RELEASE"}

CFG_TEMPLATE = r"""#!KAMAILIO
# bench/dbonly_queries.py: pua db_mode 2 on a private PostgreSQL, driven by
# pua_rpc's pua.publish over jsonrpcs/xhttp; PUBLISHes go to the peer.
debug=2
log_stderror=yes
children=@CHILDREN@
auto_aliases=no
listen=udp:127.0.0.1:@SIP_PORT@
listen=tcp:127.0.0.1:@HTTP_PORT@
alias="127.0.0.1:@SIP_PORT@"
tcp_accept_no_cl=yes
disable_core_dump=yes

mpath=@MPATH@

loadmodule "db_postgres.so"
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
loadmodule "pua.so"
loadmodule "pua_rpc.so"

modparam("ctl", "binrpc", @CTL_SOCK@)
modparam("jsonrpcs", "transport", 1)
modparam("pua", "db_url", "@PG_URL@")
modparam("pua", "db_mode", 2)
modparam("pua", "update_period", @UPDATE_PERIOD@)
modparam("pua", "db_table_lock_write", @LOCK_WRITE@)
modparam("pua", "outbound_proxy", "sip:127.0.0.1:@UAS_PORT@")

request_route {
	sl_send_reply("404", "Not here");
	exit;
}

event_route[xhttp:request] {
	if ($hu =~ "^/RPC") {
		jsonrpc_dispatch();
	} else {
		xhttp_reply("404", "Not Found", "text/plain", "not here\n");
	}
	exit;
}
"""


def log(msg):
    print(msg, flush=True)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def git_desc():
    try:
        r = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def pidf(uri, status, note):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
            '<tuple id="t1"><status><basic>%s</basic></status></tuple>'
            '<note>%s</note></presence>' % (uri, status, note))


# --------------------------------------------------------------------------
# the PostgreSQL statement log

ENTRY_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\w+):  (.*)$")
STMT_RE = re.compile(r"^(?:statement|execute [^:]*): (.*)$", re.S)
AUTH_RE = re.compile(r"^connection authorized: .*?application_name=(\S+)")


def log_entries(path):
    """[(pid, level, message)] from the server's log; continuation lines
    (a statement with newlines) are joined to their entry."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = ENTRY_RE.match(line)
            if m:
                out.append([int(m.group(1)), m.group(2), m.group(3)])
            elif out:
                out[-1][2] += "\n" + line
    return [tuple(e) for e in out]


def kind_of(stmt):
    w = re.match(r"\s*\(?\s*([A-Za-z]+)", stmt)
    w = w.group(1).upper() if w else ""
    if w in TXN_WORDS:
        return "txn"
    if w in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        return w
    return "other"


def shape_of(stmt):
    s = re.sub(r"'(?:[^']|'')*'", "?", stmt)
    s = re.sub(r"(?<![\w$])-?\d+(?:\.\d+)?\b", "?", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s


def split_phases(path):
    """{phase: [statement]} of Kamailio's backends, between the marks."""
    entries = log_entries(path)
    psql_pids = set()
    for pid, level, msg in entries:
        m = AUTH_RE.match(msg)
        if m and m.group(1).startswith("psql"):
            psql_pids.add(pid)
    phases = collections.OrderedDict()
    cur = None
    for pid, level, msg in entries:
        if level != "LOG":
            continue
        m = STMT_RE.match(msg)
        if not m:
            continue
        stmt = m.group(1)
        mk = re.search(r"'%s (\w+)'" % MARK, stmt)
        if mk:
            cur = mk.group(1)
            if cur != "end":
                phases[cur] = []
            continue
        if pid in psql_pids or cur is None or cur == "end":
            continue
        phases[cur].append(stmt)
    return phases


# --------------------------------------------------------------------------
# one module


class Peer:
    """The PUBLISH answerer: 200, a new SIP-ETag, Expires min(asked, GRANT);
    remembers the last etag per presentity and counts refreshes (SIP-If-Match,
    no body)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.etag = {}
        self.refreshes = 0
        self.publishes = 0
        self.n = 0
        self.ep = sip.Uas(0, script={"PUBLISH": self._publish})

    def _publish(self, req, ep):
        try:
            asked = int(req.get("expires", str(ASK)))
        except ValueError:
            asked = ASK
        with self.lock:
            self.n += 1
            etag = "qb%d" % self.n
            self.etag[req.uri] = etag
            self.publishes += 1
            if req.get("sip-if-match") and not req.body:
                self.refreshes += 1
        return sip.PublishOk(expires=max(0, min(asked, GRANT)), etag=etag)

    def stop(self):
        self.ep.stop()


def wait_quiet(path, quiet=QUIET_S, bound=QUIET_MAX_S):
    """Until the file has not grown for `quiet` s (at most `bound` s)."""
    deadline = time.monotonic() + bound
    last = -1
    since = time.monotonic()
    while time.monotonic() < deadline:
        size = os.path.getsize(path)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        time.sleep(0.1)
    return False


def run_module(name, so, a, work):
    """Run the workload against one pua.so; -> result dict."""
    res = {"module": name, "so": so, "notes": [], "wall": {}, "ops": {}}
    pg = k = peer = None
    try:
        pg = pgsql.PgSQL(work, name="pg-" + name,
                         settings={"log_statement": "all",
                                   "log_min_duration_statement": "-1",
                                   "log_connections": "on"})
        pg.start()
        peer = Peer()
        cfg = os.path.join(work, "client-%s.tmpl" % name)
        with open(cfg, "w") as f:
            f.write(CFG_TEMPLATE)
        k = kamtest.Kamailio(cfg, work, so, name="client-" + name, schemas=None,
                             subst={"@PG_URL@": pg.db_url, "@UAS_PORT@": str(peer.ep.port),
                                    "@UPDATE_PERIOD@": str(UPDATE_PERIOD),
                                    "@LOCK_WRITE@": str(a.lock_write),
                                    "@CHILDREN@": str(a.children)})
        k.start()
        k.check_pua_loaded()
        host = "127.0.0.1:%d" % peer.ep.port
        uris = ["sip:bench%d@%s" % (i, host) for i in range(a.count)]

        def mark(phase):
            if not wait_quiet(pg.log_path):
                res["notes"].append("log not quiet within %.0f s before mark %s"
                                    % (QUIET_MAX_S, phase))
            pg.execute("SELECT '%s %s'" % (MARK, phase))

        ids = {u: PRES_ID % i for i, u in enumerate(uris)}

        def publish(uri, expires, body, etag):
            args = [uri, str(expires), "presence",
                    "application/pidf+xml" if body is not None else ".",
                    ids[uri], etag, ".", "."]
            if body is not None:
                args.append(body)
            r = k.jsonrpc("pua.publish", *args, timeout=RPC_TIMEOUT)
            res_ = r.get("result")
            if expires and not (isinstance(res_, dict) and "SIP-ETag" in res_):
                return "pua.publish %s answered %r" % (uri, r)
            if not expires and "error" in r:
                return "pua.publish %s (remove) answered %r" % (uri, r)
            return None

        def phase(label, jobs):
            """Run jobs (callables returning an error or None); -> seconds."""
            t0 = time.monotonic()
            if a.concurrency > 1:
                with ThreadPoolExecutor(a.concurrency) as ex:
                    errs = list(ex.map(lambda j: j(), jobs))
            else:
                errs = [j() for j in jobs]
            dt = time.monotonic() - t0
            bad = [e for e in errs if e]
            if bad:
                res["notes"].append("%s: %d failures, first: %s" % (label, len(bad), bad[0]))
            res["ops"][label] = res["ops"].get(label, 0) + len(jobs)
            res["wall"][label] = res["wall"].get(label, 0.0) + dt
            return dt

        mark("idle")
        time.sleep(1.0)

        mark("initial")
        phase("initial", [lambda u=u: publish(u, ASK, pidf(u, "open", "one"), ".")
                          for u in uris])
        rows = len(pg.sql("SELECT id FROM pua")) if a.verify else None

        mark("modify")
        for n, st in ((2, "closed"), (3, "open")):
            phase("modify", [lambda u=u, n=n, st=st:
                             publish(u, ASK, pidf(u, st, "v%d" % n), peer.etag.get(u, "."))
                             for u in uris])

        if a.refresh:
            mark("refresh")
            r0 = peer.refreshes
            t0 = time.monotonic()
            k.ctl("pua.cleanup")
            deadline = time.monotonic() + REFRESH_WAIT_S
            while peer.refreshes - r0 < a.count and time.monotonic() < deadline:
                time.sleep(0.02)
            res["ops"]["refresh"] = peer.refreshes - r0
            res["wall"]["refresh"] = time.monotonic() - t0
            if peer.refreshes - r0 != a.count:
                res["notes"].append("refresh: %d refresh PUBLISHes for %d due rows"
                                    % (peer.refreshes - r0, a.count))

        mark("remove")
        phase("remove", [lambda u=u: publish(u, 0, None, peer.etag.get(u, "."))
                         for u in uris])
        mark("end")
        left = len(pg.sql("SELECT id FROM pua")) if a.verify else None
        if a.verify:
            res["notes"].append("rows after initial: %d (expected %d); rows left at the end: %d"
                                % (rows, a.count, left))
        res["publishes_seen_by_peer"] = peer.publishes
        res["alive"] = k.alive()
        rc = k.stop()
        res["exit"] = rc
        errs = [l for l in k.log_lines() if kamtest.BAD_LEVEL_RE.search(l)]
        res["error_lines"] = len(errs)
        if errs:
            cnt = collections.Counter(re.sub(r"\d+", "N", l.split(": ", 1)[-1])[:150]
                                      for l in errs)
            res["notes"].append("ERROR-level lines in Kamailio's log: %d; %s" % (
                len(errs), "; ".join("%dx %s" % (c, m) for m, c in cnt.most_common(3))))
        pg.stop()
        res["phases"] = split_phases(pg.log_path)
        res["pg_log"] = pg.log_path
        res["kamailio_log"] = k.log_path
    finally:
        for x in (k, peer, pg):
            if x is not None:
                try:
                    x.stop()
                except Exception as e:   # report, go on stopping the others
                    log("stopping %r: %s" % (x, e))
    return res


# --------------------------------------------------------------------------
# report


def counts(stmts):
    c = collections.Counter(kind_of(s) for s in stmts)
    return {kd: c.get(kd, 0) for kd in KINDS}


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return "%.2f" % x
    return str(x)


def ratio(o, c):
    if o is None or c is None:
        return "-"
    if c == 0:
        return "-" if o == 0 else "inf"
    return "%.2f" % (o / c)


def phase_summary(r):
    """{phase: {ops, statements, kinds, wall_s, shapes}} of one run, plus
    "total" over every phase but idle."""
    per = {}
    tot_stmts = collections.Counter()
    tot_ops = 0
    tot_wall = 0.0
    for ph in PHASES:
        if ph not in r["phases"]:
            continue
        stmts = r["phases"][ph]
        ops = r["ops"].get(ph, 0)
        c = counts(stmts)
        per[ph] = {"ops": ops, "statements": len(stmts), "kinds": c,
                   "wall_s": r["wall"].get(ph),
                   "shapes": collections.Counter(shape_of(s) for s in stmts).most_common()}
        if ph != "idle":
            tot_stmts.update(c)
            tot_ops += ops
            tot_wall += r["wall"].get(ph) or 0.0
    per["total"] = {"ops": tot_ops, "statements": sum(tot_stmts.values()),
                    "kinds": {kd: tot_stmts.get(kd, 0) for kd in KINDS},
                    "wall_s": tot_wall, "shapes": []}
    return per


def build_report(results, a, header):
    """-> (markdown text, json-able summary).  Statement counts are the
    first round's (later rounds that differ are noted); wall time per
    operation is the median over the rounds."""
    summary = {}
    round_notes = []
    by_mod = collections.OrderedDict()
    for r in results:
        by_mod.setdefault(r["module"], []).append(phase_summary(r))
    for m, runs in by_mod.items():
        per = runs[0]
        for i, other in enumerate(runs[1:], 2):
            for ph, d in per.items():
                o = other.get(ph)
                if o is None or (o["ops"], o["kinds"]) != (d["ops"], d["kinds"]):
                    round_notes.append("%s round %d, %s: %s ops %s, round 1: %s ops %s" % (
                        m, i, ph, o and o["ops"], o and o["kinds"], d["ops"], d["kinds"]))
        for ph, d in per.items():
            walls = [x[ph]["wall_s"] * 1000.0 / x[ph]["ops"] for x in runs
                     if ph in x and x[ph]["ops"] and x[ph]["wall_s"] is not None]
            d["wall_ms_per_op"] = statistics.median(walls) if walls else None
            d["wall_ms_per_op_all"] = walls
        summary[m] = per

    mods = list(summary)
    lines = [header, ""]
    rows_order = [p for p in PHASES if p != "idle"] + ["total"]

    def per_op(m, ph, key):
        d = summary[m].get(ph)
        if not d or not d["ops"]:
            return None
        v = d["statements"] if key == "all" else d["kinds"][key]
        return v / d["ops"]

    lines.append("Statements per operation, by kind (txn = BEGIN/COMMIT/LOCK/...):")
    lines.append("")
    # One table per module, then the comparison.
    for m in mods:
        lines.append("| %s | ops | all | %s | wall ms/op |" % (m, " | ".join(KINDS)))
        lines.append("|---" * (4 + len(KINDS)) + "|")
        for ph in rows_order:
            d = summary[m].get(ph)
            if not d:
                continue
            ops = d["ops"]
            cells = [fmt(per_op(m, ph, "all"))] + [fmt(per_op(m, ph, k)) for k in KINDS]
            wall = d["wall_ms_per_op"]
            lines.append("| %s | %d | %s | %s |" % (
                ph if ph != "total" else "**per PUBLISH (all phases)**", ops,
                " | ".join(cells), fmt(wall)))
        idle = summary[m].get("idle")
        if idle is not None:
            lines.append("")
            lines.append("%s: %d statements in the idle second before the load"
                         % (m, idle["statements"]))
        lines.append("")
    if "ours" in summary and "c" in summary:
        lines.append("| statements per operation | ours | C | ours/C | ours wall ms | "
                     "C wall ms |")
        lines.append("|---|---|---|---|---|---|")
        for ph in rows_order:
            o, c = per_op("ours", ph, "all"), per_op("c", ph, "all")
            if o is None and c is None:
                continue

            def wall(m):
                d = summary[m].get(ph)
                return d["wall_ms_per_op"] if d else None
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                ph if ph != "total" else "**per PUBLISH**", fmt(o), fmt(c), ratio(o, c),
                fmt(wall("ours")), fmt(wall("c"))))
        lines.append("")
        kd_line = []
        for kd in KINDS:
            o, c = per_op("ours", "total", kd), per_op("c", "total", kd)
            kd_line.append("%s %s/%s" % (kd, fmt(o), fmt(c)))
        lines.append("Per PUBLISH by kind (ours/C): " + ", ".join(kd_line))
        lines.append("")
    for n in round_notes:
        lines.append("- statement counts differ between rounds: " + n)
    for r in results:
        who = "%s r%d" % (r["module"], r["round"])
        extra = ["%s: %d PUBLISHes seen by the peer, exit %s, alive at the end %s"
                 % (who, r.get("publishes_seen_by_peer", 0), r.get("exit"), r.get("alive"))]
        for n in r["notes"]:
            extra.append("%s: %s" % (who, n))
        lines += ["- " + e for e in extra]
    lines.append("")
    if a.shapes:
        lines.append("Statement shapes per phase (count per operation):")
        for m in mods:
            for ph in rows_order[:-1]:
                d = summary[m].get(ph)
                if not d or not d["ops"]:
                    continue
                lines.append("  %s / %s (%d ops):" % (m, ph, d["ops"]))
                for s, n in d["shapes"]:
                    lines.append("    %6.2f  %s" % (n / d["ops"], s[:240]))
        lines.append("")
    return "\n".join(lines), summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pua", default=os.environ.get("PUA_SO", os.path.join(REPO, "pua.so")),
                    help="our pua.so (default <repo>/pua.so or $PUA_SO)")
    ap.add_argument("--count", type=int, default=200, help="publications (presentities)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per module, alternating (statements: round 1; wall: median)")
    ap.add_argument("--no-refresh", dest="refresh", action="store_false",
                    help="skip the pua.cleanup refresh pass")
    ap.add_argument("--modules", default="ours,c", help="ours,c (order of the runs)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="parallel pua.publish RPCs within a phase (default 1)")
    ap.add_argument("--children", type=int, default=2, help="Kamailio children (2)")
    ap.add_argument("--lock-write", type=int, default=1,
                    help="pua db_table_lock_write for both modules (1, the default)")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="do not count the pua rows after the initial and remove phases")
    ap.add_argument("--shapes", action="store_true",
                    help="print the statement shapes per phase (always in results.md)")
    a = ap.parse_args()

    kamtest.install_signal_handlers()
    os.makedirs(WORK, exist_ok=True)
    ours_copy = os.path.join(WORK, "pua-ours.so")
    shutil.copy2(a.pua, ours_copy)
    sos = {"ours": ours_copy, "c": kamtest.C_PUA}
    mods = [m.strip() for m in a.modules.split(",") if m.strip()]
    for m in mods:
        if m not in sos:
            ap.error("unknown module %r (ours, c)" % m)

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python3 bench/dbonly_queries.py " + " ".join(sys.argv[1:])
    header = ("%s, `%s`\nours: %s sha256 %s, repo %s; C: %s\n"
              "%d rounds x %d publications: initial, 2 modifications, %sremoval; "
              "db_table_lock_write %d, children %d, RPC concurrency %d; PostgreSQL %s"
              % (stamp, cmd.strip(), a.pua, sha256(ours_copy)[:12], git_desc(), kamtest.C_PUA,
                 a.rounds, a.count, "1 pua.cleanup refresh, " if a.refresh else "", a.lock_write,
                 a.children, a.concurrency, os.path.basename(os.path.dirname(pgsql.pg_bindir()))))
    results = []
    try:
        for rnd in range(1, a.rounds + 1):
            for m in mods:
                mw = os.path.join(WORK, "r%d-%s" % (rnd, m))
                if os.path.isdir(mw) and not os.path.islink(mw):
                    shutil.rmtree(mw)
                os.makedirs(mw)
                os.chmod(mw, 0o755)
                log("== round %d, %s (%s)" % (rnd, m, sos[m]))
                t0 = time.monotonic()
                r = run_module(m, sos[m], a, mw)
                r["round"] = rnd
                log("   done in %.0f s: %s" % (time.monotonic() - t0, ", ".join(
                    "%s %d stmts" % (p, len(v)) for p, v in r["phases"].items())))
                results.append(r)
    finally:
        kamtest._stop_all()
    text, summary = build_report(results, a, header)
    print()
    print(text)
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump({"header": header, "summary": summary}, f, indent=1)
    full = text if a.shapes else build_report(
        results, argparse.Namespace(**dict(vars(a), shapes=True)), header)[0]
    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write(full + "\n")
    log("work files: %s (results.md has the statement shapes)" % WORK)


if __name__ == "__main__":
    main()
