"""subscribe_replies: how pua handles the replies to its SUBSCRIBEs, checked
on the wire.  The client under test (pua + pua_rpc, kamailio.cfg)
SUBSCRIBEs with pua_rpc's pua.subscribe (kamcmd) to presentities
sip:<case>@127.0.0.1:<uas port>, a Python Uas (cfg-tests/sip.py).  The Uas
answers every initial SUBSCRIBE (no To tag) with 200 (To tag, Contact
<sip:<case>@127.0.0.1:<uas port>>, the Expires asked), and the first
in-dialog SUBSCRIBE of each case as the case needs; later ones with 200.
All cases run side by side in one Kamailio, in three rounds of
pua.subscribe for every case: expires 120 (initial), 300 (a refresh: the
same watcher and presentity, check_remote_contact 0), then, once the
retries are done (<= 6 s), 600.

Cases (presentity user)
  a481    the refresh is answered 481: the dialog ends; no SUBSCRIBE reuses
          it; at most one new initial SUBSCRIBE before round 3 (no storm:
          [ours] sends none, C sends one); round 3 is not sent on the old
          dialog.
  r408    the refresh is answered 408 with Retry-After: 2, and
  r503    with 503 and Retry-After: 2: the next SUBSCRIBE is the refresh
          again, in the same dialog (Call-ID, From tag, To tag), a higher
          CSeq, 2-5 s after the error (at least the Retry-After); no
          initial SUBSCRIBE follows; round 3 is in the same dialog.  Beyond
          C: C drops the dialog and sends a new initial SUBSCRIBE at once.
  m423    the refresh is answered 423 with Min-Expires: 1800: exactly one
          SUBSCRIBE follows before round 3, in dialog, higher CSeq, with
          Expires: 1800.  Beyond C: C drops the dialog and sends a new
          initial SUBSCRIBE with its own Expires.
  noexp   the refresh is answered 200 without Expires: the dialog is kept,
          round 3 goes in it and no initial SUBSCRIBE follows the first.
          Beyond C: C deletes the dialog (round 3 is a new initial).
  noexp0  the initial SUBSCRIBE is answered 200 without Expires: rounds 2
          and 3 go in that dialog.  Beyond C: as noexp.
  exp     every SUBSCRIBE carries the Expires asked: 120, 300, 600.  Beyond
          C: C sends 130, 310, 610.
  timer   (round 1 only) the initial SUBSCRIBE (asked 120) is granted only
          Expires: 8; with update_period 6 (the timer runs every second and
          refreshes what expires within 6 s) pua refreshes it by itself, in
          dialog, 1-7 s after the 200, asking 105-131 s (what is left of the
          120 s asked); no initial SUBSCRIBE follows.  Beyond C: the timer's
          refresh asks exactly what is left (<= 120), C adds 10.
Finally Kamailio is alive with all its workers, exits cleanly and logs no
ERROR/CRITICAL line.
"""
import time

import sip
from kamtest import TestFailure, check

BEYOND_C = True

USERS = ["a481", "r408", "r503", "m423", "noexp", "noexp0", "exp"]
TIMER_GRANT = 8   # Expires granted to the "timer" case's initial SUBSCRIBE


def user_of(req):
    u = sip.uri_of(req.get("to", ""))
    return u[4:].split("@", 1)[0] if u.startswith("sip:") else u


def make_script(uas_port):
    seen = {}

    def ok(req, user, with_expires=True):
        h = [("Contact", "<sip:%s@127.0.0.1:%d>" % (user, uas_port))]
        if with_expires:
            h.append(("Expires", req.get("expires", "3600")))
        return sip.Reply(200, headers=h)

    def script(req, ep):
        if req.method != "SUBSCRIBE":
            return sip.Reply(200)
        user = user_of(req)
        if req.to_tag is None:
            if user == "timer":
                return sip.Reply(200, headers=[
                    ("Contact", "<sip:%s@127.0.0.1:%d>" % (user, uas_port)),
                    ("Expires", str(TIMER_GRANT))])
            return ok(req, user, with_expires=(user != "noexp0"))
        n = seen.get(user, 0)
        seen[user] = n + 1
        if n == 0:
            if user == "a481":
                return sip.Reply(481)
            if user in ("r408", "r503"):
                return sip.Reply(int(user[1:]), headers=[("Retry-After", "2")])
            if user == "m423":
                return sip.Reply(423, headers=[("Min-Expires", "1800")])
            if user == "noexp":
                return ok(req, user, with_expires=False)
        return ok(req, user)
    return script


def reqs(uas, user):
    return [r for r in uas.requests("SUBSCRIBE") if user_of(r.msg) == user]


def desc(r):
    m = r.msg
    return "[t=%.2f %s ci=%s cs=%s ft=%s tt=%s ex=%s -> %s]" % (
        r.t, m.uri, m.call_id, m.cseq[0], m.from_tag, m.to_tag, m.get("expires"), r.status)


