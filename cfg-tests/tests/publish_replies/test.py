"""publish_replies: how pua handles the replies to its PUBLISHes, checked on
the wire.  The client under test (pua + pua_rpc, pua_usrloc,
pua_dialoginfo; kamailio.cfg) PUBLISHes through its outbound_proxy to a
Python Uas (cfg-tests/sip.py) that answers as each case needs; the PUBLISHes
are driven through pua_rpc's pua.publish (jsonrpcs over HTTP, whose delayed
reply arrives when pua runs the callbacks), pua_usrloc (REGISTER) or
pua_dialoginfo (a call).

These are the behaviours where our pua must do better than the C module
(BEYOND_C): every case's wire assertions go through t.beyond_c(), so
[ours] must pass them and [c] must fail them ("C module shows the bug: ...").
Bounds: every RPC has a timeout, every wait is bounded, the Uas stops
answering a ping-pong after 30 requests.

Cases
  412_republish      a modify (If-Match E1, new body) answered 412 is sent
                     again as an initial PUBLISH (no SIP-If-Match) with the
                     new body; its 200's etag is what pua.publish answers;
                     nothing more is sent.  C: pua_rpc publications are never
                     re-sent after 412.
  412_pingpong       the Uas answers 412 to everything: a pua_usrloc
                     publication (REGISTER) and an RPC modify send at most 4
                     PUBLISHes each.  C: pua_usrloc re-sends after every 412,
                     without end (here until the Uas goes silent).
  423_min_expires    423 with Min-Expires: 1800 -> exactly one retry, with
                     Expires: 1800, no If-Match, the same body; pua.publish
                     answers with the retry's 200 (Expires 1800); a second
                     423 is final (exactly 2 PUBLISHes, an answer without
                     SIP-ETag).  C: no retry.
  503_retry_after    503 with Retry-After: 2 -> the same PUBLISH again
                     1.5-5 s later, then pua.publish answers with its 200; a
                     server that always answers 503 (Retry-After: 1) gets 2 to
                     5 PUBLISHes, then an answer without SIP-ETag.  C: no
                     retry.
  no_answer          tm's fr_timer 2 s, update_period 10: the first PUBLISH
                     gets no answer at all; pua.publish answers (<= 8 s); the
                     record is kept and the PUBLISH is sent again (a new
                     transaction, same body, no If-Match) within 16 s;
                     pua.stats counts the record; another pua.publish is
                     served.  C: the publication is dropped, never re-sent.
  usrloc_retries     a pua_usrloc publication (REGISTER; no consumer
                     callback, so its first PUBLISH goes out without a
                     request block, tm carrying a ticket, and each retry
                     takes the body from the record): 423
                     (Min-Expires 1800), then 503 (Retry-After 1), then no
                     answer (fr_timer 2 s, update_period 10), then 200: four
                     PUBLISHes, none with SIP-If-Match, each with the first
                     one's PIDF (its tuple id included) byte for byte, the
                     second asking Expires 1800.  C: no retry after the 423.
  bad_200            a 200 without SIP-ETag, and a 200 with Expires: banana:
                     pua.publish answers within 5 s without a SIP-ETag
                     (failure), and the next pua.publish is served.  C: no
                     answer at all for the first; the second is taken as
                     Expires: 0 and answered as a success (publication
                     silently gone).
  in_flight_rpc      two modifies (If-Match E1) fired 0.2 s apart while the
                     Uas holds its 200 to the first for 1 s: the second
                     PUBLISH leaves only after that 200 and carries its etag
                     (SIP-If-Match E2); no second initial PUBLISH.  C: both
                     leave at once with If-Match E1.
  in_flight_dialoginfo  a call (INVITE, 180, 200 0.3 s later, ACK, BYE)
                     while the Uas holds the 200 to each publication's first
                     PUBLISH for 1 s: per publication (caller and callee) one
                     initial PUBLISH, never two in flight, each If-Match the
                     etag of the latest 200, the last one "terminated".  C:
                     state changes during the first PUBLISH become more
                     initial PUBLISHes.
  expires_values     min_expires 60: a pua.publish with expires 120 is sent
                     as Expires: 120, a removal (expires 0) as Expires: 0.
                     C: 121 and 60 (min_expires).
  long_extra_headers pua.publish with 4000 and 12000 bytes of extra headers:
                     both PUBLISHes carry them whole, both answered, Kamailio
                     keeps all its workers.  C: publ_build_hdr's static
                     3000-byte buffer overflows (4000 goes unnoticed, 12000
                     kills Kamailio).
Every case ends with: Kamailio alive with all its workers (unless the [c]
variant showed a crash as its bug); [ours]: no CRITICAL/BUG/ALERT log line.
"""
import re
import threading
import time

