"""kamtest: a small library to run real Kamailio 5.6.3 instances in tests.

Python 3 standard library only.  Used by cfg-tests/run.py and demo/run.sh.

A test runs Kamailio from a kamailio.cfg *template*.  Before the start the
template's placeholders are replaced (see Kamailio.PLACEHOLDERS):

  @MPATH@     "<work>/mods/:/usr/lib/x86_64-linux-gnu/kamailio/modules/"
              (quoted).  <work>/mods/ holds a copy of the pua.so under test,
              so `loadmodule "pua.so"` picks it before Debian's; every other
              module comes from Debian's directory.  Kamailio 5.6.3 splits
              mpath on ':' (core/sr_module.c, find_module_in_dir()).
  @DB_URL@    "sqlite:////<work>/<name>.db" (quoted; four slashes)
  @CTL_SOCK@  "unix:<sock>" (quoted), for modparam("ctl", "binrpc", ...)
  @WORKDIR@   <work> (bare path, use it inside quotes)
  @SIP_PORT@  a free UDP port on 127.0.0.1 (bare number)
  @HTTP_PORT@ another free port (its TCP side is free too), for a
              listen=tcp:127.0.0.1:@HTTP_PORT@ serving xhttp/jsonrpcs (bare)
  @NAME@      the instance name (bare)
plus any extra placeholders a test passes in `subst` (values used as is,
replaced first, so they may contain the built-in placeholders).
A placeholder left over after substitution is an error.

An instance made with pua_so=None (TestContext.server(), e.g. the presence
server of the PUBLISH tests, cfg-tests/servers/) loads Debian's modules
only: @MPATH@ is then just Debian's directory.

Every process started here is started in its own session (process group)
and is stopped by PID (SIGTERM, then SIGKILL of its process group); an
atexit hook stops whatever is still running.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time

KAMAILIO = "/usr/sbin/kamailio"
KAMCMD = "/usr/sbin/kamcmd"
DEBIAN_MODS = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
C_PUA = os.path.join(DEBIAN_MODS, "pua.so")
SCHEMA_DIR = "/usr/share/kamailio/db_sqlite"
SERVERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers")
DEFAULT_SCHEMAS = ("standard", "presence")

START_TIMEOUT = 20.0   # s until the ctl socket must answer / kamailio must exit
STOP_TIMEOUT = 10.0    # s after SIGTERM before SIGKILL of the process group
CTL_TIMEOUT = 10.0     # s for one kamcmd call

# Kamailio's stderr log line: "%2d(%d) %s: ..." = " 0(123) ERROR: pua [pua.c:10]: f(): msg"
LOG_LINE_RE = re.compile(r"^\s*(\d+)\((\d+)\) ([A-Z]+): (.*)$")
# Levels that fail a test.  LM_CRIT prints "CRITICAL", LM_BUG "BUG", LM_ALERT
# "ALERT".  Messages printed before the logger is set up (config parse errors)
# carry no "N(pid)" prefix, so match the level word anywhere in the line.
BAD_LEVEL_RE = re.compile(r"(?:^|\s)(ERROR|CRITICAL|CRIT|BUG|ALERT):")
# ALERT lines the core prints while shutting down after our SIGTERM.
SHUTDOWN_ALERTS = [
    r"handle_sigs\(\): child process \d+ exited normally, status=0",
    r"handle_sigs\(\): child process \d+ exited by a signal 15",
]
# CRITICAL lines of the core's TCP main process when its TCP workers exit
# before it during shutdown (a race in the core, whatever the modules):
# allowed only after the first "signal 15 received" of the log.
SHUTDOWN_STARTED_RE = re.compile(r"sig_usr\(\): signal 15 received")
AFTER_SIGTERM = [r"receive_fd\(\): EOF on \d+"]


class TestFailure(Exception):
    """An assertion of a test failed; the message is the reason."""


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


_running = set()


def _stop_all():
    for k in list(_running):
        try:
            k.stop()
        except Exception:
            pass


atexit.register(_stop_all)


def _on_signal(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def install_signal_handlers():
    """SIGTERM/SIGHUP -> KeyboardInterrupt, so finally blocks stop Kamailio."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def free_udp_port():
    """A UDP port on 127.0.0.1 that is free right now (and its TCP twin)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def create_db(path, schemas=DEFAULT_SCHEMAS, extra_sql=""):
    """Create a fresh SQLite db from Debian's Kamailio schemas."""
    if os.path.exists(path):
        os.unlink(path)
    con = sqlite3.connect(path)
    try:
        for s in schemas:
            with open(os.path.join(SCHEMA_DIR, "%s-create.sql" % s)) as f:
                con.executescript(f.read())
        if extra_sql:
            con.executescript(extra_sql)
        con.commit()
    finally:
        con.close()


