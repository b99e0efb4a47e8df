#!/usr/bin/env python3
"""pua-rs benchmark: our pua.so against Debian's C pua.so, same load, one run.

Usage:
  python3 bench/run.py                        # default: 5 rounds x rates 1000,3000,1000w x
                                              #   (ours, c, floor, nullpua), 12 s of load each
  python3 bench/run.py --together --rounds 20 --rates 1000w
                                              # a round's configurations at the same time
  python3 bench/run.py --rounds 5 --rates 1000,3000 --duration 12 --users 10000
  python3 bench/run.py --quick                # 1 round, 5 s, rate 1000 (smoke test)
  python3 bench/run.py --callgrind            # instructions per PUBLISH inside pua
  python3 bench/run.py --pua PATH             # another build of ours (default <repo>/pua.so)
  python3 bench/run.py --update-readme        # also write the table into bench/README.md

See bench/README.md for the method.  Python 3 standard library only; runs as
root on 127.0.0.1; needs cargo (for bench/loadgen), Debian's kamailio 5.6.3
packages, and valgrind for --callgrind.  Every process it starts is started
in its own session and stopped by PID (process group); every wait is bounded.
"""

import argparse
import contextlib
import datetime
import glob
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "cfg-tests"))

import kamtest  # noqa: E402

LOADGEN_DIR = os.path.join(HERE, "loadgen")
LOADGEN = os.path.join(LOADGEN_DIR, "target", "release", "loadgen")
CFG_DIR = os.path.join(HERE, "cfg")
WORK = os.path.join(HERE, "work")
README = os.path.join(HERE, "README.md")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# tm's wt_timer is 5 s (default): a transaction is freed that long after its
# final reply.  shm is read once no PUBLISH has been answered for this long.
SHM_SETTLE_S = 6.5
SHM_SETTLE_MAX_S = 40.0

LOG_ERR_RE = re.compile(r"(?:^|\s)(ERROR|CRITICAL|CRIT|BUG|ALERT):")
LOG_WARN_RE = re.compile(r"(?:^|\s)WARNING:")
SHUTDOWN_RE = re.compile(r"handle_sigs\(\): child process \d+ exited")


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# processes