import sip
from kamtest import TestFailure, check

BEYOND_C = True

UAS_PINGPONG_LIMIT = 30   # the Uas stops answering a 412 ping-pong after this many

PIDF = ('<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
        '<tuple id="t1"><status><basic>%s</basic></status><note>%s</note></tuple></presence>')


def pidf(uri, basic="open", note="n0"):
    return PIDF % (uri, basic, note)


def uri(user):
    return "sip:%s@example.test" % user


# --- RPC ---------------------------------------------------------------------

def rpc_publish(k, pres_uri, expires, body=None, etag=".", extra=".", timeout=8.0):
    """pua.publish <uri> <expires> presence <ctype> . <etag> . <extra> [body]
    -> the JSON reply (TestFailure if none within timeout)."""
    args = [pres_uri, str(expires), "presence",
            "application/pidf+xml" if body is not None else ".", ".", etag, ".", extra]
    if body is not None:
        args.append(body)
    return k.jsonrpc("pua.publish", *args, timeout=timeout)


def result(r):
    return r.get("result") if isinstance(r.get("result"), dict) else {}


def etag_of(r):
    return result(r).get("SIP-ETag")


class AsyncRpc(threading.Thread):
    def __init__(self, fn, *a, **kw):
        threading.Thread.__init__(self, daemon=True)
        self.fn, self.a, self.kw = fn, a, kw
        self.reply = self.error = None
        self.t_done = None
        self.start()

    def run(self):
        try:
            self.reply = self.fn(*self.a, **self.kw)
        except Exception as e:   # TestFailure included
            self.error = e
        self.t_done = time.monotonic()

    def get(self, timeout):
        self.join(timeout)
        if self.is_alive():
            raise TestFailure("RPC still waiting after %.0f s" % timeout)
        if self.error:
            raise self.error
        return self.reply


# --- wire --------------------------------------------------------------------

def pubs(uas, pres_uri=None):
    return [r for r in uas.requests("PUBLISH") if pres_uri is None or r.msg.uri == pres_uri]


def if_match(r):
    return r.msg.get("sip-if-match")


def final_reply(r):
    """(t, Message) of the final response the Uas sent to r, or (None, None)."""
    for t, m in r.replies:
        if m.status >= 200:
            return t, m
    return None, None


def describe(rs):
    out = []
    for r in rs:
        _, fin = final_reply(r)
        out.append("%s Expires=%s If-Match=%s body=%dB -> %s" % (
            r.msg.uri, r.msg.get("expires"), if_match(r), len(r.msg.body),
            fin.status if fin else "no answer"))
    return "; ".join(out) or "none"


def quiet(uas, n_before, seconds, pres_uri=None):
    """No new PUBLISH (for pres_uri) during `seconds`."""
    time.sleep(seconds)
    return len(pubs(uas, pres_uri)) == n_before


# --- the client --------------------------------------------------------------

def start_client(t, uas, pua_params="", tm_params="", callee_port=9):
    k = t.kamailio(subst={
        "@UAS_PORT@": str(uas.port),
        "@CALLEE_PORT@": str(callee_port),
        "@PUA_PARAMS@": pua_params,
        "@TM_PARAMS@": tm_params,
    })
    k.start()
    k.check_pua_loaded()
    return k


