"""sip: minimal SIP over UDP on 127.0.0.1 for the cfg-tests (stdlib only).

    python3 cfg-tests/sip.py --selftest

Messages
  Message.parse(bytes) / msg.build() -> bytes.  Header lookup is
  case-insensitive and knows the compact forms (v, f, t, i, m, l, c, o, ...).
  request(...) and response_to(req, code, ...) build messages.

Endpoints (one UDP socket on 127.0.0.1 and one thread each)
  Uas(port=0, script=None)  records every message it receives
      (Received: raw, msg, t = time.monotonic(), addr, retransmission) and
      answers requests by its script:
        * a callable  f(req, endpoint) -> rule, list of rules, or None;
        * a dict  {METHOD or "*": rule | [rule, ...] | callable}; a list
          answers the n-th new request of that method with rule[n] (the
          last rule repeats);
        * None: 200 OK to everything (PUBLISH: PublishOk()).
      A rule is a Reply (or an int status code, or NoAnswer); a Reply with
      delay > 0 is sent that many seconds later.  Retransmissions of a
      request get the responses already sent again (never a new rule).
  Uac(port=0, script=None)  an Uas that also sends requests:
      uac.send(req) -> Transaction; tx.wait(timeout) -> final response or
      None; uac.request(...) builds, sends and waits; retransmits like RFC
      3261 timers A/E (T1 = 0.5 s), bounded by the wait.  call()/Dialog
      make a simple INVITE/ACK/BYE call through a proxy.
  stop() closes the socket and joins the thread (<= 2 s).

Everything blocking has a timeout; nothing here talks to anything but the
addresses it is given.
"""

import heapq
import itertools
import random
import re
import socket
import string
import sys
import threading
import time

T1 = 0.5
T2 = 4.0
MAX_UDP = 65535

COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "y": "identity", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition",
}
# Canonical spelling for the headers we build.
CANON = {
    "call-id": "Call-ID", "cseq": "CSeq", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match", "www-authenticate": "WWW-Authenticate",
    "max-forwards": "Max-Forwards", "min-expires": "Min-Expires",
    "retry-after": "Retry-After", "record-route": "Record-Route",
    "content-length": "Content-Length", "content-type": "Content-Type",
}

REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    412: "Conditional Request Failed", 423: "Interval Too Brief", 481: "Call/Transaction Does Not Exist",
    486: "Busy Here", 487: "Request Terminated", 489: "Bad Event", 500: "Server Internal Error",
    503: "Service Unavailable", 603: "Decline",
}


def norm(name):
    n = name.strip().lower()
    return COMPACT.get(n, n)


def canon(name):
    n = norm(name)
    if n in CANON:
        return CANON[n]
    return "-".join(p[:1].upper() + p[1:] for p in n.split("-"))


def rand_token(n=10):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def new_branch():
    return "z9hG4bK" + rand_token(16)


class ParseError(ValueError):
    pass