class LineProc:
    """A child process (own session) whose stdout is read line by line with
    timeouts; stopped by PID."""

    def __init__(self, argv, stdin=False, stderr_path=None):
        self.argv = argv
        self._err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=self._err,
                                  start_new_session=True)
        self.buf = b""

    def readline(self, timeout):
        """The next stdout line (str, no newline); None on EOF; raises
        RuntimeError after timeout s."""
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("%s: no output line within %.0f s" % (self.argv[:2], timeout))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode()
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, prefix, timeout):
        """Read lines until one starts with prefix; returns the rest."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("%s exited before printing %s (status %s)"
                                   % (self.argv[:2], prefix, self.p.poll()))
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def stop(self, timeout=5.0):
        if self.p.poll() is None:
            try:
                if self.p.stdin:
                    self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=5)
        if self._err is not subprocess.DEVNULL:
            self._err.close()
        return self.p.returncode


class Uas:
    """bench/loadgen uas: the PUBLISH answerer."""

    def __init__(self, work):
        self.lp = LineProc([LOADGEN, "uas", "--max-seconds", "1500",
                            "--dump", os.path.join(work, "publish-samples.txt")], stdin=True,
                           stderr_path=os.path.join(work, "uas.stderr"))
        self.port = int(self.lp.expect("PORT ", 5))

    def stats(self):
        self.lp.send("stats\n")
        return json.loads(self.lp.expect("STATS ", 5))

    def stop(self):
        final = None
        if self.lp.p.poll() is None:
            try:
                self.lp.send("quit\n")
                final = json.loads(self.lp.expect("FINAL ", 5))
            except (RuntimeError, OSError, ValueError):
                pass
        self.lp.stop()
        return final


def cpu_times(pgid):
    """{pid: (utime, stime, runtime, minflt)} (seconds; minor page faults) of every live process in the
    process group (Kamailio is started in its own session: the main process
    and all its children). utime and stime come from /proc/<pid>/stat in
    10 ms ticks, each truncated; runtime is the scheduler's own sum
    (se.sum_exec_runtime in /proc/<pid>/sched, nanoseconds; utime + stime
    when the kernel does not show it). Kamailio's processes are single
    threaded, so the main thread's figure is the process's."""
    out = {}
    for pid in kamtest.pgroup_members(pgid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        u, s = int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK   # fields 14, 15
        out[pid] = (u, s, sched_runtime(pid, u + s), int(rest[7]))   # field 10: minflt
    return out


def sched_runtime(pid, fallback):
    try:
        with open("/proc/%d/sched" % pid) as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.split(":", 1)[1]) / 1000.0
    except (OSError, ValueError):
        pass
    return fallback


def cpu_split(t0, t1):
    """(user s, system s, total s) spent between two cpu_times() snapshots;
    total is the precise runtime sum, user and system are tick-sampled."""
    d = [sum(v[i] - t0.get(p, (0, 0, 0, 0))[i] for p, v in t1.items()) for i in range(3)]
    return d[0], d[1], d[2]


def minflt_split(t0, t1):
    """Minor page faults of every process between two cpu_times() snapshots."""
    return sum(v[3] - t0.get(p, (0, 0, 0, 0))[3] for p, v in t1.items())


def shm_real_used(k):
    out = k.ctl("core.shmmem").stdout
    m = re.search(r"real_used:\s*(\d+)", out)
    if not m:
        raise RuntimeError("no real_used in core.shmmem: %r" % out)
    return int(m.group(1))


def mod_shm(k, module):
    """Bytes of shm the allocator attributes to a module (kex's
    mod.mem_stats <module> shm: payload sizes, no allocator overhead)."""
    r = k.ctl("mod.mem_stats", module, "shm", check=False)
    m = re.search(r"Total:\s*(\d+)", r.stdout)
    return int(m.group(1)) if m else None


def log_counts(text):
    errs, warns = [], 0
    for line in text.splitlines():
        if LOG_ERR_RE.search(line) and not SHUTDOWN_RE.search(line):
            errs.append(line)
        elif LOG_WARN_RE.search(line):
            warns += 1
    return errs, warns


def summarize_errors(lines, n=6):
    """The most frequent error messages, pids and numbers stripped."""
    counts = {}
    for l in lines:
        m = kamtest.LOG_LINE_RE.match(l)
        msg = m.group(4) if m else l
        msg = re.sub(r"\d+", "N", msg)[:160]
        counts[msg] = counts.get(msg, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:n]


# --------------------------------------------------------------------------
# one measured run


CONFIGS = ("ours", "c", "floor", "nullpua", "base")
# `base`: another build of ours (--base PATH), for an A/B of two builds in
# one run (with --together, at the same time).
DEFAULT_CONFIGS = "ours,c,floor,nullpua"
BASE_SO = os.path.join(WORK, "pua-base.so")
NULLPUA_SRC = os.path.join(HERE, "nullpua", "nullpua.c")
NULLPUA_SO = os.path.join(WORK, "nullpua.so")


def build_nullpua():
    """Compiles bench/nullpua/nullpua.c against the 5.6.3 headers the cargo
    build fetched, with the core's -D set (what pua-sys's build script
    exported: cargo:include / cargo:cflags in its output file)."""
    outs = sorted(glob.glob(os.path.join(REPO, "target", "release", "build", "pua-sys-*", "output")),
                  key=os.path.getmtime, reverse=True)
    for o in outs:
        inc = flags = None
        with open(o) as f:
            for line in f:
                if line.startswith("cargo:include="):
                    inc = line.split("=", 1)[1].strip()
                elif line.startswith("cargo:cflags="):
                    flags = [x for x in line.split("=", 1)[1].strip().split("\x1f") if x]
        if inc and flags is not None and os.path.isdir(inc):
            break
    else:
        sys.exit("bench: no pua-sys build output with the Kamailio headers (run make build first)")
    cmd = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I", inc] + flags \
        + ["-o", NULLPUA_SO, NULLPUA_SRC]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit("bench: building nullpua failed:\n" + r.stderr[-4000:])


def make_kamailio(config, work, uas_port, ours_so, children, shm_mb, cls=kamtest.Kamailio):
    cfg = os.path.join(CFG_DIR, "client-floor.cfg" if config == "floor" else "client-pua.cfg")
    # floor loads no pua: the mods dir then holds an unused copy of the C one.
    so = {"ours": ours_so, "nullpua": NULLPUA_SO, "base": BASE_SO}.get(config, kamtest.C_PUA)
    return cls(cfg, work, so, name="client",
               subst={"@UAS_PORT@": str(uas_port), "@CHILDREN@": str(children)},
               shm_mb=shm_mb, pkg_mb=16)


def foreign_load():
    """Kamailio / cargo / rustc / valgrind processes on the machine (none of
    ours run between two measurements), and the 1-minute load average."""
    n = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in ("kamailio", "cargo", "rustc", "cc1", "ld") or comm.startswith("memcheck") \
                or comm.startswith("callgrind"):
            n += 1
    return n, os.getloadavg()[0]


def wait_quiet(max_wait):
    """Wait (bounded) until no other Kamailio/compiler runs on the machine."""
    deadline = time.monotonic() + max_wait
    n, la = foreign_load()
    while n and time.monotonic() < deadline:
        time.sleep(1.0)
        n, la = foreign_load()
    return n, la


def parse_rates(text):
    """`1000,3000,1000w` -> [(1000, False), (3000, False), (1000, True)]:
    a `w` runs that rate after a warm-up pass over all users (see run_one)."""
    out = []
    for x in text.split(","):
        x = x.strip()
        if x:
            out.append((int(x.rstrip("w")), x.endswith("w")))
    return out


def rkey(r):
    """The (rate, warm) a result was run at (results saved before warm
    runs existed have no "warm")."""
    return (r["rate"], bool(r.get("warm")))


def rlabel(key):
    return "%d%s" % (key[0], "w" if key[1] else "")


def phones_argv(k, rate, a):
    return [LOADGEN, "phones", "--target", "127.0.0.1:%d" % k.port,
            "--users", str(a.users), "--rate", str(rate),
            "--duration", str(a.duration), "--drain", str(a.drain)]


def warm_phones(k, rate, a, work):
    """Starts the phones with a warm-up pass over every user (at
    min(rate, --warm-rate)) and waits until it is answered; the measured
    load starts on `phones.send("go\\n")`. Returns (phones, REGISTERs of
    the pass answered 200)."""
    wrate = min(rate, a.warm_rate)
    argv = phones_argv(k, rate, a) + ["--warmup", str(a.users), "--warmup-rate", str(wrate)]
    phones = LineProc(argv, stdin=True, stderr_path=os.path.join(work, "phones.stderr"))
    w = json.loads(phones.expect("WARMED", a.users / wrate + a.drain + 30))
    if w["ok"] < a.users:
        log("  note: warm-up pass: %d of %d REGISTERs answered 200" % (w["ok"], a.users))
    return phones, w["ok"]


def run_one(config, rate, rnd, a, ours_so, warm=False, sync=None):
    """One measured run. `warm`: before the measured window the phones
    register every user once (at min(rate, --warm-rate)) and the window
    starts when those are answered, so the window's REGISTERs are all
    re-REGISTERs of registered users (usrloc UPDATE: pua_usrloc's refresh
    PUBLISH, no body): the steady state of a re-REGISTER loop. Without it
    the window starts on an empty location table and most of its PUBLISHes
    are initial ones (a first-registration burst).

    `sync` (--together: every configuration of the round runs at once, one
    thread each): a Together whose barriers line up the measured windows."""
    work = os.path.join(WORK, "r%d-%s-%s" % (rnd, config, rlabel((rate, warm))))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    res = {"config": config, "rate": rate, "warm": warm, "round": rnd, "work": work,
           "users": a.users, "together": bool(sync)}
    if sync:
        res["foreign_procs"], res["loadavg"] = sync.foreign
    else:
        res["foreign_procs"], res["loadavg"] = wait_quiet(a.quiet_wait)
        if res["foreign_procs"]:
            log("  note: %d other kamailio/compiler processes running during this run"
                % res["foreign_procs"])
    phones = None
    with sync.start_lock if sync else contextlib.nullcontext():
        # One at a time: the next one's free ports are picked once this one
        # has bound its own.
        uas = Uas(work)
        k = None
        try:
            k = make_kamailio(config, work, uas.port, ours_so, a.children, a.shm)
            k.start()
        except BaseException:
            if k is not None:
                k.stop()
            uas.stop()
            raise
    try:
        if config != "floor":
            k.check_pua_loaded()
        time.sleep(1.0)
        workers = sorted(kamtest.pgroup_members(k.pid))
        res["shm_idle"] = shm_real_used(k)
        res["pua_shm_idle"] = mod_shm(k, "pua") if config != "floor" else None
        if warm:
            phones, res["warm_ok"] = warm_phones(k, rate, a, work)
            time.sleep(0.5)      # the last warm-up PUBLISHes' replies
            if sync:
                sync.wait()      # every configuration warmed up: windows start together
            u0 = uas.stats()
            ct0 = cpu_times(k.pid)
            phones.send("go\n")
        else:
            if sync:
                sync.wait()
            u0 = uas.stats()
            ct0 = cpu_times(k.pid)
            phones = LineProc(phones_argv(k, rate, a),
                              stderr_path=os.path.join(work, "phones.stderr"))
        phones.expect("START", 10)
        t_start = time.monotonic()
        done = phones.expect("SENDING_DONE", a.duration + 15).split()
        send_s = float(done[0])
        u1 = uas.stats()
        t_done = time.monotonic()
        result = json.loads(phones.expect("RESULT", a.drain + 15))
        phones.stop()
        phones = None
        u2 = uas.stats()
        ct1 = cpu_times(k.pid)
        res["cpu_user_s"], res["cpu_sys_s"], cpu_total = cpu_split(ct0, ct1)
        res["minflt"] = minflt_split(ct0, ct1)
        if sync:
            sync.wait()          # no Kamailio stops while another still measures
        t_end = time.monotonic()

        # shm with the publications held: once tm has freed the transactions.
        deadline = time.monotonic() + SHM_SETTLE_MAX_S
        prev = None
        while True:
            s = uas.stats()
            idle_for = (s["now_unix_ms"] - s["last_publish_unix_ms"]) / 1000.0
            if idle_for >= SHM_SETTLE_S:
                cur = shm_real_used(k)
                if prev is not None and abs(cur - prev) <= max(4096, prev * 0.001):
                    break
                prev = cur
            if time.monotonic() > deadline:
                res["shm_note"] = "shm not settled after %.0f s" % SHM_SETTLE_MAX_S
                break
            time.sleep(0.5)
        res["shm_loaded"] = shm_real_used(k)
        res["pua_shm_loaded"] = mod_shm(k, "pua") if config != "floor" else None
        res["settle_s"] = round(time.monotonic() - t_end, 1)
        u3 = uas.stats()
        alive = k.alive() and sorted(kamtest.pgroup_members(k.pid)) == workers
        res["alive"] = bool(alive)
        text = k.log_text()
    except BaseException:
        if sync:
            sync.abort()         # the other threads stop waiting for this one
        raise
    finally:
        if phones:
            phones.stop()
        rc = k.stop()
        final = uas.stop()
    errs, warns = log_counts(text)
    res.update({
        "exit_status": rc,
        "offered": result["sent"],
        "send_s": send_s,
        "reg_ok": result["ok"],
        "reg_non200": result["non200"],
        "reg_timeouts": result["timeouts"],
        "reg_codes": result["codes"],
        "reg_lat_p50_ms": result["lat_us_p50"] / 1000.0,
        "reg_lat_p99_ms": result["lat_us_p99"] / 1000.0,
        "pub_in_window": u1["publish_unique"] - u0["publish_unique"],
        "pub_total": u2["publish_unique"] - u0["publish_unique"],
        "pub_after_settle": u3["publish_unique"] - u0["publish_unique"],
        "pub_initial": u3["initial"] - u0["initial"],
        "pub_refresh": u3["refresh"] - u0["refresh"],
        "pub_retrans": u3["retransmissions"] - u0["retransmissions"],
        "n_pubs": u3["distinct_initial_uris"],
        "cpu_s": cpu_total,
        "log_errors": len(errs),
        "log_warnings": warns,
        "top_errors": summarize_errors(errs),
        "uas_final": final,
    })
    res["pub_rate"] = res["pub_in_window"] / send_s
    res["cpu_per_1k"] = 1000.0 * res["cpu_s"] / res["pub_total"] if res["pub_total"] else None
    res["minflt_per_pub"] = res["minflt"] / res["pub_total"] if res["pub_total"] else None
    for k in ("user", "sys"):
        v = res.get("cpu_%s_s" % k)
        res["cpu_%s_per_1k" % k] = (1000.0 * v / res["pub_total"]
                                    if v is not None and res["pub_total"] else None)
    res["shm_per_pub"] = ((res["shm_loaded"] - res["shm_idle"]) / res["n_pubs"]
                          if res["n_pubs"] else None)
    res["pua_shm_per_pub"] = ((res["pua_shm_loaded"] - res["pua_shm_idle"]) / res["n_pubs"]
                              if res["n_pubs"] and res["pua_shm_loaded"] is not None
                              and res["pua_shm_idle"] is not None else None)
    # Every REGISTER answered 200 must cause exactly one PUBLISH (pua_usrloc:
    # initial or refresh; floor: uac_req_send()) that the UAS answers.
    res["lost_pub"] = max(0, res["reg_ok"] - res["pub_after_settle"])
    bad = res["reg_non200"] + res["reg_timeouts"] + res["lost_pub"]
    res["errors_per_1k"] = 1000.0 * bad / res["offered"] if res["offered"] else None
    res["log_errors_per_1k"] = 1000.0 * res["log_errors"] / res["offered"] if res["offered"] else None
    res["send_publish_failed"] = sum(1 for l in errs if "failed sending publish" in l)
    return res


class Together:
    """--together: the barriers and the start lock shared by the threads of
    one round's configurations (see run_one)."""

    def __init__(self, n, foreign, timeout):
        self.barrier = threading.Barrier(n, timeout=timeout)
        self.start_lock = threading.Lock()
        self.foreign = foreign

    def wait(self):
        self.barrier.wait()

    def abort(self):
        self.barrier.abort()


