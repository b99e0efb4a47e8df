"""persist_db_down: the pua table unusable for a while.

The client (persist_common/kamailio.cfg: pua db_mode 0, update_period 6,
pua_rpc, SQLite in WAL mode) and a Python Uas granting at most 30 s (the
publications ask 3600 s).  The test changes the client's db with sqlite3
while Kamailio runs.

Cases
  table_renamed  publications A and R (ids persist-a, persist-r) -> E1, ER,
                 their rows within one sync (<= 11 s).  Then
                 `ALTER TABLE pua RENAME TO pua_away` (every query on pua
                 fails: "no such table").  Meanwhile: modify A (If-Match
                 E1) -> E2, publish B (id persist-b) -> EB, remove R
                 (expires 0, If-Match ER).  Within one sync an ERROR is
                 logged; Kamailio keeps all its workers; [ours] pua.stats: 2
                 records (A, B); the records are still in memory: modify A
                 with If-Match E2 -> E3 (a record lost would make pua_rpc
                 refuse the etag).  Then the table is renamed back; within
                 one sync (<= 11 s) A's row holds E3 and B's row EB.
                 BEYOND_C: R's row is gone too (our delete of a removed
                 record's row is retried; C never deletes it before it
                 expires).
  bad_row        a trigger makes SQLite refuse any INSERT of pres_id
                 persist-bad.  Publications G (id persist-good) then BAD
                 (id persist-bad), both for the same presentity URI (so
                 the same hash bucket, BAD in front in C's list).  Within
                 one sync an ERROR is logged for BAD; [ours] pua.stats: 2
                 records.  BEYOND_C: G's row is written in that same pass
                 (C's sync stops at the first failing row, every time).
                 Then the trigger is dropped: within one sync both rows
                 are there (C too: BAD goes in, then G).
Both: no CRITICAL/BUG/ALERT; the only ERROR lines are the database's and
pua's reports of the failed writes (table_renamed: none in one more sync
once the table is back, 6.5 s); all workers alive; clean exit.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "persist_common"))
import persist as P  # noqa: E402
from kamtest import check  # noqa: E402

CASES = [
    ("table_renamed", {"beyond_c": True}),
    ("bad_row", {"beyond_c": True}),
]

# What a failed write may log: db_sqlite's reports, pua's (C: db_update(),
# ours: the persistence's messages).
DB_ERRORS = [
    r"ERROR: db_sqlite ",
    r"ERROR: <core> \[db",
    r"ERROR: pua \[[^\]]*\]: (db_update|.*(pua table|database|db table|persist|sync|row))",
]


def crash_lines(k):
    return [l for l in k.log_lines() if re.search(r"(?:^|\s)(CRITICAL|CRIT|BUG|ALERT):", l)
            and not any(re.search(a, l) for a in P.ALLOW + [r"handle_sigs\(\)"])]


def new_bad(k, n0):
    return k.bad_lines(P.ALLOW)[n0:]


def table_renamed(t, uas, k):
    a = "sip:alice@127.0.0.1:%d" % uas.port
    b = "sip:bruno@127.0.0.1:%d" % uas.port
    rr = "sip:rita@127.0.0.1:%d" % uas.port
    e1 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "open", "a1"))
    er = P.publish_ok(k, rr, P.ASK_EXPIRES, "persist-r", P.pidf(rr, "open", "r1"))
    rs = P.wait(lambda: len(P.pub_rows(k)) == 2 and P.pub_rows(k), P.SYNC_WAIT)
    check(rs and sorted(x["etag"] for x in rs) == sorted([e1, er]),
          "no rows for A and R within %d s: %s" % (P.SYNC_WAIT, P.show_rows(P.rows(k))))

    n0 = len(k.bad_lines(P.ALLOW))
    P.sql_write(k, "ALTER TABLE pua RENAME TO pua_away")
    e2 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "closed", "a2"), etag=e1,
                      what="modify A")
    eb = P.publish_ok(k, b, P.ASK_EXPIRES, "persist-b", P.pidf(b, "open", "b1"), what="publish B")
    r = P.publish(k, rr, 0, "persist-r", etag=er)
    check(isinstance(r.get("result"), dict) and int(r["result"].get("Expires", -1)) == 0,
          "remove R: pua.publish answered %r" % r)
    errs = P.wait(lambda: new_bad(k, n0), P.SYNC_WAIT)
    check(errs, "no ERROR logged within %d s while the pua table is away" % P.SYNC_WAIT)
    t.note("while the table is away: %s" % errs[:6])
    k.check_workers_alive(settle=0.5, converge=2.0)
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 2, "pua.stats while the table is away: %d records, expected 2 (A, B)" % n)
    e3 = P.publish_ok(k, a, P.ASK_EXPIRES, "persist-a", P.pidf(a, "open", "a3"), etag=e2,
                      what="modify A while the table is away")
    time.sleep(0.5)
    P.sql_write(k, "ALTER TABLE pua_away RENAME TO pua")

    want = {a: e3, b: eb}
    rs = P.wait(lambda: {x["pres_uri"]: x["etag"] for x in P.pub_rows(k) if x["pres_uri"] in want}
                == want and P.pub_rows(k), P.SYNC_WAIT)
    got = {x["pres_uri"]: x["etag"] for x in P.pub_rows(k)}
    check({u: got.get(u) for u in want} == want,
          "%d s after the table came back: rows %s; expected A etag E3 %s, B etag %s"
          % (P.SYNC_WAIT, P.show_rows(P.rows(k)), e3, eb))

    def removed_row_goes():
        P.wait(lambda: not P.pub_rows(k, rr), 2)
        check(not P.pub_rows(k, rr), "the row of R, removed while the table was away, is "
              "still there: %s" % P.show_rows(P.pub_rows(k, rr)))
    t.beyond_c(removed_row_goes)
    return n0


def bad_row(t, uas, k):
    d = "sip:dora@127.0.0.1:%d" % uas.port
    P.sql_write(k, "CREATE TRIGGER pua_refuse BEFORE INSERT ON pua "
                   "WHEN NEW.pres_id = 'persist-bad' "
                   "BEGIN SELECT RAISE(ABORT, 'persist test refuses this row'); END")
    n0 = len(k.bad_lines(P.ALLOW))
    eg = P.publish_ok(k, d, P.ASK_EXPIRES, "persist-good", P.pidf(d, "open", "good"),
                      what="publish G")
    time.sleep(0.2)
    ebad = P.publish_ok(k, d, P.ASK_EXPIRES, "persist-bad", P.pidf(d, "closed", "bad"),
                        what="publish BAD")
    check(eg != ebad, "G and BAD got the same etag")
    errs = P.wait(lambda: new_bad(k, n0), P.SYNC_WAIT)
    check(errs, "no ERROR logged within %d s for the refused row" % P.SYNC_WAIT)
    t.note("refused row: %s" % errs[:6])
    if t.variant.is_ours:
        n = P.pua_records(k)
        check(n == 2, "pua.stats: %d records, expected 2 (G, BAD)" % n)

    def good_row_in_same_pass():
        P.wait(lambda: [x for x in P.pub_rows(k) if x["pres_id"] == "persist-good"], 1.5)
        rs = P.rows(k)
        check([x["etag"] for x in rs if x["pres_id"] == "persist-good"] == [eg],
              "the pass that failed on BAD did not write G: %s" % P.show_rows(rs))
    t.beyond_c(good_row_in_same_pass)
    k.check_workers_alive(settle=0.5, converge=2.0)

    P.sql_write(k, "DROP TRIGGER pua_refuse")
    want = {"persist-good": eg, "persist-bad": ebad}
    P.wait(lambda: {x["pres_id"]: x["etag"] for x in P.pub_rows(k)} == want, P.SYNC_WAIT)
    got = {x["pres_id"]: x["etag"] for x in P.pub_rows(k)}
    check(got == want, "%d s after the trigger went: rows %s, expected %r"
          % (P.SYNC_WAIT, P.show_rows(P.rows(k)), want))
    return n0


def run(t, data):
    uas = P.make_uas(t)
    k = P.start_client(t, uas)
    n0 = {"table_renamed": table_renamed, "bad_row": bad_row}[t.case](t, uas, k)

    if t.case == "table_renamed":
        # Once the db is back: one more sync without a new ERROR (nothing
        # left to retry).
        n1 = len(k.bad_lines(P.ALLOW))
        time.sleep(P.UPDATE_PERIOD + 0.5)
        late = k.bad_lines(P.ALLOW)[n1:]
        check(not late, "ERROR lines after the database came back:\n" + "\n".join(late[:10]))
    check(not crash_lines(k), "crash-like log lines:\n" + "\n".join(crash_lines(k)[:10]))
    outage = k.bad_lines(P.ALLOW)[n0:]
    other = [l for l in k.bad_lines(P.ALLOW)
             if l not in outage or not any(re.search(p, l) for p in DB_ERRORS)]
    check(not other, "ERROR lines that are not reports of a failed write:\n"
          + "\n".join(other[:10]))
    k.check_workers_alive(settle=0.5, converge=2.0)
    check(k.stop() == 0, "client: unclean exit\n" + k.log_tail())
    check(not uas.errors, "uas errors: %r" % uas.errors)
