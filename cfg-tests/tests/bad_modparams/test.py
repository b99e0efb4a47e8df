"""bad_modparams: pua's start-up checks of its modparams, as the C module
(Kamailio 5.6.3 pua.c mod_init and the core's modparam type check) does them.

"refuse" cases: Kamailio must exit non-zero within the start bound, before
its ctl socket answers.
  * stage "mod_init" (pua's mod_init returns an error): both variants must
    show the core's line "init_mod(): Error while initializing module pua
    (<the pua.so under test>)", which also proves which pua.so was loaded.
  * stage "parse" (the core refuses the modparam because pua exports no
    parameter of that name and type): the core's set_mod_param_regex()
    line naming the parameter must be there.
  * [ours] only: an ERROR/CRITICAL/BUG/ALERT log line must contain one of the
    case's `names` (normally the parameter's name; the C module's messages
    are too vague for that, e.g. "wrong clean_period", so [c] is not held
    to it).
"start" cases (values the C module accepts or silently corrects, e.g.
min_expires=-5 -> 0, default_expires=100 -> 3600, hash_size<=1 -> 2^9,
db_mode=1 or 3 -> 0): Kamailio must start, map the pua.so under test,
keep all workers alive for ~1 s, log no ERROR/CRITICAL/BUG/ALERT line except
the case's explicit allow-list, and exit 0 on SIGTERM.
  * db_mode=1/3: the C module logs "ERROR: ... Invalid dbmode-using default
    mode" (required and allowed for [c]); [ours] may log one ERROR or
    WARNING line containing "db_mode" or "dbmode" (allowed, not required).

Every case gets modparam("pua", "db_url", <SQLite db>) unless it sets or
unsets db_url itself.
"""
import re

from kamtest import check

INT_PARAMS = ["hash_size", "min_expires", "default_expires", "update_period",
              "dlginfo_increase_version", "reginfo_increase_version",
              "check_remote_contact", "db_mode", "fetch_rows", "db_table_lock_write"]
STR_PARAMS = ["db_url", "db_table", "outbound_proxy"]

DBMODE_OURS_ALLOW = [r"(ERROR|WARNING):.*(db_mode|dbmode)"]
DBMODE_C_LINE = r"ERROR: pua \[pua\.c:\d+\]: mod_init\(\): Invalid dbmode-using default mode"


def refuse(params, names, stage="mod_init", extra_sql="", db_url=True):
    return dict(expect="refuse", params=params, names=names, stage=stage,
                extra_sql=extra_sql, db_url=db_url)


def start(params, allow_c=(), allow_ours=(), require_c=()):
    return dict(expect="start", params=params, allow_c=list(allow_c),
                allow_ours=list(allow_ours), require_c=list(require_c),
                extra_sql="", db_url=True)