def run_together(configs, rate, rnd, a, ours_so, warm):
    """Runs every configuration at once, each with its own Kamailio, UAS
    and phones, their measured windows started together: what the machine
    does during the window (other tenants, frequency, cache) it does to all
    of them, so a round's differences are not the scatter between windows
    half a minute apart. Returns the results in `configs` order."""
    foreign = wait_quiet(a.quiet_wait)
    if foreign[0]:
        log("  note: %d other kamailio/compiler processes running during this round" % foreign[0])
    warm_s = a.users / min(rate, a.warm_rate) if warm else 0.0
    sync = Together(len(configs), foreign,
                    timeout=30 + 8 * len(configs) + warm_s + a.duration + a.drain)
    out, errors = {}, []

    def one(config):
        try:
            out[config] = run_one(config, rate, rnd, a, ours_so, warm, sync)
        except BaseException as e:        # reported by the main thread
            errors.append((config, e))
            sync.abort()

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        config, e = errors[0]
        raise RuntimeError("together run, %s: %s" % (config, e)) from e
    return [out[c] for c in configs]


# --------------------------------------------------------------------------
# tables


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def rng(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return (min(vals), max(vals)) if vals else (None, None)


METRICS = [
    # key, header, format
    ("pub_rate", "PUBLISH/s answered", "%.0f"),
    ("cpu_per_1k", "CPU s / 1k PUBLISH", "%.3f"),
    ("cpu_user_per_1k", "  of which user (utime)", "%.3f"),
    ("cpu_sys_per_1k", "  of which system (stime)", "%.3f"),
    ("minflt_per_pub", "minor page faults / PUBLISH (all Kamailio processes)", "%.2f"),
    ("shm_per_pub", "shm B / publication (core.shmmem real_used)", "%.0f"),
    ("pua_shm_per_pub", "pua's shm B / publication (mod.mem_stats pua shm)", "%.0f"),
    ("errors_per_1k", "errors / 1k offered (REGISTER not 200 + REGISTER 200 without PUBLISH 200)", "%.2f"),
    ("log_errors_per_1k", "ERROR log lines / 1k offered", "%.2f"),
    ("reg_lat_p99_ms", "REGISTER p99 ms", "%.1f"),
    ("lost_pub", "REGISTER 200 without PUBLISH 200", "%.0f"),
    ("send_publish_failed", "pua_usrloc 'failed sending publish' lines", "%.0f"),
]


def fmt(f, v):
    return "-" if v is None else f % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return "%.2f" % (a / b)


FLOOR_HEAD = {"floor": "floor (uac, no pua)", "nullpua": "nullpua floor (pua_usrloc + null pua)"}
FLOOR_SHORT = {"floor": "floor", "nullpua": "nullpua"}


def table(results, rates):
    """Per rate: medians [min-max] per configuration, ours/C, and per floor
    configuration present the differences above it and their ratio."""
    out = []
    for key in rates:
        rows = {c: [r for r in results if rkey(r) == key and r["config"] == c] for c in CONFIGS}
        floors = [c for c in ("floor", "nullpua") if rows[c]]
        n = max(len(v) for v in rows.values())
        out.append("")
        out.append("Offered %d REGISTER/s, %d users%s (medians of %d rounds, [min-max])"
                   % (key[0], rows["ours"][0]["users"] if rows["ours"] else 0,
                      ", after a warm-up pass registering every user (steady state: "
                      "re-REGISTERs, refresh PUBLISHes)" if key[1] else
                      " from an empty location table (first registrations: mostly initial PUBLISHes)",
                      n))
        out.append("")
        base = ["base"] if rows["base"] else []
        cols = ["ours", "C"] + [FLOOR_HEAD[c] for c in floors] + ["ours/C"]
        for c in floors:
            x = FLOOR_SHORT[c]
            cols += ["ours-%s" % x, "C-%s" % x, "(ours-%s)/(C-%s)" % (x, x)]
        cols += ["base (the --base build)", "ours/base"] if base else []
        out.append("| metric | " + " | ".join(cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        def cell(c, key, f):
            """The median [min-max] cell of configuration c, and the median."""
            m = med(rows[c], key)
            lo, hi = rng(rows[c], key)
            return ("%s [%s-%s]" % (fmt(f, m), fmt(f, lo), fmt(f, hi)) if m is not None else "-"), m

        for key, head, f in METRICS:
            cells = []
            meds = {}
            for c in ["ours", "c"] + floors:
                text, meds[c] = cell(c, key, f)
                cells.append(text)
            cells.append(ratio(meds["ours"], meds["c"]))
            for c in floors:
                extra = ["-", "-", "-"]
                if key in ("cpu_per_1k", "cpu_user_per_1k", "cpu_sys_per_1k", "shm_per_pub",
                           "minflt_per_pub") \
                        and None not in (meds["ours"], meds["c"], meds[c]):
                    do = meds["ours"] - meds[c]
                    dc = meds["c"] - meds[c]
                    extra = [f % do, f % dc, ratio(do, dc)]
                cells += extra
            for c in base:
                text, m = cell(c, key, f)
                cells += [text, ratio(meds["ours"], m)]
            out.append("| %s | %s |" % (head, " | ".join(cells)))
        for c in floors:
            line = paired_cpu(rows, c)
            if line:
                out.append("")
                out.append(line)
        if base:
            line = paired_ab(rows)
            if line:
                out.append("")
                out.append(line)
    return "\n".join(out)


def bootstrap_ratio(num, den, draws=2000):
    """Median ratio of paired lists and its 90 % bootstrap interval."""
    rnd = random.Random(3903)
    ratios = []
    for _ in range(draws):
        pick = [rnd.randrange(len(num)) for _ in num]
        d = statistics.median(den[i] for i in pick)
        if d > 0:
            ratios.append(statistics.median(num[i] for i in pick) / d)
    ratios.sort()
    if not ratios:
        return "-"
    return "%.2f-%.2f" % (ratios[int(0.05 * len(ratios))], ratios[int(0.95 * len(ratios)) - 1])


def paired_cpu(rows, floor, draws=2000):
    """CPU above `floor` paired by round (each round runs every
    configuration back to back, so a round's differences share its machine
    conditions): the medians of ours - floor and C - floor over the rounds,
    their ratio, and a 90 % bootstrap interval of that ratio (rounds drawn
    with replacement, fixed seed). It says how far the ratio can be trusted
    when single rounds scatter as much as the difference measured."""
    by = {c: {r["round"]: r["cpu_per_1k"] for r in rows[c] if r.get("cpu_per_1k") is not None}
          for c in ("ours", "c", floor)}
    rounds = sorted(set(by["ours"]) & set(by["c"]) & set(by[floor]))
    if len(rounds) < 2:
        return None
    do = [by["ours"][k] - by[floor][k] for k in rounds]
    dc = [by["c"][k] - by[floor][k] for k in rounds]
    mo, mc = statistics.median(do), statistics.median(dc)
    interval = bootstrap_ratio(do, dc, draws)
    return ("CPU s / 1k PUBLISH above %s, paired by round (%d rounds): ours %s, C %s, "
            "ratio %s, 90 %% bootstrap interval of the ratio %s"
            % (FLOOR_SHORT[floor], len(rounds), "%.3f" % mo, "%.3f" % mc, ratio(mo, mc), interval))


def paired_ab(rows, draws=2000):
    """ours - base (two builds of ours) paired by round: the median CPU
    difference per 1k PUBLISH and its 90 % bootstrap interval."""
    by = {c: {r["round"]: r["cpu_per_1k"] for r in rows[c] if r.get("cpu_per_1k") is not None}
          for c in ("ours", "base")}
    rounds = sorted(set(by["ours"]) & set(by["base"]))
    if len(rounds) < 2:
        return None
    d = [by["ours"][k] - by["base"][k] for k in rounds]
    rnd = random.Random(3903)
    meds = sorted(statistics.median(d[rnd.randrange(len(d))] for _ in d) for _ in range(draws))
    return ("CPU s / 1k PUBLISH, ours - base paired by round (%d rounds): %.4f, 90 %% bootstrap "
            "interval %.4f to %.4f (negative: ours is cheaper)"
            % (len(rounds), statistics.median(d), meds[int(0.05 * draws)], meds[int(0.95 * draws) - 1]))


def notes(results, rates):
    """Per rate and config: runs with errors, dead Kamailios, and the most
    frequent ERROR messages summed over the rounds."""
    out = []
    for key in rates:
        for c in CONFIGS:
            rows = [r for r in results if rkey(r) == key and r["config"] == c]
            bad = [r for r in rows if r["log_errors"] or r["reg_timeouts"] or r["reg_non200"]
                   or r["lost_pub"] or not r["alive"] or r["exit_status"] != 0]
            if not bad:
                continue
            counts = {}
            for r in bad:
                for msg, cnt in r["top_errors"]:
                    counts[msg] = counts.get(msg, 0) + cnt
            out.append("- %s/s %s: %d of %d runs with errors; dead or unclean exit: %s; "
                       "ERROR lines %s; most frequent:" % (
                           rlabel(key), c, len(bad), len(rows),
                           ", ".join("round %d (alive=%s, exit=%s)" % (r["round"], r["alive"], r["exit_status"])
                                     for r in bad if not r["alive"] or r["exit_status"] != 0) or "none",
                           "/".join(str(r["log_errors"]) for r in bad)))
            for msg, cnt in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
                out.append("    - %dx `%s`" % (cnt, msg))
    return "\n".join(out)


def detail_lines(results):
    out = ["| round | rate | config | offered | REG 200 | REG t/o | PUBLISH in window | PUBLISH total | "
           "init/refresh | pub/s | CPU s | CPU/1k | shm idle | shm loaded | pubs held | B/pub | "
           "ERR lines | p99 ms |",
           "|" + "---|" * 18]
    for r in results:
        out.append("| %d | %s | %s | %d | %d | %d | %d | %d | %d/%d | %.0f | %.2f | %s | %d | %d | %d | %s | %d | %.1f |" % (
            r["round"], rlabel(rkey(r)), r["config"], r["offered"], r["reg_ok"], r["reg_timeouts"],
            r["pub_in_window"], r["pub_total"], r["pub_initial"], r["pub_refresh"], r["pub_rate"],
            r["cpu_s"], fmt("%.3f", r["cpu_per_1k"]), r["shm_idle"], r["shm_loaded"], r["n_pubs"],
            fmt("%.0f", r["shm_per_pub"]), r["log_errors"], r["reg_lat_p99_ms"]))
    return "\n".join(out)


# --------------------------------------------------------------------------
# callgrind


class ValgrindKamailio(kamtest.Kamailio):
    """kamtest's Kamailio, started under valgrind --tool=callgrind."""

    valgrind_args = []

    def spawn(self):
        self.prepare()
        self._log_f = open(self.log_path, "wb")
        argv = (["valgrind", "--tool=callgrind", "--trace-children=yes",
                 "--callgrind-out-file=%s/callgrind.out.%%p" % self.work]
                + self.valgrind_args
                + [kamtest.KAMAILIO, "-DD", "-E", "-f", self.cfg_path, "-w", self.work,
                   "-m", str(self.shm_mb), "-M", str(self.pkg_mb)])
        with open(os.path.join(self.work, self.name + ".cmd"), "w") as f:
            f.write(" ".join(argv) + "\n")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_f,
                                     stderr=subprocess.STDOUT, cwd=self.work,
                                     start_new_session=True)
        self.pid = self.proc.pid
        kamtest._running.add(self)

    def stop(self, timeout=90.0):
        """SIGTERM, then wait (bounded) until the whole process group is gone:
        every process writes its callgrind file when it exits."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while (self.proc.poll() is None or kamtest.pgroup_members(self.pid)) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        if kamtest.pgroup_members(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.returncode = self.proc.returncode
        kamtest._running.discard(self)
        if self._log_f:
            self._log_f.close()
            self._log_f = None
        return self.returncode


ENTRY = {
    "ours": ("pua::api::send_publish", "pua::publish::publ_cback"),
    "c": ("send_publish", "publ_cback_func"),
    "nullpua": ("null_send_publish", "null_cback"),
}
TM_ENTRY = "request"     # tm's tmb.t_request (tm_load.c: tmb->t_request = request)


def parse_callgrind(path):
    """Per function (object, name): self Ir; per call edge (caller fn ->
    callee fn): calls and inclusive Ir.  Returns (self, edges, total Ir,
    {event: total} for every event the file counts)."""
    names = {"fn": {}, "ob": {}, "fl": {}}
    selfc, edges = {}, {}
    cur_ob = cur_fn = None
    cob = cfn = None
    pending_call = None
    total = 0
    events, sums = [], []
    sub_re = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def resolve(kind, v):
        m = sub_re.match(v)
        if not m:
            return v
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
            return m.group(2)
        return names[kind].get(m.group(1), "?" + m.group(1))

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c0 = line[0]
            if c0.isdigit() or c0 in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_call is not None:
                    key = (cur_fn, pending_call[0])
                    e = edges.setdefault(key, [0, 0])
                    e[0] += pending_call[1]
                    e[1] += cost
                    pending_call = None
                else:
                    selfc[cur_fn] = selfc.get(cur_fn, 0) + cost
                continue
            if line.startswith("events:"):
                events = line.split(":", 1)[1].split()
                continue
            if line.startswith(("summary:", "totals:")):
                v = line.split(":", 1)[1].split()
                total = max(total, int(v[0]) if v else 0)
                if len(v) == len(events) and (not sums or int(v[0]) >= sums[0]):
                    sums = [int(x) for x in v]
                continue
            if "=" not in line:
                continue
            k, v = line.split("=", 1)
            if k == "ob":
                cur_ob = resolve("ob", v)
                cob = None
            elif k == "fn":
                cur_fn = (cur_ob, resolve("fn", v))
                cob = None
            elif k == "cob":
                cob = resolve("ob", v)
            elif k == "cfn" or k == "cfi" or k == "cfl":
                if k == "cfn":
                    cfn = resolve("fn", v)
                else:
                    resolve("fl", v)
            elif k in ("fl", "fi", "fe"):
                resolve("fl", v)
            elif k == "calls":
                n = int(v.split()[0])
                pending_call = ((cob if cob is not None else cur_ob, cfn), n)
                cob = None
    # every event's total (with --cache-sim: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw)
    return selfc, edges, total, dict(zip(events, sums))


def callgrind_control(k, action):
    """callgrind_control <action> on every process of the instance (through
    vgdb); False if any call fails."""
    ok = True
    for pid in kamtest.pgroup_members(k.pid):
        try:
            r = subprocess.run(["callgrind_control", action, str(pid)], capture_output=True,
                               text=True, timeout=60)
            if r.returncode != 0:
                log("  callgrind_control %s %d: exit %d %s" % (action, pid, r.returncode,
                                                             (r.stdout + r.stderr)[-300:]))
                ok = False
        except subprocess.TimeoutExpired:
            log("  callgrind_control %s %d: timed out" % (action, pid))
            ok = False
    return ok


def callgrind_totals(work, dumps_only=False):
    """Parse and add up every process's callgrind file (dumps_only: only the
    dumps requested by callgrind_control, callgrind.out.<pid>.<n>): (files,
    self Ir, call edges, total Ir, {event: total})."""
    pat = re.compile(r"^callgrind\.out\.\d+\.\d+$" if dumps_only else r"^callgrind\.out\.\d+$")
    files = sorted(f for f in os.listdir(work) if pat.match(f))
    agg_self, agg_edges, total, events = {}, {}, 0, {}
    for fn in files:
        s, e, t, ev = parse_callgrind(os.path.join(work, fn))
        total += t
        for k, v in ev.items():
            events[k] = events.get(k, 0) + v
        for k, v in s.items():
            agg_self[k] = agg_self.get(k, 0) + v
        for k, v in e.items():
            a = agg_edges.setdefault(k, [0, 0])
            a[0] += v[0]
            a[1] += v[1]
    return files, agg_self, agg_edges, total, events


def inclusive(agg_self, agg_edges, name):
    """Inclusive Ir and call count of every function called `name` (any object)."""
    selfv = sum(v for (ob, fn), v in agg_self.items() if fn == name)
    out = sum(v[1] for (caller, callee), v in agg_edges.items()
              if caller[1] == name and callee[1] != name)
    calls = sum(v[0] for (caller, callee), v in agg_edges.items()
                if callee[1] == name and caller[1] != name)
    return selfv + out, calls


def callgrind_run(config, mode, a, ours_so):
    """mode 'toggle': collect only inside pua's two entry points and not
    inside tm's request() called from them; 'full': collect everything."""
    work = os.path.join(WORK, "callgrind-%s-%s" % (config, mode))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if mode == "toggle":
        vargs = ["--collect-atstart=no"] + ["--toggle-collect=%s" % s for s in ENTRY[config]] \
            + ["--toggle-collect=%s" % TM_ENTRY]
    else:
        vargs = ["--cache-sim=yes"] if a.cg_cache else []
    ValgrindKamailio.valgrind_args = vargs
    uas = Uas(work)
    k = make_kamailio(config, work, uas.port, ours_so, a.cg_children, a.shm, cls=ValgrindKamailio)
    res = {"config": config, "mode": mode, "work": work, "window": "whole run",
           "warm": bool(a.cg_warm)}
    try:
        k.start(timeout=180)
        time.sleep(2.0)
        argv = [LOADGEN, "phones", "--target", "127.0.0.1:%d" % k.port,
                "--users", str(a.cg_users), "--rate", str(a.cg_rate),
                "--count", str(a.cg_count), "--drain", "30"]
        if a.cg_warm:
            # steady state: every user registered first, not counted
            argv += ["--warmup", str(a.cg_users)]
        phones = None

        def zero():
            # count from here on: zero every process's counters (start-up,
            # and the warm-up pass, out)
            if (mode == "full" or a.cg_warm) and callgrind_control(k, "--zero"):
                res["window"] = "load"
        try:
            if a.cg_warm:
                phones = LineProc(argv, stdin=True,
                                  stderr_path=os.path.join(work, "phones.stderr"))
                w = json.loads(phones.expect("WARMED", a.cg_users / a.cg_rate + 60))
                res["warm_ok"] = w["ok"]
                # tm's wait timer frees the warm-up's transactions 5 s on
                time.sleep(6.0)
                zero()
                u0 = uas.stats()
                phones.send("go\n")
            else:
                # the phones send as soon as they start: zero before
                zero()
                u0 = uas.stats()
                phones = LineProc(argv, stderr_path=os.path.join(work, "phones.stderr"))
            phones.expect("START", 10)
            phones.expect("SENDING_DONE", a.cg_count / a.cg_rate + 30)
            result = json.loads(phones.expect("RESULT", 60))
        finally:
            if phones is not None:
                phones.stop()
        # let the last replies in, nothing else happens afterwards
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = uas.stats()
            if (s["now_unix_ms"] - s["last_publish_unix_ms"]) > 3000:
                break
            time.sleep(0.5)
        u1 = uas.stats()
        time.sleep(2.0)
        if res["window"] == "load":
            # tm's wait timer frees the last transactions 5 s after their reply
            time.sleep(5.0)
            if not callgrind_control(k, "--dump=load"):
                res["window"] = "whole run"
    finally:
        rc = k.stop()
        uas.stop()
    res["exit_status"] = rc
    res["reg_ok"] = result["ok"]
    res["reg_timeouts"] = result["timeouts"]
    res["publishes"] = u1["publish_unique"] - u0["publish_unique"]
    res["initial"] = u1["initial"] - u0["initial"]
    res["refresh"] = u1["refresh"] - u0["refresh"]
    res["retrans"] = u1["retransmissions"] - u0["retransmissions"]
    files, aself, aedges, total, events = callgrind_totals(work,
                                                         dumps_only=(res["window"] == "load"))
    res["files"] = len(files)
    res["total_ir"] = total
    res["events"] = events
    # floor: no pua entry points (uac_req_send() calls tm's request())
    sp, publ = ENTRY.get(config, ("-", "-"))
    res["send_publish_incl"], res["send_publish_calls"] = inclusive(aself, aedges, sp)
    res["cback_incl"], res["cback_calls"] = inclusive(aself, aedges, publ)
    res["tm_request_incl"], res["tm_request_calls"] = inclusive(aself, aedges, TM_ENTRY)
    errs, _ = log_counts(k.log_text())
    res["log_errors"] = len(errs)
    res["top_errors"] = summarize_errors(errs)
    return res


def callgrind_main(a, ours_so):
    if not shutil.which("valgrind"):
        log("valgrind missing: apt-get install -y valgrind")
        subprocess.run(["apt-get", "install", "-y", "valgrind"], check=True, timeout=600)
    runs = []
    for mode in a.cg_modes.split(","):
        # the floors have no pua of interest to toggle on: full run only
        for config in [c for c in (("ours", "c", "floor", "nullpua") if mode == "full"
                                   else ("ours", "c")) if c in a.configs.split(",")]:
            log("callgrind %s %s: %d REGISTERs over %d users at %d/s ..."
                % (config, mode, a.cg_count, a.cg_users, a.cg_rate))
            r = callgrind_run(config, mode, a, ours_so)
            log("  %s" % json.dumps({k: v for k, v in r.items() if k != "top_errors"}))
            runs.append(r)
    by = {(r["config"], r["mode"]): r for r in runs}
    if a.cg_warm:
        head = ("callgrind, steady state: every one of %d users registered first (not "
                "counted), then %d re-REGISTERs (0 initial + %d refresh PUBLISH), %d/s, "
                "Ir per PUBLISH answered" % (a.cg_users, a.cg_count, a.cg_count, a.cg_rate))
    else:
        head = ("callgrind: %d REGISTERs (%d users: %d initial + %d refresh PUBLISH), %d/s, "
                "Ir per PUBLISH answered" % (a.cg_count, a.cg_users, a.cg_users,
                                             a.cg_count - a.cg_users, a.cg_rate))
    lines = ["", head, "",
             "| Ir per PUBLISH | ours | C | ours/C |", "|---|---|---|---|"]

    def per(r, key):
        return r[key] / r["publishes"] if r["publishes"] else None

    rows = [
        ("pua's own: send_publish + reply callback, tm's request() excluded (toggle run)",
         "total_ir", "toggle"),
        ("  send_publish inclusive, tm excluded (toggle run)", "send_publish_incl", "toggle"),
        ("  reply callback inclusive (toggle run)", "cback_incl", "toggle"),
        ("send_publish inclusive, tm included (full run)", "send_publish_incl", "full"),
        ("reply callback inclusive (full run)", "cback_incl", "full"),
        ("tm request() inclusive (full run)", "tm_request_incl", "full"),
        ("whole client Kamailio, all processes, during the load (full run)", "total_ir", "full"),
    ]
    for label, key, mode in rows:
        if ("ours", mode) not in by or ("c", mode) not in by:
            continue
        o, c = per(by[("ours", mode)], key), per(by[("c", mode)], key)
        lines.append("| %s | %s | %s | %s |" % (label, fmt("%.0f", o), fmt("%.0f", c), ratio(o, c)))
    # the CPU metric's "above the floor", counted in instructions
    floors = (("floor", "the floor: %s per PUBLISH sent by uac_req_send(), no pua"),
              ("nullpua", "nullpua: %s per PUBLISH, pua_usrloc's PUBLISH handed to tm as it came"))
    for fc, what in floors:
        if all((c, "full") in by for c in ("ours", "c", fc)):
            fl = per(by[(fc, "full")], "total_ir")
            o, c = per(by[("ours", "full")], "total_ir"), per(by[("c", "full")], "total_ir")
            lines.append("| whole client Kamailio above %s (full run) | %s | %s | %s |"
                         % (what % fmt("%.0f", fl), fmt("%.0f", o - fl), fmt("%.0f", c - fl),
                            ratio(o - fl, c - fl)))
    # --cg-cache: simulated cache misses (valgrind's model of this host's
    # caches, each process on its own), whole client Kamailio
    for label, evs in (("L1 data misses (D1mr + D1mw)", ("D1mr", "D1mw")),
                       ("last-level misses (ILmr + DLmr + DLmw)", ("ILmr", "DLmr", "DLmw"))):
        vals = {}
        for c in ("ours", "c", "floor", "nullpua"):
            r = by.get((c, "full"))
            ev = r.get("events", {}) if r else {}
            if r and r["publishes"] and all(e in ev for e in evs):
                vals[c] = sum(ev[e] for e in evs) / r["publishes"]
        if "ours" in vals and "c" in vals:
            lines.append("| whole client Kamailio, %s per PUBLISH (full run, --cg-cache; "
                         "floor %s, nullpua %s) | %s | %s | %s |"
                         % (label, fmt("%.0f", vals.get("floor")), fmt("%.0f", vals.get("nullpua")),
                            fmt("%.0f", vals["ours"]), fmt("%.0f", vals["c"]),
                            ratio(vals["ours"], vals["c"])))
    # cross-check of the toggle numbers from the full run's call graph
    xo = []
    for config in ("ours", "c"):
        r = by.get((config, "full"))
        if r is None:
            xo.append(None)
            continue
        est = r["send_publish_incl"] + r["cback_incl"] - r["tm_request_incl"]
        xo.append(est / r["publishes"] if r["publishes"] else None)
    lines.append("| cross-check: full run, send_publish + callback - tm request() | %s | %s | %s |"
                 % (fmt("%.0f", xo[0]), fmt("%.0f", xo[1]), ratio(xo[0], xo[1])))
    lines.append("")
    for r in runs:
        lines.append("- %s/%s: %d PUBLISH answered (%d initial, %d refresh, %d retransmissions), "
                     "REGISTER 200: %d, timeouts %d, %d callgrind files, calls: send_publish %d, "
                     "callback %d, tm request %d, ERROR lines %d, exit %s" % (
                         r["config"], r["mode"], r["publishes"], r["initial"], r["refresh"],
                         r["retrans"], r["reg_ok"], r["reg_timeouts"], r["files"],
                         r["send_publish_calls"], r["cback_calls"], r["tm_request_calls"],
                         r["log_errors"], r["exit_status"]))
    text = "\n".join(lines)
    return runs, text


# --------------------------------------------------------------------------
# perf mode: CPU time inside pua's entry points, sampled


# Entry points per configuration, as `perf script --no-demangle` names the
# frames (a Rust frame's mangled name starts with the prefix; inlined
# closures carry their function's path too).  Ours' timers are counted as
# pua's (timer_retry runs every second); C's run every update_period - 5 s
# (hashT_clean) and update_period s (db_update), never within one run.
PERF_ENTRY = {
    "ours": re.compile(r"^_ZN3pua(3api12send_publish|7publish10publ_cback|7exports\d+timer_)"),
    "c": re.compile(r"^(send_publish|publ_cback_func|hashT_clean|db_update)$"),
    "nullpua": re.compile(r"^(null_send_publish|null_cback)$"),
}
# tm's frames below a pua entry point: what tmb.t_request runs (tm_load.c:
# t_request = request -> t_uac_with_ids -> ...), excluded from pua's own.
PERF_TM = {"request", "t_uac", "t_uac_with_ids", "t_uac_prepare", "send_prepared_request"}
PERF_FRAME_RE = re.compile(r"\s*[0-9a-f]+\s+(\S+)(?:\s+\((\S+)\))?")
# Samples outside pua's entry points are classified by the first (from the
# leaf) of these Kamailio functions on their stack: where the rest of the
# whole-Kamailio difference goes.
PERF_PHASES = ["ul_publish", "reply_received", "t_uac_prepare", "save", "sl_reply_helper",
               "sl_send_reply", "parse_msg", "receive_msg", "timer_main", "timer_handler",
               "udp_rcv_loop", "tcp_main_loop", "main"]


def perf_attribute(perf_data, entry):
    """Counts the samples of a `perf record --call-graph dwarf` file: all,
    under a pua entry point with no tm frame between it and the leaf
    (pua's own), and under an entry point inside tm (tm's request)."""
    p = subprocess.Popen(["perf", "script", "-i", perf_data, "-F", "ip,sym,dso", "--no-demangle"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    counts = {"all": 0, "own": 0, "tm": 0}
    phases, leaves = {}, {}       # outside pua's entry points
    frames, dsos = [], []

    def flush():
        if not frames:
            return
        counts["all"] += 1
        for i, name in enumerate(frames):          # leaf first
            if entry.search(name):
                counts["tm" if PERF_TM.intersection(frames[:i]) else "own"] += 1
                return
        phase = next((f for f in frames if f in PERF_PHASES), "other")
        phases[phase] = phases.get(phase, 0) + 1
        leaf = "%s (%s)" % (frames[0], os.path.basename(dsos[0]))
        if frames[0].startswith("qm_"):
            # Kamailio's allocator: which pool (shm calls go through
            # qm_shm_*), for whom (the first caller outside mem/)
            pool = "shm" if any(f.startswith("qm_shm_") for f in frames[:4]) else "pkg"
            caller = next((f for f in frames[1:] if not f.startswith(("qm_", "shm_", "pkg_"))),
                          "?")
            leaf = "%s[%s] <- %s" % (frames[0], pool, caller)
        leaves[leaf] = leaves.get(leaf, 0) + 1

    for line in p.stdout:
        if not line.strip():
            flush()
            frames, dsos = [], []
            continue
        m = PERF_FRAME_RE.match(line)
        if m:
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)))
            dsos.append(m.group(2) or "?")
    flush()
    p.wait(timeout=600)
    counts["phases"] = phases
    counts["leaves"] = leaves
    return counts


