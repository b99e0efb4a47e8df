"""subscribe_notify_garbage: pua_update_contact() on NOTIFYs sent by hand.

The client under test (kamailio.cfg: pua + pua_rpc) SUBSCRIBEs with
pua.subscribe (kamcmd, expires 120) to sip:carol@127.0.0.1:<A>, a Python
endpoint (cfg-tests/sip.py) that answers 200 (To tag, Contact
<sip:carol@127.0.0.1:A>, the Expires asked) and then sends NOTIFYs to the
client, which hands each to pua_update_contact() and answers 200 with the
return code in X-PUA-Update.

NOTIFYs, one after the other, each answered 200 within 5 s:
  valid        the dialog's Call-ID and tags (From tag = the notifier's To
               tag, To tag = pua's From tag), Contact A -> 1 (beyond C).
  unknown      a Call-ID and tags no dialog has -> -1 and one pua log line.
  bad_contact  the dialog's Call-ID and tags, Contact "!!garbage!!" -> -1
               and one pua log line.
  non_sip_contact  Contact <http://127.0.0.1/x> -> -1 + a line.
  no_to_tag    the dialog's Call-ID and From tag, no To tag -> -1 + a line.
  no_from_tag  the dialog's Call-ID and To tag, no From tag -> -1 + a line.
  no_tags      the dialog's Call-ID, neither tag -> -1 + a line.
  valid_again  the client keeps serving: answered, 1 (beyond C).
  new_contact  the dialog's Call-ID and tags, Contact
               <sip:carol2@127.0.0.1:B> (a second Python Uas) -> 1 (beyond
               C).
Then pua.subscribe again (expires 300): the refresh, in dialog (same Call-ID
and tags, next CSeq), reaches B with Request-URI sip:carol2@127.0.0.1:B
and nothing reaches A (beyond C: C's pua_update_contact() never finds a
pua-made dialog, so the refresh goes to A).
Early NOTIFY: pua.subscribe to sip:early@127.0.0.1:<A>, whose 200 the
notifier holds for 1 s; a NOTIFY in that dialog (the 200's To tag) arrives
first: answered, pua_update_contact() returns 1 (the temporary dialog
matches; beyond C: C matches no dialog without a To tag); after the 200, a
second pua.subscribe goes in the dialog.
Finally Kamailio is alive with all its workers and exits cleanly; no
ERROR/CRITICAL line but the ones the bad NOTIFYs cause.
"""
import re
import time

import sip
from kamtest import check

BEYOND_C = True

EARLY_TAG = "early-notifier-tag"
PUA_LINE = re.compile(r"(ERROR|WARNING|NOTICE|INFO): pua \[")
# ERROR lines the bad NOTIFYs cause (ours, then C's ki_pua_update_contact()).
# Ours parses the Contact (C takes the raw header body), so the core's contact
# parser logs its own errors about "!!garbage!!".
ALLOW_OURS = [r"pua_update_contact: no usable Contact",
              r"pua_update_contact: the request has no Call-ID or To tag",
              r"ERROR: <core> \[core/parser/contact/"]
ALLOW_C = [r"ki_pua_update_contact\(\): "]


class TaggedOk(sip.Reply):
    """200 with a given To tag."""

    def __init__(self, tag, **kw):
        sip.Reply.__init__(self, 200, **kw)
        self.tag = tag

    def make(self, req, ep):
        return sip.response_to(req, 200, None, self.headers, b"", to_tag=self.tag), {}


def pua_lines(k):
    return [l for l in k.log_lines() if PUA_LINE.search(l)]


