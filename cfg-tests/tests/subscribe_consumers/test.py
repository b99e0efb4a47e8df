"""subscribe_consumers: the consumers of pua's SUBSCRIBE API on the pua.so
under test: pua_reginfo, pua_xmpp, pua_bla and rls (kamailio.cfg), each
driven by a request of the test's Python endpoints (cfg-tests/sip.py) and
checked on the wire at a Python Uas (the "server") or phone.

  bind      Kamailio starts with all four (and xmpp, usrloc, registrar,
            presence); the pua.so mapped is the one under test.
  reginfo   MESSAGE -> reginfo_subscribe("sip:gina@127.0.0.1:<uas>"): a
            SUBSCRIBE with Event: reg reaches the Uas (Request-URI the
            target, From/Contact pua_reginfo's server_address), answered 200
            (Contact = the target, so check_remote_contact 1 matches).  The
            Uas's NOTIFY (reginfo, contact sip:gina@127.0.0.1:5999) is
            answered 200 after reginfo_handle_notify() (pua_update_contact()
            returns 1: beyond C), and usrloc has the contact.  A second
            reginfo_subscribe() is sent in dialog (same Call-ID and tags,
            next CSeq).
  winfo     MESSAGE -> pua_xmpp_req_winfo("sip:dave@127.0.0.1:<uas>",
            "3600"): a SUBSCRIBE with Event: presence.winfo reaches the Uas
            (From = To = the URI, Contact pua_xmpp's server_address).  The
            XMPP gateway flow (an XMPP peer) is not exercised.
  bla       REGISTER sip:frank@127.0.0.1 (bla_set_flag(); save()) from a
            phone: pua_bla SUBSCRIBEs to the phone's contact (Event:
            dialog;sla, From/To sip:frank@127.0.0.1, Contact pua_bla's
            server_address); the phone answers 200.  REGISTER Expires: 0:
            the un-SUBSCRIBE (Expires: 0) goes in that dialog.
  rls       a watcher (wendy) SUBSCRIBEs to sip:friends@127.0.0.1 with
            Supported: eventlist; her rls-services document (xcap table)
            lists alice and carol: she gets 200, and rls SUBSCRIBEs (through
            pua, rls' outbound_proxy = the Uas) to both: Event: presence,
            Supported: eventlist, From sip:wendy@127.0.0.1, Contact rls'
            server_address.  The Uas's NOTIFY on alice's back-end dialog is
            answered 200 by rls_handle_notify() (pua's get_record_id found
            the dialog; 481 otherwise), and within 8 s rls NOTIFYs wendy with
            alice's "open" state.  Wendy un-SUBSCRIBEs (Expires: 0, in
            dialog): with check_remote_contact 0 rls' back-end
            un-SUBSCRIBEs (Expires: 0) go in the back-end dialogs (next
            CSeq).  With 1 (the default) a dialog matches only if its
            remote contact (the Contact of the last 2xx or NOTIFY) equals
            rls' remote target, the resource URI: the test's NOTIFY for
            alice had Contact sip:alice@127.0.0.1, so her un-SUBSCRIBE goes
            in dialog (beyond C: C's pua_update_contact() never stores the
            Contact, so C sends none); carol's (remote contact: her 200's
            Contact, with the port) is not sent by either: only noted.
Cases: crc=1 and crc=0, pua's check_remote_contact.
Finally Kamailio is alive with all its workers, exits cleanly, no
ERROR/CRITICAL line (C: but its pua_update_contact() errors).
"""
import os
import re
import shutil
import time

import sip
from kamtest import TestFailure, check, free_udp_port

BEYOND_C = True
# db_mode 2: rls's back-end dialogs are in the client's pua table, and
# get_record_id / get_subs_list / pua_update_contact() answer from it.  Ours
# only: the C module's worker dies on the 200 of a SUBSCRIBE in db_mode 2 on
# SQLite (empty strings bound as NULL; see persist_dbonly).
CASES = [
    ("crc=1", {"crc": 1}),
    ("crc=0", {"crc": 0}),
    ("crc=0,db_mode=2", {"crc": 0, "db_mode": 2, "variants": ("ours",)}),
]

