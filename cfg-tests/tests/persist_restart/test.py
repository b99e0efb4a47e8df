"""persist_restart: db_mode 0 records survive a clean restart.

The client (persist_common/kamailio.cfg: pua db_mode 0, update_period 6,
pua_rpc, SQLite) PUBLISHes and SUBSCRIBEs to a Python Uas that grants at
most 30 s; every consumer asks 3600 s, so the records are refreshed once
due.

Run 1
  publish    pua.publish A (id persist-a) -> SIP-ETag E1.
  subscribe  pua.subscribe C watcher W (the client's own URI, also the
             Contact) -> initial SUBSCRIBE answered 200 with To tag T,
             Contact the Uas.
  sync       within one sync (<= 11 s) the pua table has A's row:
             pres_uri A, pres_id persist-a, event presence (1), flag
             RPC_ASYN_PUBLISH (128), etag E1, expires = the 200's time + 30
             (+-3 s); and the subscription's row: pres_uri C, watcher_uri
             W, event 1, flag RPC_SUBSCRIBE (256), the SUBSCRIBE's Call-ID,
             From tag and CSeq c1, to_tag T, contact W, remote_contact the
             Uas URI, expires ~ +30; no column NULL (but tuple_id and
             record_route, which may be).  (A is chosen so that C's sync
             reaches A's bucket first: C's failing subscription INSERT ends
             its pass; see persist_common.uris().)
  change     right after: modify A (If-Match E1, new body) -> E2, and
             pua.subscribe again -> an in-dialog SUBSCRIBE with CSeq c2 > c1;
             the rows still hold E1 and c1 (no sync in between).
  stop       SIGTERM -> exit status 0; module destroy wrote the table: A's
             row holds E2, the dialog's cseq c2.
Between the runs the test sets every row's expires to now + 5 (less than
update_period: the restored records are due at once; etag and dialog
untouched).
Run 2 (same db, same ports)
  restore    the table still has its rows after start-up; [ours] pua.stats
             shows 2 records.
  refresh    pua.cleanup -> (<= 5 s) a PUBLISH for A whose SIP-If-Match is
             the etag of A's row at restart, and that is E2, the latest the
             Uas gave; a SUBSCRIBE in the dialog: same Call-ID, From tag, To
             tag T, CSeq > c2, Request-URI the Uas's Contact.
Finally: all workers alive, no ERROR/CRITICAL in either run's log (but
pua_rpc's "NULL reply or hentity parameter" for refreshes of RPC
publications, both variants), clean exit.

BEYOND_C (C 5.6.3 on SQLite): the subscription is never written (C binds
its unset pres_id as NULL, which the NOT NULL column refuses: "NOT NULL
constraint failed: pua.pres_id" at every sync), so it is not restored and
no in-dialog SUBSCRIBE follows the restart; module destroy writes nothing
(the main process has no db connection), so the row keeps E1 and the
refresh carries the stale E1 (a real server answers 412); the restore
deletes every row (the table is empty until C's next sync).  What C does
right, checked in both variants: the publication's row, the stored etag
restored and used for the refresh.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "persist_common"))
import persist as P  # noqa: E402
from kamtest import check  # noqa: E402

BEYOND_C = True


def run(t):
    uas = P.make_uas(t)
    k = P.start_client(t, uas)
    a, c, w = P.uris(uas, k)
    uas_uri = "sip:uas@127.0.0.1:%d" % uas.port
    allow = P.c_allow(t)

    # --- run 1: publish, subscribe, one sync -------------------------------------
    n0 = len(k.bad_lines())
    e1 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "open", "one"))
    t_e1 = time.time()
    P.subscribe(k, c, w, P.ASK_EXPIRES)
    ss = P.wait(lambda: [x for x in P.subs(uas) if x.replies], 5)
    check(len(ss) == 1 and ss[0].msg.to_tag is None,
          "initial SUBSCRIBE: %s" % P.describe(P.subs(uas)))
    s1 = ss[0].msg
    t_s1 = time.time()
    to_tag = P.final_reply(ss[0]).to_tag
    call_id, from_tag, c1 = s1.call_id, s1.from_tag, s1.cseq[0]

    rs = P.wait(lambda: P.pub_rows(k, a), P.SYNC_WAIT)
    check(len(rs) == 1, "publication: no row within %d s: %s" % (P.SYNC_WAIT, P.show_rows(P.rows(k))))
    r = rs[0]
    check(r["pres_uri"] == a and r["pres_id"] == "persist-a" and r["event"] == P.PRESENCE_EVENT
          and r["flag"] == P.RPC_ASYN_PUBLISH and r["etag"] == e1,
          "publication row %s (etag E1 %s)" % (P.show_rows(rs), e1))
    check(abs(r["expires"] - (t_e1 + P.UAS_EXPIRES)) <= 3,
          "publication row expires %d, the 200 granted %d s at %d"
          % (r["expires"], P.UAS_EXPIRES, t_e1))

    def subscription_row_written():
        rs = P.wait_sync(k, lambda: P.sub_rows(k, call_id), n0=n0)
        check(len(rs) == 1, "subscription: no row within one sync (%d s): %s\n%s"
              % (P.SYNC_WAIT, P.show_rows(P.rows(k)), "\n".join(k.bad_lines()[-3:])))
        r = rs[0]
        nulls = [col for col, v in r.items() if v is None and col not in ("tuple_id", "record_route")]
        check(not nulls, "subscription row has NULL columns %s: %r" % (nulls, r))
        want = dict(pres_uri=c, watcher_uri=w, event=P.PRESENCE_EVENT, flag=P.RPC_SUBSCRIBE,
                    call_id=call_id, from_tag=from_tag, to_tag=to_tag, cseq=c1, contact=w,
                    remote_contact=uas_uri)
        bad = {col: (r[col], v) for col, v in want.items() if r[col] != v}
        check(not bad, "subscription row: (stored, expected) %r" % bad)
        check(abs(r["expires"] - (t_s1 + P.UAS_EXPIRES)) <= 3,
              "subscription row expires %d, the 200 granted %d s at %d"
              % (r["expires"], P.UAS_EXPIRES, t_s1))
    t.beyond_c(subscription_row_written)
    nulls = [(col, r) for r in P.rows(k) for col, v in r.items()
             if v is None and col not in ("tuple_id", "record_route")]
    check(not nulls, "NULL columns in the pua table: %r" % nulls)

    # --- run 1: changes after the sync, then a clean stop ----------------------
    e2 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "closed", "two"), etag=e1,
                      what="modify")
    check(e2 != e1, "modify: the etag did not change")
    P.subscribe(k, c, w, P.ASK_EXPIRES)
    ss = P.wait(lambda: [x for x in P.subs(uas, call_id) if x.replies][1:], 5)
    check(ss, "re-SUBSCRIBE: %s" % P.describe(P.subs(uas)))
    c2 = ss[0].msg.cseq[0]
    check(ss[0].msg.to_tag == to_tag and c2 > c1,
          "re-SUBSCRIBE not in dialog: %s" % P.describe(ss))
    P.health(k, allow)
    before = P.rows(k)
    check([x["etag"] for x in before if x["pres_uri"] == a] == [e1]
          and all(x["cseq"] == c1 for x in before if x["call_id"] == call_id),
          "a sync came between the changes and the stop (the test's timing): %s"
          % P.show_rows(before))
    P.clean_stop(k, allow)

    def stop_writes_the_table():
        rs = P.rows(k)
        check([x["etag"] for x in rs if x["pres_uri"] == a] == [e2],
              "after the clean stop A's row holds etag %r, the last 200 gave E2 %s"
              % ([x["etag"] for x in rs if x["pres_uri"] == a], e2))
        check([x["cseq"] for x in rs if x["call_id"] == call_id] == [c2],
              "after the clean stop the dialog's row holds cseq %r, the last SUBSCRIBE "
              "had %d" % ([x["cseq"] for x in rs if x["call_id"] == call_id], c2))
    t.beyond_c(stop_writes_the_table)

    # --- run 2 -----------------------------------------------------------------
    P.make_due(k)
    stored = P.rows(k)
    stored_etag = [x["etag"] for x in stored if x["pres_uri"] == a]
    t.note("rows at restart: %s" % P.show_rows(stored))
    t_restart = time.monotonic()
    P.restart(k, "run2")

    def restore_keeps_the_table():
        rs = P.rows(k)
        check(len(rs) == len(stored) and len(rs) >= 1,
              "after the restart the table has %d rows, %d before" % (len(rs), len(stored)))
    t.beyond_c(restore_keeps_the_table)
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 2, "pua.stats after the restart: %d records, expected 2" % n)

    k.ctl("pua.cleanup")
    P.wait(lambda: P.pubs(uas, a, t_restart) and P.subs(uas, call_id, t_restart), P.REFRESH_WAIT)
    ps = P.pubs(uas, a, t_restart)
    t.note("after the restart: %s" % P.describe(ps + P.subs(uas, call_id, t_restart)))
    check(ps, "no PUBLISH for A within %d s of the restart (its stored row %s)"
          % (P.REFRESH_WAIT, P.show_rows([x for x in stored if x["pres_uri"] == a])))
    im = ps[0].msg.get("sip-if-match")
    check(stored_etag and im == stored_etag[0],
          "the refresh after the restart has SIP-If-Match %r, A's row held %r" % (im, stored_etag))

    def refresh_has_latest_etag():
        check(im == e2, "the refresh after the restart has SIP-If-Match %r, the latest etag "
              "the server gave is E2 %s (E1 %s)" % (im, e2, e1))
    t.beyond_c(refresh_has_latest_etag)

    def subscription_refreshed_in_dialog():
        xs = P.subs(uas, call_id, t_restart)
        check(xs, "no SUBSCRIBE of the dialog (Call-ID %s) within %d s of the restart; "
              "SUBSCRIBEs since: %s" % (call_id, P.REFRESH_WAIT,
                                        P.describe(P.subs(uas, since=t_restart))))
        m = xs[0].msg
        check(m.from_tag == from_tag and m.to_tag == to_tag and m.cseq[0] > c2
              and m.uri == uas_uri,
              "the SUBSCRIBE after the restart is not in the dialog (From tag %s, To tag %s, "
              "CSeq > %d, to %s): %s" % (from_tag, to_tag, c2, uas_uri, P.describe(xs)))
    t.beyond_c(subscription_refreshed_in_dialog)

    P.health(k, allow)
    P.clean_stop(k, allow)
    check(not uas.errors, "uas errors: %r" % uas.errors)