CASES = [
    # --- refused by pua.c mod_init -------------------------------------
    ("update_period=-1", refuse([("update_period", "-1")], ["update_period"])),
    ("update_period=1", refuse([("update_period", "1")], ["update_period"])),
    ("update_period=3", refuse([("update_period", "3")], ["update_period"])),
    ("update_period=5", refuse([("update_period", "5")], ["update_period"])),
    ("check_remote_contact=2", refuse([("check_remote_contact", "2")],
                                      ["check_remote_contact"])),
    ("check_remote_contact=-1", refuse([("check_remote_contact", "-1")],
                                       ["check_remote_contact"])),
    # db_url: C default "mysql://kamailio:kamailiorw@localhost/kamailio", and
    # db_mysql is not loaded.
    ("db_url=unset", refuse([], ["db_url"], db_url=False)),
    ("db_url=mysql", refuse([("db_url", '"mysql://kamailio:kamailiorw@localhost/kamailio"')],
                            ["db_url"], db_url=False)),
    ("db_url=empty", refuse([("db_url", '""')], ["db_url"], db_url=False)),
    ("db_url=not-a-url", refuse([("db_url", '"not-a-url"')], ["db_url"], db_url=False)),
    ("db_url=sqlite-no-such-dir", refuse([("db_url", '"sqlite:////nonexistent-dir/pua/x.db"')],
                                         ["db_url"], db_url=False)),
    # db_flatstore lacks query/update/delete (DB_CAP_ALL check).
    ("db_url=flatstore", refuse([("db_url", '"flatstore:@WORKDIR@"')], ["db_url"],
                                db_url=False)),
    # db_check_table_version(): no version row / wrong version.
    ("db_table=missing", refuse([("db_table", '"pua_missing"')], ["db_table"])),
    ("db_table=version-6", refuse([], ["db_table", "version"],
                                  extra_sql="UPDATE version SET table_version=6 "
                                            "WHERE table_name='pua';")),
    # Version row fine, table gone: C fails in db_restore() (db_mode 0).
    ("db_table=dropped", refuse([], ["db_table", "table"], extra_sql="DROP TABLE pua;")),
    # --- refused by the core: unknown parameter / wrong type --------------
    ("unknown_param", refuse([("no_such_param", "1")], ["no_such_param"], stage="parse")),
] + [
    ("type:%s=string" % p, refuse([(p, '"1"')], [p], stage="parse")) for p in INT_PARAMS
] + [
    ("type:%s=int" % p, refuse([(p, "1")], [p], stage="parse", db_url=(p != "db_url")))
    for p in STR_PARAMS
] + [
    # --- accepted or corrected by pua.c mod_init ----------------------------
    ("min_expires=-5", start([("min_expires", "-5")])),
    ("default_expires=100", start([("default_expires", "100")])),
    ("default_expires=0", start([("default_expires", "0")])),
    ("update_period=0", start([("update_period", "0")])),
    ("update_period=6", start([("update_period", "6")])),
    ("check_remote_contact=0", start([("check_remote_contact", "0")])),
    ("hash_size=0", start([("hash_size", "0")])),
    ("hash_size=1", start([("hash_size", "1")])),
    ("hash_size=12", start([("hash_size", "12")])),
    ("db_mode=1", start([("db_mode", "1")], allow_c=[DBMODE_C_LINE],
                        allow_ours=DBMODE_OURS_ALLOW, require_c=[DBMODE_C_LINE])),
    ("db_mode=3", start([("db_mode", "3")], allow_c=[DBMODE_C_LINE],
                        allow_ours=DBMODE_OURS_ALLOW, require_c=[DBMODE_C_LINE])),
    ("db_mode=2", start([("db_mode", "2")])),
    ("db_mode=2,update_period=0", start([("db_mode", "2"), ("update_period", "0")])),
    # Every parameter the C module exports, with its type and a valid value.
    ("all_params", start([
        ("hash_size", "10"),
        ("db_table", '"pua"'),
        ("min_expires", "0"),
        ("default_expires", "3600"),
        ("update_period", "100"),
        ("outbound_proxy", '"sip:127.0.0.1:5999"'),
        ("dlginfo_increase_version", "1"),
        ("reginfo_increase_version", "1"),
        ("check_remote_contact", "1"),
        ("db_mode", "0"),
        ("fetch_rows", "100"),
        ("db_table_lock_write", "1"),
    ])),
]


def render(case):
    lines = []
    if case["db_url"]:
        lines.append('modparam("pua", "db_url", @DB_URL@)')
    for name, value in case["params"]:
        lines.append('modparam("pua", "%s", %s)' % (name, value))
    return "\n".join(lines)


def run(t, case):
    ours = t.variant.is_ours
    k = t.kamailio(subst={"@PUA_PARAMS@": render(case)}, extra_sql=case["extra_sql"])
    if case["expect"] == "refuse":
        rc = k.expect_start_failure()
        t.note("exit status %d" % rc)
        bad = k.bad_lines()
        if case["stage"] == "mod_init":
            want = r"init_mod\(\): Error while initializing module pua \(%s\)" % re.escape(
                k.mods_dir + "/pua.so")
            check(k.grep_log(want), "no line matching %r: pua's mod_init did not fail?\n%s"
                  % (want, k.log_tail()))
        else:
            p = case["names"][0]
            want = r"set_mod_param_regex\(\): parameter <%s> of type <\d:\w+> not found " \
                   r"in module <pua>" % re.escape(p)
            check(k.grep_log(want), "no line matching %r\n%s" % (want, k.log_tail()))
        if ours:
            # Ignore the work dir's path: it contains the case's name.
            named = [l for l in bad if any(n in l.replace(k.work, "<work>")
                                           for n in case["names"])]
            check(named, "no ERROR/CRITICAL line names %s\n%s"
                  % (" or ".join(repr(n) for n in case["names"]), k.log_tail()))
        return
    k.start()
    k.check_pua_loaded()
    k.check_workers_alive(settle=1.0)
    allow = case["allow_ours"] if ours else case["allow_c"]
    k.check_log_clean(allow=allow)
    if not ours:
        for r in case["require_c"]:
            check(k.grep_log(r), "the C module did not log %r" % r)
    rc = k.stop()
    check(rc == 0, "kamailio exited with status %s after SIGTERM" % rc)
    k.check_log_clean(allow=allow)
