"""dbonly: shared helpers of persist_dbonly and persist_two_nodes (pua
db_mode 2, the `pua` table as the only store).

persist_two_nodes imports it with
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "persist_dbonly"))

The client (kamailio.cfg here): pua db_mode 2, update_period UPDATE_PERIOD
(the clean-up timer runs every update_period - 5 = 1 s and refreshes the
rows whose expires < now + update_period), pua_rpc, check_remote_contact 0;
its db is SQLite (kamtest's db, WAL) or a private PostgreSQL
(cfg-tests/pgsql.py; Store).  NOTIFYs go to pua_update_contact(), whose
return code comes back in the 200's X-PUA-Update header.

The peer (make_peer) is a sip.Uac, so it can also send NOTIFYs; it answers
  PUBLISH    200, a new SIP-ETag, Expires min(asked, peer.grant["v"]);
  SUBSCRIBE  200, a To tag (new for an initial SUBSCRIBE), Contact the
             peer, Expires min(asked, peer.grant["v"]);
and records every request with its source address.  peer.grant["v"] is
UAS_EXPIRES (30 s) unless a test lowers it to make a record due;
peer.delay["v"] (default 0) holds the 200 to a PUBLISH with SIP-If-Match
that many seconds.
"""
import os
import re
import sqlite3
import sys
import time

import sip
from kamtest import TestFailure, check

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "kamailio.cfg")
sys.path.insert(0, os.path.join(HERE, "..", "persist_common"))
import persist as P  # noqa: E402  (pidf, wait, pubs, subs, describe, final_reply)

UPDATE_PERIOD = 6      # s: clean-up pass every 1 s; due = expires < now + 6
UAS_EXPIRES = 30       # s: what the peer grants at most, normally
SHORT_EXPIRES = 8      # s: granted to make a record due 2 s later
ASK_EXPIRES = 3600     # s: what the consumers ask
ROW_WAIT = 2.0         # s: bound for "the row follows the 200" (no sync in db_mode 2)

PRESENCE_EVENT = 1
RPC_ASYN_PUBLISH = 1 << 7
RPC_SUBSCRIBE = 1 << 8

# pua_rpc's publish callback, run for a refresh (no RPC waiting for it).
RPC_CB_NULL = r"pua_rpc_publish_callback\(\): NULL reply or hentity parameter"
# The core's TCP main process may go before its children at shutdown.
SHUTDOWN_TCP = r"receive_fd\(\): EOF on \d+"
ALLOW = [RPC_CB_NULL, SHUTDOWN_TCP]

wait = P.wait
pidf = P.pidf
describe = P.describe
final_reply = P.final_reply


# --- the store ------------------------------------------------------------------

class Store:
    """Where the client's pua table lives: "sqlite" (each instance's own
    kamtest db) or "postgres" (one private server, shared by every client
    of the test)."""

    def __init__(self, t, kind):
        check(kind in ("sqlite", "postgres"), "unknown store %r" % kind)
        self.kind = kind
        self.pg = t.pgsql() if kind == "postgres" else None
        self.k = None   # the SQLite instance whose db is read

    def kamailio_kw(self):
        if self.kind == "sqlite":
            return dict(subst={"@DB_MODULE@": "db_sqlite.so", "@PUA_DB_URL@": "@DB_URL@"},
                        extra_sql="PRAGMA journal_mode=WAL;")
        return dict(subst={"@DB_MODULE@": "db_postgres.so",
                           "@PUA_DB_URL@": '"%s"' % self.pg.db_url},
                    schemas=None)

    def rows(self):
        q = "SELECT * FROM pua ORDER BY id"
        try:
            if self.pg is not None:
                return self.pg.sql(q)
            return self.k.sql(q)
        except sqlite3.Error as e:
            raise TestFailure("reading %s: %s" % (self.k.db_path, e))

    def execute(self, stmt, args=()):
        """A write to the table while the clients run ('?' placeholders)."""
        if self.pg is not None:
            self.pg.execute(stmt, args)
            return
        con = sqlite3.connect(self.k.db_path, timeout=5)
        try:
            con.execute(stmt, args)
            con.commit()
        finally:
            con.close()

    def make_due(self, ids, seconds=3):
        """Set the expires of the rows with these ids to now + seconds (<
        update_period: due for a refresh); nothing else changes."""
        for i in ids:
            self.execute("UPDATE pua SET expires = ? WHERE id = ?",
                         (int(time.time()) + seconds, i))

    def pub_rows(self, uri=None):
        return [r for r in self.rows() if not r["watcher_uri"]
                and (uri is None or r["pres_uri"] == uri)]

    def sub_rows(self, pres=None):
        return [r for r in self.rows() if r["watcher_uri"]
                and (pres is None or r["pres_uri"] == pres)]


