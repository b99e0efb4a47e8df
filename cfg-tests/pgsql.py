"""pgsql: a private PostgreSQL server for one cfg-test (stdlib only).

    pg = t.pgsql()                  # kamtest.TestContext: started, stopped by cleanup()
    pg.db_url                       # postgres://kamailio:kamailiorw@127.0.0.1:<port>/kamailio
    pg.sql("SELECT * FROM pua WHERE pres_uri = ?", (uri,))   # [dict], typed (JSON)
    pg.execute("UPDATE pua SET expires = ?", (n,))

Needs Debian's postgresql (bookworm: 15) and kamailio-postgres-modules (the
schemas under /usr/share/kamailio/postgres/); see
kamailio-headers/install-deps.sh.  The system cluster (postgresql.service)
is neither used nor needed.

The server:
  * binaries from /usr/lib/postgresql/<highest version>/bin;
  * its data dir is <work>/<name>/data (initdb, trust auth, -U postgres),
    owned by the `postgres` system user: the server, initdb and the
    superuser psql run as that user (Popen user=/group=, no root server);
    if the postgres user cannot reach the work dir (e.g. a clone under a
    0700 home), or the socket path would be too long, the whole directory
    goes to /tmp/kamtest-pg-XXXX instead and <work>/<name> is a symlink;
  * listens on 127.0.0.1:<a free port> only, its unix socket in <dir>/run;
  * the postgres process itself is spawned (no pg_ctl), in its own session,
    and its PID recorded; it logs to <work>/<name>.log;
  * a role kamailio (password kamailiorw) owning a database kamailio, where
    Debian's standard-create.sql (`version`) and presence-create.sql
    (presentity, active_watchers, watchers, xcap, `pua` with version 7) are
    loaded as that role.
stop(): SIGINT (fast shutdown) to the postmaster's PID, wait up to 10 s,
then SIGKILL to its process group; every wait is bounded.  The server is
registered in kamtest's atexit set, and TestContext.cleanup() stops it
after the test's Kamailio instances.
"""

import glob
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

import kamtest
from kamtest import TestFailure, free_udp_port

SCHEMA_DIR = "/usr/share/kamailio/postgres"
SCHEMAS = ("standard", "presence")
PG_USER = "postgres"
ROLE = "kamailio"
PASSWORD = "kamailiorw"
DATABASE = "kamailio"

START_TIMEOUT = 30.0   # s for initdb, and for the server to accept connections
STOP_TIMEOUT = 10.0    # s after SIGINT (fast shutdown) before SIGKILL of the group
SQL_TIMEOUT = 10.0     # s for one psql run


def pg_bindir():
    """/usr/lib/postgresql/<highest version>/bin (the one with initdb)."""
    found = []
    for p in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        v = p.split("/")[4]
        try:
            found.append((tuple(int(x) for x in v.split(".")), os.path.dirname(p)))
        except ValueError:
            continue
    if not found:
        raise TestFailure("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/initdb): "
                          "run kamailio-headers/install-deps.sh")
    return max(found)[1]


def _reachable_by(path, uid, gids):
    """Every ancestor of path is searchable (x) by uid/gids (mode bits)."""
    p = os.path.abspath(path)
    while True:
        st = os.stat(p)
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