def health(t, k):
    """Kamailio still serves with all its workers; [ours]: no crash lines.
    [c] after a C bug was shown: a dead Kamailio is only noted (a crash is
    one way the C module shows it)."""
    try:
        k.check_workers_alive(settle=0.5, converge=2.0)
    except TestFailure as e:
        if t.variant.is_ours or not t.c_bugs:
            raise
        t.note("[c] after the C bug: %s" % str(e).split("\n")[0])
        return
    if t.variant.is_ours:
        bad = [l for l in k.bad_lines() if re.search(r"(CRITICAL|BUG|ALERT):", l)]
        check(not bad, "crash-like log lines:\n" + "\n".join(bad[:20]))


# --- cases -------------------------------------------------------------------

def case_412_republish(t):
    a = uri("alice")
    uas = t.uas(script={"PUBLISH": lambda req, ep:
                        412 if req.get("sip-if-match") else sip.PublishOk()})
    k = start_client(t, uas)
    r1 = rpc_publish(k, a, 120, pidf(a, "open", "first"))
    e1 = etag_of(r1)
    check(e1, "the initial pua.publish got %r" % r1)

    def republish():
        r2 = rpc_publish(k, a, 120, pidf(a, "closed", "second"), etag=e1)
        ps = uas.wait_for(lambda: len(pubs(uas, a)) >= 3 and pubs(uas, a)[2].status and pubs(uas, a),
                          timeout=4.0) or pubs(uas, a)
        check(len(ps) >= 3, "after the 412 to the modify no new PUBLISH came: %s" % describe(ps))
        check(if_match(ps[1]) == e1 and ps[1].status == 412,
              "PUBLISH #2 should be the modify (If-Match %s) answered 412: %s" % (e1, describe(ps)))
        p3 = ps[2]
        check(if_match(p3) is None, "the re-sent PUBLISH carries SIP-If-Match %s" % if_match(p3))
        check("closed" in p3.msg.text and "second" in p3.msg.text,
              "the re-sent PUBLISH does not carry the last body: %r" % p3.msg.text[:300])
        check(r2.get("result") is not None and etag_of(r2) == p3.info.get("etag"),
              "pua.publish answered %r, expected the re-sent PUBLISH's etag %s"
              % (r2, p3.info.get("etag")))
        check(quiet(uas, 3, 1.0, a), "more PUBLISHes after the re-publish: %s"
              % describe(pubs(uas, a)))
    t.beyond_c(republish)
    return k


def case_412_pingpong(t):
    pp = uri("pingpong")
    ul = uri("ulpp")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == req.uri])
        if n > UAS_PINGPONG_LIMIT:
            return sip.NoAnswer
        if req.uri == pp and n == 1:
            return sip.PublishOk()
        return 412
    uas = t.uas(script=script)
    k = start_client(t, uas, tm_params='modparam("tm", "fr_timer", 2000)')
    e1 = etag_of(rpc_publish(k, pp, 120, pidf(pp)))
    check(e1, "the initial pua.publish failed")
    phone = t.uac()

    def bounded():
        r = rpc_publish(k, pp, 120, pidf(pp, "closed"), etag=e1)
        t.note("pua.publish after 412s answered %r" % r)
        reg = phone.register("127.0.0.1:%d" % k.port, ul, expires=120)
        check(reg is not None and reg.status == 200, "REGISTER: %r" % reg)
        time.sleep(4.0)
        n_pp, n_ul = len(pubs(uas, pp)), len(pubs(uas, ul))
        t.note("PUBLISHes: rpc %d, usrloc %d" % (n_pp, n_ul))
        check(n_pp <= 4, "the RPC publication got %d PUBLISHes answered 412 (ping-pong)" % n_pp)
        check(1 <= n_ul <= 4, "the pua_usrloc publication got %d PUBLISHes, all answered 412 "
              "(ping-pong%s)" % (n_ul, ", until the Uas stopped answering"
                                 if n_ul > UAS_PINGPONG_LIMIT else ""))
    t.beyond_c(bounded)
    return k