def perf_run(config, rnd, a, ours_so):
    """One run under `perf record`: 1,000-ish REGISTER/s for a.duration s, all
    of the client Kamailio's processes sampled (cpu-clock, a.perf_freq Hz,
    DWARF call graphs).  Returns sampled microseconds per PUBLISH answered."""
    work = os.path.join(WORK, "perf-r%d-%s" % (rnd, config))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    res = {"config": config, "round": rnd, "rate": a.perf_rate, "users": a.users,
           "duration": a.duration, "freq": a.perf_freq, "warm": a.perf_warm}
    res["foreign_procs"], _ = wait_quiet(a.quiet_wait)
    uas = Uas(work)
    k = make_kamailio(config, work, uas.port, ours_so, a.children, a.shm)
    phones = rec = None
    data = os.path.join(work, "perf.data")
    try:
        k.start()
        k.check_pua_loaded()
        time.sleep(1.0)
        pids = sorted(kamtest.pgroup_members(k.pid))
        if a.perf_warm:
            # as run_one's warm runs: sampling starts after every user is registered
            phones, res["warm_ok"] = warm_phones(k, a.perf_rate, a, work)
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(a.perf_freq),
                                "--call-graph", "dwarf,16384", "-o", data,
                                "-p", ",".join(map(str, pids))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        time.sleep(1.0)
        u0 = uas.stats()
        if phones:
            phones.send("go\n")
        else:
            phones = LineProc(phones_argv(k, a.perf_rate, a),
                              stderr_path=os.path.join(work, "phones.stderr"))
        phones.expect("START", 10)
        phones.expect("SENDING_DONE", a.duration + 15)
        result = json.loads(phones.expect("RESULT", a.drain + 15))
        phones.stop()
        phones = None
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        rec = None
        u1 = uas.stats()
    finally:
        if phones:
            phones.stop()
        if rec and rec.poll() is None:
            os.killpg(rec.pid, signal.SIGKILL)
            rec.wait(timeout=10)
        k.stop()
        uas.stop()
    n = u1["publish_unique"] - u0["publish_unique"]
    counts = perf_attribute(data, PERF_ENTRY[config])
    if not a.perf_keep:
        os.remove(data)       # ~200 MB each
    us = 1e6 / a.perf_freq
    res.update({"publishes": n, "reg_ok": result["ok"], "samples": counts["all"],
                "own_us": counts["own"] * us / n if n else None,
                "tm_us": counts["tm"] * us / n if n else None,
                "all_us": counts["all"] * us / n if n else None,
                # outside pua's entry points, us per PUBLISH by phase and by leaf
                "phases_us": {k: v * us / n for k, v in counts["phases"].items()} if n else {},
                "leaves_us": {k: v * us / n for k, v in counts["leaves"].items()
                              if v >= 5} if n else {}})
    return res


