"""persist_removed: a removed record's row goes, and a restart does not
bring it back.

The client (persist_common/kamailio.cfg: pua db_mode 0, update_period 6,
pua_rpc, SQLite) and a Python Uas granting min(asked, 30) s (so Expires: 0
is answered Expires: 0).

Run 1
  publication A (pua.publish, id persist-a, 3600 s) -> E1; subscription
  C/W (pua.subscribe, 3600 s) -> dialog; within one sync (<= 11 s) A's row
  and [ours] the subscription's row (C: never, see below; A chosen so
  that C's sync reaches it first, see persist_common.uris()).
  remove: pua.publish A expires 0 If-Match E1 -> answered with Expires 0
  (the record is deleted); pua.subscribe C/W expires 0 -> an in-dialog
  SUBSCRIBE with Expires: 0, answered Expires 0 (the record is deleted).
  [ours] pua.stats: 0 records.  Within one more sync (<= 11 s) the table
  has no row left.  Clean stop (SIGTERM, status 0).
Between the runs the test sets the expires of any row left to now + 5 (so
a restored record would be refreshed at once).
Run 2 (same db and ports)
  pua.cleanup, then 3 s: no PUBLISH for A and no SUBSCRIBE at all reach
  the Uas; [ours] pua.stats: 0 records.
Finally: all workers alive, no ERROR/CRITICAL in either run's log, clean
exits.

BEYOND_C (C 5.6.3): a record deleted in memory keeps its row until the row
expires (C's sync only deletes rows expired for more than 10 s), so A's row
outlives the removal, and a restart before it expires restores the removed
publication and re-PUBLISHes it with If-Match E1.  (C never writes the
subscription's row, NOT NULL pres_id: see persist_restart.)
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
    allow = P.c_allow(t)

    # --- run 1: publish, subscribe, sync ----------------------------------------
    n0 = len(k.bad_lines())
    e1 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "open", "one"))
    P.subscribe(k, c, w, P.ASK_EXPIRES)
    ss = P.wait(lambda: [x for x in P.subs(uas) if x.replies], 5)
    check(len(ss) == 1, "initial SUBSCRIBE: %s" % P.describe(P.subs(uas)))
    call_id = ss[0].msg.call_id
    rs = P.wait(lambda: P.pub_rows(k, a), P.SYNC_WAIT)
    check(len(rs) == 1 and rs[0]["etag"] == e1,
          "publication: no row with E1 %s within %d s: %s" % (e1, P.SYNC_WAIT, P.show_rows(P.rows(k))))
    subscribed = P.wait_sync(k, lambda: P.sub_rows(k, call_id), n0=n0)
    t.note("rows before the removal: %s" % P.show_rows(P.rows(k)))
    if t.variant.is_ours:
        check(subscribed, "subscription: no row within one sync: %s" % P.show_rows(P.rows(k)))

    # --- run 1: remove both ------------------------------------------------------
    r = P.publish(k, a, 0, "persist-a", etag=e1)
    res = r.get("result")
    check(isinstance(res, dict) and int(res.get("Expires", -1)) == 0,
          "remove: pua.publish answered %r" % r)
    P.subscribe(k, c, w, 0)
    ss = P.wait(lambda: [x for x in P.subs(uas, call_id) if x.replies][1:], 5)
    check(ss and ss[0].msg.get("expires") == "0",
          "un-SUBSCRIBE: %s" % P.describe(P.subs(uas, call_id)))
    if t.variant.is_ours:
        check(P.wait(lambda: P.pua_records(k) == 0, 3),
              "pua.stats after the removals: %d records, expected 0" % P.pua_records(k))

    def rows_of_removed_records_go():
        rs = P.wait(lambda: not P.rows(k), P.SYNC_WAIT)
        check(not P.rows(k), "%d s after the removals the table still has %s"
              % (P.SYNC_WAIT, P.show_rows(P.rows(k))))
    t.beyond_c(rows_of_removed_records_go)
    P.health(k, allow)
    P.clean_stop(k, allow)

    # --- run 2 -----------------------------------------------------------------
    P.make_due(k)
    left = P.rows(k)
    t.note("rows at the restart: %s" % P.show_rows(left))
    t_restart = time.monotonic()
    P.restart(k, "run2")
    k.ctl("pua.cleanup")
    time.sleep(3)

    def restart_does_not_revive():
        ps = P.pubs(uas, a, t_restart)
        xs = P.subs(uas, since=t_restart)
        check(not ps and not xs, "after the restart the removed records are back on the "
              "wire: %s (rows at the restart: %s)" % (P.describe(ps + xs), P.show_rows(left)))
    t.beyond_c(restart_does_not_revive)
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 0, "pua.stats after the restart: %d records, expected 0" % n)

    P.health(k, allow)
    P.clean_stop(k, allow)
    check(not uas.errors, "uas errors: %r" % uas.errors)