class PgSQL:
    """One private PostgreSQL server (see the module docstring)."""

    def __init__(self, work_dir, name="pgsql", schemas=SCHEMAS, settings=None):
        self.work = os.path.abspath(work_dir)
        self.name = name
        self.schemas = schemas
        # Extra server settings (-c name=value), e.g. {"log_statement": "all"}.
        self.settings = dict(settings or {})
        self.bindir = pg_bindir()
        self.port = free_udp_port()   # its TCP twin is free too
        self.host = "127.0.0.1"
        self.log_path = os.path.join(self.work, name + ".log")
        self.link = os.path.join(self.work, name)
        self.dir = None
        self.tmpdir = None
        self.proc = None
        self.pid = None
        self.returncode = None
        self._log_f = None
        pw = pwd.getpwnam(PG_USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid

    @property
    def db_url(self):
        return "postgres://%s:%s@%s:%d/%s" % (ROLE, PASSWORD, self.host, self.port, DATABASE)

    # --- processes run as the postgres user --------------------------------
    def _as_pg(self, argv, timeout, input=None, what=None):
        env = {"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C",
               "HOME": self.dir, "PGCONNECT_TIMEOUT": "5"}
        try:
            r = subprocess.run(argv, input=input, capture_output=True, text=True,
                               timeout=timeout, env=env, cwd=self.dir,
                               user=self.uid, group=self.gid, extra_groups=[],
                               start_new_session=True)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s: `%s` timed out after %.0f s"
                              % (what or "pgsql", " ".join(argv), timeout))
        if r.returncode != 0:
            raise TestFailure("%s: `%s` exited %d:\n%s%s"
                              % (what or "pgsql", " ".join(argv), r.returncode,
                                 r.stdout[-2000:], r.stderr[-2000:]))
        return r

    def _bin(self, prog):
        return os.path.join(self.bindir, prog)

    # --- start / stop --------------------------------------------------------
    def _make_dir(self):
        if os.path.islink(self.link):
            os.unlink(self.link)
        elif os.path.isdir(self.link):
            shutil.rmtree(self.link)
        sock_len = len(os.path.join(self.link, "run", ".s.PGSQL.%d" % self.port))
        if _reachable_by(self.work, self.uid, {self.gid}) and sock_len < 100:
            self.dir = self.link
            os.makedirs(self.dir)
        else:
            self.tmpdir = tempfile.mkdtemp(prefix="kamtest-pg-")
            os.chmod(self.tmpdir, 0o755)
            self.dir = self.tmpdir
            os.symlink(self.dir, self.link)
        for sub in ("data", "run"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700)
        for p in (self.dir, os.path.join(self.dir, "data"), os.path.join(self.dir, "run")):
            os.chown(p, self.uid, self.gid)
        self.data = os.path.join(self.dir, "data")
        self.sock_dir = os.path.join(self.dir, "run")

    def start(self, timeout=START_TIMEOUT):
        self._make_dir()
        self._as_pg([self._bin("initdb"), "-D", self.data, "-U", PG_USER, "-A", "trust",
                     "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                    timeout, what="initdb")
        # Trust for 127.0.0.1 and the private unix socket only.
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host  all all 127.0.0.1/32 trust\n")
        argv = [self._bin("postgres"), "-D", self.data, "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=%s" % self.sock_dir,
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=50",
                "-c", "shared_buffers=16MB", "-c", "logging_collector=off",
                "-c", "log_line_prefix=%m [%p] "]
        for k, v in sorted(self.settings.items()):
            argv += ["-c", "%s=%s" % (k, v)]
        with open(os.path.join(self.work, self.name + ".cmd"), "w") as f:
            f.write(" ".join(argv) + "\n")
        self._log_f = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_f,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     env={"PATH": "/usr/bin:/bin", "LANG": "C",
                                          "LC_ALL": "C", "HOME": self.dir},
                                     user=self.uid, group=self.gid, extra_groups=[],
                                     start_new_session=True)
        self.pid = self.proc.pid
        kamtest._running.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise TestFailure("postgres exited with status %s during start-up\n%s"
                                  % (self.returncode, self.log_tail()))
            r = subprocess.run([self._bin("pg_isready"), "-q", "-h", self.host,
                                "-p", str(self.port), "-t", "2"],
                               capture_output=True, timeout=5)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TestFailure("postgres did not accept connections on %s:%d within "
                                  "%.0f s\n%s" % (self.host, self.port, timeout,
                                                  self.log_tail()))
            time.sleep(0.2)
        self._setup(timeout)
        return self

    def _setup(self, timeout):
        psql = [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", self.sock_dir, "-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        self._as_pg(psql, timeout, what="create role/db", input=(
            "CREATE ROLE %s LOGIN PASSWORD '%s';\n"
            "CREATE DATABASE %s OWNER %s;\n" % (ROLE, PASSWORD, DATABASE, ROLE)))
        script = []
        for s in self.schemas:
            with open(os.path.join(SCHEMA_DIR, "%s-create.sql" % s)) as f:
                script.append(f.read())
        self._psql(["-q"], "\n".join(script), timeout=timeout, what="schemas")

    def alive(self):
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return False
        return True

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGINT (fast shutdown: ends the sessions, checkpoint, exit) to the
        postmaster's PID, wait up to timeout s, then SIGKILL its process
        group.  Returns the postmaster's exit status."""
        if self.proc is None:
            return None
        try:
            kamtest.stop_process_group(self.proc, signal.SIGINT, timeout, 2.0)
            self.returncode = self.proc.returncode
        finally:
            kamtest._running.discard(self)
            if self._log_f:
                self._log_f.close()
                self._log_f = None
            if self.tmpdir and self.returncode is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None
        return self.returncode

    # --- SQL -------------------------------------------------------------------
    def _psql(self, opts, script, timeout=SQL_TIMEOUT, what="psql", variables=()):
        """psql as the kamailio role over TCP (run as root: a client only),
        reading script from stdin (so :'var' interpolation works)."""
        argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", self.host,
                "-p", str(self.port), "-U", ROLE, "-d", DATABASE] + list(opts)
        for n, v in variables:
            argv += ["-v", "%s=%s" % (n, v)]
        argv = [self._bin("psql")] + argv[1:]
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="5",
                   LANG="C", LC_ALL="C")
        try:
            r = subprocess.run(argv, input=script, capture_output=True, text=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s: psql timed out after %.0f s" % (what, timeout))
        if r.returncode != 0:
            raise TestFailure("%s: psql exited %d: %s" % (what, r.returncode,
                                                          r.stderr.strip()[-2000:]))
        return r.stdout

    @staticmethod
    def _bind(query, args):
        """'?' placeholders -> psql variables :'pN' (quoted literals; an int
        arg is an untyped literal PostgreSQL coerces); None -> NULL."""
        parts = query.split("?")
        if len(parts) - 1 != len(args):
            raise ValueError("%d placeholders, %d args: %s" % (len(parts) - 1, len(args), query))
        out = [parts[0]]
        variables = []
        for i, (a, rest) in enumerate(zip(args, parts[1:])):
            if a is None:
                out.append("NULL")
            else:
                variables.append(("p%d" % i, str(a)))
                out.append(":'p%d'" % i)
            out.append(rest)
        return "".join(out), variables

    def sql(self, query, args=(), timeout=SQL_TIMEOUT):
        """Rows of a SELECT as dicts (values typed through row_to_json:
        integers are ints, NULL is None).  '?' placeholders take args."""
        q, variables = self._bind(query.strip().rstrip(";"), args)
        out = self._psql(["-A", "-t", "-q"],
                         "SELECT row_to_json(q) FROM (%s) q;\n" % q,
                         timeout=timeout, what="sql", variables=variables)
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def execute(self, stmt, args=(), timeout=SQL_TIMEOUT):
        """Run one statement (no rows returned); '?' placeholders take args."""
        q, variables = self._bind(stmt.strip().rstrip(";"), args)
        self._psql(["-q"], q + ";\n", timeout=timeout, what="execute", variables=variables)

    # --- logs ------------------------------------------------------------------
    def log_lines(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, n=25):
        lines = self.log_lines()
        return "  log %s (last %d of %d lines):\n%s" % (
            self.log_path, min(n, len(lines)), len(lines),
            "\n".join("    | " + l for l in lines[-n:]))

    def grep_log(self, regex):
        r = re.compile(regex)
        return [l for l in self.log_lines() if r.search(l)]

    def __repr__(self):
        return "<PgSQL %s pid=%s port=%s>" % (self.name, self.pid, self.port)