def perf_main(a, ours_so):
    if not shutil.which("perf"):
        log("perf missing: apt-get install -y linux-perf")
        subprocess.run(["apt-get", "install", "-y", "linux-perf"], check=True, timeout=600)
    configs = [c for c in ("ours", "c", "nullpua") if c in a.configs.split(",")]
    runs = []
    for rnd in range(1, a.rounds + 1):
        order = configs[(rnd - 1) % len(configs):] + configs[:(rnd - 1) % len(configs)]
        for config in order:
            r = perf_run(config, rnd, a, ours_so)
            runs.append(r)
            log("perf round %d %-7s: %d PUBLISH, pua's own %.2f us, tm request %.2f us, "
                "whole Kamailio %.1f us per PUBLISH (%d samples)%s"
                % (rnd, config, r["publishes"], r["own_us"] or 0, r["tm_us"] or 0,
                   r["all_us"] or 0, r["samples"],
                   "  (other processes ran)" if r["foreign_procs"] else ""))
    return runs, perf_table(runs)


def perf_table(runs):
    """The perf mode's table and paired ratios from its runs (perf.json)."""
    configs = [c for c in ("ours", "c", "nullpua") if any(r["config"] == c for r in runs)]
    m = runs[0]
    by = {c: {r["round"]: r for r in runs if r["config"] == c} for c in configs}
    lines = ["", "perf: %d rounds, %d REGISTER/s over %d users for %g s per run, all client "
             "Kamailio processes sampled (cpu-clock %d Hz, DWARF call graphs)%s; sampled "
             "microseconds per PUBLISH answered (medians, [min-max])"
             % (len({r["round"] for r in runs}), m["rate"], m["users"], m["duration"], m["freq"],
                ", after a warm-up pass registering every user (re-REGISTERs: refresh PUBLISHes)"
                if m.get("warm") else ""), "",
             "| us per PUBLISH | " + " | ".join(configs) + " | ours/C |",
             "|---|" + "---|" * len(configs) + "---|"]

    def cell(c, key):
        v = [r[key] for r in by[c].values() if r[key] is not None]
        return (statistics.median(v), min(v), max(v)) if v else None

    for label, key in (("pua's own: inside its entry points (send_publish, reply callback, "
                        "timers), tm's request() excluded", "own_us"),
                       ("tm's request() called from pua", "tm_us"),
                       ("whole client Kamailio, all processes", "all_us")):
        cells = {c: cell(c, key) for c in configs}
        row = ["%.2f [%.2f-%.2f]" % v if v else "-" for v in cells.values()]
        o, cc = cells.get("ours"), cells.get("c")
        lines.append("| %s | %s | %s |" % (label, " | ".join(row),
                                          ratio(o[0], cc[0]) if o and cc else "-"))
    lines.append("")
    rounds = sorted(set(by.get("ours", {})) & set(by.get("c", {})))
    if len(rounds) >= 2:
        o = [by["ours"][k]["own_us"] for k in rounds]
        c = [by["c"][k]["own_us"] for k in rounds]
        lines.append("pua's own, paired by round (%d rounds): ratio ours/C %s, 90 %% bootstrap "
                     "interval %s" % (len(rounds), ratio(statistics.median(o),
                                                         statistics.median(c)),
                                      bootstrap_ratio(o, c)))
        if "nullpua" in by and set(rounds) <= set(by["nullpua"]):
            nl = [by["nullpua"][k]["own_us"] for k in rounds]
            do = [x - y for x, y in zip(o, nl)]
            dc = [x - y for x, y in zip(c, nl)]
            lines.append("pua's own above nullpua's own (its snprintf of the headers), paired by "
                         "round: ours %.2f, C %.2f us per PUBLISH, ratio %s, 90 %% bootstrap "
                         "interval %s" % (statistics.median(do), statistics.median(dc),
                                          ratio(statistics.median(do), statistics.median(dc)),
                                          bootstrap_ratio(do, dc)))
            # the same for the whole Kamailio: what pua costs elsewhere too
            nl = [by["nullpua"][k]["all_us"] for k in rounds]
            do = [by["ours"][k]["all_us"] - y for k, y in zip(rounds, nl)]
            dc = [by["c"][k]["all_us"] - y for k, y in zip(rounds, nl)]
            lines.append("whole client Kamailio above nullpua's, paired by round: ours %.1f, C "
                         "%.1f us per PUBLISH, ratio %s, 90 %% bootstrap interval %s"
                         % (statistics.median(do), statistics.median(dc),
                            ratio(statistics.median(do), statistics.median(dc)),
                            bootstrap_ratio(do, dc)))
            lines += perf_outside(by, rounds)
    return "\n".join(lines)