def show_rows(rs):
    keys = ("id", "pres_uri", "pres_id", "event", "flag", "etag", "expires",
            "desired_expires", "watcher_uri", "call_id", "to_tag", "from_tag", "cseq",
            "contact", "remote_contact", "version")
    return "; ".join("{%s}" % ", ".join("%s=%r" % (k, r.get(k)) for k in keys)
                     for r in rs) or "no rows"


# --- the peer -------------------------------------------------------------------

def _granted(req, cap):
    try:
        asked = int(req.get("expires", str(ASK_EXPIRES)))
    except ValueError:
        asked = ASK_EXPIRES
    return max(0, min(asked, cap))


def make_peer(t):
    grant = {"v": UAS_EXPIRES}
    delay = {"v": 0.0}   # s before the 200 to a PUBLISH with SIP-If-Match

    def publish(req, ep):
        d = delay["v"] if req.get("sip-if-match") else 0.0
        return sip.PublishOk(expires=_granted(req, grant["v"]), delay=d)

    def subscribe(req, ep):
        return sip.Reply(200, headers=[("Contact", ep.contact),
                                       ("Expires", str(_granted(req, grant["v"])))])
    peer = t.uac(script={"PUBLISH": publish, "SUBSCRIBE": subscribe})
    peer.grant = grant
    peer.delay = delay
    peer.uri = "sip:uac@127.0.0.1:%d" % peer.port
    return peer


def pubs(peer, uri, since=0.0):
    return [r for r in peer.requests("PUBLISH") if r.msg.uri == uri and r.t >= since]


def subs(peer, call_id=None, since=0.0):
    return [r for r in peer.requests("SUBSCRIBE")
            if (call_id is None or r.msg.call_id == call_id) and r.t >= since]


def answered(recs):
    return [r for r in recs if r.status]


def notify(peer, k, watcher, pres, call_id, from_tag, to_tag, cseq, contact):
    """A NOTIFY from the peer into the dialog (From tag = the peer's tag,
    To tag = pua's), sent to k; -> pua_update_contact()'s return code (the
    X-PUA-Update header of the 200)."""
    m = sip.request("NOTIFY", watcher, pres, watcher, call_id=call_id, cseq=cseq,
                    from_tag=from_tag, to_tag=to_tag, via=peer.addr, contact=contact,
                    headers=[("Event", "presence"),
                             ("Subscription-State", "active;expires=30")])
    r = peer.send(m, ("127.0.0.1", k.port)).wait(5)
    check(r is not None, "no answer from %s to the NOTIFY within 5 s" % k.name)
    check(r.status == 200 and r.get("x-pua-update") is not None,
          "the NOTIFY was answered %s, X-PUA-Update %r" % (r.status, r.get("x-pua-update")))
    return int(r.get("x-pua-update"))


# --- the client -----------------------------------------------------------------

def start_client(t, peer, store, name="kamailio"):
    kw = store.kamailio_kw()
    kw["subst"].update({"@UAS_PORT@": str(peer.port),
                        "@UPDATE_PERIOD@": str(UPDATE_PERIOD)})
    k = t.kamailio(CFG, name=name, **kw)
    if store.kind == "sqlite" and store.k is None:
        store.k = k
    k.start()
    k.check_pua_loaded()
    return k


publish = P.publish   # pua.publish over JSON-RPC (persist_common)


def publish_ok(k, uri, expires, pres_id, body=None, etag=".", what="publish"):
    r = publish(k, uri, expires, pres_id, body, etag)
    res = r.get("result")
    check(isinstance(res, dict) and "SIP-ETag" in res,
          "%s: pua.publish via %s answered %r" % (what, k.name, r))
    return res["SIP-ETag"]


def subscribe(k, pres, watcher, expires):
    k.ctl("pua.subscribe", pres, watcher, "presence", expires)


def pua_records(k):
    m = re.search(r"records:\s*(-?\d+)", k.ctl("pua.stats").stdout)
    check(m, "pua.stats has no records field")
    return int(m.group(1))


def health(k, allow=()):
    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean(list(allow) + ALLOW)


def clean_stop(k, allow=()):
    check(k.stop() == 0, "%s: unclean exit\n%s" % (k.name, k.log_tail()))
    k.check_log_clean(list(allow) + ALLOW)


def now():
    return time.time()