class Message:
    """A SIP request or response.  headers: [(name, value)] in order."""

    def __init__(self, start_line="", headers=None, body=b""):
        self.start_line = start_line
        self.headers = list(headers or [])
        self.body = body if isinstance(body, bytes) else body.encode()
        self.method = self.uri = self.reason = None
        self.status = None
        self._parse_start()

    def _parse_start(self):
        parts = self.start_line.split(" ", 2)
        if self.start_line.startswith("SIP/2.0 "):
            if len(parts) < 2 or not parts[1].isdigit():
                raise ParseError("bad status line %r" % self.start_line)
            self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
        elif self.start_line:
            if len(parts) != 3 or parts[2] != "SIP/2.0":
                raise ParseError("bad request line %r" % self.start_line)
            self.method, self.uri = parts[0], parts[1]

    @property
    def is_request(self):
        return self.method is not None

    # --- parsing / building ---------------------------------------------
    @classmethod
    def parse(cls, data):
        if isinstance(data, str):
            data = data.encode()
        sep = data.find(b"\r\n\r\n")
        if sep < 0:
            # Tolerate bare LF line ends (hand-written messages).
            sep2 = data.find(b"\n\n")
            if sep2 < 0:
                head, rest = data, b""
            else:
                head, rest = data[:sep2], data[sep2 + 2:]
        else:
            head, rest = data[:sep], data[sep + 4:]
        lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            raise ParseError("empty message")
        headers = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:   # folded line
                n, v = headers[-1]
                headers[-1] = (n, v + " " + line.strip())
                continue
            if ":" not in line:
                raise ParseError("bad header line %r" % line)
            n, v = line.split(":", 1)
            headers.append((n.strip(), v.strip()))
        m = cls(lines[0].strip(), headers, b"")
        cl = m.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise ParseError("bad Content-Length %r" % cl)
            m.body = rest[:n]
        else:
            m.body = rest
        return m

    def build(self):
        """bytes, with Content-Length set from the body."""
        out = [self.start_line]
        for n, v in self.headers:
            if norm(n) == "content-length":
                continue
            out.append("%s: %s" % (n, v))
        out.append("Content-Length: %d" % len(self.body))
        return ("\r\n".join(out) + "\r\n\r\n").encode() + self.body

    __bytes__ = build

    def __str__(self):
        return self.build().decode("utf-8", "replace")

    # --- headers ----------------------------------------------------------
    def get(self, name, default=None):
        """The first value of header `name` (case-insensitive, compact forms)."""
        k = norm(name)
        for n, v in self.headers:
            if norm(n) == k:
                return v
        return default

    def get_all(self, name):
        """All values; comma-separated lists (Via, Route, ...) are split."""
        k = norm(name)
        out = []
        for n, v in self.headers:
            if norm(n) == k:
                if k in ("via", "route", "record-route", "contact"):
                    out.extend(split_commas(v))
                else:
                    out.append(v)
        return out

    def has(self, name):
        return self.get(name) is not None

    def count(self, name):
        k = norm(name)
        return sum(1 for n, _ in self.headers if norm(n) == k)

    def set(self, name, value):
        """Replace every `name` header with one (appended if absent)."""
        k = norm(name)
        for i, (n, _) in enumerate(self.headers):
            if norm(n) == k:
                self.headers[i] = (canon(name), str(value))
                self.headers = [h for j, h in enumerate(self.headers)
                                if j <= i or norm(h[0]) != k]
                return self
        self.headers.append((canon(name), str(value)))
        return self

    def add(self, name, value, first=False):
        h = (canon(name), str(value))
        if first:
            self.headers.insert(0, h)
        else:
            self.headers.append(h)
        return self

    def remove(self, name):
        k = norm(name)
        self.headers = [h for h in self.headers if norm(h[0]) != k]
        return self

    # --- common fields ----------------------------------------------------
    @property
    def call_id(self):
        return self.get("call-id")

    @property
    def cseq(self):
        """(number, METHOD) or (None, None)."""
        v = self.get("cseq")
        if not v:
            return None, None
        p = v.split()
        try:
            return int(p[0]), (p[1] if len(p) > 1 else "")
        except ValueError:
            return None, None

    @property
    def branch(self):
        v = self.get_all("via")
        if not v:
            return None
        return header_param(v[0], "branch")

    @property
    def from_tag(self):
        return header_param(self.get("from", ""), "tag")

    @property
    def to_tag(self):
        return header_param(self.get("to", ""), "tag")

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Message %s>" % self.start_line


def split_commas(v):
    """Split a header value on commas outside <> and quotes."""
    out, cur, depth, quote = [], [], 0, False
    for ch in v:
        if ch == '"':
            quote = not quote
        elif not quote and ch == "<":
            depth += 1
        elif not quote and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def header_param(value, name):
    """A ;name=value parameter of a header value (after the <...> part, if
    any); "" for a parameter without a value, None if absent."""
    if value is None:
        return None
    v = value[value.rfind(">") + 1:] if ">" in value else value
    for p in v.split(";")[1:]:
        k, _, val = p.partition("=")
        if k.strip().lower() == name.lower():
            return val.strip()
    return None


def uri_of(value):
    """The URI inside a name-addr (<...>) or an addr-spec value."""
    m = re.search(r"<([^>]*)>", value or "")
    if m:
        return m.group(1)
    return (value or "").split(";")[0].strip()


