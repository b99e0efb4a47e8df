"""publish_dialoginfo: pua_dialoginfo PUBLISHes a call's dialog states to a
presence server.

Two Kamailios: the client under test (kamailio.cfg: a record-routing proxy
with pua + pua_dialoginfo + dialog, pua's outbound_proxy = the server) and
the presence server (cfg-tests/servers/presence.cfg, Debian's modules).  A
Python caller (sip.Uac, sip:alice@example.test) calls sip:bob@example.test
through the client; a Python callee (sip.Uas) answers 180 after 1 s and 200
after 2.5 s; the caller ACKs, waits 1.5 s and sends BYE (200).

Meanwhile the test polls the server's presentity table (event "dialog") every
50 ms and records each publication's sequence of <state> values.
Asserts: the call works (200 to INVITE and BYE, the callee gets the ACK);
alice (caller) goes through trying, early, confirmed, terminated and bob
(callee) through early, confirmed, terminated, in that order (as pua_dialoginfo
publishes them with its defaults: "Trying" for the caller only); at no time
more than one dialog row per user (no second initial PUBLISH); each final
row is "terminated" with a lifetime of 10 s (11 in C: expires + 1) and its
dialog-info names the user as entity.  Both Kamailios alive with all
workers, no ERROR/CRITICAL in the logs, clean exits.
"""
import re
import threading
import time

import sip
from kamtest import check


def dialog_rows(srv, user):
    return srv.sql("SELECT * FROM presentity WHERE username=? AND domain='example.test' "
                   "AND event='dialog'", (user,))


def text(r):
    return r["body"].decode() if isinstance(r["body"], bytes) else r["body"]


def state(r):
    m = re.search(r"<state[^>]*>\s*([A-Za-z]+)\s*</state>", text(r))
    return m.group(1).lower() if m else None


class Poller(threading.Thread):
    """Records, per user, the sequence of distinct states of the dialog row
    and the largest number of rows seen at once."""

    def __init__(self, srv, users):
        threading.Thread.__init__(self, daemon=True)
        self.srv, self.users = srv, users
        self.seq = {u: [] for u in users}
        self.max_rows = {u: 0 for u in users}
        self.last = {u: [] for u in users}
        self.stop_ev = threading.Event()
        self.errors = []
        self.start()

    def run(self):
        while not self.stop_ev.is_set():
            for u in self.users:
                try:
                    rs = dialog_rows(self.srv, u)
                except Exception as e:
                    self.errors.append(str(e))
                    continue
                self.last[u] = rs
                self.max_rows[u] = max(self.max_rows[u], len(rs))
                for r in rs:
                    s = state(r)
                    if s and (not self.seq[u] or self.seq[u][-1] != s):
                        self.seq[u].append(s)
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.join(3)


def run(t):
    srv = t.server()
    srv.start()
    callee = t.uas(user="bob", script={
        "INVITE": [[sip.Reply(100), sip.Reply(180, delay=1.0), sip.Reply(200, delay=2.5)]]})
    k = t.kamailio(subst={"@SERVER_PORT@": str(srv.port), "@CALLEE_PORT@": str(callee.port),
                          "@PUA_PARAMS@": ""})
    k.start()
    k.check_pua_loaded()
    caller = t.uac(user="alice")
    a, b = "sip:alice@example.test", "sip:bob@example.test"
    poll = Poller(srv, ["alice", "bob"])
    try:
        d, final, tx = caller.invite("127.0.0.1:%d" % k.port, b, from_uri=a, timeout=8)
        check(d is not None, "INVITE: %r" % final)
        check(callee.wait_for(lambda: callee.requests("ACK"), 3), "the callee got no ACK")
        time.sleep(1.5)
        r, _ = d.bye()
        check(r is not None and r.status == 200, "BYE: %r" % r)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
                poll.seq[u][-1:] == ["terminated"] for u in ("alice", "bob")):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        poll.stop()
    t.note("states: alice %s, bob %s" % (poll.seq["alice"], poll.seq["bob"]))
    check(not poll.errors, "reading presentity: %s" % poll.errors[:3])
    check(poll.seq["alice"] == ["trying", "early", "confirmed", "terminated"],
          "caller states %s" % poll.seq["alice"])
    check(poll.seq["bob"] == ["early", "confirmed", "terminated"],
          "callee states %s" % poll.seq["bob"])
    for u in ("alice", "bob"):
        check(poll.max_rows[u] == 1, "%s: up to %d dialog rows at once (several publications)"
              % (u, poll.max_rows[u]))
        r = poll.last[u][0]
        life = r["expires"] - r["received_time"]
        check(9 <= life <= 12, "%s: the terminated row lives %d s, expected 10 (C: 11)" % (u, life))
        check('entity="sip:%s@example.test"' % u in text(r),
              "%s: dialog-info entity: %r" % (u, text(r)[:300]))
    for inst in (k, srv):
        inst.check_workers_alive(settle=0.5, converge=2.0)
        inst.check_log_clean()
    check(k.stop() == 0, "client: unclean exit")
    check(srv.stop() == 0, "presence server: unclean exit")
    k.check_log_clean()
    srv.check_log_clean()
    errs = [e for ep in t.endpoints for e in ep.errors]
    check(not errs, "Python SIP endpoint errors: %s" % errs[:3])