def case_423_min_expires(t):
    a, b = uri("alice"), uri("bob")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == req.uri])
        if req.uri == a and n > 1:
            return sip.PublishOk()
        if n > UAS_PINGPONG_LIMIT:
            return sip.NoAnswer
        return sip.Reply(423, headers=[("Min-Expires", "1800")])
    uas = t.uas(script=script)
    k = start_client(t, uas)

    def one_retry():
        ra = rpc_publish(k, a, 120, pidf(a))
        ps = pubs(uas, a)
        check(len(ps) == 2, "expected 2 PUBLISHes (423, retry), got %s" % describe(ps))
        check(ps[1].msg.get("expires") == "1800",
              "the retry asks Expires %s, not the Min-Expires 1800" % ps[1].msg.get("expires"))
        check(if_match(ps[1]) is None and ps[1].msg.body == ps[0].msg.body,
              "the retry is not the same initial PUBLISH: %s" % describe(ps))
        check(etag_of(ra) == ps[1].info.get("etag") and str(result(ra).get("Expires")) == "1800",
              "pua.publish answered %r" % ra)
        rb = rpc_publish(k, b, 120, pidf(b))
        check(not etag_of(rb), "pua.publish after two 423s answered a success: %r" % rb)
        check(quiet(uas, 2, 1.5, b), "the second 423 was retried again: %s"
              % describe(pubs(uas, b)))
        psb = pubs(uas, b)
        check(len(psb) == 2 and psb[1].msg.get("expires") == "1800",
              "expected exactly 2 PUBLISHes for %s: %s" % (b, describe(psb)))
    t.beyond_c(one_retry)
    return k


def case_503_retry_after(t):
    a, b = uri("alice"), uri("bob")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == req.uri])
        if req.uri == a:
            return sip.Reply(503, headers=[("Retry-After", "2")]) if n == 1 else sip.PublishOk()
        if n > UAS_PINGPONG_LIMIT:
            return sip.NoAnswer
        return sip.Reply(503, headers=[("Retry-After", "1")])
    uas = t.uas(script=script)
    k = start_client(t, uas)

    def retried():
        ja = AsyncRpc(rpc_publish, k, a, 120, pidf(a), timeout=10)
        jb = AsyncRpc(rpc_publish, k, b, 120, pidf(b), timeout=14)
        ra = ja.get(11)
        ps = pubs(uas, a)
        check(len(ps) == 2, "expected the 503'd PUBLISH once more: %s" % describe(ps))
        t503, _ = final_reply(ps[0])
        gap = ps[1].t - t503
        t.note("retry %.2f s after the 503" % gap)
        check(1.5 <= gap <= 5.0, "the retry came %.2f s after the 503 (Retry-After: 2)" % gap)
        for h in ("expires", "sip-if-match", "event", "content-type"):
            check(ps[1].msg.get(h) == ps[0].msg.get(h), "the retry's %s differs: %r vs %r"
                  % (h, ps[1].msg.get(h), ps[0].msg.get(h)))
        check(ps[1].msg.body == ps[0].msg.body, "the retry's body differs")
        check(etag_of(ra) == ps[1].info.get("etag"), "pua.publish answered %r" % ra)
        rb = jb.get(15)
        psb = pubs(uas, b)
        t.note("always-503 publication: %d PUBLISHes" % len(psb))
        check(not etag_of(rb), "pua.publish to an always-503 server answered a success: %r" % rb)
        check(2 <= len(psb) <= 5, "an always-503 server got %d PUBLISHes: %s"
              % (len(psb), describe(psb)))
        check(quiet(uas, len(psb), 2.0, b), "PUBLISHes go on after pua.publish was answered")
    t.beyond_c(retried)
    return k


def stats_records(k):
    r = k.ctl("pua.stats")
    m = re.search(r"records:\s*(-?\d+)", r.stdout)
    check(m, "pua.stats has no records field: %r" % r.stdout)
    return int(m.group(1))


