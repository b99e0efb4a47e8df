"""consumers_bind: all pua consumers of Kamailio 5.6.3 bind pua's API.

Loads pua with pua_usrloc, pua_dialoginfo, pua_reginfo, pua_bla, pua_rpc,
pua_xmpp and rls (+ what they need: usrloc, registrar, dialog, presence,
presence_xml, xmpp, tm, sl, rr, ...) on SQLite.
Asserts: Kamailio starts and answers on the ctl socket; the pua.so mapped
into the main process is the one under test; no ERROR/CRITICAL/BUG/ALERT
line in the log (none allowed); nothing like "can't bind pua" logged; every
process core.psx lists is alive, now and ~2 s later; the RPC commands of pua
and of the consumers are registered (system.listMethods); after SIGTERM
Kamailio exits with status 0 and logs no error while shutting down.
"""
from kamtest import check, free_udp_port

CONSUMERS = ["pua_usrloc", "pua_dialoginfo", "pua_reginfo", "pua_bla",
             "pua_rpc", "pua_xmpp", "rls"]


def run(t):
    k = t.kamailio(subst={"@XMPP_PORT@": str(free_udp_port())},
                   schemas=("standard", "presence", "rls"))
    k.start()
    k.check_pua_loaded()
    procs = k.check_workers_alive(settle=2.0)
    t.note("%d processes: %s" % (len(procs), ", ".join(d for _, _, d in procs)))
    k.check_log_clean()
    bind_errors = k.grep_log(r"(?i)(can'?t|cannot|could not|failed to) (bind|import|find)")
    check(not bind_errors, "bind failures logged:\n" + "\n".join(bind_errors))
    methods = set(k.ctl("system.listMethods").stdout.split())
    for m in ("pua.cleanup", "pua.publish", "pua.subscribe"):
        check(m in methods, "RPC method %s not registered" % m)
    mods = k.ctl("core.modules").stdout.split()
    for m in ["pua"] + CONSUMERS:
        check(m in mods, "core.modules does not list %s: %s" % (m, mods))
    rc = k.stop()
    check(rc == 0, "kamailio exited with status %s after SIGTERM" % rc)
    k.check_log_clean()