DBTEXT_SCHEMAS = "/usr/share/kamailio/dbtext/kamailio"
C_UPDATE_CONTACT_ERR = r"ki_pua_update_contact\(\): no record for the dialog found"
NOTIFY_RE = re.compile(r"NOTIFY ev=(\S+) ci=(\S+) ft=(\S+) tt=(\S+) r=(-?\d+)")

RLS_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<rls-services xmlns="urn:ietf:params:xml:ns:rls-services"
    xmlns:rl="urn:ietf:params:xml:ns:resource-lists">
  <service uri="sip:friends@127.0.0.1">
    <list name="friends">
      <rl:entry uri="sip:alice@127.0.0.1"/>
      <rl:entry uri="sip:carol@127.0.0.1"/>
    </list>
    <packages>
      <package>presence</package>
    </packages>
  </service>
</rls-services>
"""

REGINFO = """<?xml version="1.0" encoding="UTF-8"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">
  <registration aor="sip:gina@127.0.0.1" id="r1" state="active">
    <contact id="c1" state="active" event="registered" expires="600">
      <uri>sip:gina@127.0.0.1:5999</uri>
    </contact>
  </registration>
</reginfo>
"""

PIDF = ('<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@127.0.0.1">'
        '<tuple id="t1"><status><basic>open</basic></status></tuple></presence>')


def ok_with_contact(contact_of):
    def script(req, ep):
        if req.method != "SUBSCRIBE":
            return sip.Reply(200)
        return sip.Reply(200, headers=[("Contact", contact_of(req, ep)),
                                       ("Expires", req.get("expires", "3600"))])
    return script


def uri_user(u):
    u = sip.uri_of(u)
    return u[4:].split("@", 1)[0] if u.startswith("sip:") else u


def sub_reqs(ep, event=None, user=None):
    return [r for r in ep.requests("SUBSCRIBE")
            if (event is None or r.msg.get("event") == event)
            and (user is None or uri_user(r.msg.get("to")) == user)]


def dialog_of(rec):
    ok = [m for _, m in rec.replies if 200 <= m.status < 300]
    check(ok, "SUBSCRIBE not answered 2xx: %s" % rec.msg.start_line)
    return rec.msg.call_id, rec.msg.from_tag, ok[0].to_tag


def notify_in(ep, rec, dest, event, body, ctype, cseq=1, sub_state="active;expires=300"):
    """A NOTIFY from ep in the dialog SUBSCRIBE rec made; -> final response."""
    call_id, pua_tag, our_tag = dialog_of(rec)
    contact = sip.uri_of(rec.msg.get("contact"))
    # The NOTIFY's Contact is the SUBSCRIBE's Request-URI (for reginfo the
    # target, as in the 200; for rls the resource URI, rls' remote target).
    m = sip.request("NOTIFY", contact, sip.uri_of(rec.msg.get("to")), sip.uri_of(rec.msg.get("from")),
                    call_id=call_id, cseq=cseq, from_tag=our_tag, to_tag=pua_tag, via=ep.addr,
                    contact="<%s>" % sip.uri_of(rec.msg.uri),
                    headers=[("Event", event), ("Subscription-State", sub_state)],
                    body=body, content_type=ctype)
    return ep.send(m, dest).wait(5)


def notifies(k):
    out = []
    for l in k.log_lines():
        m = NOTIFY_RE.search(l)
        if m:
            out.append(dict(zip(("ev", "ci", "ft", "tt", "r"), m.groups())))
    return out


def run(t, data):
    crc = data["crc"]
    uas = t.uac(user="server")
    uas.script = ok_with_contact(lambda req, ep: "<sip:%s@127.0.0.1:%d>"
                                 % (uri_user(req.get("to")), ep.port))
    phone = t.uac(user="frank")
    phone.script = ok_with_contact(lambda req, ep: ep.contact)
    wendy = t.uac(user="wendy")
    extra = ("INSERT INTO xcap (username, domain, doc, doc_type, etag, source, doc_uri, port) "
             "VALUES ('wendy', '127.0.0.1', '%s', 8, 'e1', 1, "
             "'/rls-services/users/sip:wendy@127.0.0.1/index', 0);" % RLS_DOC.replace("'", "''"))
    # rls' own tables on db_text: db_sqlite has no affected_rows(), which
    # rls_handle_notify() calls without checking (a NULL call, SIGSEGV), and
    # rls 5.6.3 opens rlpres_db_url's module with db_url in its child_init,
    # so rls_presentity cannot be alone elsewhere.  The xcap table stays in
    # SQLite (xcap_db_url).
    dbtext = os.path.join(t.work_dir, "dbtext")
    os.makedirs(dbtext)
    for f in ("version", "rls_presentity", "rls_watchers"):
        shutil.copy(os.path.join(DBTEXT_SCHEMAS, f), dbtext)
    k = t.kamailio(subst={"@XMPP_PORT@": str(free_udp_port()), "@UAS_PORT@": str(uas.port),
                          "@RLS_DB_URL@": '"text://%s"' % dbtext, "@CRC@": str(crc),
                          "@PUA_DB_MODE@": str(data.get("db_mode", 0))},
                   schemas=("standard", "presence", "rls"), extra_sql=extra)
    k.start()
    k.check_pua_loaded()
    me = "127.0.0.1:%d" % k.port
    dest = ("127.0.0.1", k.port)
    failures = []
    beyond = []

    def step(name, fn):
        try:
            fn()
        except TestFailure as e:
            failures.append("%s: %s" % (name, e))

    def trigger(user, target):
        r, _ = wendy.request("MESSAGE", "sip:%s@%s" % (user, me), dest, timeout=5,
                             to_uri="sip:%s@%s" % (user, me),
                             headers=[("X-Target", target)])
        check(r is not None and r.status == 200, "trigger %s: %s" % (user, r and r.status))

    # --- pua_reginfo ---------------------------------------------------------
    def reginfo():
        target = "sip:gina@127.0.0.1:%d" % uas.port
        trigger("reginfo", target)
        rs = uas.wait_for(lambda: [r for r in sub_reqs(uas, "reg") if r.status], 5)
        check(len(rs) == 1, "%d SUBSCRIBEs with Event: reg answered at the Uas" % len(rs))
        s = rs[0].msg
        check(s.uri == target and sip.uri_of(s.get("to")) == target
              and sip.uri_of(s.get("from")) == "sip:reginfo@%s" % me
              and sip.uri_of(s.get("contact")) == "sip:reginfo@%s" % me and s.to_tag is None,
              "reginfo SUBSCRIBE: %s" % s)
        t.note("reginfo: SUBSCRIBE Expires %s" % s.get("expires"))
        time.sleep(0.3)
        r = notify_in(uas, rs[0], dest, "reg", REGINFO, "application/reginfo+xml")
        check(r is not None and r.status == 200,
              "the reginfo NOTIFY was answered %s" % (r and r.status))
        lines = [n for n in notifies(k) if n["ci"] == s.call_id]
        check(lines, "no NOTIFY line for the reginfo dialog")
        beyond.append(("reginfo NOTIFY", lines[-1]["r"]))
        # (ul.dump, not ul.lookup: pua_reginfo keys the record by the AOR's
        # user part with strlen(), i.e. "gina@127.0.0.1", which ul.lookup
        # with use_domain 0 does not ask for.)
        ul = k.ctl("ul.dump").stdout
        check("sip:gina@127.0.0.1:5999" in ul, "usrloc has no contact for gina after "
              "reginfo_handle_notify(): %s" % ul.strip()[:300])
        # again: in dialog
        trigger("reginfo", target)
        rs2 = uas.wait_for(lambda: len(sub_reqs(uas, "reg")) >= 2 and sub_reqs(uas, "reg"), 5)
        check(rs2 and len(rs2) == 2, "second reginfo_subscribe(): %d SUBSCRIBEs"
              % len(rs2 or []))
        d = dialog_of(rs[0])
        s2 = rs2[1].msg
        check((s2.call_id, s2.from_tag, s2.to_tag) == d and s2.cseq[0] == s.cseq[0] + 1,
              "second reginfo_subscribe() not in dialog %s: ci=%s ft=%s tt=%s cs=%s"
              % (d, s2.call_id, s2.from_tag, s2.to_tag, s2.cseq[0]))

    # --- pua_xmpp ------------------------------------------------------------
    def winfo():
        target = "sip:dave@127.0.0.1:%d" % uas.port
        trigger("winfo", target)
        rs = uas.wait_for(lambda: [r for r in sub_reqs(uas, "presence.winfo") if r.status], 5)
        check(len(rs) == 1, "%d SUBSCRIBEs with Event: presence.winfo at the Uas" % len(rs))
        s = rs[0].msg
        check(s.uri == target and sip.uri_of(s.get("from")) == target
              and sip.uri_of(s.get("to")) == target
              and sip.uri_of(s.get("contact")) == "sip:xmpp@%s" % me,
              "winfo SUBSCRIBE: %s" % s)
        t.note("winfo: SUBSCRIBE Expires %s" % s.get("expires"))

    # --- pua_bla -------------------------------------------------------------
    def bla():
        aor = "sip:frank@127.0.0.1"
        cid = "bla-reg-" + sip.rand_token(8)
        r = phone.register(me, aor, expires=120, call_id=cid, cseq=1, timeout=5)
        check(r is not None and r.status == 200, "REGISTER: %s" % (r and r.status))
        rs = phone.wait_for(lambda: [x for x in sub_reqs(phone) if x.status], 5)
        check(len(rs) == 1, "%d SUBSCRIBEs at the phone after its REGISTER" % len(rs))
        s = rs[0].msg
        check(s.get("event") == "dialog;sla" and s.uri == sip.uri_of(phone.contact)
              and sip.uri_of(s.get("from")) == aor and sip.uri_of(s.get("to")) == aor
              and sip.uri_of(s.get("contact")) == "sip:bla@%s" % me and s.to_tag is None,
              "pua_bla SUBSCRIBE: %s" % s)
        t.note("bla: SUBSCRIBE Expires %s" % s.get("expires"))
        time.sleep(0.3)
        r = phone.register(me, aor, expires=0, call_id=cid, cseq=2, timeout=5)
        check(r is not None and r.status == 200, "REGISTER Expires 0: %s" % (r and r.status))
        rs2 = phone.wait_for(lambda: len(sub_reqs(phone)) >= 2 and sub_reqs(phone), 5)
        check(rs2 and len(rs2) == 2, "%d SUBSCRIBEs at the phone after the de-REGISTER"
              % len(rs2 or []))
        s2 = rs2[1].msg
        d = dialog_of(rs[0])
        check((s2.call_id, s2.from_tag, s2.to_tag) == d and s2.cseq[0] == s.cseq[0] + 1
              and s2.get("expires") == "0",
              "the un-SUBSCRIBE is not in dialog %s with Expires: 0: ci=%s ft=%s tt=%s cs=%s "
              "ex=%s" % (d, s2.call_id, s2.from_tag, s2.to_tag, s2.cseq[0], s2.get("expires")))

    # --- rls -----------------------------------------------------------------
    def rls():
        lst = "sip:friends@%s" % me
        ok, _ = wendy.request("SUBSCRIBE", lst, dest, timeout=5, to_uri="sip:friends@127.0.0.1",
                             from_uri="sip:wendy@127.0.0.1", contact=wendy.contact,
                             headers=[("Event", "presence"), ("Supported", "eventlist"),
                                      ("Accept", "application/pidf+xml, application/rlmi+xml, "
                                                 "multipart/related"),
                                      ("Expires", "120")])
        check(ok is not None and ok.status == 200, "the list SUBSCRIBE was answered %s"
              % (ok and ok.status))
        rs = uas.wait_for(lambda: len([x for x in sub_reqs(uas, "presence") if x.status]) >= 2
                          and sub_reqs(uas, "presence"), 5)
        users = sorted(uri_user(x.msg.get("to")) for x in (rs or []))
        check(users == ["alice", "carol"], "back-end SUBSCRIBEs for %s" % users)
        for x in rs:
            m = x.msg
            check(sip.uri_of(m.get("from")) == "sip:wendy@127.0.0.1"
                  and "eventlist" in (m.get("supported") or "")
                  and sip.uri_of(m.get("contact")) == "sip:rls@%s" % me
                  and m.uri == sip.uri_of(m.get("to")),
                  "back-end SUBSCRIBE: %s" % m)
        alice = [x for x in rs if uri_user(x.msg.get("to")) == "alice"][0]
        time.sleep(0.3)
        r = notify_in(uas, alice, dest, "presence", PIDF, "application/pidf+xml")
        check(r is not None and r.status == 200,
              "rls_handle_notify() answered the back-end NOTIFY %s (481: pua's get_record_id "
              "did not find the dialog)" % (r and r.status))
        lines = [n for n in notifies(k) if n["ci"] == alice.msg.call_id]
        check(lines, "no NOTIFY line for alice's back-end dialog")
        beyond.append(("rls back-end NOTIFY", lines[-1]["r"]))
        def alice_open():
            return [n for n in wendy.requests("NOTIFY")
                    if "<basic>open</basic>" in n.msg.text and "sip:alice@127.0.0.1" in n.msg.text]
        check(wendy.wait_for(alice_open, 8), "no NOTIFY with alice's open state reached the "
              "watcher within 8 s (%d NOTIFYs)" % len(wendy.requests("NOTIFY")))
        t.note("rls: %d NOTIFY(s) to the watcher" % len(wendy.requests("NOTIFY")))
        # wendy un-SUBSCRIBEs
        n_back = len(sub_reqs(uas, "presence"))
        m = sip.request("SUBSCRIBE", sip.uri_of(ok.get("contact")), "sip:wendy@127.0.0.1",
                        "sip:friends@127.0.0.1", call_id=ok.call_id, cseq=ok.cseq[0] + 1,
                        from_tag=ok.from_tag, to_tag=ok.to_tag, via=wendy.addr,
                        contact=wendy.contact,
                        headers=[("Event", "presence"), ("Supported", "eventlist"),
                                 ("Accept", "application/pidf+xml, application/rlmi+xml, "
                                            "multipart/related"),
                                 ("Expires", "0")])
        r2 = wendy.send(m, dest).wait(5)
        check(r2 is not None and r2.status == 200, "wendy's un-SUBSCRIBE was answered %s"
              % (r2 and r2.status))
        uas.wait_for(lambda: len(sub_reqs(uas, "presence")) >= n_back + 2, 3 if crc == 0 else 1.5)
        unsubs = sub_reqs(uas, "presence")[n_back:]
        t.note("rls: %d back-end un-SUBSCRIBE(s) after wendy's: %s" % (
            len(unsubs), ", ".join("%s ex=%s" % (uri_user(x.msg.get("to")), x.msg.get("expires"))
                                   for x in unsubs)))

        def unsubscribed(x):
            d = dialog_of(x)
            u = [y for y in unsubs if y.msg.call_id == d[0]]
            check(len(u) == 1 and (u[0].msg.from_tag, u[0].msg.to_tag) == d[1:]
                  and u[0].msg.get("expires") == "0"
                  and u[0].msg.cseq[0] == x.msg.cseq[0] + 1,
                  "no back-end un-SUBSCRIBE (Expires: 0) in %s's dialog\n    dialog %s: %s" % (
                      uri_user(x.msg.get("to")), d,
                      ["%s ci=%s cs=%s ex=%s" % (y.msg.uri, y.msg.call_id, y.msg.cseq[0],
                                                 y.msg.get("expires")) for y in unsubs]))
        if crc == 0:
            for x in rs:
                unsubscribed(x)
        else:
            # alice's NOTIFY had Contact sip:alice@127.0.0.1, rls' remote
            # target: her dialog matches (beyond C: C's pua_update_contact()
            # never stores it); carol's remote contact is her 200's Contact.
            t.beyond_c(lambda: unsubscribed(alice))

    step("reginfo", reginfo)
    step("winfo", winfo)
    step("bla", bla)
    step("rls", rls)
    check(not failures, "%d consumer step(s) failed:\n%s" % (len(failures), "\n".join(failures)))

    def update_contact_on_consumer_notifies():
        check(all(r == "1" for _, r in beyond),
              "pua_update_contact() on NOTIFYs of pua-made dialogs returned %s" % beyond)
    t.beyond_c(update_contact_on_consumer_notifies)
    for ep in (uas, phone, wendy):
        check(not ep.errors, "%s errors: %r" % (ep.name, ep.errors))

    allow = [] if t.variant.is_ours else [C_UPDATE_CONTACT_ERR]
    k.check_workers_alive(settle=0.5, converge=2.0)
    k.check_log_clean(allow)
    check(k.stop() == 0, "unclean exit")
    k.check_log_clean(allow)
