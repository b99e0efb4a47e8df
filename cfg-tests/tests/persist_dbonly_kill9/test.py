"""persist_dbonly_kill9: db_mode 2 loses nothing to kill -9 (SQLite and
PostgreSQL).

The client (persist_dbonly/kamailio.cfg: pua db_mode 2, pua_rpc; SQLite in
WAL mode or a private PostgreSQL, cfg-tests/pgsql.py) with update_period
UPDATE_PERIOD = 120: the clean-up timer runs every 115 s, so no timer runs
during either run; and a Python peer (persist_dbonly/dbonly.py) granting
GRANT = 600 s (> update_period: no record is due unless the test makes it
due); every consumer asks 3600 s.

Run 1
  pua.publish P (id k9-p) -> E1; pua.subscribe C (watcher W = the client's
  URI) -> the dialog (Call-ID, From tag, To tag T, CSeq c1); pua.publish P
  with etag E1 -> a PUBLISH with SIP-If-Match E1, 200 with E2; pua.subscribe
  again -> a SUBSCRIBE in the dialog with CSeq c1 + 1, answered.  Then at
  once (KILL_GRACE = 0.3 s after the peer sent the last 200, the time to
  process it; the table is not looked at before the kill) SIGKILL to the
  main process, then to every other process of its group, each by PID (no
  module destroy runs).
Right after the kill
  the table holds one row for P with etag E2 and one for the dialog with
  To tag T and cseq c1 + 1; run 1's log has no ERROR/CRITICAL.
Run 2 (same db and ports)
  the test sets both rows' expires to now + 5 (due) before the start;
  pua.cleanup -> (<= 5 s) a PUBLISH for P with SIP-If-Match E2 and no body,
  and a SUBSCRIBE in the dialog (Call-ID, From tag, To tag T, CSeq >
  c1 + 1, Request-URI the peer's Contact); P's row gets the refresh's etag
  E3, the dialog's row the new cseq.
  pua.publish P (id k9-p, no etag, a new body) -> one PUBLISH with
  SIP-If-Match E3 (the record is found in the table, not published anew
  without SIP-If-Match); the row gets its etag E4.
  pua.publish P expires 0 with E4 -> a PUBLISH with Expires: 0 and
  SIP-If-Match E4, the row is gone; pua.subscribe expires 0 -> a SUBSCRIBE
  in the dialog with Expires: 0, the row is gone.
Finally: all workers alive, no ERROR/CRITICAL in run 2's log (but pua_rpc's
"NULL reply or hentity parameter" for the refresh of an RPC publication),
clean exit, the table empty.

BEYOND_C (C 5.6.3 as measured here), the sqlite case only:
  * pua.subscribe kills C on SQLite (as in persist_dbonly: the temporary
    dialog's INSERT fails, "NOT NULL constraint failed: pua.to_tag", the
    empty To tag bound as NULL; the worker handling the 200 then dies with
    SIGSEGV and the whole Kamailio exits with status 1).  So on SQLite the
    subscription's steps are beyond-C checks; when C's Kamailio is down
    after one of them (it is, after the initial SUBSCRIBE), the [c] run
    records that and stops there (the rest of its process group is
    stopped by its PID).  C's publication insert before that is checked.
  * postgres: C does all of the above right (both rows survive the kill
    with E2 and cseq c1 + 1, the refreshes carry them, the modify after the
    restart finds the row), so that case is a plain parity test, not
    BEYOND_C.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "persist_dbonly"))
import dbonly as D  # noqa: E402
from kamtest import check, pgroup_members  # noqa: E402

CASES = [("sqlite", {"store": "sqlite", "beyond_c": True}),
         ("postgres", {"store": "postgres", "beyond_c": False})]

UPDATE_PERIOD = 120   # s: the clean-up timer every 115 s, never during a run
GRANT = 600           # s the peer grants (> update_period: nothing due by itself)
KILL_GRACE = 0.3      # s between the peer's last 200 and kill -9
REFRESH_WAIT = 5.0    # s: bound for the refreshes after pua.cleanup


class Stop(Exception):
    """[c] only: C's Kamailio is down, the rest of the flow is moot."""


