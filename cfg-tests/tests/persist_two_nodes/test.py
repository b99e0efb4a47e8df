"""persist_two_nodes: two clients in db_mode 2 share one PostgreSQL pua table.

Two client Kamailios, node_a and node_b (persist_dbonly/kamailio.cfg: pua
db_mode 2, update_period 6, pua_rpc; different SIP ports, the same db_url
of a private PostgreSQL, cfg-tests/pgsql.py), and one Python peer
(persist_dbonly/dbonly.py: grants at most 30 s, every consumer asks 3600).

Phase 1, node A
  pua.publish P (id two-p) -> E1, sent from A's port; pua.subscribe C
  (watcher W = A's URI) -> the dialog (Call-ID, From tag, To tag T, CSeq
  c1), sent from A's port.  Both rows are in the table right after the
  200s.  A is stopped (exit 0): the rows stay (db_mode 2 keeps no state of
  its own to write or clear).
Phase 2, node B (A is down, so nothing else can refresh)
  refresh  the test sets P's expires to now + 3 (due: < now +
           update_period); pua.cleanup on B -> a PUBLISH for P with
           SIP-If-Match E1 from B's port; P's row gets its etag E2.  Then
           the subscription's expires is set to now + 3 and B's timer (no
           RPC) sends, within 3 s, a SUBSCRIBE in A's dialog (Call-ID, From
           tag, To tag T, CSeq c1 + 1) from B's port; the row's cseq
           follows.
  NOTIFY   the peer sends a NOTIFY in A's dialog to B: B's
           pua_update_contact() returns 1.
  remove   pua.publish via B, expires 0, P, id two-p, etag E2 -> a PUBLISH
           with Expires: 0 and SIP-If-Match E2 from B's port; P's row is
           gone.  pua.subscribe via B, expires 0, C, W -> a SUBSCRIBE in the
           dialog with Expires: 0 from B's port; the row is gone.
Phase 3, both nodes (A restarted on the same ports)
  A publishes Q (id two-q); the peer now holds the 200 to a PUBLISH with
  SIP-If-Match 1.5 s; Q's row is made due and pua.cleanup runs on A and B
  at the same time (both timers run too, every second).  The first refresh
  carries SIP-If-Match = Q's etag.  A removes Q; its rows are gone.
Finally: both nodes alive with all workers, no ERROR/CRITICAL in any log
(but pua_rpc's "NULL reply or hentity parameter" for refreshes), clean
exits, the table empty.

BEYOND_C (C 5.6.3 as measured here):
  * a NOTIFY with a new Contact sent to B must change the row's
    remote_contact (C returns 1 but its UPDATE swaps the tags and matches
    no row);
  * phase 3: exactly one refresh PUBLISH for Q across both nodes while the
    first is unanswered, and then one row for Q with that refresh's etag.
    C sends one per node and per timer tick until the 200 arrives (it
    updates the row only then; nothing marks a refresh in flight): 4
    PUBLISHes with the same SIP-If-Match measured, 2 from each node, and
    every 200 after the first finds no row with the old etag and INSERTs a
    new one: 4 rows for Q.  Deterministic for both: the 200 is held 1.5 s,
    longer than the timers' period, and the two pua.cleanup calls start
    together.  (Q's rows are all removed afterwards, one pua.publish
    expires 0 per row.)
What C does right, checked in both variants: B refreshes A's publication
with A's etag, refreshes A's dialog in dialog, and removes both.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "persist_dbonly"))
import dbonly as D  # noqa: E402
from kamtest import check  # noqa: E402

BEYOND_C = True

HOLD = 1.5   # s the peer holds the 200 to a refresh in phase 3


def from_node(rec, k):
    return rec.addr[1] == k.port


def one_row(rows_fn, pred, what, timeout=D.ROW_WAIT):
    rs = D.wait(lambda: (lambda x: x if len(x) == 1 and pred(x[0]) else None)(rows_fn()),
                timeout)
    check(rs, "%s: within %.0f s the rows are %s" % (what, timeout, D.show_rows(rows_fn())))
    return rs[0]


def run(t):
    store = D.Store(t, "postgres")
    peer = D.make_peer(t)
    ka = D.start_client(t, peer, store, name="node_a")
    kb = D.start_client(t, peer, store, name="node_b")
    p = "sip:paula@127.0.0.1:%d" % peer.port
    c = "sip:carol@127.0.0.1:%d" % peer.port
    w = "sip:bob@127.0.0.1:%d" % ka.port
    prow = lambda: store.pub_rows(p)  # noqa: E731
    srow = lambda: store.sub_rows(c)  # noqa: E731

    # --- phase 1: A publishes and subscribes ----------------------------------
    e1 = D.publish_ok(ka, p, D.ASK_EXPIRES, "two-p", D.pidf(p, "open", "a"), what="A publish")
    ps = D.pubs(peer, p)
    check(len(ps) == 1 and from_node(ps[0], ka), "A publish: %s from %s"
          % (D.describe(ps), [x.addr for x in ps]))
    pr = one_row(prow, lambda r: r["etag"] == e1, "A publish (etag E1 %s)" % e1)
    D.subscribe(ka, c, w, D.ASK_EXPIRES)
    ss = D.wait(lambda: D.answered(D.subs(peer)), 5)
    check(len(ss) == 1 and ss[0].msg.to_tag is None and from_node(ss[0], ka),
          "A subscribe: %s from %s" % (D.describe(ss), [x.addr for x in ss]))
    s1 = ss[0].msg
    to_tag = D.final_reply(ss[0]).to_tag
    call_id, from_tag, c1 = s1.call_id, s1.from_tag, s1.cseq[0]
    sr = one_row(srow, lambda r: r["to_tag"] == to_tag, "A subscribe (To tag %s)" % to_tag)
    D.health(ka)
    D.clean_stop(ka)
    check(len(prow()) == 1 and len(srow()) == 1,
          "after A's stop the rows are %s" % D.show_rows(store.rows()))

    # --- phase 2: B refreshes, matches the NOTIFY, removes ------------------------
    n0 = len(D.pubs(peer, p))
    store.make_due([pr["id"]])
    kb.ctl("pua.cleanup")
    ps = D.wait(lambda: D.answered(D.pubs(peer, p)[n0:]), 5)
    check(ps, "B pua.cleanup: no PUBLISH for P within 5 s (rows %s)" % D.show_rows(prow()))
    check(from_node(ps[0], kb) and ps[0].msg.get("sip-if-match") == e1,
          "B refresh: %s from %s (E1 %s, B's port %d)"
          % (D.describe(ps), ps[0].addr, e1, kb.port))
    time.sleep(0.3)
    ps = D.answered(D.pubs(peer, p)[n0:])
    t.note("B refresh PUBLISHes: %s" % D.describe(ps))
    e2 = ps[-1].info.get("etag")
    one_row(prow, lambda r: r["etag"] == e2, "B refresh (etag E2 %s)" % e2)

    n0 = len(D.subs(peer))
    store.make_due([sr["id"]])
    ss = D.wait(lambda: D.answered(D.subs(peer)[n0:]), 4)
    check(ss, "B timer: no SUBSCRIBE within 4 s of the row being due (rows %s)"
          % D.show_rows(srow()))
    m = ss[0].msg
    check(from_node(ss[0], kb) and m.call_id == call_id and m.from_tag == from_tag
          and m.to_tag == to_tag and m.cseq[0] == c1 + 1 and m.uri == peer.uri,
          "B timer refresh not in A's dialog from B (Call-ID %s, tags %s/%s, CSeq %d, "
          "port %d): %s from %s" % (call_id, from_tag, to_tag, c1 + 1, kb.port,
                                    D.describe(ss), ss[0].addr))
    time.sleep(0.3)
    cs = D.subs(peer)[-1].msg.cseq[0]
    one_row(srow, lambda r: r["cseq"] == cs, "B timer refresh (cseq %d)" % cs)

    def notify(contact, n):
        return D.notify(peer, kb, w, c, call_id=call_id, from_tag=to_tag, to_tag=from_tag,
                        cseq=n, contact=contact)
    rc = notify("<%s>" % peer.uri, 101)
    check(rc == 1, "NOTIFY of A's dialog to B: pua_update_contact() returned %d" % rc)
    moved = "sip:moved@127.0.0.1:%d" % peer.port

    def b_updates_contact():
        rc = notify("<%s>" % moved, 102)
        check(rc == 1, "NOTIFY with a new Contact to B: pua_update_contact() returned %d" % rc)
        rs = D.wait(lambda: [x for x in srow() if x["remote_contact"] == moved], D.ROW_WAIT)
        check(rs, "after a NOTIFY with Contact %s to B the row has remote_contact %r"
              % (moved, [x["remote_contact"] for x in srow()]))
    t.beyond_c(b_updates_contact)

    n0 = len(D.pubs(peer, p))
    res = D.publish(kb, p, 0, "two-p", etag=e2)
    check("error" not in res, "B remove: pua.publish answered %r" % res)
    ps = D.wait(lambda: D.answered(D.pubs(peer, p)[n0:]), 3)
    check(len(ps) == 1 and from_node(ps[0], kb) and ps[0].msg.get("expires") == "0"
          and ps[0].msg.get("sip-if-match") == e2,
          "B remove: %s from %s (E2 %s)" % (D.describe(ps), [x.addr for x in ps], e2))
    check(D.wait(lambda: not prow(), D.ROW_WAIT), "B remove: rows left %s"
          % D.show_rows(prow()))

    n0 = len(D.subs(peer))
    last = D.subs(peer)[-1].msg
    D.subscribe(kb, c, w, 0)
    ss = D.wait(lambda: D.answered(D.subs(peer)[n0:]), 5)
    check(len(ss) == 1 and from_node(ss[0], kb) and ss[0].msg.get("expires") == "0"
          and ss[0].msg.call_id == call_id and ss[0].msg.to_tag == to_tag
          and ss[0].msg.cseq[0] == last.cseq[0] + 1,
          "B un-SUBSCRIBE: %s from %s" % (D.describe(ss), [x.addr for x in ss]))
    check(D.wait(lambda: not srow(), D.ROW_WAIT), "B un-SUBSCRIBE: rows left %s"
          % D.show_rows(srow()))
    D.health(kb)

    # --- phase 3: both nodes run pua.cleanup at the same time -------------------
    D.P.restart(ka, "run2")
    q = "sip:quinn@127.0.0.1:%d" % peer.port
    qrow = lambda: store.pub_rows(q)  # noqa: E731
    eq = D.publish_ok(ka, q, D.ASK_EXPIRES, "two-q", D.pidf(q, "open", "q"), what="A publish Q")
    qr = one_row(qrow, lambda r: r["etag"] == eq, "A publish Q (etag %s)" % eq)
    n0 = len(D.pubs(peer, q))
    peer.delay["v"] = HOLD
    try:
        store.make_due([qr["id"]])
        errs = []

        def cleanup(k):
            try:
                k.ctl("pua.cleanup")
            except Exception as e:   # reported below
                errs.append("%s: %s" % (k.name, e))
        ths = [threading.Thread(target=cleanup, args=(k,)) for k in (ka, kb)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(15)
        check(not errs and not any(th.is_alive() for th in ths),
              "pua.cleanup on both nodes: %s" % (errs or "a call hangs"))
        time.sleep(HOLD + 1.5)
    finally:
        peer.delay["v"] = 0.0
    ps = D.pubs(peer, q)[n0:]
    t.note("phase 3 refreshes: %s from %s" % (D.describe(ps), [x.addr[1] for x in ps]))
    check(ps and all(x.msg.get("sip-if-match") == eq for x in ps[:1]),
          "phase 3: refreshes %s (etag %s)" % (D.describe(ps), eq))

    time.sleep(0.3)

    def one_refresh_across_nodes():
        check(len(ps) == 1, "phase 3: %d refresh PUBLISHes for Q while the first was "
              "unanswered (%s), expected one" % (len(ps), D.describe(ps)))
        cur = qrow()
        e = ps[0].info.get("etag")
        check(len(cur) == 1 and cur[0]["etag"] == e,
              "phase 3: rows for Q %s, expected one with the refresh's etag %s"
              % (D.show_rows(cur), e))
    t.beyond_c(one_refresh_across_nodes)
    # remove Q (C: every row it left)
    for r in qrow():
        res = D.publish(ka, q, 0, "two-q", etag=r["etag"])
        check("error" not in res, "A remove Q: pua.publish answered %r" % res)
    check(D.wait(lambda: not qrow(), D.ROW_WAIT), "A remove Q: rows left %s"
          % D.show_rows(qrow()))

    for k in (ka, kb):
        D.health(k)
    for k in (ka, kb):
        D.clean_stop(k)
    check(not store.rows(), "rows left at the end: %s" % D.show_rows(store.rows()))
    check(not peer.errors, "peer errors: %r" % peer.errors)