def host_port(uri):
    """(host, port) of a sip: URI (port 5060 if absent)."""
    u = uri_of(uri)
    u = re.sub(r"^sips?:", "", u)
    u = u.split(";")[0].split("?")[0]
    if "@" in u:
        u = u.split("@", 1)[1]
    if ":" in u:
        h, p = u.rsplit(":", 1)
        return h, int(p)
    return u, 5060


def request(method, uri, from_uri, to_uri=None, call_id=None, cseq=1,
            from_tag=None, to_tag=None, via=None, branch=None, contact=None,
            headers=(), body=b"", content_type=None, max_forwards=70):
    """A request message.  via: "host:port" of the sender (Via sent-by)."""
    m = Message("%s %s SIP/2.0" % (method, uri))
    m.add("Via", "SIP/2.0/UDP %s;branch=%s;rport" % (via or "127.0.0.1:5060",
                                                      branch or new_branch()))
    m.add("Max-Forwards", max_forwards)
    m.add("From", "<%s>;tag=%s" % (from_uri, from_tag or rand_token(8)))
    m.add("To", "<%s>%s" % (to_uri or uri, (";tag=%s" % to_tag) if to_tag else ""))
    m.add("Call-ID", call_id or (rand_token(16) + "@127.0.0.1"))
    m.add("CSeq", "%d %s" % (cseq, method))
    if contact:
        m.add("Contact", contact if "<" in contact else "<%s>" % contact)
    for h in headers:
        n, v = h if isinstance(h, tuple) else h.split(":", 1)
        m.add(n.strip(), v.strip())
    if body:
        m.body = body if isinstance(body, bytes) else body.encode()
        if content_type:
            m.set("Content-Type", content_type)
    return m


def response_to(req, code, reason=None, headers=(), body=b"", to_tag=None, contact=None):
    """A response to req: Via (all), From, To (+ a tag unless code 100 or
    the To already has one), Call-ID, CSeq copied; Record-Route copied for
    dialog-creating responses."""
    m = Message("SIP/2.0 %d %s" % (code, reason or REASONS.get(code, "Unknown")))
    for n, v in req.headers:
        k = norm(n)
        if k == "via":
            m.headers.append(("Via", v))
    m.add("From", req.get("from", ""))
    to = req.get("to", "")
    if code > 100 and header_param(to, "tag") is None:
        to = "%s;tag=%s" % (to, to_tag or rand_token(8))
    m.add("To", to)
    m.add("Call-ID", req.get("call-id", ""))
    m.add("CSeq", req.get("cseq", ""))
    if req.method == "INVITE" and 100 < code < 300:
        for v in req.get_all("record-route"):
            m.add("Record-Route", v)
        if contact:
            m.add("Contact", contact if "<" in contact else "<%s>" % contact)
    for h in headers:
        n, v = h if isinstance(h, tuple) else h.split(":", 1)
        m.add(n.strip(), str(v).strip())
    if body:
        m.body = body if isinstance(body, bytes) else body.encode()
    return m


# --- scripts ----------------------------------------------------------------

class Reply:
    """One response to send: status code, reason, extra headers [(n, v)],
    body, delay (s).  Subclasses compute headers from the request."""

    def __init__(self, code, reason=None, headers=(), body=b"", delay=0.0):
        self.code = code
        self.reason = reason
        self.headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        self.body = body
        self.delay = delay

    def make(self, req, ep):
        """-> (Message, info dict recorded with the request)."""
        return response_to(req, self.code, self.reason, self.headers, self.body,
                           contact=ep.contact), {}

    def __repr__(self):
        return "<Reply %d%s>" % (self.code, " +%.1fs" % self.delay if self.delay else "")


class PublishOk(Reply):
    """200 OK to a PUBLISH: SIP-ETag (generated unless etag is given; False
    omits it) and Expires (the request's unless expires is given; False
    omits it; any string is sent as is, e.g. "banana")."""

    _n = itertools.count(1)

    def __init__(self, expires=None, etag=None, code=200, headers=(), delay=0.0):
        Reply.__init__(self, code, None, headers, b"", delay)
        self.expires = expires
        self.etag = etag

    def make(self, req, ep):
        hdrs = []
        info = {}
        if self.etag is not False:
            etag = self.etag or "et%d%s" % (next(PublishOk._n), rand_token(6))
            hdrs.append(("SIP-ETag", etag))
            info["etag"] = etag
        if self.expires is not False:
            exp = self.expires if self.expires is not None else req.get("expires", "3600")
            hdrs.append(("Expires", str(exp)))
            info["expires"] = str(exp)
        m = response_to(req, self.code, self.reason, hdrs + self.headers, b"")
        return m, info


