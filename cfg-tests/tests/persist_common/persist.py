"""persist_common: shared helpers of the persist_* tests (db_mode 0
persistence of pua's hash table in the `pua` table).

Not a test itself (no test.py): the persist_* tests import it with
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "persist_common"))

The client (kamailio.cfg here): pua with db_mode 0 (the default) and
update_period UPDATE_PERIOD, pua_rpc, check_remote_contact 0, its pua table
in the instance's SQLite db (WAL, so the test's reads never make pua's
writes fail).  It PUBLISHes and SUBSCRIBEs through pua's outbound_proxy to a
Python Uas (make_uas) that answers
  PUBLISH    200, a new SIP-ETag, Expires min(asked, UAS_EXPIRES);
  SUBSCRIBE  200, a To tag (new for an initial SUBSCRIBE), Contact the Uas,
             Expires min(asked, UAS_EXPIRES);
and records every request.  The consumers ask ASK_EXPIRES, so every record
has desired_expires far beyond its expires and is refreshed once it is due
(expires - update_period < now).

A restart reuses the same Kamailio object (same SIP port, so the watcher
URI = Contact stays valid; same db, not re-created) with a new log file
(<name>-<tag>.log).
"""
import os
import re
import signal
import sqlite3
import time

import sip
from kamtest import TestFailure, check, pgroup_members

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "kamailio.cfg")

UPDATE_PERIOD = 6      # s: db sync every 6 s, clean-up pass every 1 s
UAS_EXPIRES = 30       # s: what the Uas grants at most
ASK_EXPIRES = 3600     # s: what the consumers ask
SYNC_WAIT = UPDATE_PERIOD + 5   # s: bound for "one sync happened"
REFRESH_WAIT = 5       # s: bound for the refreshes of due records after a restart

PRESENCE_EVENT = 1
RPC_ASYN_PUBLISH = 1 << 7
RPC_SUBSCRIBE = 1 << 8

# pua_rpc's publish callback, run for a refresh (no RPC waiting for it):
# logged by pua_rpc for every refresh of an RPC publication, C or ours.
RPC_CB_NULL = r"pua_rpc_publish_callback\(\): NULL reply or hentity parameter"
# The core's TCP main process may go before its children at shutdown.
SHUTDOWN_TCP = r"receive_fd\(\): EOF on \d+"
ALLOW = [RPC_CB_NULL, SHUTDOWN_TCP]


def wait(pred, timeout, poll=0.1):
    """pred()'s first true value, or its last value after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(poll)


def pidf(uri, basic, note):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
            '<tuple id="t1"><status><basic>%s</basic></status><note>%s</note></tuple>'
            '</presence>' % (uri, basic, note))


# --- the Uas -----------------------------------------------------------------

def _granted(req, cap):
    try:
        asked = int(req.get("expires", str(ASK_EXPIRES)))
    except ValueError:
        asked = ASK_EXPIRES
    return max(0, min(asked, cap))


def make_uas(t, expires=UAS_EXPIRES):
    def publish(req, ep):
        return sip.PublishOk(expires=_granted(req, expires))

    def subscribe(req, ep):
        return sip.Reply(200, headers=[("Contact", ep.contact),
                                       ("Expires", str(_granted(req, expires)))])
    return t.uas(script={"PUBLISH": publish, "SUBSCRIBE": subscribe})


def pubs(uas, uri, since=0.0):
    return [r for r in uas.requests("PUBLISH") if r.msg.uri == uri and r.t >= since]


def subs(uas, call_id=None, since=0.0):
    return [r for r in uas.requests("SUBSCRIBE")
            if (call_id is None or r.msg.call_id == call_id) and r.t >= since]


def final_reply(rec):
    for _, m in rec.replies:
        if m.status >= 200:
            return m
    return None


def describe(recs):
    out = []
    for r in recs:
        m = r.msg
        out.append("%s %s ci=%s cs=%s ft=%s tt=%s If-Match=%s Expires=%s" % (
            m.method, m.uri, m.call_id, m.cseq[0], m.from_tag, m.to_tag,
            m.get("sip-if-match"), m.get("expires")))
    return "; ".join(out) or "none"


# --- the client ----------------------------------------------------------------

def start_client(t, uas, pua_params=""):
    params = 'modparam("pua", "update_period", %d)\n%s' % (UPDATE_PERIOD, pua_params)
    k = t.kamailio(CFG, subst={"@UAS_PORT@": str(uas.port), "@PUA_PARAMS@": params},
                   extra_sql="PRAGMA journal_mode=WAL;")
    k.start()
    k.check_pua_loaded()
    return k


def restart(k, tag):
    """Start k again on the same db and ports, logging to <name>-<tag>.log."""
    check(not k.alive(), "restart(%s): kamailio still running" % tag)
    k.log_path = os.path.join(k.work, "%s-%s.log" % (k.name, tag))
    k.schemas = None   # prepare() must not re-create the db
    k.start()
    k.check_pua_loaded()
    return k


def kill9(k):
    """SIGKILL the main process and its whole process group (a crash: no
    module destroy runs), then reap it."""
    pgid = k.pid
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        k.proc.wait(timeout=5)
    except Exception:
        pass
    wait(lambda: not pgroup_members(pgid), 5)
    rc = k.stop()
    check(rc == -signal.SIGKILL, "kill -9: main process exit status %r" % rc)


def publish(k, uri, expires, pres_id, body=None, etag="."):
    """pua.publish <uri> <expires> presence <ctype> <id> <etag> . . [body]."""
    args = [uri, str(expires), "presence",
            "application/pidf+xml" if body is not None else ".", pres_id, etag, ".", "."]
    if body is not None:
        args.append(body)
    return k.jsonrpc("pua.publish", *args, timeout=8)


def publish_ok(k, uri, expires, pres_id, body=None, etag=".", what="publish"):
    r = publish(k, uri, expires, pres_id, body, etag)
    res = r.get("result")
    check(isinstance(res, dict) and res.get("SIP-ETag"),
          "%s: pua.publish answered %r" % (what, r))
    return res["SIP-ETag"]


def subscribe(k, pres, watcher, expires):
    k.ctl("pua.subscribe", pres, watcher, "presence", expires)


def rows(k):
    """The client's pua table (sqlite3 read)."""
    try:
        return k.sql("SELECT * FROM pua ORDER BY id")
    except sqlite3.Error as e:
        raise TestFailure("reading %s: %s" % (k.db_path, e))