def proc_children(pid):
    """PIDs whose parent is pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # fields after the "(comm)" part: state ppid pgrp ...
        rest = st[st.rfind(")") + 2:].split()
        if int(rest[1]) == pid:
            out.append(int(d))
    return sorted(out)


def pgroup_members(pgid):
    """Live (non-zombie) PIDs in process group pgid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            out.append(int(d))
    return sorted(out)


def stop_process_group(proc, sig, timeout, grace):
    """Stops a process started with start_new_session (its PID is its
    process group): `sig` to the PID, wait up to timeout s, give the rest of
    the group `grace` s to exit with it, then SIGKILL the group; every wait
    bounded.  Returns the exit status (None if it could not be reaped)."""
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + grace
    while pgroup_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pgroup_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return proc.returncode


class Kamailio:
    """One Kamailio instance built from a cfg template, run in the foreground
    (-DD: the started process is the main process; children fork from it),
    logging to <work>/<name>.log."""

    def __init__(self, cfg_template, work_dir, pua_so, name="kamailio",
                 subst=None, schemas=DEFAULT_SCHEMAS, extra_sql="",
                 shm_mb=64, pkg_mb=8):
        self.template = cfg_template
        self.work = os.path.abspath(work_dir)
        self.pua_so = pua_so
        self.name = name
        self.subst = dict(subst or {})
        self.schemas = schemas
        self.extra_sql = extra_sql
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.port = free_udp_port()
        self.http_port = free_udp_port()
        self.mods_dir = os.path.join(self.work, "mods-" + name)
        self.db_path = os.path.join(self.work, name + ".db")
        self.cfg_path = os.path.join(self.work, name + ".cfg")
        self.log_path = os.path.join(self.work, name + ".log")
        sock = os.path.join(self.work, name + ".ctl")
        if len(sock) > 100:   # sun_path is 108 bytes
            import tempfile
            sock = os.path.join(tempfile.mkdtemp(prefix="kamtest-"), "ctl")
        self.ctl_sock = sock
        self.proc = None
        self.pid = None
        self.returncode = None
        self._log_f = None
        self._reader = None          # see _pin_reader()
        self._reader_lock = threading.Lock()

    # --- preparation -----------------------------------------------------
    def _render(self):
        with open(self.template) as f:
            text = f.read()
        # A placeholder in a comment would be expanded there too, and a
        # multi-line value would leak out of the comment: refuse that.
        for n, line in enumerate(text.splitlines(), 1):
            st = line.lstrip()
            if (st.startswith("#") and not st.startswith("#!")) or st.startswith("//"):
                if re.search(r"@[A-Z][A-Z0-9_]*@", line):
                    raise RuntimeError("%s:%d: placeholder in a comment" % (self.template, n))
        if self.pua_so is None:
            mpath = '"%s/"' % DEBIAN_MODS
        else:
            mpath = '"%s/:%s/"' % (self.mods_dir, DEBIAN_MODS)
        values = {
            "@MPATH@": mpath,
            "@DB_URL@": '"sqlite:///%s"' % self.db_path,
            "@CTL_SOCK@": '"unix:%s"' % self.ctl_sock,
            "@WORKDIR@": self.work,
            "@SIP_PORT@": str(self.port),
            "@HTTP_PORT@": str(self.http_port),
            "@NAME@": self.name,
        }
        # The test's own placeholders first, so their values may contain the
        # built-in ones (e.g. a modparam line using @WORKDIR@).
        for k in sorted(self.subst, key=len, reverse=True):
            text = text.replace(k, self.subst[k])
        for k in sorted(values, key=len, reverse=True):
            text = text.replace(k, values[k])
        left = re.findall(r"@[A-Z][A-Z0-9_]*@", text)
        if left:
            raise RuntimeError("%s: unknown placeholders %s" % (self.template, sorted(set(left))))
        return text

    def prepare(self):
        os.makedirs(self.work, exist_ok=True)
        if os.path.isdir(self.mods_dir):
            shutil.rmtree(self.mods_dir)
        if self.pua_so is not None:
            os.makedirs(self.mods_dir)
            if not os.path.isfile(self.pua_so):
                raise TestFailure("pua.so not found: %s (run `make build`)" % self.pua_so)
            # A copy, not a symlink: a rebuild that rewrites pua.so in place
            # must not change the code under a running Kamailio.
            shutil.copy2(self.pua_so, os.path.join(self.mods_dir, "pua.so"))
        if self.schemas is not None:
            self._unpin_reader()
            create_db(self.db_path, self.schemas, self.extra_sql)
            self._pin_reader()
        with open(self.cfg_path, "w") as f:
            f.write(self._render())
        if os.path.exists(self.ctl_sock):
            os.unlink(self.ctl_sock)

    def _pin_reader(self):
        """For a WAL db: one connection, opened before Kamailio starts and
        kept until stop(), that the test's reads (sql()) go through.  In WAL
        mode an open connection holds a shared lock on the db file, so no
        other connection is ever the last one: the last one to close takes
        an exclusive lock to checkpoint and delete the WAL, and the first
        one to open runs recovery under an exclusive lock.  With short
        reader connections either moment could meet Kamailio's first write
        and fail it with "database is locked" at once (db_sqlite sets no
        busy timeout; seen in CI as a presence server answering a PUBLISH
        with 500)."""
        con = sqlite3.connect(self.db_path, timeout=5.0, check_same_thread=False,
                              isolation_level=None)
        try:
            mode = con.execute("PRAGMA journal_mode").fetchone()[0]
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except Exception:
            con.close()
            raise
        if str(mode).lower() == "wal":
            self._reader = con
        else:
            con.close()

    def _unpin_reader(self):
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # --- process control -------------------------------------------------
    def spawn(self):
        self.prepare()
        self._log_f = open(self.log_path, "wb")
        argv = [KAMAILIO, "-DD", "-E", "-f", self.cfg_path, "-w", self.work,
                "-m", str(self.shm_mb), "-M", str(self.pkg_mb)]
        with open(os.path.join(self.work, self.name + ".cmd"), "w") as f:
            f.write(" ".join(argv) + "\n")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log_f, stderr=subprocess.STDOUT,
                                     cwd=self.work, start_new_session=True)
        self.pid = self.proc.pid
        _running.add(self)

    def alive(self):
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return False
        return True

    def start(self, timeout=START_TIMEOUT):
        """Start and wait until the ctl socket answers core.psx.  Raises
        TestFailure (with the log tail) if Kamailio exits or never answers."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise TestFailure("kamailio exited with status %s during start-up\n%s"
                                  % (self.returncode, self.log_tail()))
            if os.path.exists(self.ctl_sock):
                r = self.ctl("core.psx", check=False, timeout=3)
                if r.returncode == 0:
                    return self
            time.sleep(0.2)
        raise TestFailure("kamailio did not answer on %s within %.0f s\n%s"
                          % (self.ctl_sock, timeout, self.log_tail()))

    def expect_start_failure(self, timeout=START_TIMEOUT):
        """Start and expect Kamailio to exit non-zero within timeout.
        Returns the exit status; raises TestFailure if it keeps running or
        exits with 0."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.stop()
                raise TestFailure("kamailio still running after %.0f s, but it should "
                                  "have refused to start\n%s" % (timeout, self.log_tail()))
            if os.path.exists(self.ctl_sock) and \
                    self.ctl("core.psx", check=False, timeout=3).returncode == 0:
                self.stop()
                raise TestFailure("kamailio started (its ctl socket answers), but it "
                                  "should have refused to start\n%s" % self.log_tail())
            time.sleep(0.1)
        rc = self.returncode
        self.stop()   # reap anything left in its process group
        check(rc != 0, "kamailio exited with status 0, expected a failure\n"
              + self.log_tail())
        return rc

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM the main PID, wait, then SIGKILL its process group.
        Returns the main process's exit status."""
        if self.proc is None:
            return None
        try:
            # Children normally exit with the main process: 3 s for them.
            stop_process_group(self.proc, signal.SIGTERM, timeout, 3.0)
            self.returncode = self.proc.returncode
        finally:
            _running.discard(self)
            self._unpin_reader()
            if self._log_f:
                self._log_f.close()
                self._log_f = None
        return self.returncode

    # --- control socket --------------------------------------------------
    def ctl(self, *args, check=True, timeout=CTL_TIMEOUT):
        """Run `kamcmd -s unix:<sock> args...`; returns CompletedProcess with
        an extra attribute rpc_error.  check=True fails on a non-zero exit or
        an RPC error reply."""
        argv = [KAMCMD, "-s", "unix:" + self.ctl_sock] + [str(a) for a in args]
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise TestFailure("`%s` timed out after %.0f s" % (" ".join(argv), timeout))
            r = subprocess.CompletedProcess(argv, -1, "", "timeout")
        # kamcmd exits 0 even when the RPC fails: it then prints
        # "error: <code> - <reason>" (e.g. "error: 500 - command x not found").
        r.rpc_error = r.stdout.startswith("error:")
        if check and (r.returncode != 0 or r.rpc_error):
            raise TestFailure("`%s` exited %d: %s%s" % (" ".join(argv), r.returncode,
                                                        r.stdout, r.stderr))
        return r

    def psx(self):
        """[(idx, pid, description)] from core.psx."""
        out = self.ctl("core.psx").stdout
        procs = []
        cur = {}
        for line in out.splitlines():
            m = re.match(r"\s*(IDX|PID|DSC):\s*(.*)$", line)
            if m:
                cur[m.group(1)] = m.group(2)
            elif line.strip() == "}" and cur:
                procs.append((int(cur.get("IDX", -1)), int(cur.get("PID", -1)),
                              cur.get("DSC", "")))
                cur = {}
        return procs

    def jsonrpc(self, method, *params, timeout=CTL_TIMEOUT):
        """Call an RPC method through jsonrpcs over HTTP (POST /RPC to
        127.0.0.1:<http_port>; the cfg needs listen=tcp:...:@HTTP_PORT@,
        xhttp and jsonrpcs with event_route[xhttp:request] calling
        jsonrpc_dispatch()).  Unlike binrpc (kamcmd) this transport carries
        delayed replies (pua_rpc's pua.publish).  Returns the decoded JSON
        reply ({"result": ...} or {"error": {"code", "message"}}); raises
        TestFailure if there is no HTTP answer within timeout s."""
        self._rpc_id = getattr(self, "_rpc_id", 0) + 1
        req = json.dumps({"jsonrpc": "2.0", "method": method,
                          "params": [str(p) if isinstance(p, int) else p for p in params],
                          "id": self._rpc_id})
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("POST", "/RPC", body=req.encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise TestFailure("RPC %s: no answer from %s:%d within %.0f s (%s: %s)"
                              % (method, "127.0.0.1", self.http_port, timeout,
                                 type(e).__name__, e))
        finally:
            conn.close()
        try:
            out = json.loads(data.decode("utf-8", "replace")) if data.strip() else {}
        except ValueError:
            raise TestFailure("RPC %s: HTTP %d with a non-JSON body %r"
                              % (method, resp.status, data[:200]))
        out["_http_status"] = resp.status
        return out

    def sql(self, query, args=(), timeout=5.0):
        """Rows of a query on this instance's SQLite db (read while Kamailio
        runs: short connection, busy timeout).  A reader holds a shared lock
        while it reads, so Kamailio's writes to a db in the default rollback
        journal mode may fail meanwhile: servers use WAL (see server())."""
        with self._reader_lock:
            if self._reader is not None:
                cur = self._reader.execute(query, args)
                cols = [d[0] for d in cur.description or ()]
                return [dict(zip(cols, r)) for r in cur.fetchall()]
        con = sqlite3.connect(self.db_path, timeout=timeout)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(query, args).fetchall()]
        finally:
            con.close()

    # --- assertions ------------------------------------------------------
    def check_workers_alive(self, settle=2.0, converge=5.0):
        """Every process core.psx lists (but the main one) is a live child of
        the main process and vice versa; then, `settle` seconds later, the
        same set is still there (Kamailio does not respawn workers: a crash
        shows as a missing PID, or as the main process exiting).  The first
        comparison is retried for up to `converge` s, since late processes
        may still be forking when the ctl socket first answers."""
        def died():
            # The main process shuts everything down when a child dies.
            deadline = time.monotonic() + 3
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            return TestFailure("kamailio main process %s (status %s)\n%s" % (
                "exited" if not self.alive() else "stopped answering",
                self.returncode, self.log_tail()))

        def snapshot():
            if not self.alive():
                raise died()
            try:
                procs = self.psx()
            except TestFailure:
                raise died()
            check(procs and procs[0][1] == self.pid,
                  "core.psx does not list main pid %d first: %r" % (self.pid, procs[:1]))
            return procs, sorted(p for _, p, _ in procs[1:]), proc_children(self.pid)

        deadline = time.monotonic() + converge
        while True:
            procs, want, have = snapshot()
            if want == have or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        check(want == have,
              "core.psx lists %d children %s, main pid %d has %d live children %s"
              % (len(want), want, self.pid, len(have), have))
        time.sleep(settle)
        procs2, want2, have2 = snapshot()
        check(want2 == want and have2 == have,
              "workers changed within %.1f s: core.psx %s -> %s, children %s -> %s\n%s"
              % (settle, want, want2, have, have2, self.log_tail()))
        return procs2

    def check_pua_loaded(self):
        """The pua.so mapped into the main process is the copy under test."""
        want = os.path.join(self.mods_dir, "pua.so")
        with open("/proc/%d/maps" % self.pid) as f:
            maps = f.read()
        paths = set(l.split(None, 5)[5] for l in maps.splitlines()
                    if len(l.split(None, 5)) == 6 and l.rstrip().endswith("/pua.so"))
        check(paths == {want}, "expected %s mapped, found %s" % (want, sorted(paths) or "none"))

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_lines(self):
        return self.log_text().splitlines()

    def log_tail(self, n=25):
        lines = self.log_lines()
        return "  log %s (last %d of %d lines):\n%s" % (
            self.log_path, min(n, len(lines)), len(lines),
            "\n".join("    | " + l for l in lines[-n:]))

    def bad_lines(self, allow=(), text=None):
        """Log lines at ERROR/CRITICAL/BUG/ALERT level not matched by any
        regex in allow (searched anywhere in the line)."""
        pats = [re.compile(a) for a in list(allow) + SHUTDOWN_ALERTS]
        late = [re.compile(a) for a in AFTER_SIGTERM]
        lines = (text if text is not None else self.log_text()).splitlines()
        bad, stopping = [], False
        for l in lines:
            stopping = stopping or bool(SHUTDOWN_STARTED_RE.search(l))
            if (BAD_LEVEL_RE.search(l) and not any(p.search(l) for p in pats)
                    and not (stopping and any(p.search(l) for p in late))):
                bad.append(l)
        return bad

    def check_log_clean(self, allow=()):
        bad = self.bad_lines(allow)
        check(not bad, "log %s has %d ERROR/CRITICAL line(s):\n%s"
              % (self.log_path, len(bad), "\n".join("    | " + l for l in bad[:20])))

    def grep_log(self, regex):
        r = re.compile(regex)
        return [l for l in self.log_lines() if r.search(l)]

    def __repr__(self):
        return "<Kamailio %s pid=%s port=%s>" % (self.name, self.pid, self.port)


