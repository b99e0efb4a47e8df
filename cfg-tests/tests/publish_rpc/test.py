"""publish_rpc: pua_rpc's pua.publish against a real presence server.

Two Kamailios: the client under test (kamailio.cfg: pua + pua_rpc, pua's
outbound_proxy = the server) and the presence server
(cfg-tests/servers/presence.cfg, Debian's modules).  pua.publish answers
with a delayed RPC reply, so it goes through jsonrpcs over HTTP.

Steps, each followed by a look at the server's presentity table (sqlite3):
  insert   pua.publish alice, expires 120, PIDF "open"/"one"
           -> the answer has SIP-ETag E1 and Expires 120 (or 121: the C
           module asks one second more); presentity has one alice/presence
           row with etag E1, the "open" body, expires - received_time equal
           to the answered Expires (+-2 s).
  modify   etag E1, PIDF "closed"/"two" -> SIP-ETag E2 != E1; the row's etag
           is E2 and its body "closed".
  wrong    etag "no-such-etag" -> an RPC error (C: 500 "Wrong ETag"),
           nothing reaches the server (its row is unchanged).
  refresh  etag E2, no body, expires 300 -> SIP-ETag E3, Expires 300/301;
           the row keeps the "closed" body, its expires moves on.
  remove   etag E3, expires 0 -> an answer with Expires 0; the row is gone.
Finally: both Kamailios alive with all workers, no ERROR/CRITICAL in either
log, clean exits.
"""
import time

from kamtest import check

EXPIRES_SLACK = 1   # the C module asks expires + 1


def pidf(uri, basic, note):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
            '<tuple id="t1"><status><basic>%s</basic></status><note>%s</note></tuple>'
            '</presence>' % (uri, basic, note))


def publish(k, uri, expires, body=None, etag="."):
    args = [uri, str(expires), "presence", "application/pidf+xml" if body else ".", ".",
            etag, ".", "."]
    if body:
        args.append(body)
    return k.jsonrpc("pua.publish", *args, timeout=8)


def rows(srv, user):
    return srv.sql("SELECT * FROM presentity WHERE username=? AND domain=? AND event=?",
                   (user, "example.test", "presence"))


def wait_rows(srv, user, pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        rs = rows(srv, user)
        if pred(rs) or time.monotonic() > deadline:
            return rs
        time.sleep(0.05)


def ok_result(r, what, expires):
    res = r.get("result")
    check(isinstance(res, dict) and res.get("SIP-ETag"), "%s: pua.publish answered %r" % (what, r))
    check(expires <= int(res.get("Expires", -1)) <= expires + EXPIRES_SLACK,
          "%s: Expires %s in the answer, asked %d" % (what, res.get("Expires"), expires))
    return res["SIP-ETag"], int(res["Expires"])


def check_row(rs, what, etag, expires, text):
    check(len(rs) == 1, "%s: %d presentity rows for alice: %r" % (what, len(rs), rs))
    r = rs[0]
    check(r["etag"] == etag, "%s: presentity etag %r, the RPC answered %r" % (what, r["etag"], etag))
    body = r["body"].decode() if isinstance(r["body"], bytes) else r["body"]
    for s in text:
        check(s in body, "%s: presentity body lacks %r: %r" % (what, s, body[:300]))
    life = r["expires"] - r["received_time"]
    check(abs(life - expires) <= 2, "%s: presentity lives %d s, answered Expires %d"
          % (what, life, expires))
    return r


def run(t):
    srv = t.server()
    srv.start()
    k = t.kamailio(subst={"@SERVER_PORT@": str(srv.port), "@PUA_PARAMS@": ""})
    k.start()
    k.check_pua_loaded()
    a = "sip:alice@example.test"

    r = publish(k, a, 120, pidf(a, "open", "one"))
    e1, x = ok_result(r, "insert", 120)
    t.note("insert answered Expires %d" % x)
    rs = wait_rows(srv, "alice", lambda rs: rs)
    check_row(rs, "insert", e1, x, ["<basic>open</basic>", "one"])

    r = publish(k, a, 120, pidf(a, "closed", "two"), etag=e1)
    e2, x = ok_result(r, "modify", 120)
    check(e2 != e1, "modify: the etag did not change")
    rs = wait_rows(srv, "alice", lambda rs: rs and rs[0]["etag"] == e2)
    row = check_row(rs, "modify", e2, x, ["<basic>closed</basic>", "two"])

    n_pub = len(srv.grep_log(r"PUBLISH sip:alice@example.test"))
    r = publish(k, a, 120, pidf(a, "open", "three"), etag="no-such-etag")
    t.note("wrong etag: %r" % r)
    check("error" in r and "result" not in r, "a wrong etag answered %r" % r)
    time.sleep(0.3)
    check(len(srv.grep_log(r"PUBLISH sip:alice@example.test")) == n_pub,
          "a PUBLISH with a wrong etag reached the server")
    check(rows(srv, "alice") == [row], "the row changed after a wrong-etag publish")

    time.sleep(1.1)   # so that the refreshed row's times differ
    r = publish(k, a, 300, etag=e2)
    e3, x = ok_result(r, "refresh", 300)
    rs = wait_rows(srv, "alice", lambda rs: rs and rs[0]["etag"] == e3)
    row3 = check_row(rs, "refresh", e3, x, ["<basic>closed</basic>", "two"])
    check(row3["expires"] > row["expires"], "refresh: expires did not move on")

    r = publish(k, a, 0, etag=e3)
    res = r.get("result")
    check(isinstance(res, dict) and int(res.get("Expires", -1)) == 0,
          "remove: pua.publish answered %r" % r)
    rs = wait_rows(srv, "alice", lambda rs: not rs)
    check(not rs, "remove: presentity rows left: %r" % rs)

    for inst in (k, srv):
        inst.check_workers_alive(settle=0.5, converge=2.0)
        inst.check_log_clean()
    check(k.stop() == 0, "client: unclean exit")
    check(srv.stop() == 0, "presence server: unclean exit")
    k.check_log_clean()
    srv.check_log_clean()