def case_no_answer(t):
    a, c = uri("alice"), uri("carol")

    def script(req, ep):
        if req.uri == a and not [r for r in ep.requests("PUBLISH") if r.msg.uri == a][:-1]:
            return sip.NoAnswer      # the first transaction for alice: silence
        return sip.PublishOk()
    uas = t.uas(script=script)
    k = start_client(t, uas, pua_params='modparam("pua", "update_period", 10)',
                     tm_params='modparam("tm", "fr_timer", 2000)')

    def kept_and_retried():
        t0 = time.monotonic()
        r = rpc_publish(k, a, 300, pidf(a), timeout=8)
        t.note("pua.publish answered %r after %.1f s" % (r, time.monotonic() - t0))
        check(not etag_of(r), "pua.publish without any reply answered a success: %r" % r)
        ps = uas.wait_for(lambda: len(pubs(uas, a)) >= 2 and pubs(uas, a)[1].status
                          and pubs(uas, a), timeout=16.0) or pubs(uas, a)
        check(len(ps) >= 2, "no new PUBLISH within 16 s after the timeout (update_period 10): %s"
              % describe(ps))
        check(ps[1].msg.branch != ps[0].msg.branch, "not a new transaction")
        check(if_match(ps[1]) is None and ps[1].msg.body == ps[0].msg.body,
              "the retry is not the initial PUBLISH again: %s" % describe(ps))
        n = stats_records(k)
        check(n == 1, "pua.stats counts %d records, expected 1" % n)
        rc = rpc_publish(k, c, 120, pidf(c), timeout=5)
        check(etag_of(rc), "the next pua.publish was not served: %r" % rc)
    t.beyond_c(kept_and_retried)
    return k


def case_usrloc_retries(t):
    ul = uri("ulretry")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == req.uri])
        if n == 1:
            return sip.Reply(423, headers=[("Min-Expires", "1800")])
        if n == 2:
            return sip.Reply(503, headers=[("Retry-After", "1")])
        if n == 3:
            return sip.NoAnswer
        return sip.PublishOk()
    uas = t.uas(script=script)
    k = start_client(t, uas, pua_params='modparam("pua", "update_period", 10)',
                     tm_params='modparam("tm", "fr_timer", 2000)')
    phone = t.uac()
    reg = phone.register("127.0.0.1:%d" % k.port, ul, expires=120)
    check(reg is not None and reg.status == 200, "REGISTER: %r" % reg)

    def same_body_every_time():
        ps = uas.wait_for(lambda: len(pubs(uas, ul)) >= 4 and pubs(uas, ul)[3].status
                          and pubs(uas, ul), timeout=20.0) or pubs(uas, ul)
        check(len(ps) == 4, "expected 4 PUBLISHes (423, 503, no answer, 200): %s" % describe(ps))
        check(ps[3].status == 200, "the last PUBLISH was not answered 200: %s" % describe(ps))
        check(ps[1].msg.get("expires") == "1800",
              "the 423 retry asks Expires %s, not 1800" % ps[1].msg.get("expires"))
        check(b"<tuple id=" in ps[0].msg.body,
              "the first PUBLISH has no PIDF with a tuple id: %r" % ps[0].msg.body[:300])
        for i, r in enumerate(ps[1:], 2):
            check(if_match(r) is None, "PUBLISH #%d carries SIP-If-Match: %s" % (i, describe(ps)))
            check(r.msg.body == ps[0].msg.body, "PUBLISH #%d's body differs from the first: "
                  "%r vs %r" % (i, r.msg.body[:300], ps[0].msg.body[:300]))
            check(r.msg.get("content-type") == ps[0].msg.get("content-type"),
                  "PUBLISH #%d's Content-Type differs" % i)
        check(quiet(uas, 4, 1.0, ul), "more PUBLISHes after the 200: %s" % describe(pubs(uas, ul)))
    t.beyond_c(same_body_every_time)
    return k


def case_bad_200(t):
    ne, ba, ok = uri("noetag"), uri("banana"), uri("carol")

    def script(req, ep):
        if req.uri == ne:
            return sip.PublishOk(etag=False)
        if req.uri == ba:
            return sip.PublishOk(expires="banana")
        return sip.PublishOk()
    uas = t.uas(script=script)
    k = start_client(t, uas)

    def no_etag():
        r = rpc_publish(k, ne, 120, pidf(ne), timeout=5)
        check(not etag_of(r), "a 200 without SIP-ETag answered as a success: %r" % r)
        t.note("200 without SIP-ETag: pua.publish answered %r" % r)

    def banana():
        r = rpc_publish(k, ba, 120, pidf(ba), timeout=5)
        check(not etag_of(r), "a 200 with Expires: banana answered as a success: %r" % r)
        t.note("200 with Expires: banana: pua.publish answered %r" % r)
    t.beyond_c(no_etag)
    t.beyond_c(banana)
    r = rpc_publish(k, ok, 120, pidf(ok), timeout=5)
    check(etag_of(r), "the next pua.publish was not served: %r" % r)
    return k