def perf_outside(by, rounds, top=12):
    """Where the whole-Kamailio difference outside pua's entry points goes:
    per phase (the first known Kamailio function on the sample's stack) and
    per leaf function, ours - nullpua and C - nullpua paired by round
    (medians, us per PUBLISH).  Runs before this breakdown existed have no
    phases_us and print nothing."""
    if not all("phases_us" in by[c][k] for c in ("ours", "c", "nullpua") for k in rounds):
        return []

    def diffs(key, name, c):
        return statistics.median(by[c][k][key].get(name, 0.0) - by["nullpua"][k][key].get(name, 0.0)
                                 for k in rounds)

    out = ["", "outside pua's entry points, us per PUBLISH above nullpua, paired by round "
           "(medians), by the first of these functions on the stack:", "",
           "| phase | nullpua | ours - nullpua | C - nullpua |", "|---|---|---|---|"]
    names = {n for c in ("ours", "c", "nullpua") for k in rounds for n in by[c][k]["phases_us"]}
    for n in PERF_PHASES + ["other"]:
        if n in names:
            base = statistics.median(by["nullpua"][k]["phases_us"].get(n, 0.0) for k in rounds)
            out.append("| %s | %.2f | %+.2f | %+.2f |" % (n, base, diffs("phases_us", n, "ours"),
                                                           diffs("phases_us", n, "c")))
    leaves = {n for c in ("ours", "c", "nullpua") for k in rounds for n in by[c][k]["leaves_us"]}
    d = sorted(((diffs("leaves_us", n, "ours"), diffs("leaves_us", n, "c"), n) for n in leaves),
               key=lambda t: -abs(t[0]))[:top]
    out += ["", "leaf functions outside pua with the largest ours - nullpua (us per PUBLISH, "
            "paired medians; leaves under 5 samples per run not kept):", "",
            "| leaf (dso) | ours - nullpua | C - nullpua |", "|---|---|---|"]
    out += ["| `%s` | %+.2f | %+.2f |" % (n, o, c) for o, c, n in d]
    return out


