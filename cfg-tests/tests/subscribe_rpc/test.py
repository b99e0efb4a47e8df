"""subscribe_rpc: pua_rpc's pua.subscribe against a real presence server.

Two Kamailios: the client under test (kamailio.cfg: pua + pua_rpc; NOTIFYs
go to pua_update_contact(), whose return code the client logs) and the
presence server (cfg-tests/servers/presence_subs.cfg: Debian's modules,
subs_db_mode 3, so active_watchers is written at once; it logs every
SUBSCRIBE with its Call-ID, CSeq, tags and Expires).

Steps
  publish    pua.publish sip:alice@127.0.0.1 ("open") -> presentity row.
  subscribe  pua.subscribe sip:alice@127.0.0.1:<srv> sip:bob@127.0.0.1:<cli>
             presence 120 -> one initial SUBSCRIBE (no To tag, Contact the
             watcher); active_watchers holds the watcher (bob@127.0.0.1,
             event presence, status active, contact the watcher URI, the
             SUBSCRIBE's Call-ID and From tag, lifetime 120 s, or 130: C
             asks 10 s more); a NOTIFY with the "open" PIDF reaches the
             client.
  refresh    pua.subscribe again, expires 300 -> an in-dialog SUBSCRIBE:
             same Call-ID and From tag, the server's To tag, CSeq + 1; the
             row keeps its dialog, its remote_cseq follows, it now lives
             300 s (or 310); another NOTIFY arrives.
  remove     pua.subscribe, expires 0 -> an in-dialog SUBSCRIBE (CSeq + 1)
             with Expires: 0; the row is gone; a NOTIFY "terminated" arrives.
             [ours] pua.stats: 2 records (publication + subscription) before,
             1 after.
  beyond C   pua_update_contact() returns 1 for every NOTIFY of the
             subscription before the un-SUBSCRIBE (C compares the NOTIFY's
             To tag, our local tag, with the stored remote tag, so it
             returns -1 with "no record for the dialog found" every time).
Finally: both Kamailios alive with all workers, no ERROR/CRITICAL in either
log (C: but its pua_update_contact() errors), clean exits.
"""
import re
import time

from kamtest import check

BEYOND_C = True

C_UPDATE_CONTACT_ERR = r"ki_pua_update_contact\(\): no record for the dialog found"
# The core's TCP main process may go before its children at shutdown.
SHUTDOWN_TCP = r"receive_fd\(\): EOF on \d+"

PIDF = ('<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@127.0.0.1">'
        '<tuple id="t1"><status><basic>open</basic></status><note>sub-rpc</note></tuple>'
        '</presence>')

SUB_RE = re.compile(r"SUBSCRIBE ru=(\S+) ci=(\S+) cs=(\d+) ft=(\S+) tt=(\S+) ex=(\S+) ct=(\S+)")
NOTIFY_RE = re.compile(r"NOTIFY ci=(\S+) cs=(\d+) ft=(\S+) tt=(\S+) ct=(\S+) ss=(\S+) body=(\S+) r=(-?\d+)")