class _NoAnswer:
    delay = 0.0

    def __repr__(self):
        return "NoAnswer"


NoAnswer = _NoAnswer()


def as_rules(r):
    if r is None or r is NoAnswer:
        return []
    if isinstance(r, int):
        return [Reply(r)]
    if isinstance(r, Reply):
        return [r]
    out = []
    for x in r:
        out.extend(as_rules(x))
    return out


class Received:
    """A message an endpoint received."""

    def __init__(self, raw, msg, t, addr, retransmission=False):
        self.raw = raw
        self.msg = msg
        self.t = t
        self.addr = addr
        self.retransmission = retransmission
        self.replies = []      # [(t, Message)] sent in answer
        self.info = {}         # e.g. {"etag": ..., "expires": ...} from PublishOk
        self.index = None      # n-th new request of its method (0-based)

    @property
    def status(self):
        """Final status code sent in answer (None if none yet)."""
        for _, r in reversed(self.replies):
            if r.status >= 200:
                return r.status
        return None

    def __repr__(self):
        return "<Received %s t=%.3f%s>" % (self.msg.start_line, self.t,
                                           " (retransmission)" if self.retransmission else "")


class Transaction:
    """A client transaction of a Uac."""

    def __init__(self, ep, req, dest):
        self.ep = ep
        self.req = req
        self.dest = dest
        self.branch = req.branch
        self.method = req.method
        self.responses = []          # every response, in order of arrival
        self.final = None
        self.sent_at = []            # monotonic times of (re)transmissions
        self.cond = threading.Condition(ep.lock)

    def wait(self, timeout=8.0):
        """The final response, or None after timeout s (retransmitting:
        timer A/E doubling from T1 up to T2 until a provisional response for
        INVITE, until the final one otherwise)."""
        deadline = time.monotonic() + timeout
        interval = T1
        next_tx = time.monotonic() + interval
        with self.cond:
            while self.final is None:
                now = time.monotonic()
                if now >= deadline or self.ep.stopped:
                    break
                if now >= next_tx:
                    provisional = bool(self.responses)
                    if self.method == "INVITE":
                        if not provisional:           # timer A
                            self.ep._send_raw(self.req.build(), self.dest)
                            self.sent_at.append(now)
                        interval *= 2
                    else:                             # timer E
                        self.ep._send_raw(self.req.build(), self.dest)
                        self.sent_at.append(now)
                        interval = T2 if provisional else min(interval * 2, T2)
                    next_tx = now + interval
                self.cond.wait(max(0.0, min(deadline, next_tx) - now))
            return self.final

    @property
    def provisional(self):
        return [r for r in self.responses if r.status < 200]