def pub_rows(k, uri=None):
    return [r for r in rows(k) if not r["watcher_uri"]
            and (uri is None or r["pres_uri"] == uri)]


def sub_rows(k, call_id=None):
    return [r for r in rows(k) if r["watcher_uri"]
            and (call_id is None or r["call_id"] == call_id)]


def show_rows(rs):
    keys = ("pres_uri", "pres_id", "event", "flag", "etag", "expires", "watcher_uri",
            "call_id", "to_tag", "from_tag", "cseq")
    return "; ".join("{%s}" % ", ".join("%s=%r" % (k, r.get(k)) for k in keys)
                     for r in rs) or "no rows"


def sql_write(k, stmt, args=()):
    """A write to the client's db while it may run (busy timeout 5 s)."""
    con = sqlite3.connect(k.db_path, timeout=5)
    try:
        con.execute(stmt, args)
        con.commit()
    finally:
        con.close()


def make_due(k, seconds=5):
    """Shorten the stored expires of every row to now + seconds (<
    update_period, so a restored record is due for a refresh at once).  The
    values under test (etag, dialog) are left as they are."""
    sql_write(k, "UPDATE pua SET expires = ?", (int(time.time()) + seconds,))


def pua_records(k):
    m = re.search(r"records:\s*(-?\d+)", k.ctl("pua.stats").stdout)
    check(m, "pua.stats has no records field")
    return int(m.group(1))


def health(k, allow=()):
    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean(list(allow) + ALLOW)


def clean_stop(k, allow=()):
    check(k.stop() == 0, "client: unclean exit\n" + k.log_tail())
    k.check_log_clean(list(allow) + ALLOW)


# --- the C module's failures, allowed in its logs ---------------------------------

# C binds an unset pres_id (every pua_rpc subscription) as NULL: SQLite's
# NOT NULL refuses the INSERT, at every sync, and the pass stops there.
C_NULL_PRES_ID = [
    r"db_sqlite_commit\(\): sqlite commit failed: NOT NULL constraint failed: pua\.pres_id",
    r"db_sqlite_cleanup_query\(\): finalize failed: NOT NULL constraint failed: pua\.pres_id",
    r"db_update\(\): while inserting in db table pua",
]


def c_allow(t):
    return [] if t.variant.is_ours else C_NULL_PRES_ID


def wait_sync(k, pred, timeout=SYNC_WAIT, grace=1.5, n0=None):
    """Wait (bounded) until pred() holds, or until the log shows a failed
    write (a sync happened and failed: no use waiting for more than `grace`
    s, the rest of that pass).  n0: the number of ERROR lines before the
    change under test (default: now)."""
    if n0 is None:
        n0 = len(k.bad_lines())
    wait(lambda: pred() or len(k.bad_lines()) > n0, timeout)
    return pred() or wait(pred, grace)


# --- C's hash buckets ------------------------------------------------------------

def c_bucket(s1, s2=None, size=512):
    """Kamailio's core_hash(s1, s2, size) (core/hashes.h), the bucket of a
    record in C pua's table (512 buckets by default): C's sync walks the
    buckets in order and stops at the first failing row."""
    m = 0xffffffff

    def upd(h, s):
        b = s.encode()
        i = 0
        while i <= len(b) - 4:
            v = ((b[i] << 24) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3]) & m
            h = (h + (v ^ (v >> 3))) & m
            i += 4
        v = 0
        for c in b[i:]:
            v = ((v << 8) + c) & m
        return (h + (v ^ (v >> 3))) & m
    h = upd(0, s1)
    if s2 is not None:
        h = upd(h, s2)
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & m
    return h & (size - 1)


def uris(uas, k):
    """(A, C, W): a publication URI, a presentity to subscribe to and the
    watcher (the client's own URI, also the Contact).  A is chosen so that
    C's sync reaches A's bucket before the subscription's: C never manages
    to write the subscription (see C_NULL_PRES_ID) and its failing INSERT
    ends the pass, so only then is C's publication row written at the first
    sync, whatever the random ports."""
    w = "sip:bob@127.0.0.1:%d" % k.port
    for cn in ("carol", "carla", "carmen", "cora", "celia"):
        c = "sip:%s@127.0.0.1:%d" % (cn, uas.port)
        bc = c_bucket(c, w)
        for n in range(200):
            a = "sip:alice%s@127.0.0.1:%d" % (n or "", uas.port)
            if c_bucket(a) < bc:
                return a, c, w
    raise RuntimeError("no publication URI hashing before the subscription's bucket")
