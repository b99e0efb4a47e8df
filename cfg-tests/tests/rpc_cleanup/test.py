"""rpc_cleanup: the pua.cleanup RPC (C: hashT_clean(0, 0), no reply body).

Cases: the default cache mode (db_mode 0) and the DB-only mode (db_mode 2,
where the C module cleans the pua table instead of the hash table).
Asserts: `kamcmd core.version` answers "kamailio 5.6.3"; an unknown method
gives an "error:" reply (kamcmd exits 0 even then); system.listMethods
lists pua.cleanup; `kamcmd pua.cleanup` exits 0 without an "error:" reply,
three times in a row (its output is only shown with -v: the C module
replies nothing); afterwards Kamailio is still alive with all workers; no
ERROR/CRITICAL line in the log; clean exit (status 0) on SIGTERM.
"""
from kamtest import check

CASES = [
    ("db_mode=0", ""),
    ("db_mode=2", 'modparam("pua", "db_mode", 2)'),
]


def run(t, params):
    k = t.kamailio(subst={"@PUA_PARAMS@": params})
    k.start()
    k.check_pua_loaded()
    v = k.ctl("core.version").stdout.strip()
    check(v.startswith("kamailio 5.6.3"), "core.version says %r" % v)
    # kamcmd exits 0 on RPC faults too; make sure kamtest sees them.
    r = k.ctl("pua.no_such_method", check=False)
    check(r.returncode == 0 and r.rpc_error, "an unknown RPC method gave %r" % r.stdout)
    methods = set(k.ctl("system.listMethods").stdout.split())
    check("pua.cleanup" in methods, "pua.cleanup is not a registered RPC method")
    for i in range(3):
        r = k.ctl("pua.cleanup")   # fails on a non-zero exit or an "error:" reply
    # The C module adds nothing to the reply, so kamcmd prints nothing; a
    # reply body is not treated as a failure (shown with -v).
    t.note("pua.cleanup printed %r" % r.stdout)
    k.check_workers_alive(settle=1.0)
    check(k.ctl("core.version").returncode == 0, "no answer after pua.cleanup")
    k.check_log_clean()
    rc = k.stop()
    check(rc == 0, "kamailio exited with status %s after SIGTERM" % rc)
    k.check_log_clean()