# --------------------------------------------------------------------------


def build_loadgen():
    r = subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(LOADGEN_DIR, "Cargo.toml")], timeout=600)
    if r.returncode != 0 or not os.path.exists(LOADGEN):
        sys.exit("bench: building bench/loadgen failed")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def git_desc():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "crates",
                                "include", "build.rs", "Cargo.toml"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (src/crates/include with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def update_readme(section, text):
    start, end = "<!-- %s:start -->" % section, "<!-- %s:end -->" % section
    with open(README) as f:
        doc = f.read()
    if start not in doc or end not in doc:
        log("README has no %s markers; not updated" % section)
        return
    pre, rest = doc.split(start, 1)
    _, post = rest.split(end, 1)
    with open(README, "w") as f:
        f.write(pre + start + "\n" + text.strip("\n") + "\n" + end + post)
    log("bench/README.md updated (%s)" % section)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pua", default=os.environ.get("PUA_SO", os.path.join(REPO, "pua.so")))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rates", default="1000,3000,1000w",
                    help="offered REGISTER/s; a trailing w (1000w) measures after a warm-up "
                         "pass registering every user (re-REGISTERs only)")
    ap.add_argument("--warm-rate", type=int, default=1000,
                    help="REGISTER/s of the warm-up pass (at most the run's rate)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds of load per run")
    ap.add_argument("--drain", type=float, default=3.0)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--children", type=int, default=4, help="Kamailio UDP workers")
    ap.add_argument("--shm", type=int, default=96, help="Kamailio -m (MB)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help="of ours, c, floor, nullpua, base (base: the --base build)")
    ap.add_argument("--base", metavar="PATH",
                    help="another build of ours, run as configuration `base` (add it to "
                    "--configs): ours - base paired by round is the A/B of the two builds")
    ap.add_argument("--quick", action="store_true", help="1 round, 5 s, rate 1000")
    ap.add_argument("--together", action="store_true",
                    help="run a round's configurations at the same time (each its own "
                    "Kamailio, UAS and phones, windows started together) instead of one "
                    "after the other")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--cg-count", type=int, default=2000)
    ap.add_argument("--cg-users", type=int, default=1000)
    ap.add_argument("--cg-rate", type=int, default=50)
    ap.add_argument("--cg-children", type=int, default=2, help="UDP workers under valgrind")
    ap.add_argument("--cg-cache", action="store_true",
                    help="full runs with valgrind's cache simulation: L1 and last-level "
                    "misses per PUBLISH")
    ap.add_argument("--cg-warm", action="store_true",
                    help="callgrind in the steady state: register every user first, "
                    "count only the re-REGISTERs that follow")
    ap.add_argument("--cg-modes", default="toggle,full",
                    help="callgrind runs: toggle (inside pua), full (whole Kamailio, "
                    "also the floors)")
    ap.add_argument("--perf", action="store_true",
                    help="CPU time inside pua's entry points, sampled with perf (see README)")
    ap.add_argument("--perf-rate", type=int, default=1000)
    ap.add_argument("--perf-freq", type=int, default=5000)
    ap.add_argument("--perf-warm", action="store_true",
                    help="perf after a warm-up pass registering every user (re-REGISTERs only)")
    ap.add_argument("--perf-keep", action="store_true",
                    help="keep each run's perf.data (~200 MB) in its work directory")
    ap.add_argument("--quiet-wait", type=float, default=90.0,
                    help="s to wait before a run while other kamailio/compiler processes run")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--report", metavar="RESULTS_JSON", nargs="+",
                    help="print the table of a finished run's results.json (or perf.json) "
                         "again (no run); several files of runs of the same build are "
                         "pooled, their rounds numbered on")
    a = ap.parse_args()
    if a.report:
        saved = []
        for path in a.report:
            with open(path) as f:
                runs = json.load(f)
            # rounds of the next file come after those of the previous ones
            base = max((r["round"] for r in saved), default=0)
            for r in runs:
                r["round"] += base
            saved += runs
        if saved and "own_us" in saved[0]:
            log(perf_table(saved))       # a perf.json
        else:
            log(table(saved, sorted({rkey(r) for r in saved})))
        return
    if a.quick:
        a.rounds, a.rates, a.duration = 1, "1000", 5.0
    rates = parse_rates(a.rates)
    configs = [c for c in a.configs.split(",") if c]
    kamtest.install_signal_handlers()

    if not os.path.isfile(a.pua):
        sys.exit("bench: %s not found (cargo build --release && cp target/release/libpua.so pua.so)"
                 % a.pua)
    os.makedirs(WORK, exist_ok=True)
    ours_so = os.path.join(WORK, "pua-ours.so")
    if os.path.abspath(a.pua) != ours_so:
        shutil.copy2(a.pua, ours_so)     # a rebuild during the run must not change it
    if "base" in configs:
        if not a.base or not os.path.isfile(a.base):
            sys.exit("bench: configuration base needs --base PATH (another build's pua.so)")
        shutil.copy2(a.base, BASE_SO)
    build_loadgen()
    if "nullpua" in configs or a.callgrind:
        build_nullpua()
    cmd = "python3 bench/run.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = ("%s, `%s`\nours: %s sha256 %s, repo %s; C: %s\n2 cores, kamailio 5.6.3, -m %d, children=%d"
            % (stamp, cmd.strip(), a.pua, sha256(ours_so)[:12], git_desc(), kamtest.C_PUA,
               a.shm, a.cg_children if a.callgrind else a.children))
    log(head)

    for mode, fn in (("perf", perf_main), ("callgrind", callgrind_main)):
        if not getattr(a, mode):
            continue
        runs, text = fn(a, ours_so)
        text = head + "\n" + text
        with open(os.path.join(WORK, mode + ".json"), "w") as f:
            json.dump(runs, f, indent=1)
        with open(os.path.join(WORK, mode + ".md"), "w") as f:
            f.write(text + "\n")
        log(text)
        if a.update_readme:
            update_readme(mode, text)
        return

    results = []
    t0 = time.monotonic()
    for rnd in range(1, a.rounds + 1):
        for rate, warm in rates:
            # rotate the order per round so drift does not favour one config
            order = configs[(rnd - 1) % len(configs):] + configs[:(rnd - 1) % len(configs)]
            batch = (run_together(order, rate, rnd, a, ours_so, warm) if a.together
                     else (run_one(config, rate, rnd, a, ours_so, warm) for config in order))
            for r in batch:
                config = r["config"]
                results.append(r)
                log("round %d rate %s %-5s: %5.0f PUBLISH/s, CPU %.3f s/1k, shm %s B/pub, "
                    "errors %.2f/1k (REG t/o %d, non200 %d, lost PUBLISH %d; ERR lines %d), "
                    "init/refresh %d/%d, p99 %.1f ms, settle %.1f s%s" % (
                        rnd, rlabel((rate, warm)), config, r["pub_rate"], r["cpu_per_1k"] or 0,
                        fmt("%.0f", r["shm_per_pub"]), r["errors_per_1k"], r["reg_timeouts"],
                        r["reg_non200"], r["lost_pub"], r["log_errors"], r["pub_initial"],
                        r["pub_refresh"], r["reg_lat_p99_ms"],
                        r["settle_s"], "" if r["alive"] else "  KAMAILIO DIED"))
                with open(os.path.join(WORK, "results.json"), "w") as f:
                    json.dump(results, f, indent=1)
    text = head + ("\nload: %d users, %g s per run, %d rounds, %.0f s wall\n"
                   % (a.users, a.duration, a.rounds, time.monotonic() - t0)) + table(results, rates)
    nt = notes(results, rates)
    if nt:
        text += "\n\nErrors (ERROR lines counted over the whole run; numbers in messages shown as N):\n\n" + nt
    fl = [r for r in results if r["foreign_procs"]]
    if fl:
        text += ("\n\nNote: %d of %d runs had other kamailio/compiler processes on the machine."
                 % (len(fl), len(results)))
    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write(text + "\n\n" + detail_lines(results) + "\n")
    log(text)
    if a.update_readme:
        update_readme("together" if a.together else "results", text)


if __name__ == "__main__":
    main()