def run(t):
    state = {}

    def ok_for(user):
        def script(req, ep):
            if req.method != "SUBSCRIBE":
                return sip.Reply(200)
            if user == "carol" and sip.uri_of(req.get("to")).startswith("sip:early@"):
                # the "early" case: its 200 (To tag EARLY_TAG) leaves 1 s late
                return TaggedOk(EARLY_TAG, delay=1.0, headers=[
                    ("Contact", "<sip:early@127.0.0.1:%d>" % ep.port),
                    ("Expires", req.get("expires", "3600"))])
            return sip.Reply(200, headers=[
                ("Contact", "<sip:%s@127.0.0.1:%d>" % (user, ep.port)),
                ("Expires", req.get("expires", "3600"))])
        return script

    notifier = t.uac(script=ok_for("carol"))
    other = t.uas(script=ok_for("carol2"))
    k = t.kamailio()
    k.start()
    k.check_pua_loaded()
    pres = "sip:carol@127.0.0.1:%d" % notifier.port
    watcher = "sip:bob@127.0.0.1:%d" % k.port

    k.ctl("pua.subscribe", pres, watcher, "presence", 120)
    subs = notifier.wait_for(lambda: [r for r in notifier.requests("SUBSCRIBE") if r.status], 5)
    check(len(subs) == 1, "%d SUBSCRIBEs answered at the notifier" % len(subs))
    first = subs[0]
    ok = [m for _, m in first.replies if m.status == 200][0]
    call_id, pua_tag, our_tag = first.msg.call_id, first.msg.from_tag, ok.to_tag
    time.sleep(0.3)   # let pua handle the 2xx
    cseq = [0]

    def notify(what, call_id=call_id, from_tag=our_tag, to_tag=pua_tag,
               contact="<sip:carol@127.0.0.1:%d>" % notifier.port, pres=pres):
        cseq[0] += 1
        m = sip.request("NOTIFY", watcher, pres, watcher, call_id=call_id, cseq=cseq[0],
                        from_tag=from_tag or "x", to_tag=to_tag, via=notifier.addr,
                        headers=[("Event", "presence"),
                                 ("Subscription-State", "active;expires=100")])
        if not from_tag:
            m.set("From", "<%s>" % pres)
        if contact:
            m.set("Contact", contact)
        n_before = len(pua_lines(k))
        tx = notifier.send(m, ("127.0.0.1", k.port))
        r = tx.wait(5)
        check(r is not None, "%s: no answer to the NOTIFY within 5 s" % what)
        check(r.status == 200 and r.get("x-pua-update") is not None,
              "%s: the NOTIFY was answered %s %r" % (what, r.status, r.get("x-pua-update")))
        time.sleep(0.05)
        new = pua_lines(k)[n_before:]
        return int(r.get("x-pua-update")), new

    results = {}
    results["valid"] = notify("valid")
    results["unknown"] = notify("unknown", call_id="no-such-dialog-" + sip.rand_token(6),
                                from_tag="nft" + sip.rand_token(4),
                                to_tag="ntt" + sip.rand_token(4))
    results["bad_contact"] = notify("bad_contact", contact="!!garbage!!")
    results["non_sip_contact"] = notify("non_sip_contact", contact="<http://127.0.0.1/x>")
    results["no_to_tag"] = notify("no_to_tag", to_tag=None)
    results["no_from_tag"] = notify("no_from_tag", from_tag=None)
    results["no_tags"] = notify("no_tags", from_tag=None, to_tag=None)
    results["valid_again"] = notify("valid_again")
    results["new_contact"] = notify("new_contact",
                                    contact="<sip:carol2@127.0.0.1:%d>" % other.port)
    for w, (r, lines) in results.items():
        t.note("%s: %d %s" % (w, r, " | ".join(l.split(": ", 1)[-1] for l in lines)))

    failures = []
    for w in ("unknown", "bad_contact", "non_sip_contact", "no_to_tag", "no_from_tag",
              "no_tags"):
        r, lines = results[w]
        if r != -1 or len(lines) < 1:
            failures.append("%s: pua_update_contact() returned %d with %d pua log line(s)"
                            % (w, r, len(lines)))
    check(not failures, "bad NOTIFYs:\n" + "\n".join(failures))

    # the refresh after the NOTIFY with the new Contact
    n_a = len(notifier.requests("SUBSCRIBE"))
    k.ctl("pua.subscribe", pres, watcher, "presence", 300)
    other.wait_for(lambda: other.requests("SUBSCRIBE")
                   or len(notifier.requests("SUBSCRIBE")) > n_a, 5)
    time.sleep(0.3)
    at_a = notifier.requests("SUBSCRIBE")[n_a:]
    at_b = other.requests("SUBSCRIBE")
    t.note("refresh: at A %s, at B %s" % ([r.msg.uri for r in at_a], [r.msg.uri for r in at_b]))
    check(len(at_a) + len(at_b) == 1, "the refresh: %d SUBSCRIBEs at A, %d at B"
          % (len(at_a), len(at_b)))
    r = (at_a + at_b)[0]
    check((r.msg.call_id, r.msg.from_tag, r.msg.to_tag) == (call_id, pua_tag, our_tag)
          and r.msg.cseq[0] == first.msg.cseq[0] + 1,
          "the refresh is not in dialog: %s %s cs=%s" % (r.msg.start_line, r.msg.call_id,
                                                       r.msg.cseq[0]))

    def update_contact_works():
        got = {w: results[w][0] for w in ("valid", "valid_again", "new_contact")}
        check(all(v == 1 for v in got.values()),
              "pua_update_contact() on the NOTIFYs of a pua-made dialog returned %s" % got)

    def refresh_to_new_contact():
        check(at_b and not at_a and at_b[0].msg.uri == "sip:carol2@127.0.0.1:%d" % other.port,
              "after a NOTIFY with Contact carol2 (port B), the refresh went to %s"
              % (r.msg.uri))

    t.beyond_c(update_contact_works)
    t.beyond_c(refresh_to_new_contact)

    # early: the NOTIFY overtakes the 200 (held 1 s by the notifier)
    pres2 = "sip:early@127.0.0.1:%d" % notifier.port
    k.ctl("pua.subscribe", pres2, watcher, "presence", 120)
    e = notifier.wait_for(lambda: [x for x in notifier.requests("SUBSCRIBE")
                                   if x.msg.uri == pres2], 5)
    check(len(e) == 1, "early: %d SUBSCRIBEs" % len(e))
    e = e[0]
    early = notify("early", call_id=e.msg.call_id, from_tag=EARLY_TAG, to_tag=e.msg.from_tag,
                   contact="<%s>" % pres2, pres=pres2)
    check(not e.replies, "early: the 200 left before the NOTIFY was answered")
    check(notifier.wait_for(lambda: e.status, 3), "early: the delayed 200 was not sent")
    time.sleep(0.3)
    k.ctl("pua.subscribe", pres2, watcher, "presence", 300)
    e2 = notifier.wait_for(lambda: [x for x in notifier.requests("SUBSCRIBE")
                                    if x.msg.call_id == e.msg.call_id][1:], 5)
    check(e2 and (e2[0].msg.from_tag, e2[0].msg.to_tag) == (e.msg.from_tag, EARLY_TAG)
          and e2[0].msg.uri == pres2,
          "early: the refresh is not in the dialog the delayed 200 made: %s"
          % [(x.msg.start_line, x.msg.call_id, x.msg.to_tag) for x in e2 or []])
    t.note("early: %d %s" % (early[0], " | ".join(l.split(": ", 1)[-1] for l in early[1])))

    def early_notify_matches():
        check(early[0] == 1, "pua_update_contact() returned %d for a NOTIFY that overtook "
              "the 200 of its SUBSCRIBE" % early[0])
    t.beyond_c(early_notify_matches)
    check(not notifier.errors and not other.errors,
          "endpoint errors %r %r" % (notifier.errors, other.errors))

    allow = ALLOW_OURS if t.variant.is_ours else ALLOW_C
    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean(allow)
    check(k.stop() == 0, "unclean exit")
    k.check_log_clean(allow)