class Endpoint:
    """A UDP socket on 127.0.0.1 with a receiver thread."""

    name = "ep"

    def __init__(self, port=0, script=None, host="127.0.0.1", user=None):
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.user = user or self.name
        self.contact = "<sip:%s@%s:%d>" % (self.user, host, self.port)
        self.script = script
        self.lock = threading.RLock()
        self.received = []           # [Received], requests and responses
        self.sent = []               # [(t, bytes, addr)]
        self.errors = []             # exceptions in the thread / scripts
        self._server_tx = {}         # (branch, method) -> Received (first)
        self._method_count = {}
        self._client_tx = {}         # branch -> Transaction
        self._timers = []            # heap of (t, seq, bytes, addr, Received, Message)
        self._seq = itertools.count()
        self.stopped = False
        self._thread = threading.Thread(target=self._loop, name="sip-%s-%d" % (self.name, self.port),
                                        daemon=True)
        self._thread.start()

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    # --- life cycle -------------------------------------------------------
    def stop(self, timeout=2.0):
        self.stopped = True
        with self.lock:
            for tx in self._client_tx.values():
                tx.cond.notify_all()
        self._thread.join(timeout)
        try:
            self.sock.close()
        except OSError:
            pass
        return not self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    # --- sending ----------------------------------------------------------
    def _send_raw(self, data, dest):
        try:
            self.sock.sendto(data, dest)
        except OSError as e:
            if not self.stopped:
                self.errors.append("sendto %s: %s" % (dest, e))
            return
        with self.lock:
            self.sent.append((time.monotonic(), data, dest))

    def send_message(self, msg, dest):
        self._send_raw(msg.build(), dest)

    # --- receiving --------------------------------------------------------
    def _loop(self):
        while not self.stopped:
            self._fire_timers()
            try:
                data, addr = self.sock.recvfrom(MAX_UDP)
            except socket.timeout:
                continue
            except OSError:
                if self.stopped:
                    break
                continue
            t = time.monotonic()
            try:
                msg = Message.parse(data)
            except ParseError as e:
                self.errors.append("unparsable message from %s: %s" % (addr, e))
                continue
            try:
                if msg.is_request:
                    self._on_request(data, msg, t, addr)
                else:
                    self._on_response(data, msg, t, addr)
            except Exception as e:   # a script error must not kill the thread
                import traceback
                self.errors.append("%s: %s" % (e, traceback.format_exc()))

    def _fire_timers(self):
        now = time.monotonic()
        while True:
            with self.lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, data, addr, rec, msg = heapq.heappop(self._timers)
            self._send_raw(data, addr)
            with self.lock:
                rec.replies.append((time.monotonic(), msg))

    def _on_response(self, data, msg, t, addr):
        rec = Received(data, msg, t, addr)
        with self.lock:
            self.received.append(rec)
            tx = self._client_tx.get(msg.branch)
            if tx is None or tx.method != msg.cseq[1]:
                return
            tx.responses.append(msg)
            if msg.status >= 200 and tx.final is None:
                tx.final = msg
            tx.cond.notify_all()
        if tx.method == "INVITE" and msg.status >= 300:
            # ACK for a non-2xx final response: same branch, hop by hop.
            self._send_raw(self._ack_non2xx(tx.req, msg).build(), tx.dest)

    def _ack_non2xx(self, req, resp):
        m = Message("ACK %s SIP/2.0" % req.uri)
        m.add("Via", req.get_all("via")[0])
        m.add("Max-Forwards", 70)
        m.add("From", req.get("from"))
        m.add("To", resp.get("to"))
        m.add("Call-ID", req.call_id)
        m.add("CSeq", "%d ACK" % req.cseq[0])
        for r in req.get_all("route"):
            m.add("Route", r)
        return m

    def _on_request(self, data, msg, t, addr):
        key = (msg.branch, msg.method)
        with self.lock:
            first = self._server_tx.get(key) if msg.branch else None
            rec = Received(data, msg, t, addr, retransmission=first is not None)
            self.received.append(rec)
            if first is not None:
                # A retransmission: repeat what was sent (nothing if nothing).
                for _, r in first.replies:
                    self._send_raw(r.build(), addr)
                return
            if msg.branch:
                self._server_tx[key] = rec
            n = self._method_count.get(msg.method, 0)
            self._method_count[msg.method] = n + 1
            rec.index = n
        if msg.method == "ACK":
            return
        rules = as_rules(self._pick(msg, n))
        for rule in rules:
            resp, info = rule.make(msg, self)
            with self.lock:
                rec.info.update(info)
            if rule.delay > 0:
                with self.lock:
                    heapq.heappush(self._timers, (time.monotonic() + rule.delay, next(self._seq),
                                                  resp.build(), addr, rec, resp))
            else:
                self._send_raw(resp.build(), addr)
                with self.lock:
                    rec.replies.append((time.monotonic(), resp))

    def _pick(self, msg, n):
        s = self.script
        if s is None:
            return self.default_rule(msg)
        if callable(s) and not isinstance(s, dict):
            return s(msg, self)
        r = s.get(msg.method, s.get("*"))
        if r is None:
            return self.default_rule(msg)
        if callable(r) and not isinstance(r, (Reply, _NoAnswer)):
            return r(msg, self)
        if isinstance(r, list):
            return r[min(n, len(r) - 1)] if r else None
        return r

    def default_rule(self, msg):
        if msg.method == "PUBLISH":
            return PublishOk()
        return Reply(200)

    # --- queries ----------------------------------------------------------
    def requests(self, method=None, retransmissions=False):
        """Received requests (new ones only unless retransmissions=True)."""
        with self.lock:
            return [r for r in self.received if r.msg.is_request
                    and (method is None or r.msg.method == method)
                    and (retransmissions or not r.retransmission)]

    def wait_for(self, pred, timeout=5.0, poll=0.02):
        """Wait (bounded) until pred() is true; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(poll)

    def wait_requests(self, method, n, timeout=5.0):
        """Wait until at least n new `method` requests arrived; returns them."""
        self.wait_for(lambda: len(self.requests(method)) >= n, timeout)
        return self.requests(method)

    def clear(self):
        with self.lock:
            self.received = []


class Uas(Endpoint):
    """A scripted UAS: records and answers (see the module doc)."""
    name = "uas"


class Uac(Endpoint):
    """A phone: sends requests and waits for their final responses; answers
    the requests it gets by its script (default 200 OK)."""
    name = "uac"

    def __init__(self, port=0, script=None, host="127.0.0.1", user=None):
        Endpoint.__init__(self, port, script, host, user)
        self._cseq = itertools.count(1)

    def send(self, req, dest):
        """Start a client transaction (dest: (host, port)); returns it."""
        if isinstance(dest, str):
            dest = host_port(dest)
        tx = Transaction(self, req, dest)
        with self.lock:
            self._client_tx[req.branch] = tx
        self._send_raw(req.build(), dest)
        tx.sent_at.append(time.monotonic())
        return tx

    def request(self, method, uri, dest, timeout=8.0, **kw):
        """Build (see request()), send to dest and wait; -> (final, tx)."""
        kw.setdefault("via", self.addr)
        kw.setdefault("cseq", next(self._cseq))
        kw.setdefault("from_uri", "sip:%s@%s" % (self.user, self.host))
        req = request(method, uri, **kw)
        tx = self.send(req, dest)
        return tx.wait(timeout), tx

    def register(self, registrar, aor, expires=3600, contact=None, call_id=None, cseq=None,
                 timeout=8.0, headers=()):
        """REGISTER aor with a Contact of this phone at registrar "host:port"
        (the Request-URI is sip:<registrar>).  -> final response or None."""
        call_id = call_id or ("reg-%s-%s" % (rand_token(8), self.port))
        r, _ = self.request("REGISTER", "sip:%s" % registrar, host_port("sip:" + registrar),
                            timeout=timeout, from_uri=aor, to_uri=aor, call_id=call_id,
                            cseq=cseq or next(self._cseq),
                            contact=contact or self.contact,
                            headers=[("Expires", str(expires))] + list(headers))
        return r

    def invite(self, proxy, uri, from_uri=None, body=None, timeout=8.0, headers=()):
        """INVITE uri through proxy "host:port"; on 2xx sends the ACK and
        returns (Dialog, final, tx); otherwise (None, final, tx)."""
        from_uri = from_uri or "sip:%s@%s" % (self.user, self.host)
        ftag = rand_token(8)
        sdp = body if body is not None else (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        req = request("INVITE", uri, from_uri, uri, via=self.addr, from_tag=ftag,
                      cseq=1, contact=self.contact, headers=headers, body=sdp,
                      content_type="application/sdp")
        dest = host_port("sip:" + proxy)
        tx = self.send(req, dest)
        final = tx.wait(timeout)
        if final is None or final.status >= 300:
            return None, final, tx
        d = Dialog(self, req, final, dest)
        d.ack()
        return d, final, tx


class Dialog:
    """The caller's side of an established INVITE dialog (loose routing)."""

    def __init__(self, ep, invite, resp, dest):
        self.ep = ep
        self.call_id = invite.call_id
        self.local = invite.get("from")
        self.remote = resp.get("to")
        self.local_uri = uri_of(self.local)
        self.cseq = invite.cseq[0]
        self.invite_cseq = self.cseq
        rr = resp.get_all("record-route")
        self.route_set = list(reversed(rr))
        contact = resp.get("contact")
        self.remote_target = uri_of(contact) if contact else invite.uri
        self.dest = dest   # first hop fallback

    def _next_hop(self):
        if self.route_set:
            return host_port(uri_of(self.route_set[0]))
        return host_port(self.remote_target)

    def _build(self, method, cseq):
        m = Message("%s %s SIP/2.0" % (method, self.remote_target))
        m.add("Via", "SIP/2.0/UDP %s;branch=%s;rport" % (self.ep.addr, new_branch()))
        m.add("Max-Forwards", 70)
        m.add("From", self.local)
        m.add("To", self.remote)
        m.add("Call-ID", self.call_id)
        m.add("CSeq", "%d %s" % (cseq, method))
        for r in self.route_set:
            m.add("Route", r)
        m.add("Contact", self.ep.contact)
        return m

    def ack(self):
        m = self._build("ACK", self.invite_cseq)
        self.ep.send_message(m, self._next_hop())
        return m

    def request(self, method, timeout=8.0):
        self.cseq += 1
        m = self._build(method, self.cseq)
        tx = self.ep.send(m, self._next_hop())
        return tx.wait(timeout), tx

    def bye(self, timeout=8.0):
        return self.request("BYE", timeout)