def start_client(t, peer, store):
    kw = store.kamailio_kw()
    kw["subst"].update({"@UAS_PORT@": str(peer.port),
                        "@UPDATE_PERIOD@": str(UPDATE_PERIOD)})
    k = t.kamailio(D.CFG, **kw)
    if store.kind == "sqlite":
        store.k = k
    k.start()
    k.check_pua_loaded()
    return k


def kill9(k):
    """SIGKILL to the main process, then to every other live process of its
    process group (its children), each by PID; bounded waits; reap."""
    pgid = k.pid
    check(k.alive(), "kill -9: the main process %d is not running (exit %r)\n%s"
          % (k.pid, k.returncode, k.log_tail()))
    killed = []
    deadline = time.monotonic() + 5.0
    while True:
        # the main process first (so it cannot start a shutdown of its own),
        # then its children; again for any process still in the group
        left = [k.pid] if not killed else []
        left += [p for p in pgroup_members(pgid) if p != k.pid]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append(pid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        k.proc.wait(timeout=5)
    except Exception:
        pass
    check(not pgroup_members(pgid), "kill -9: processes left %s" % pgroup_members(pgid))
    rc = k.stop()   # reaps, closes the log
    check(rc == -signal.SIGKILL, "kill -9: main process exit status %r" % rc)
    return sorted(set(killed))


def one_row(rows_fn, pred, what, timeout=D.ROW_WAIT):
    rs = D.wait(lambda: (lambda x: x if len(x) == 1 and pred(x[0]) else None)(rows_fn()),
                timeout)
    check(rs, "%s: within %.0f s the rows are %s" % (what, timeout, D.show_rows(rows_fn())))
    return rs[0]


def run(t, data):
    store = D.Store(t, data["store"])
    sqlite = store.kind == "sqlite"
    peer = D.make_peer(t)
    peer.grant["v"] = GRANT
    k = start_client(t, peer, store)
    p = "sip:paula@127.0.0.1:%d" % peer.port
    c = "sip:carol@127.0.0.1:%d" % peer.port
    w = "sip:bob@127.0.0.1:%d" % k.port
    prow = lambda: store.pub_rows(p)  # noqa: E731
    srow = lambda: store.sub_rows(c)  # noqa: E731
    dlg = {}

    def c_down(what):
        """[c]: after a failed beyond-C step, is C's Kamailio gone?"""
        if not t.variant.is_ours and not k.alive():
            t.note("C's kamailio is down after %s (exit %r): the rest is skipped"
                   % (what, k.returncode))
            raise Stop()

    def sub_beyond(fn, what):
        """The subscription's steps: beyond C on SQLite (C's worker dies)."""
        if sqlite:
            t.beyond_c(fn)
            c_down(what)
        else:
            fn()

    try:
        # --- run 1 -------------------------------------------------------------
        e1 = D.publish_ok(k, p, D.ASK_EXPIRES, "k9-p", D.pidf(p, "open", "one"),
                          what="insert")
        ps = D.pubs(peer, p)
        check(len(ps) == 1 and ps[0].msg.get("sip-if-match") is None,
              "insert: PUBLISHes %s" % D.describe(ps))

        def initial_subscribe():
            D.subscribe(k, c, w, D.ASK_EXPIRES)
            ss = D.wait(lambda: D.answered(D.subs(peer)), 5)
            check(len(ss) == 1 and ss[0].msg.to_tag is None,
                  "initial SUBSCRIBE: %s" % D.describe(D.subs(peer)))
            m = ss[0].msg
            dlg.update(call_id=m.call_id, from_tag=m.from_tag, c1=m.cseq[0],
                       to_tag=D.final_reply(ss[0]).to_tag)
            time.sleep(0.5)   # C: the worker handling the 200 dies
            check(k.alive(), "kamailio exited (status %r) after the initial SUBSCRIBE's 200"
                  % k.returncode)
        sub_beyond(initial_subscribe, "the initial SUBSCRIBE")

        e2 = D.publish_ok(k, p, D.ASK_EXPIRES, "k9-p", D.pidf(p, "closed", "two"), etag=e1,
                          what="modify")
        ps = D.pubs(peer, p)
        check(len(ps) == 2 and ps[1].msg.get("sip-if-match") == e1,
              "modify: PUBLISHes %s (E1 %s)" % (D.describe(ps), e1))

        def refresh_subscribe():
            check(dlg, "no dialog to refresh")
            D.subscribe(k, c, w, D.ASK_EXPIRES)
            ss = D.wait(lambda: D.answered(D.subs(peer))[1:], 5)
            check(len(ss) == 1, "re-SUBSCRIBE: %s" % D.describe(D.subs(peer)))
            m = ss[0].msg
            check(m.call_id == dlg["call_id"] and m.from_tag == dlg["from_tag"]
                  and m.to_tag == dlg["to_tag"] and m.cseq[0] == dlg["c1"] + 1,
                  "re-SUBSCRIBE not in the dialog (Call-ID %s, tags %s/%s, CSeq %d): %s"
                  % (dlg["call_id"], dlg["from_tag"], dlg["to_tag"], dlg["c1"] + 1,
                     D.describe(ss)))
        sub_beyond(refresh_subscribe, "the re-SUBSCRIBE")

        # the last 200 (the re-SUBSCRIBE's, or the modify's) was sent just now
        time.sleep(KILL_GRACE)
        pids = kill9(k)
        t.note("kill -9 to %s" % pids)

        # --- right after the kill ---------------------------------------------------
        rs = prow()
        check(len(rs) == 1 and rs[0]["etag"] == e2,
              "after kill -9: P's rows %s, expected one with E2 %s" % (D.show_rows(rs), e2))
        p_id = rs[0]["id"]
        s_id = []

        def dialog_row_after_kill():
            rs = srow()
            check(len(rs) == 1 and rs[0]["call_id"] == dlg.get("call_id")
                  and rs[0]["to_tag"] == dlg.get("to_tag")
                  and rs[0]["cseq"] == dlg.get("c1", -2) + 1,
                  "after kill -9: the subscription's rows %s, expected one for Call-ID %s, "
                  "To tag %s, cseq %s" % (D.show_rows(rs), dlg.get("call_id"),
                                          dlg.get("to_tag"), dlg.get("c1", -2) + 1))
            s_id.append(rs[0]["id"])
        sub_beyond(dialog_row_after_kill, "the kill")
        k.check_log_clean(D.ALLOW)
        t.note("rows after kill -9: %s" % D.show_rows(store.rows()))

        # --- run 2 ------------------------------------------------------------------
        store.make_due([p_id] + s_id, seconds=5)
        D.P.restart(k, "run2")
        t2 = time.monotonic()
        n0 = len(D.pubs(peer, p))
        k.ctl("pua.cleanup")
        ps = D.wait(lambda: D.answered(D.pubs(peer, p, t2)), REFRESH_WAIT)
        check(ps, "run 2: no PUBLISH for P within %.0f s of pua.cleanup (rows %s)"
              % (REFRESH_WAIT, D.show_rows(store.rows())))
        check(ps[0].msg.get("sip-if-match") == e2 and not ps[0].msg.body,
              "run 2 refresh: %s (E2 %s, body %r)" % (D.describe(ps), e2, ps[0].msg.body[:60]))

        def dialog_refresh():
            ss = D.wait(lambda: D.answered(D.subs(peer, dlg["call_id"], t2)), REFRESH_WAIT)
            check(ss, "run 2: no SUBSCRIBE of the dialog within %.0f s of pua.cleanup "
                  "(rows %s)" % (REFRESH_WAIT, D.show_rows(srow())))
            m = ss[0].msg
            check(m.from_tag == dlg["from_tag"] and m.to_tag == dlg["to_tag"]
                  and m.cseq[0] > dlg["c1"] + 1 and m.uri == peer.uri,
                  "run 2: the SUBSCRIBE is not in the dialog (From tag %s, To tag %s, "
                  "CSeq > %d, to %s): %s" % (dlg["from_tag"], dlg["to_tag"], dlg["c1"] + 1,
                                             peer.uri, D.describe(ss)))
        sub_beyond(dialog_refresh, "run 2's pua.cleanup")
        time.sleep(0.5)
        ps = D.answered(D.pubs(peer, p, t2))
        t.note("run 2 refreshes: %s" % D.describe(ps + D.subs(peer, dlg.get("call_id"), t2)))
        check(len(ps) == 1, "run 2: %d refresh PUBLISHes for P (%s), expected one"
              % (len(ps), D.describe(ps)))
        e3 = ps[0].info.get("etag")
        one_row(prow, lambda r: r["etag"] == e3, "run 2 refresh (etag E3 %s)" % e3)

        def dialog_row_follows():
            cs = D.subs(peer, dlg["call_id"])[-1].msg.cseq[0]
            one_row(srow, lambda r: r["cseq"] == cs, "run 2 refresh (cseq %d)" % cs)
        sub_beyond(dialog_row_follows, "run 2's refresh")

        # modify after the restart: found in the table (by its id), not re-published
        n0 = len(D.pubs(peer, p))
        e4 = D.publish_ok(k, p, D.ASK_EXPIRES, "k9-p", D.pidf(p, "open", "four"),
                          what="run 2 modify")
        ps = D.pubs(peer, p)[n0:]
        check(len(ps) == 1 and ps[0].msg.get("sip-if-match") == e3 and ps[0].msg.body,
              "run 2 modify: PUBLISHes %s, expected one with SIP-If-Match E3 %s and a body"
              % (D.describe(ps), e3))
        one_row(prow, lambda r: r["etag"] == e4, "run 2 modify (etag E4 %s)" % e4)

        # remove
        n0 = len(D.pubs(peer, p))
        res = D.publish(k, p, 0, "k9-p", etag=e4)
        check("error" not in res, "remove: pua.publish answered %r" % res)
        ps = D.wait(lambda: D.answered(D.pubs(peer, p)[n0:]), 3)
        check(len(ps) == 1 and ps[0].msg.get("expires") == "0"
              and ps[0].msg.get("sip-if-match") == e4,
              "remove: PUBLISHes %s (E4 %s)" % (D.describe(ps), e4))
        check(D.wait(lambda: not prow(), D.ROW_WAIT), "remove: rows left %s"
              % D.show_rows(prow()))

        def unsubscribe():
            last = D.subs(peer, dlg["call_id"])[-1].msg
            n = len(D.subs(peer))
            D.subscribe(k, c, w, 0)
            ss = D.wait(lambda: D.answered(D.subs(peer))[n:], 5)
            check(len(ss) == 1 and ss[0].msg.get("expires") == "0"
                  and ss[0].msg.call_id == dlg["call_id"]
                  and ss[0].msg.to_tag == dlg["to_tag"]
                  and ss[0].msg.cseq[0] == last.cseq[0] + 1,
                  "un-SUBSCRIBE: %s" % D.describe(D.subs(peer)[n:]))
            check(D.wait(lambda: not srow(), D.ROW_WAIT), "un-SUBSCRIBE: rows left %s"
                  % D.show_rows(srow()))
        sub_beyond(unsubscribe, "the un-SUBSCRIBE")

        D.health(k)
        D.clean_stop(k)
        check(not store.rows(), "rows left at the end: %s" % D.show_rows(store.rows()))
    except Stop:
        check(not t.variant.is_ours and t.c_bugs, "stopped without a recorded C bug")
        k.stop()   # what is left of C's process group, by its PID
    check(not peer.errors, "peer errors: %r" % peer.errors)