class Variant:
    """Which pua.so a test run loads: 'ours' (the repo's) or 'c' (Debian's)."""

    def __init__(self, name, pua_so):
        self.name = name
        self.pua_so = pua_so

    @property
    def is_ours(self):
        return self.name == "ours"


class TestContext:
    """What a test function gets: its directory, a fresh work dir, the
    variant, and a factory for Kamailio instances (stopped afterwards)."""

    def __init__(self, name, test_dir, work_dir, variant, case=None):
        self.name = name
        self.test_dir = test_dir
        self.work_dir = work_dir
        self.variant = variant
        self.case = case
        self.instances = []
        self.notes = []
        self.c_bugs = []       # reasons recorded by beyond_c() in the [c] variant
        self.endpoints = []    # sip.Uas/Uac of the test, stopped by cleanup()

    def kamailio(self, cfg="kamailio.cfg", name="kamailio", **kw):
        path = cfg if os.path.isabs(cfg) else os.path.join(self.test_dir, cfg)
        k = Kamailio(path, self.work_dir, self.variant.pua_so, name=name, **kw)
        self.instances.append(k)
        return k

    def server(self, cfg="presence.cfg", name="presence", **kw):
        """A second Kamailio with Debian's modules only (no pua.so under
        test), e.g. the presence server; cfg is looked up in the test's dir,
        then in cfg-tests/servers/."""
        if not os.path.isabs(cfg) and not os.path.exists(os.path.join(self.test_dir, cfg)):
            cfg = os.path.join(SERVERS_DIR, cfg)
        path = cfg if os.path.isabs(cfg) else os.path.join(self.test_dir, cfg)
        # WAL: the test's sqlite3 reads (Kamailio.sql()) must not make the
        # server's writes fail with "database is locked" (db_sqlite sets no
        # busy timeout); the journal mode is stored in the db file.
        kw.setdefault("extra_sql", "PRAGMA journal_mode=WAL;")
        k = Kamailio(path, self.work_dir, None, name=name, **kw)
        self.instances.append(k)
        return k

    def uas(self, port=0, script=None, **kw):
        """A sip.Uas on 127.0.0.1 (stopped after the test)."""
        import sip
        ep = sip.Uas(port, script, **kw)
        self.endpoints.append(ep)
        return ep

    def uac(self, port=0, script=None, **kw):
        """A sip.Uac on 127.0.0.1 (stopped after the test)."""
        import sip
        ep = sip.Uac(port, script, **kw)
        self.endpoints.append(ep)
        return ep

    def pgsql(self, name="pgsql", **kw):
        """A private PostgreSQL server for this test (cfg-tests/pgsql.py:
        initdb in <work>/<name>, 127.0.0.1 and a free port, run as the
        postgres user, a kamailio role and database with Debian's pua
        schema), started; stopped by cleanup() after every Kamailio
        instance and endpoint of the test (and by the atexit hook)."""
        import pgsql
        pg = pgsql.PgSQL(self.work_dir, name=name, **kw)
        if not hasattr(self, "fixtures"):
            self.fixtures = []
        self.fixtures.append(pg)
        pg.start()
        return pg

    def note(self, msg):
        """Extra information printed under the PASS/FAIL line with -v."""
        self.notes.append(msg)

    def beyond_c(self, fn, *args, **kw):
        """Run fn(*args, **kw), an assertion where our pua must do better
        than the C module.  [ours]: as any check (a TestFailure fails the
        test).  [c]: fn is expected to fail; its TestFailure is recorded as
        "C module shows the bug: <reason>" and the test goes on; if fn
        passes, the [c] variant FAILS ("C module unexpectedly passes").
        Returns fn's value ([ours], or [c] if it passed) or None."""
        if self.variant.is_ours:
            return fn(*args, **kw)
        try:
            v = fn(*args, **kw)
        except TestFailure as e:
            first = str(e).split("\n", 1)[0]
            self.c_bugs.append(first)
            self.note("C module shows the bug: " + str(e))
            return None
        raise TestFailure("C module unexpectedly passes a beyond-C check (%s)"
                          % getattr(fn, "__name__", fn))

    def cleanup(self):
        try:
            for k in self.instances:
                k.stop()
            for ep in self.endpoints:
                ep.stop()
        finally:
            # Servers the instances used (pgsql()), stopped last, newest first.
            for f in reversed(getattr(self, "fixtures", [])):
                f.stop()