# --- self-test ----------------------------------------------------------------

def _selftest():
    ok = 0

    def check(c, what):
        nonlocal ok
        if not c:
            raise AssertionError(what)
        ok += 1

    raw = (b"PUBLISH sip:alice@example.test SIP/2.0\r\n"
           b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKdef, SIP/2.0/UDP 10.0.0.1\r\n"
           b"f: <sip:alice@example.test>;tag=f1\r\n"
           b"t: sip:alice@example.test\r\n"
           b"i: cid-1\r\n"
           b"CSeq: 10 PUBLISH\r\n"
           b"o: presence\r\n"
           b"Expires: 3601\r\n"
           b"SIP-If-Match: a.b.c\r\n"
           b"c: application/pidf+xml\r\n"
           b"Subject: long\r\n  folded\r\n"
           b"l: 5\r\n\r\nhelloEXTRA")
    m = Message.parse(raw)
    check(m.is_request and m.method == "PUBLISH" and m.uri == "sip:alice@example.test", "request line")
    check(m.get("Call-ID") == "cid-1" and m.call_id == "cid-1", "compact i")
    check(m.get("event") == "presence" and m.get("EVENT") == "presence", "compact o, case")
    check(m.get("content-type") == "application/pidf+xml", "compact c")
    check(m.body == b"hello", "Content-Length bounds the body")
    check(m.branch == "z9hG4bKabc", "top Via branch")
    check(len(m.get_all("via")) == 3, "Via list split: %r" % m.get_all("via"))
    check(m.cseq == (10, "PUBLISH"), "cseq")
    check(m.from_tag == "f1" and m.to_tag is None, "tags")
    check(m.get("subject") == "long folded", "folding")
    check(m.get("sip-if-match") == "a.b.c", "SIP-If-Match")
    b = m.build()
    m2 = Message.parse(b)
    check(m2.body == b"hello" and m2.get("content-length") == "5", "rebuild")
    r = response_to(m, 200, headers=[("SIP-ETag", "x1"), ("Expires", "60")])
    check(r.status == 200 and r.reason == "OK", "status line")
    check(r.get_all("via") == m.get_all("via"), "Via copied")
    check(r.to_tag and r.from_tag == "f1" and r.call_id == "cid-1", "dialog headers")
    check(Message.parse(r.build()).get("sip-etag") == "x1", "SIP-ETag")
    check(header_param("<sip:a@b;lr>;tag=9", "tag") == "9", "param after >")
    check(header_param("SIP/2.0/UDP h;branch=z9hG4bKq;rport", "branch") == "z9hG4bKq", "via param")
    check(host_port("<sip:127.0.0.1:5099;lr>") == ("127.0.0.1", 5099), "host_port")
    check(host_port("sip:bob@example.test") == ("example.test", 5060), "host_port default")
    try:
        Message.parse(b"GARBAGE\r\n\r\n")
        check(False, "bad start line accepted")
    except ParseError:
        ok += 1

    # Uac <-> Uas over 127.0.0.1.
    script = {
        "PUBLISH": [PublishOk(), Reply(412), Reply(423, headers={"Min-Expires": "1800"}),
                    PublishOk(etag=False), PublishOk(expires="banana"),
                    PublishOk(delay=0.3), NoAnswer],
        "OPTIONS": lambda req, ep: Reply(503, headers=[("Retry-After", "2")]),
    }
    with Uas(script=script) as uas, Uac() as uac:
        dest = ("127.0.0.1", uas.port)
        pub = dict(from_uri="sip:alice@example.test", to_uri="sip:alice@example.test",
                   headers=[("Event", "presence"), ("Expires", "120")], body="<x/>",
                   content_type="application/pidf+xml")
        r, tx = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r and r.status == 200 and r.get("sip-etag") and r.get("expires") == "120",
              "PublishOk: %r" % (r and str(r)))
        check(uas.requests("PUBLISH")[0].info["etag"] == r.get("sip-etag"), "recorded etag")
        r, _ = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r.status == 412, "412")
        r, _ = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r.status == 423 and r.get("min-expires") == "1800", "423")
        r, _ = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r.status == 200 and not r.has("sip-etag"), "no etag")
        r, _ = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r.get("expires") == "banana", "banana")
        t0 = time.monotonic()
        r, _ = uac.request("PUBLISH", "sip:alice@example.test", dest, **pub)
        check(r.status == 200 and time.monotonic() - t0 >= 0.25, "delayed reply")
        t0 = time.monotonic()
        r, tx = uac.request("PUBLISH", "sip:alice@example.test", dest, timeout=1.7, **pub)
        check(r is None and 1.6 < time.monotonic() - t0 < 2.5, "no answer, bounded wait")
        check(len(tx.sent_at) == 3, "timer E retransmissions at 0, 0.5, 1.5 s: %d" % len(tx.sent_at))
        check(len(uas.requests("PUBLISH")) == 7, "7 new PUBLISHes")
        check(len(uas.requests("PUBLISH", retransmissions=True)) == 9, "with retransmissions")
        r, _ = uac.request("OPTIONS", "sip:x@127.0.0.1", dest)
        check(r.status == 503 and r.get("retry-after") == "2", "callable script")
        # A retransmission gets the same response, not the next rule.
        req = request("MESSAGE", "sip:x@127.0.0.1", "sip:y@127.0.0.1", via=uac.addr)
        tx = uac.send(req, dest)
        r1 = tx.wait(2)
        uac._send_raw(req.build(), dest)
        time.sleep(0.2)
        check(len(uas.requests("MESSAGE")) == 1 and
              len(uas.requests("MESSAGE", retransmissions=True)) == 2, "retransmission seen")
        check(len(uas.requests("MESSAGE", retransmissions=True)[0].replies) == 1, "one reply")
        # A call: the Uas as callee (180, then 200 after 0.2 s), BYE.
        callee = Uas(script={"INVITE": [[Reply(180), Reply(200, delay=0.2)]]})
        with callee:
            d, final, tx = uac.invite("127.0.0.1:%d" % callee.port,
                                      "sip:bob@127.0.0.1:%d" % callee.port)
            check(d is not None and final.status == 200 and
                  [x.status for x in tx.responses] == [180, 200], "INVITE")
            check(callee.wait_for(lambda: callee.requests("ACK"), 2), "ACK arrived")
            r, _ = d.bye()
            check(r and r.status == 200, "BYE")
            check(not callee.errors and not uac.errors, "endpoint errors %r %r"
                  % (callee.errors, uac.errors))
        check(not uas.errors, "uas errors %r" % uas.errors)
    t0 = time.monotonic()
    u = Uas()
    check(u.stop() and time.monotonic() - t0 < 2.0, "stop within 2 s")
    print("sip.py selftest: %d checks passed" % ok)
    return 0


if __name__ == "__main__":
    if "--selftest" in sys.argv[1:]:
        sys.exit(_selftest())
    print(__doc__)