def wait(pred, timeout, poll=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(poll)


def subscribes(srv):
    out = []
    for l in srv.log_lines():
        m = SUB_RE.search(l)
        if m:
            out.append(dict(zip(("ru", "ci", "cs", "ft", "tt", "ex", "ct"), m.groups())))
            out[-1]["cs"] = int(out[-1]["cs"])
    return out


def notifies(k):
    out = []
    for l in k.log_lines():
        m = NOTIFY_RE.search(l)
        if m:
            d = dict(zip(("ci", "cs", "ft", "tt", "ct", "ss", "body", "r"), m.groups()))
            d["r"] = int(d["r"])
            out.append(d)
    return out


def watchers(srv):
    return srv.sql("SELECT * FROM active_watchers WHERE presentity_uri=? AND event=?",
                   ("sip:alice@127.0.0.1", "presence"))


def pua_records(k):
    m = re.search(r"records:\s*(-?\d+)", k.ctl("pua.stats").stdout)
    check(m, "pua.stats has no records field")
    return int(m.group(1))


def run(t):
    srv = t.server("presence_subs.cfg")
    srv.start()
    k = t.kamailio(subst={"@SERVER_PORT@": str(srv.port)})
    k.start()
    k.check_pua_loaded()
    pres = "sip:alice@127.0.0.1:%d" % srv.port
    watcher = "sip:bob@127.0.0.1:%d" % k.port

    # publish
    r = k.jsonrpc("pua.publish", "sip:alice@127.0.0.1", "3600", "presence",
                  "application/pidf+xml", ".", ".", ".", ".", PIDF, timeout=8)
    check(isinstance(r.get("result"), dict) and r["result"].get("SIP-ETag"),
          "pua.publish answered %r" % r)
    check(wait(lambda: srv.sql("SELECT * FROM presentity WHERE username='alice'"), 3),
          "no presentity row for alice")

    # subscribe
    k.ctl("pua.subscribe", pres, watcher, "presence", 120)
    subs = wait(lambda: subscribes(srv), 5)
    check(len(subs) == 1, "initial: %d SUBSCRIBEs reached the server: %r" % (len(subs), subs))
    s1 = subs[0]
    check(s1["ru"] == pres and s1["tt"] == "<null>" and s1["ct"] == "<%s>" % watcher,
          "initial SUBSCRIBE: %r" % s1)
    t.note("initial SUBSCRIBE Expires: %s" % s1["ex"])
    rows = wait(lambda: watchers(srv), 5)
    check(len(rows) == 1, "initial: %d active_watchers rows: %r" % (len(rows), rows))
    w = rows[0]
    check(w["watcher_username"] == "bob" and w["watcher_domain"] == "127.0.0.1"
          and w["contact"] == watcher and w["status"] == 1,
          "active_watchers row: %r" % w)
    check(w["callid"] == s1["ci"] and w["from_tag"] == s1["ft"] and w["to_tag"],
          "the row's dialog %r is not the SUBSCRIBE's %r" % (w, s1))
    life = w["expires"] - int(time.time())
    check(115 <= life <= 131, "initial: the subscription lives %d s, asked 120" % life)
    to_tag = w["to_tag"]
    n1 = wait(lambda: [n for n in notifies(k) if n["ci"] == s1["ci"]], 5)
    check(n1, "no NOTIFY reached the client after the initial SUBSCRIBE")
    check(n1[0]["body"] == "open" and n1[0]["ss"].startswith("active"),
          "first NOTIFY: %r" % n1[0])
    check(n1[0]["ft"] == to_tag and n1[0]["tt"] == s1["ft"], "NOTIFY tags: %r" % n1[0])
    if t.variant.is_ours:
        check(pua_records(k) == 2, "pua.stats: %d records, expected 2 (publication + "
              "subscription)" % pua_records(k))
    time.sleep(0.3)   # let the client handle the 2xx of the initial SUBSCRIBE

    # refresh
    k.ctl("pua.subscribe", pres, watcher, "presence", 300)
    subs = wait(lambda: len(subscribes(srv)) >= 2 and subscribes(srv), 5)
    check(subs and len(subs) == 2, "refresh: %d SUBSCRIBEs at the server: %r"
          % (len(subs or []), subs))
    s2 = subs[1]
    check(s2["ci"] == s1["ci"] and s2["ft"] == s1["ft"] and s2["tt"] == to_tag,
          "refresh not in dialog: %r, initial %r, server To tag %s" % (s2, s1, to_tag))
    check(s2["cs"] == s1["cs"] + 1, "refresh CSeq %d after %d" % (s2["cs"], s1["cs"]))
    check(s2["ct"] == "<%s>" % watcher, "refresh Contact %s" % s2["ct"])
    t.note("refresh SUBSCRIBE Expires: %s" % s2["ex"])
    rows = wait(lambda: [r for r in watchers(srv) if r["remote_cseq"] == s2["cs"]], 5)
    check(len(rows) == 1, "refresh: rows %r" % watchers(srv))
    check(rows[0]["callid"] == s1["ci"] and rows[0]["to_tag"] == to_tag,
          "refresh: the row changed dialog: %r" % rows[0])
    life = rows[0]["expires"] - int(time.time())
    check(295 <= life <= 311, "refresh: the subscription lives %d s, asked 300" % life)
    n2 = wait(lambda: len([n for n in notifies(k) if n["ci"] == s1["ci"]]) >= 2, 5)
    check(n2, "no NOTIFY after the refresh")
    time.sleep(0.3)

    # remove
    before = [n for n in notifies(k) if n["ci"] == s1["ci"]]
    k.ctl("pua.subscribe", pres, watcher, "presence", 0)
    subs = wait(lambda: len(subscribes(srv)) >= 3 and subscribes(srv), 5)
    check(subs and len(subs) == 3, "remove: %d SUBSCRIBEs at the server: %r"
          % (len(subs or []), subs))
    s3 = subs[2]
    check(s3["ci"] == s1["ci"] and s3["ft"] == s1["ft"] and s3["tt"] == to_tag
          and s3["cs"] == s2["cs"] + 1 and s3["ex"] == "0",
          "un-SUBSCRIBE: %r (refresh %r)" % (s3, s2))
    check(wait(lambda: not watchers(srv), 5), "remove: rows left %r" % watchers(srv))
    fin = wait(lambda: [n for n in notifies(k) if n["ci"] == s1["ci"]
                        and n["ss"].startswith("terminated")], 5)
    check(fin, "no final NOTIFY (terminated)")
    if t.variant.is_ours:
        check(wait(lambda: pua_records(k) == 1, 3), "pua.stats: %d records after the "
              "un-SUBSCRIBE, expected 1 (the publication)" % pua_records(k))
    check(len(subscribes(srv)) == 3, "more SUBSCRIBEs: %r" % subscribes(srv)[3:])

    def update_contact_finds_dialog():
        bad = [n for n in before if n["r"] != 1]
        check(before and not bad, "pua_update_contact() returned %s for the NOTIFYs of "
              "a pua-made subscription (CSeq %s)" % ([n["r"] for n in before],
                                                     [n["cs"] for n in before]))
    t.beyond_c(update_contact_finds_dialog)

    allow = [] if t.variant.is_ours else [C_UPDATE_CONTACT_ERR]
    for inst in (k, srv):
        inst.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean(allow)
    srv.check_log_clean()
    check(k.stop() == 0, "client: unclean exit")
    check(srv.stop() == 0, "presence server: unclean exit")
    k.check_log_clean(allow + [SHUTDOWN_TCP])
    srv.check_log_clean()