def check_one_in_flight(uas, pres_uri, ps, last_state=None):
    """Per publication: one initial PUBLISH (the first), each later one sent
    after the previous one's final reply, with If-Match = the etag of the
    latest 200 before it."""
    check(ps, "no PUBLISH for %s" % pres_uri)
    initials = [r for r in ps if if_match(r) is None]
    check(len(initials) == 1 and if_match(ps[0]) is None,
          "%s: %d initial PUBLISHes (no SIP-If-Match): %s" % (pres_uri, len(initials), describe(ps)))
    etag = None
    for prev, cur in zip(ps, ps[1:]):
        tf, fin = final_reply(prev)
        check(tf is not None and cur.t >= tf,
              "%s: a PUBLISH left %.3f s before the reply to the previous one (two in flight): %s"
              % (pres_uri, (tf - cur.t) if tf else -1, describe(ps)))
        if fin.status == 200 and prev.info.get("etag"):
            etag = prev.info["etag"]
        check(if_match(cur) == etag, "%s: If-Match %s, but the latest 200 gave etag %s: %s"
              % (pres_uri, if_match(cur), etag, describe(ps)))
    if last_state:
        check(last_state in ps[-1].msg.text, "%s: the last PUBLISH is not %r: %r"
              % (pres_uri, last_state, ps[-1].msg.text[:400]))


def case_in_flight_rpc(t):
    a = uri("alice")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == a])
        return sip.PublishOk(delay=1.0) if n == 2 else sip.PublishOk()
    uas = t.uas(script=script)
    k = start_client(t, uas)
    e1 = etag_of(rpc_publish(k, a, 120, pidf(a, "open", "zero")))
    check(e1, "the initial pua.publish failed")

    def one_in_flight():
        j1 = AsyncRpc(rpc_publish, k, a, 120, pidf(a, "closed", "one"), etag=e1)
        time.sleep(0.2)
        j2 = AsyncRpc(rpc_publish, k, a, 120, pidf(a, "open", "two"), etag=e1)
        r1, r2 = j1.get(10), j2.get(10)
        t.note("answers: %r, %r" % (r1, r2))
        ps = uas.wait_for(lambda: len(pubs(uas, a)) >= 3 and pubs(uas, a), 3.0) or pubs(uas, a)
        check(len(ps) == 3, "expected 3 PUBLISHes (insert, 2 modifies): %s; pua.publish answers %r, %r"
              % (describe(ps), r1, r2))
        check("one" in ps[1].msg.text and "two" in ps[2].msg.text,
              "the modifies were not sent in order")
        check_one_in_flight(uas, a, ps)
        check(etag_of(r1) == ps[1].info.get("etag") and etag_of(r2) == ps[2].info.get("etag"),
              "pua.publish answers %r, %r do not carry their PUBLISHes' etags" % (r1, r2))
    t.beyond_c(one_in_flight)
    return k


def case_in_flight_dialoginfo(t):
    a, b = uri("alice"), uri("bob")

    def script(req, ep):
        n = len([r for r in ep.requests("PUBLISH") if r.msg.uri == req.uri])
        return sip.PublishOk(delay=1.0) if n == 1 else sip.PublishOk()
    uas = t.uas(script=script)
    callee = t.uas(script={"INVITE": [[sip.Reply(180), sip.Reply(200, delay=0.3)]]}, user="bob")
    k = start_client(t, uas, callee_port=callee.port)
    caller = t.uac(user="alice")

    def one_in_flight():
        d, final, tx = caller.invite("127.0.0.1:%d" % k.port, b, from_uri=a)
        check(d is not None, "the call was not answered: %r" % final)
        time.sleep(1.5)
        r, _ = d.bye()
        check(r is not None and r.status == 200, "BYE: %r" % r)

        def settled():
            pa, pb = pubs(uas, a), pubs(uas, b)
            return (pa and pb and "terminated" in pa[-1].msg.text and "terminated" in pb[-1].msg.text
                    and all(x.status for x in pa + pb))
        uas.wait_for(settled, 6.0)
        time.sleep(0.5)
        pa, pb = pubs(uas, a), pubs(uas, b)
        t.note("caller: %s" % describe(pa))
        t.note("callee: %s" % describe(pb))
        check_one_in_flight(uas, a, pa, "terminated")
        check_one_in_flight(uas, b, pb, "terminated")
    t.beyond_c(one_in_flight)
    return k