def descs(rs):
    return " ".join(desc(r) for r in rs) or "none"


def dialog_of(first):
    """(Call-ID, From tag, To tag) of the dialog its 2xx made."""
    ok = [m for _, m in first.replies if 200 <= m.status < 300]
    check(ok, "the initial SUBSCRIBE got no 2xx: %s" % desc(first))
    return first.msg.call_id, first.msg.from_tag, ok[0].to_tag


def in_dialog(r, dlg):
    return (r.msg.call_id, r.msg.from_tag, r.msg.to_tag) == dlg


def error_reply(rs, code):
    err = [r for r in rs if r.status == code]
    check(len(err) == 1, "expected one SUBSCRIBE answered %d: %s" % (code, descs(rs)))
    return err[0], [tm for tm, m in err[0].replies if m.status == code][0]


def run(t):
    uas = t.uas()
    uas.script = make_script(uas.port)
    k = t.kamailio()
    k.start()
    k.check_pua_loaded()
    watcher = "sip:bob@127.0.0.1:%d" % k.port

    def subscribe_all(expires, users=USERS):
        for u in users:
            k.ctl("pua.subscribe", "sip:%s@127.0.0.1:%d" % (u, uas.port), watcher,
                  "presence", expires)

    # round 1: initial SUBSCRIBEs
    subscribe_all(120, USERS + ["timer"])
    check(uas.wait_for(lambda: all(reqs(uas, u) and reqs(uas, u)[0].status
                                   for u in USERS + ["timer"]), 5),
          "round 1: not every case got its initial SUBSCRIBE answered: %s"
          % {u: descs(reqs(uas, u)) for u in USERS + ["timer"]})
    dialogs = {u: dialog_of(reqs(uas, u)[0]) for u in USERS + ["timer"]}
    time.sleep(0.5)   # let pua handle the 2xx
    # round 2: refreshes, answered by each case's rule; retries for 408/503/423
    t2 = time.monotonic()
    subscribe_all(300)
    uas.wait_for(lambda: all(len(reqs(uas, u)) >= 3 and reqs(uas, u)[2].status
                             for u in ("r408", "r503", "m423")), 6)
    time.sleep(0.5)
    # round 3
    t3 = time.monotonic()
    subscribe_all(600)
    uas.wait_for(lambda: all(any(r.t >= t3 and r.status for r in reqs(uas, u))
                             for u in USERS), 4)
    # the timer's refresh of the "timer" case: <= 7.5 s after its 200
    t_grant = [tm for tm, m in reqs(uas, "timer")[0].replies if m.status == 200][0]
    uas.wait_for(lambda: len(reqs(uas, "timer")) >= 2,
                 max(0.0, t_grant + 7.5 - time.monotonic()))
    time.sleep(0.3)
    for u in USERS + ["timer"]:
        t.note("%s: %s" % (u, descs(reqs(uas, u))))
    t.note("round 2 at t=%.2f, round 3 at t=%.2f" % (t2, t3))

    failures = []

    def case(name, fn, beyond):
        try:
            if beyond:
                t.beyond_c(fn)
            else:
                fn()
        except TestFailure as e:
            failures.append("%s: %s" % (name, e))

    def a481():
        rs = reqs(uas, "a481")
        dlg = dialogs["a481"]
        err, te = error_reply(rs, 481)
        check(in_dialog(err, dlg), "the 481 was not to the refresh: %s" % desc(err))
        later = [r for r in rs if r.t > te]
        check(not [r for r in later if r.msg.call_id == dlg[0]],
              "SUBSCRIBEs on the dialog after its 481: %s" % descs(later))
        initials = [r for r in later if r.t < t3 and r.msg.to_tag is None]
        check(len(initials) <= 1, "%d new initial SUBSCRIBEs after the 481 (storm): %s"
              % (len(initials), descs(initials)))
        r3 = [r for r in rs if r.t >= t3]
        check(len(r3) == 1, "round 3: %s" % descs(r3))
        t.note("a481: %d initial SUBSCRIBE(s) between the 481 and round 3" % len(initials))

    def retried(u, code):
        def fn():
            rs = reqs(uas, u)
            dlg = dialogs[u]
            err, te = error_reply(rs, code)
            check(in_dialog(err, dlg), "the %d was not to the refresh: %s" % (code, desc(err)))
            later = [r for r in rs if r.t > te and r.t < t3]
            check(later, "nothing sent after the %d" % code)
            n = later[0]
            check(in_dialog(n, dlg) and n.msg.cseq[0] > err.msg.cseq[0],
                  "%d with Retry-After: 2: the next SUBSCRIBE is not the refresh again in "
                  "its dialog\n    dialog %s, after the %d: %s" % (code, dlg, code, descs(later)))
            # Retry-After: 2 means at least 2 s (measured from the Uas'
            # sending the error to its receiving the retry).
            check(1.95 <= n.t - te <= 5.0, "the refresh was sent again %.2f s after the %d "
                  "with Retry-After: 2" % (n.t - te, code))
            check(n.msg.get("expires") == err.msg.get("expires"),
                  "the retry asks Expires %s, the refresh %s"
                  % (n.msg.get("expires"), err.msg.get("expires")))
            check(len(later) == 1 and n.status == 200, "after the %d: %s" % (code, descs(later)))
            r3 = [r for r in rs if r.t >= t3]
            check(len(r3) == 1 and in_dialog(r3[0], dlg),
                  "round 3 is not in the dialog: %s" % descs(r3))
        fn.__name__ = "retry_after_%d" % code
        return fn

    def m423():
        rs = reqs(uas, "m423")
        dlg = dialogs["m423"]
        err, te = error_reply(rs, 423)
        check(in_dialog(err, dlg), "the 423 was not to the refresh: %s" % desc(err))
        later = [r for r in rs if te < r.t < t3]
        check(len(later) == 1, "%d SUBSCRIBEs after the 423 (Min-Expires: 1800), expected one: %s"
              % (len(later), descs(later)))
        n = later[0]
        check(n.msg.get("expires") == "1800",
              "423 with Min-Expires: 1800: the retry asks Expires %s\n    %s"
              % (n.msg.get("expires"), desc(n)))
        check(in_dialog(n, dlg) and n.msg.cseq[0] > err.msg.cseq[0],
              "the retry after the 423 is not in the dialog %s: %s" % (dlg, desc(n)))
        r3 = [r for r in rs if r.t >= t3]
        check(len(r3) == 1 and in_dialog(r3[0], dlg),
              "round 3 is not in the dialog: %s" % descs(r3))

    def kept(u):
        def fn():
            rs = reqs(uas, u)
            dlg = dialogs[u]
            rest = rs[1:]
            check(len(rest) == 2 and all(in_dialog(r, dlg) for r in rest)
                  and rest[0].msg.cseq[0] < rest[1].msg.cseq[0],
                  "%s: after a 2xx without Expires the dialog is not kept\n    dialog %s, "
                  "rounds 2 and 3: %s" % (u, dlg, descs(rest)))
        fn.__name__ = "kept_without_expires_" + u
        return fn

    def exp():
        got = [r.msg.get("expires") for r in reqs(uas, "exp")]
        check(got == ["120", "300", "600"],
              "Expires sent %s, asked 120, 300, 600" % ", ".join(map(str, got)))

    def timer():
        rs = reqs(uas, "timer")
        dlg = dialogs["timer"]
        t_ok = [tm for tm, m in rs[0].replies if m.status == 200][0]
        rest = rs[1:]
        check(rest, "no refresh by the timer within %.1f s of the 200 granting Expires: %d"
              % (time.monotonic() - t_ok, TIMER_GRANT))
        n = rest[0]
        check(in_dialog(n, dlg) and n.msg.cseq[0] == rs[0].msg.cseq[0] + 1,
              "the timer's refresh is not in the dialog\n    dialog %s: %s" % (dlg, descs(rest)))
        check(1.0 <= n.t - t_ok <= 7.0, "the timer refreshed %.2f s after the 200 granting "
              "Expires: %d (update_period 6)" % (n.t - t_ok, TIMER_GRANT))
        check(105 <= int(n.msg.get("expires", "-1")) <= 131,
              "the timer's refresh asks Expires %s, about 117 s of the 120 asked are left"
              % n.msg.get("expires"))
        check(all(in_dialog(r, dlg) for r in rest), "after the timer's refresh: %s" % descs(rest))
        t.note("timer: refresh %.2f s after the 200, Expires %s"
               % (n.t - t_ok, n.msg.get("expires")))

    def timer_expires_exact():
        n = reqs(uas, "timer")[1]
        check(int(n.msg.get("expires")) <= 120, "the timer's refresh asks Expires %s, more "
              "than the 120 s asked" % n.msg.get("expires"))

    case("timer", timer, False)
    if not [f for f in failures if f.startswith("timer:")]:
        case("timer_expires", timer_expires_exact, True)
    case("a481", a481, False)
    case("r408", retried("r408", 408), True)
    case("r503", retried("r503", 503), True)
    case("m423", m423, True)
    case("noexp", kept("noexp"), True)
    case("noexp0", kept("noexp0"), True)
    case("exp", exp, True)
    check(not failures, "%d case(s) failed:\n%s" % (len(failures), "\n".join(failures)))
    check(not uas.errors, "Uas errors: %r" % uas.errors)

    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean()
    check(k.stop() == 0, "unclean exit")
    k.check_log_clean()
