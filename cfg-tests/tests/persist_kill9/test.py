"""persist_kill9: db_mode 0 records survive kill -9, twice.

The client (persist_common/kamailio.cfg: pua db_mode 0, update_period 6,
pua_rpc, SQLite) and a Python Uas granting at most 30 s (the consumers ask
3600 s).

Run 1
  publication A (pua.publish, id persist-a) -> E1; subscription C/W
  (pua.subscribe) -> dialog (Call-ID, From tag, To tag T, CSeq c1); both
  rows within one sync (<= 11 s; A chosen so that C's sync reaches it
  before the subscription, see persist_common.uris()).  Then SIGKILL to the main
  process's whole process group (no module destroy runs).  What changed
  after the last sync would be lost (nothing is changed here; a crash can
  only keep what the last sync wrote).
Run 2 (same db and ports)
  [ours] pua.stats: 2 records.  The rows are still in the table after the
  start-up.  SIGKILL again at once, before update_period has passed since
  the start (checked: a sync would rewrite the table).
Run 3
  the rows are still there (the test first sets their expires to now + 5,
  so the restored records are due at once); [ours] pua.stats: 2 records;
  pua.cleanup -> (<= 5 s) a PUBLISH for A with SIP-If-Match E1 and a
  SUBSCRIBE in the dialog (same Call-ID, From tag, To tag T, CSeq > c1,
  Request-URI the Uas's Contact).
Finally: all workers alive, no ERROR/CRITICAL in the last run's log (but
pua_rpc's "NULL reply or hentity parameter" for the refresh of an RPC
publication), clean exit.

BEYOND_C (C 5.6.3 on SQLite): the subscription's row is never written (NOT
NULL pres_id, see persist_restart); C's restore loads the rows and then
deletes the whole table, re-inserting only at its next sync, so a kill in
between (run 2) loses everything: run 3 starts from an empty table and
nothing is PUBLISHed or SUBSCRIBEd again.  What C does right, checked in
both variants: the publication row within one sync.
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

    # --- run 1 ---------------------------------------------------------------
    n0 = len(k.bad_lines())
    e1 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "open", "one"))
    P.subscribe(k, c, w, P.ASK_EXPIRES)
    ss = P.wait(lambda: [x for x in P.subs(uas) if x.replies], 5)
    check(len(ss) == 1, "initial SUBSCRIBE: %s" % P.describe(P.subs(uas)))
    call_id, from_tag, c1 = ss[0].msg.call_id, ss[0].msg.from_tag, ss[0].msg.cseq[0]
    to_tag = P.final_reply(ss[0]).to_tag
    rs = P.wait(lambda: P.pub_rows(k, a), P.SYNC_WAIT)
    check(len(rs) == 1 and rs[0]["etag"] == e1,
          "publication: no row with E1 %s within %d s: %s" % (e1, P.SYNC_WAIT, P.show_rows(P.rows(k))))

    def subscription_row_written():
        rs = P.wait_sync(k, lambda: P.sub_rows(k, call_id), n0=n0)
        check(len(rs) == 1 and rs[0]["to_tag"] == to_tag and rs[0]["cseq"] == c1,
              "subscription: no row for the dialog within one sync (%d s): %s"
              % (P.SYNC_WAIT, P.show_rows(P.rows(k))))
    t.beyond_c(subscription_row_written)
    P.health(k, allow)
    synced = P.rows(k)
    t.note("rows before kill -9: %s" % P.show_rows(synced))
    P.kill9(k)

    # --- run 2: restore, kill -9 before the first sync ------------------------
    t_start = time.monotonic()
    P.restart(k, "run2")
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 2, "pua.stats after kill -9 and restart: %d records, expected 2" % n)
    after_restore = P.rows(k)
    elapsed = time.monotonic() - t_start
    check(elapsed < P.UPDATE_PERIOD - 1,
          "run 2 took %.1f s to start: its first sync may have come (the test's timing)" % elapsed)
    P.kill9(k)

    def restore_keeps_the_table():
        check(len(after_restore) == len(synced),
              "the table has %d rows after the restore, %d before (%s)"
              % (len(after_restore), len(synced), P.show_rows(after_restore)))
    t.beyond_c(restore_keeps_the_table)

    # --- run 3 -----------------------------------------------------------------
    P.make_due(k)
    stored = P.rows(k)
    t.note("rows at run 3: %s" % P.show_rows(stored))
    t_restart = time.monotonic()
    P.restart(k, "run3")
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 2, "pua.stats after the second kill -9 and restart: %d records, expected 2" % n)
    k.ctl("pua.cleanup")

    def records_survive_two_kills():
        P.wait(lambda: P.pubs(uas, a, t_restart) and P.subs(uas, call_id, t_restart), P.REFRESH_WAIT)
        ps = P.pubs(uas, a, t_restart)
        xs = P.subs(uas, call_id, t_restart)
        t.note("after run 3 started: %s" % P.describe(ps + xs))
        check(ps, "no PUBLISH for A within %d s of the restart: the publication is lost "
              "(%d rows in the table at the start: %s)"
              % (P.REFRESH_WAIT, len(stored), P.show_rows(stored)))
        check(ps[0].msg.get("sip-if-match") == e1,
              "the refresh has SIP-If-Match %r, the synced etag is E1 %s"
              % (ps[0].msg.get("sip-if-match"), e1))
        check(xs, "no SUBSCRIBE of the dialog within %d s of the restart: the subscription "
              "is lost" % P.REFRESH_WAIT)
        m = xs[0].msg
        check(m.from_tag == from_tag and m.to_tag == to_tag and m.cseq[0] > c1
              and m.uri == uas_uri,
              "the SUBSCRIBE after the restart is not in the dialog (From tag %s, To tag %s, "
              "CSeq > %d, to %s): %s" % (from_tag, to_tag, c1, uas_uri, P.describe(xs)))
    t.beyond_c(records_survive_two_kills)

    P.health(k, allow)
    P.clean_stop(k, allow)
    check(not uas.errors, "uas errors: %r" % uas.errors)