def case_expires_values(t):
    a = uri("alice")
    uas = t.uas()
    k = start_client(t, uas, pua_params='modparam("pua", "min_expires", 60)')

    def expires_as_asked():
        r = rpc_publish(k, a, 120, pidf(a))
        e1 = etag_of(r)
        check(e1, "pua.publish answered %r" % r)
        r = rpc_publish(k, a, 0, etag=e1)
        ps = pubs(uas, a)
        check(len(ps) == 2, "expected 2 PUBLISHes: %s" % describe(ps))
        got = (ps[0].msg.get("expires"), ps[1].msg.get("expires"))
        check(got == ("120", "0"), "expires 120 then removal sent as Expires %s, %s "
              "(expected 120, 0)" % got)
        check(if_match(ps[1]) == e1 and not ps[1].msg.body, "the removal: %s" % describe(ps[1:]))
    t.beyond_c(expires_as_asked)
    return k


def case_long_extra_headers(t):
    uas = t.uas()
    k = start_client(t, uas)

    def long_headers():
        for n in (4000, 12000):
            u = uri("long%d" % n)
            value = ("v%d-" % n) + "x" * n
            try:
                r = rpc_publish(k, u, 120, pidf(u), extra="X-Long: %s\r\nX-After: 1\r\n" % value,
                                timeout=5)
            except TestFailure as e:
                time.sleep(0.5)
                died = k.grep_log(r"exited by a signal")
                raise TestFailure("pua.publish with %d bytes of extra headers: %s%s" % (
                    n, str(e).split("\n")[0], ("; " + died[0].split(": ", 1)[-1]) if died else ""))
            ps = pubs(uas, u)
            check(ps, "no PUBLISH with %d bytes of extra headers (kamailio %s)"
                  % (n, "alive" if k.alive() else "died, status %s" % k.returncode))
            check(ps[0].msg.get("x-long") == value and ps[0].msg.get("x-after") == "1",
                  "the %d-byte extra header arrived as %d bytes"
                  % (n, len(ps[0].msg.get("x-long") or "")))
            check(etag_of(r) == ps[0].info.get("etag"), "pua.publish answered %r" % r)
            check(k.alive(), "kamailio died after a PUBLISH with %d bytes of extra headers" % n)
        k.check_workers_alive(settle=0.5, converge=2.0)
    t.beyond_c(long_headers)
    return k


CASES = [
    ("412_republish", case_412_republish),
    ("412_pingpong", case_412_pingpong),
    ("423_min_expires", case_423_min_expires),
    ("503_retry_after", case_503_retry_after),
    ("no_answer", case_no_answer),
    ("usrloc_retries", case_usrloc_retries),
    ("bad_200", case_bad_200),
    ("in_flight_rpc", case_in_flight_rpc),
    ("in_flight_dialoginfo", case_in_flight_dialoginfo),
    ("expires_values", case_expires_values),
    ("long_extra_headers", case_long_extra_headers),
]


def run(t, case):
    try:
        k = case(t)
        health(t, k)
    except TestFailure as e:
        # What pua said about it helps more than the wire alone.
        lines = [l.strip() for k in t.instances for l in k.grep_log(r"(ERROR|WARNING|CRITICAL|BUG): pua ")]
        if lines:
            raise TestFailure("%s\npua log lines (%d):\n%s" % (e, len(lines), "\n".join(lines[-10:])))
        raise
    errs = [e for ep in t.endpoints for e in ep.errors]
    check(not errs, "Python SIP endpoint errors: %s" % errs[:3])
