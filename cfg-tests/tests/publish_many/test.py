"""publish_many: many distinct publications from several workers at once.

The client under test (kamailio.cfg: pua + pua_usrloc + usrloc + registrar,
children=4) PUBLISHes to a Python Uas (cfg-tests/sip.py) answering every
PUBLISH with 200 OK (a fresh SIP-ETag, the asked Expires).  4 Python phones
(threads) REGISTER 500 users (125 each, sip:userNNNN@example.test, Expires
600) back to back.
Asserts: every REGISTER gets 200 OK; within 30 s the Uas has 500 initial
PUBLISHes (no SIP-If-Match), one per user, each with a body and Event:
presence, no user gets two initial PUBLISHes (retransmissions, same branch,
excluded), no other PUBLISH is sent, every PUBLISH was answered; [ours]:
pua.stats reports 500 records (the C module has no pua.stats); Kamailio
alive with all workers, no ERROR/CRITICAL in its log, clean exit.
"""
import collections
import re
import threading
import time

from kamtest import check

USERS = 500
PHONES = 4


def run(t):
    uas = t.uas()
    k = t.kamailio(subst={"@UAS_PORT@": str(uas.port), "@PUA_PARAMS@": ""})
    k.start()
    k.check_pua_loaded()
    phones = [t.uac(user="phone%d" % i) for i in range(PHONES)]
    reg = "127.0.0.1:%d" % k.port
    failures = []

    def register_all(i, phone):
        for n in range(i, USERS, PHONES):
            aor = "sip:user%04d@example.test" % n
            r = phone.register(reg, aor, expires=600, timeout=8,
                               contact="<sip:user%04d@127.0.0.1:%d>" % (n, phone.port))
            if r is None or r.status != 200:
                failures.append((aor, r and r.status))

    t0 = time.monotonic()
    threads = [threading.Thread(target=register_all, args=(i, p), daemon=True)
               for i, p in enumerate(phones)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    check(not any(th.is_alive() for th in threads), "REGISTER threads still running after 120 s")
    t.note("%d REGISTERs in %.1f s" % (USERS, time.monotonic() - t0))
    check(not failures, "%d REGISTERs failed: %s" % (len(failures), failures[:5]))

    uas.wait_for(lambda: len(uas.requests("PUBLISH")) >= USERS
                 and all(r.status for r in uas.requests("PUBLISH")), timeout=30)
    time.sleep(1.0)   # anything more?
    ps = uas.requests("PUBLISH")
    t.note("%d PUBLISHes (%d with retransmissions) %.1f s after the first REGISTER"
           % (len(ps), len(uas.requests("PUBLISH", retransmissions=True)),
              time.monotonic() - t0))
    initial = [r for r in ps if r.msg.get("sip-if-match") is None]
    per_user = collections.Counter(r.msg.uri for r in initial)
    dup = [u for u, n in per_user.items() if n > 1]
    check(not dup, "%d users got more than one initial PUBLISH: %s"
          % (len(dup), [(u, per_user[u]) for u in dup[:5]]))
    want = set("sip:user%04d@example.test" % n for n in range(USERS))
    missing = want - set(per_user)
    check(not missing, "%d users got no initial PUBLISH: %s" % (len(missing), sorted(missing)[:5]))
    check(len(initial) == USERS, "%d initial PUBLISHes for %d users" % (len(initial), USERS))
    check(len(ps) == USERS, "%d PUBLISHes in all, expected %d: others: %s"
          % (len(ps), USERS, [r.msg.start_line for r in ps if r not in initial][:5]))
    bad = [r for r in initial if not r.msg.body or r.msg.get("event") != "presence"]
    check(not bad, "%d initial PUBLISHes without a body or not Event: presence" % len(bad))
    unanswered = [r for r in ps if r.status != 200]
    check(not unanswered, "%d PUBLISHes not answered 200" % len(unanswered))

    if t.variant.is_ours:
        deadline = time.monotonic() + 5
        while True:
            out = k.ctl("pua.stats").stdout
            m = re.search(r"records:\s*(-?\d+)", out)
            check(m, "pua.stats has no records: %r" % out)
            if int(m.group(1)) == USERS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        check(int(m.group(1)) == USERS, "pua.stats reports %s records, expected %d"
              % (m.group(1), USERS))
    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean()
    check(k.stop() == 0, "unclean exit")
    k.check_log_clean()
    errs = [e for ep in t.endpoints for e in ep.errors]
    check(not errs, "Python SIP endpoint errors: %s" % errs[:3])
