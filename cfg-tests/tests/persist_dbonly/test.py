"""persist_dbonly: db_mode 2, the pua table is the only store (SQLite and
PostgreSQL).

The client (kamailio.cfg here: pua db_mode 2, update_period 6, pua_rpc;
its db is SQLite in WAL mode, or a private PostgreSQL started by the test,
cfg-tests/pgsql.py) PUBLISHes and SUBSCRIBEs to a Python peer (dbonly.py)
that grants at most 30 s; every consumer asks 3600 s.  There is no memory
table to sync: each check of the table follows the 200 by at most 2 s.

Publication A (pua_rpc, id dbonly-a)
  insert   pua.publish -> one PUBLISH without SIP-If-Match, 200 with E1;
           the table has one row for A: pres_id dbonly-a, event presence
           (1), flag RPC_ASYN_PUBLISH (128), etag E1, watcher_uri '',
           expires = the 200's time + 30 (+-3 s), desired_expires = the
           RPC's time + 3600 (-3/+4 s: C asks and stores 1 s more).
  modify   etag E1, new body -> the PUBLISH has SIP-If-Match E1; one row,
           etag E2.
  refresh  the peer grants 8 s to the next modify (If-Match E2 -> E3): the
           row's expires is now + 8, due (expires < now + update_period);
           the grant is back to 30, pua.cleanup (the timer may come first)
           -> a PUBLISH for A with SIP-If-Match E3 and no body; afterwards
           one row whose etag is what the peer gave that refresh and whose
           expires is its time + 30.
  remove   expires 0 with the row's etag -> a PUBLISH with Expires: 0 and
           SIP-If-Match that etag; the row is gone.
Publication B without an id (pua_rpc id "."): insert, then modified twice
  (each with the etag of the previous answer) -> three PUBLISHes, the 2nd
  and 3rd with SIP-If-Match the previous etag; one row for B, with the last
  etag (then removed).  BEYOND_C on SQLite only (see below).
Chained modifies: 4 RPC clients at once, each inserting its own
  publication (id chain-N) and modifying it 40 times back to back, each
  time with the etag of the previous answer -> no error, the PUBLISHes'
  SIP-If-Match follow the etags, one row each with the last etag (then
  removed).  BEYOND_C on SQLite (see below).
Subscription (pua.subscribe C, watcher W = the client's URI, the Contact)
  initial  one SUBSCRIBE without To tag; after its 200 (To tag T, Contact
           the peer) one row: pres_uri C, watcher_uri W, event 1, flag
           RPC_SUBSCRIBE (256), the SUBSCRIBE's Call-ID, From tag, CSeq c1,
           to_tag T, contact W, remote_contact the peer's Contact URI,
           expires ~ +30.
  refresh  pua.subscribe again -> a SUBSCRIBE in the dialog (Call-ID, From
           tag, To tag T, CSeq c1 + 1, Request-URI the remote contact); the
           peer grants 8 s: the row's cseq follows, it is due, and
           pua.cleanup (or the timer) sends one more in-dialog SUBSCRIBE
           (CSeq + 1).
  NOTIFY   the peer sends a NOTIFY in the dialog (its tag in From, pua's in
           To): pua_update_contact() returns 1.
  un-SUBSCRIBE  pua.subscribe expires 0 -> a SUBSCRIBE in the dialog with
           Expires: 0, to the peer's URI (every 200 carried Contact <peer>,
           a target refresh, also after the NOTIFY's new Contact); the row
           is gone.
Finally: all workers alive, no ERROR/CRITICAL in the log (but pua_rpc's
"NULL reply or hentity parameter" for refreshes), clean exit, the table
empty.

BEYOND_C (C 5.6.3 as measured here):
  * both stores: a NOTIFY with a new Contact must change the row's
    remote_contact to that URI, and the next SUBSCRIBE goes there (C
    returns 1 but its UPDATE matches no row: it swaps the tags, WHERE
    to_tag = the NOTIFY's To tag, pua's own); a NOTIFY of an unknown dialog
    must return -1 (C returns 1 for any NOTIFY with tags and a Contact).
  * SQLite: the publication without an id cannot be modified by C: its
    lookup binds the empty pres_id as NULL, `pres_id = NULL` matches no row,
    and pua_rpc answers 500 "Wrong ETag" (nothing is sent).  On PostgreSQL
    C does it right (one row, SIP-If-Match), so there it is an ordinary
    check.  The issue's "duplicate rows and initial PUBLISHes" were not
    seen with 5.6.3.
  * SQLite, chained modifies: C answers "Wrong ETag" to some modify
    within the first steps.  Ours did too, before the chains' eviction
    count (crates/pua-core/src/dbonly.rs, `still_valid`): the 200's
    worker answers the RPC, writes the row and lets the record leave
    memory while the next modify's worker, which had just seen it there,
    looks for it again.
  * SQLite: pua.subscribe kills C: the temporary dialog's INSERT fails
    ("NOT NULL constraint failed: pua.to_tag": the empty To tag bound as
    NULL), and the worker handling the 200 dies with SIGSEGV, which takes
    the whole Kamailio down.  So on SQLite the whole subscription flow, and
    the final health checks, are beyond-C checks.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbonly as D  # noqa: E402
import sip  # noqa: E402
from kamtest import check  # noqa: E402

BEYOND_C = True
CASES = [("sqlite", {"store": "sqlite"}), ("postgres", {"store": "postgres"})]


def one_row(rows_fn, pred, what, timeout=D.ROW_WAIT):
    """Wait (bounded) until rows_fn() is one row satisfying pred."""
    rs = D.wait(lambda: (lambda x: x if len(x) == 1 and pred(x[0]) else None)(rows_fn()),
                timeout)
    check(rs, "%s: within %.0f s the rows are %s" % (what, timeout, D.show_rows(rows_fn())))
    return rs[0]


def publications(t, k, peer, store):
    a = "sip:alice@127.0.0.1:%d" % peer.port
    rows = lambda: store.pub_rows(a)  # noqa: E731

    # insert
    t0 = time.time()
    e1 = D.publish_ok(k, a, D.ASK_EXPIRES, "dbonly-a", D.pidf(a, "open", "one"), what="insert")
    t1 = time.time()
    ps = D.pubs(peer, a)
    check(len(ps) == 1 and ps[0].msg.get("sip-if-match") is None,
          "insert: PUBLISHes %s" % D.describe(ps))
    r = one_row(rows, lambda r: r["etag"] == e1, "insert (etag E1 %s)" % e1)
    want = dict(pres_uri=a, pres_id="dbonly-a", event=D.PRESENCE_EVENT,
                flag=D.RPC_ASYN_PUBLISH, etag=e1, watcher_uri="")
    bad = {c: (r[c], v) for c, v in want.items() if r[c] != v}
    check(not bad, "insert: row (stored, expected) %r" % bad)
    check(abs(r["expires"] - (t1 + D.UAS_EXPIRES)) <= 3,
          "insert: row expires %d, the 200 granted %d s at %d" % (r["expires"], D.UAS_EXPIRES, t1))
    check(t0 + D.ASK_EXPIRES - 3 <= r["desired_expires"] <= t1 + D.ASK_EXPIRES + 4,
          "insert: row desired_expires %d, asked %d s at %d" % (r["desired_expires"],
                                                               D.ASK_EXPIRES, t0))

    # modify
    e2 = D.publish_ok(k, a, D.ASK_EXPIRES, "dbonly-a", D.pidf(a, "closed", "two"), etag=e1,
                      what="modify")
    ps = D.pubs(peer, a)
    check(len(ps) == 2 and ps[1].msg.get("sip-if-match") == e1,
          "modify: PUBLISHes %s (E1 %s)" % (D.describe(ps), e1))
    one_row(rows, lambda r: r["etag"] == e2, "modify (etag E2 %s)" % e2)

    # refresh: a short grant makes the row due
    peer.grant["v"] = D.SHORT_EXPIRES
    try:
        e3 = D.publish_ok(k, a, D.ASK_EXPIRES, "dbonly-a", D.pidf(a, "closed", "three"),
                          etag=e2, what="modify 2")
        t3 = time.time()
    finally:
        peer.grant["v"] = D.UAS_EXPIRES
    r = one_row(rows, lambda r: r["etag"] == e3, "modify 2 (etag E3 %s)" % e3)
    check(abs(r["expires"] - (t3 + D.SHORT_EXPIRES)) <= 3,
          "modify 2: row expires %d, the 200 granted %d s at %d"
          % (r["expires"], D.SHORT_EXPIRES, t3))
    n0 = len(D.pubs(peer, a))
    # due once expires < now + update_period: 2 s after the 200
    time.sleep(max(0.0, t3 + D.SHORT_EXPIRES - D.UPDATE_PERIOD + 0.5 - time.time()))
    k.ctl("pua.cleanup")
    ps = D.wait(lambda: D.answered(D.pubs(peer, a)[n0:]), 5)
    check(ps, "refresh: no PUBLISH for A within 5 s of pua.cleanup (row %s)"
          % D.show_rows(rows()))
    first = ps[0].msg
    check(first.get("sip-if-match") == e3 and not first.body,
          "refresh: %s (E3 %s, body %r)" % (D.describe(ps), e3, first.body[:60]))
    time.sleep(0.5)
    ps = D.answered(D.pubs(peer, a)[n0:])
    last = ps[-1]
    e4 = last.info.get("etag")
    t.note("refresh PUBLISHes: %s" % D.describe(ps))
    r = one_row(rows, lambda r: r["etag"] == e4, "refresh (the refresh's etag %s)" % e4)
    check(r["expires"] >= time.time() + D.UAS_EXPIRES - 5,
          "refresh: row expires %d, the refresh was granted %d s" % (r["expires"], D.UAS_EXPIRES))

    # remove
    n0 = len(D.pubs(peer, a))
    res = D.publish(k, a, 0, "dbonly-a", etag=e4)
    check("error" not in res, "remove: pua.publish answered %r" % res)
    ps = D.wait(lambda: D.answered(D.pubs(peer, a)[n0:]), 3)
    check(len(ps) == 1 and ps[0].msg.get("expires") == "0"
          and ps[0].msg.get("sip-if-match") == e4,
          "remove: PUBLISHes %s (etag %s)" % (D.describe(ps), e4))
    check(D.wait(lambda: not rows(), D.ROW_WAIT), "remove: rows left %s" % D.show_rows(rows()))


def publication_without_id(t, k, peer, store):
    b = "sip:bea@127.0.0.1:%d" % peer.port
    etags = [D.publish_ok(k, b, D.ASK_EXPIRES, ".", D.pidf(b, "open", "b1"), what="B insert")]
    for n in (2, 3):
        etags.append(D.publish_ok(k, b, D.ASK_EXPIRES, ".", D.pidf(b, "open", "b%d" % n),
                                  etag=etags[-1], what="B modify %d" % (n - 1)))
    ps = D.pubs(peer, b)
    got = [p.msg.get("sip-if-match") for p in ps]
    check(got == [None, etags[0], etags[1]],
          "B (no id): PUBLISHes %s, expected SIP-If-Match [None, %s, %s]"
          % (D.describe(ps), etags[0], etags[1]))
    rs = D.wait(lambda: (lambda x: x if len(x) == 1 and x[0]["etag"] == etags[2] else None)(
        store.pub_rows(b)), D.ROW_WAIT)
    check(rs, "B (no id): rows %s, expected one with etag %s"
          % (D.show_rows(store.pub_rows(b)), etags[2]))
    res = D.publish(k, b, 0, ".", etag=etags[2])
    check("error" not in res, "B remove: pua.publish answered %r" % res)
    check(D.wait(lambda: not store.pub_rows(b), D.ROW_WAIT),
          "B remove: rows left %s" % D.show_rows(store.pub_rows(b)))


CHAINS = 4      # publications modified at once, one RPC client each
CHAIN_STEPS = 40  # modifies per publication, each with the previous answer's etag


def chained_modifies(t, k, peer, store):
    """Several RPC clients at once, each modifying its own publication
    back to back with the etag of the previous answer: every modify finds
    its publication (no "Wrong ETag", no new initial PUBLISH), the
    PUBLISHes chain their SIP-If-Match, one row each with the last etag.
    (A 200's worker answers the RPC and then writes the row and lets the
    record leave memory; the next modify races that in another worker.)"""
    uris = ["sip:chain%d@127.0.0.1:%d" % (i, peer.port) for i in range(CHAINS)]
    etags = {u: [] for u in uris}
    errors = []

    def client(u, i):
        try:
            et = "."
            for n in range(CHAIN_STEPS + 1):
                e = D.publish_ok(k, u, D.ASK_EXPIRES, "chain-%d" % i,
                                 D.pidf(u, "open", "step%d" % n), etag=et,
                                 what="%s step %d" % (u, n))
                etags[u].append(e)
                et = e
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(str(e))
    th = [threading.Thread(target=client, args=(u, i), daemon=True) for i, u in enumerate(uris)]
    for x in th:
        x.start()
    for x in th:
        x.join(90)
    check(not any(x.is_alive() for x in th), "chained modifies still running after 90 s")
    check(not errors, "chained modifies: %d clients failed: %s" % (len(errors), errors))
    for u in uris:
        ps = D.answered(D.pubs(peer, u))
        got = [p.msg.get("sip-if-match") for p in ps]
        check(got == [None] + etags[u][:-1],
              "%s: %d PUBLISHes, SIP-If-Match %s, expected None then the etags %s"
              % (u, len(ps), got, etags[u][:-1]))
        one_row(lambda: store.pub_rows(u), lambda r: r["etag"] == etags[u][-1],
                "%s (last etag %s)" % (u, etags[u][-1]))
    for i, u in enumerate(uris):
        res = D.publish(k, u, 0, "chain-%d" % i, etag=etags[u][-1])
        check("error" not in res, "%s remove: pua.publish answered %r" % (u, res))
    check(D.wait(lambda: not any(store.pub_rows(u) for u in uris), D.ROW_WAIT),
          "chained modifies: rows left %s"
          % D.show_rows([r for u in uris for r in store.pub_rows(u)]))


def subscription(t, k, peer, store):
    c = "sip:carol@127.0.0.1:%d" % peer.port
    w = "sip:bob@127.0.0.1:%d" % k.port
    rows = lambda: store.sub_rows(c)  # noqa: E731

    # initial
    D.subscribe(k, c, w, D.ASK_EXPIRES)
    ss = D.wait(lambda: D.answered(D.subs(peer)), 5)
    check(len(ss) == 1 and ss[0].msg.to_tag is None,
          "initial SUBSCRIBE: %s" % D.describe(D.subs(peer)))
    t1 = time.time()
    s1 = ss[0].msg
    to_tag = D.final_reply(ss[0]).to_tag
    call_id, from_tag, c1 = s1.call_id, s1.from_tag, s1.cseq[0]
    r = one_row(rows, lambda r: r["to_tag"] == to_tag, "initial SUBSCRIBE's 200 (To tag %s)" % to_tag)
    want = dict(pres_uri=c, watcher_uri=w, event=D.PRESENCE_EVENT, flag=D.RPC_SUBSCRIBE,
                call_id=call_id, from_tag=from_tag, to_tag=to_tag, cseq=c1, contact=w,
                remote_contact=peer.uri)
    bad = {col: (r[col], v) for col, v in want.items() if r[col] != v}
    check(not bad, "subscription row: (stored, expected) %r" % bad)
    check(abs(r["expires"] - (t1 + D.UAS_EXPIRES)) <= 3,
          "subscription row expires %d, the 200 granted %d s at %d"
          % (r["expires"], D.UAS_EXPIRES, t1))

    def in_dialog(rec, cseq, uri, what):
        m = rec.msg
        check(m.call_id == call_id and m.from_tag == from_tag and m.to_tag == to_tag
              and m.cseq[0] == cseq and m.uri == uri,
              "%s not in the dialog (Call-ID %s, From tag %s, To tag %s, CSeq %d, to %s): %s"
              % (what, call_id, from_tag, to_tag, cseq, uri, D.describe([rec])))

    # refresh by pua.subscribe (granted 8 s: the row becomes due)
    peer.grant["v"] = D.SHORT_EXPIRES
    try:
        D.subscribe(k, c, w, D.ASK_EXPIRES)
        ss = D.wait(lambda: D.answered(D.subs(peer))[1:], 5)
        t2 = time.time()
    finally:
        peer.grant["v"] = D.UAS_EXPIRES
    check(len(ss) == 1, "re-SUBSCRIBE: %s" % D.describe(D.subs(peer)))
    in_dialog(ss[0], c1 + 1, peer.uri, "re-SUBSCRIBE")
    r = one_row(rows, lambda r: r["cseq"] == c1 + 1, "re-SUBSCRIBE's 200 (cseq %d)" % (c1 + 1))
    check(r["call_id"] == call_id and r["to_tag"] == to_tag,
          "re-SUBSCRIBE: the row changed dialog: %s" % D.show_rows([r]))

    # refresh by pua.cleanup / the timer
    time.sleep(max(0.0, t2 + D.SHORT_EXPIRES - D.UPDATE_PERIOD + 0.5 - time.time()))
    k.ctl("pua.cleanup")
    ss = D.wait(lambda: D.answered(D.subs(peer))[2:], 5)
    check(ss, "timer refresh: no SUBSCRIBE within 5 s of pua.cleanup (row %s)"
          % D.show_rows(rows()))
    in_dialog(ss[0], c1 + 2, peer.uri, "timer refresh")
    time.sleep(0.5)
    cs = D.subs(peer)[-1].msg.cseq[0]
    one_row(rows, lambda r: r["cseq"] == cs, "timer refresh's 200 (cseq %d)" % cs)

    # NOTIFYs
    nc = [100]

    def notify(contact, **kw):
        nc[0] += 1
        args = dict(call_id=call_id, from_tag=to_tag, to_tag=from_tag)
        args.update(kw)
        return D.notify(peer, k, w, c, cseq=nc[0], contact=contact, **args)
    rc = notify("<%s>" % peer.uri)
    check(rc == 1, "NOTIFY in the dialog: pua_update_contact() returned %d" % rc)
    moved = "sip:moved@127.0.0.1:%d" % peer.port
    rc = notify("<%s>" % moved)
    check(rc == 1, "NOTIFY with a new Contact: pua_update_contact() returned %d" % rc)

    def notify_changes_remote_contact():
        rs = D.wait(lambda: [x for x in rows() if x["remote_contact"] == moved], D.ROW_WAIT)
        check(rs, "after a NOTIFY with Contact %s the row has remote_contact %r"
              % (moved, [x["remote_contact"] for x in rows()]))
        n = len(D.subs(peer))
        D.subscribe(k, c, w, D.ASK_EXPIRES)
        ss = D.wait(lambda: D.answered(D.subs(peer))[n:], 5)
        check(ss and ss[0].msg.uri == moved,
              "after the NOTIFY the next SUBSCRIBE went to %s, expected %s"
              % ([x.msg.uri for x in ss], moved))
    t.beyond_c(notify_changes_remote_contact)

    def unknown_notify_fails():
        rc = notify("<%s>" % peer.uri, call_id="no-such-dialog-" + sip.rand_token(6),
                    from_tag="nft" + sip.rand_token(4), to_tag="ntt" + sip.rand_token(4))
        check(rc == -1, "NOTIFY of an unknown dialog: pua_update_contact() returned %d" % rc)
    t.beyond_c(unknown_notify_fails)

    # un-SUBSCRIBE
    time.sleep(0.3)
    last = D.subs(peer)[-1].msg
    # the 200 of the last SUBSCRIBE carried Contact <peer.uri>: a target refresh
    target = peer.uri
    n = len(D.subs(peer))
    D.subscribe(k, c, w, 0)
    ss = D.wait(lambda: D.answered(D.subs(peer))[n:], 5)
    check(len(ss) == 1 and ss[0].msg.get("expires") == "0",
          "un-SUBSCRIBE: %s" % D.describe(D.subs(peer)[n:]))
    in_dialog(ss[0], last.cseq[0] + 1, target, "un-SUBSCRIBE")
    check(D.wait(lambda: not rows(), D.ROW_WAIT), "un-SUBSCRIBE: rows left %s"
          % D.show_rows(rows()))


def run(t, data):
    store = D.Store(t, data["store"])
    peer = D.make_peer(t)
    k = D.start_client(t, peer, store)
    sqlite = store.kind == "sqlite"

    publications(t, k, peer, store)
    if sqlite:
        t.beyond_c(publication_without_id, t, k, peer, store)
    else:
        publication_without_id(t, k, peer, store)
    D.health(k)
    # After the health check: C on SQLite logs "database is locked" here.
    if sqlite:
        t.beyond_c(chained_modifies, t, k, peer, store)
    else:
        chained_modifies(t, k, peer, store)

    def subscription_flow():
        subscription(t, k, peer, store)

    def healthy_end():
        D.health(k)
        D.clean_stop(k)
        check(not store.rows(), "rows left at the end: %s" % D.show_rows(store.rows()))
    if sqlite:
        t.beyond_c(subscription_flow)
        t.beyond_c(healthy_end)
    else:
        subscription_flow()
        healthy_end()
    check(not peer.errors, "peer errors: %r" % peer.errors)
