#!/usr/bin/env bash
# pua-rs demo: our pua.so doing its job in a real Kamailio 5.6.3 (Debian's),
# on SQLite, on 127.0.0.1 only:
#   - a presence server (a second Kamailio with presence + presence_xml),
#   - a Kamailio with our pua.so, pua_usrloc, usrloc and registrar,
#   - a phone (a few lines of Python) that REGISTERs alice,
# then it prints the PUBLISH that pua sent and the presentity that resulted.
#
#   bash demo/run.sh            run, show it working, keep running until Ctrl-C
#   bash demo/run.sh --stop     run, show it working, stop (for scripts)
#   bash demo/run.sh --c-pua    the same with Debian's C pua.so
#   make run ARGS=--stop        build pua.so first, then this
#
# Environment: PUA_SO (default <repo>/pua.so). Everything goes to demo/work/
# (recreated): configs, logs, SQLite databases, control sockets.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
debian_mods=/usr/lib/x86_64-linux-gnu/kamailio/modules
schemas=/usr/share/kamailio/db_sqlite

use_c=0
stop_after=0
for a in "$@"; do
  case "$a" in
    --c-pua) use_c=1 ;;
    --stop) stop_after=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$use_c" = 1 ]; then
  pua="$debian_mods/pua.so"; which="Debian's C pua.so"
else
  pua="${PUA_SO:-$repo/pua.so}"; which="our pua.so"
fi
[ -f "$pua" ] || { echo "demo: $pua not found; build it with 'make build' (or use --c-pua)" >&2; exit 1; }
for tool in kamailio kamcmd sqlite3 python3; do
  command -v "$tool" >/dev/null || { echo "demo: $tool not found; run 'bash kamailio-headers/install-deps.sh'" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work="$here/work"
# A previous demo still running from demo/work? Stop it by its PIDs.
for f in "$work"/*.pid; do
  [ -f "$f" ] || continue
  old=$(cat "$f")
  if [ -n "$old" ] && [ "$(cat /proc/"$old"/comm 2>/dev/null)" = kamailio ] &&
     grep -qF "$work/" /proc/"$old"/cmdline 2>/dev/null; then
    echo "demo: stopping a previous demo Kamailio (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 50); do [ -d /proc/"$old" ] || break; sleep 0.2; done
    kill -KILL -- "-$old" 2>/dev/null || true
  fi
done
rm -rf "$work"
mkdir -p "$work/mods"
cp "$pua" "$work/mods/pua.so"   # a copy: a rebuild cannot change the running module

srv_port=$(free_port)
cli_port=$(free_port)
phone_port=$(free_port)
for db in presence pua; do
  cat "$schemas/standard-create.sql" "$schemas/presence-create.sql" | sqlite3 "$work/$db.db"
done
render() { # template name port db mpath -> work/name.cfg
  sed -e "s|@MPATH@|\"$5\"|" -e "s|@DB_URL@|\"sqlite:///$work/$4.db\"|" \
      -e "s|@CTL_SOCK@|\"unix:$work/$2.ctl\"|" -e "s|@SIP_PORT@|$3|g" \
      -e "s|@SERVER_PORT@|$srv_port|g" "$1" > "$work/$2.cfg"
}
render "$repo/cfg-tests/servers/presence.cfg" presence "$srv_port" presence "$debian_mods/"
render "$here/kamailio.cfg" client "$cli_port" pua "$work/mods/:$debian_mods/"

pids=()
start() { # name
  # setsid: its own process group, so that stopping it cannot touch anything else
  setsid kamailio -DD -E -f "$work/$1.cfg" -w "$work" -m 64 -M 8 </dev/null >"$work/$1.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$work/$1.pid"
  pids+=("$pid")
  for _ in $(seq 100); do   # up to 20 s
    kill -0 "$pid" 2>/dev/null || break
    if kamcmd -s "unix:$work/$1.ctl" core.psx >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "demo: the $1 Kamailio did not start; its log:" >&2
  sed 's/^/  | /' "$work/$1.log" >&2
  exit 1
}
stopped=0
stop_all() {
  [ "$stopped" = 1 ] && return 0
  stopped=1
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do [ -d /proc/"$pid" ] && [ "$(cut -d' ' -f3 /proc/"$pid"/stat 2>/dev/null)" != Z ] || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$work"/*.pid
  echo "demo: stopped"
}
trap 'stop_all' EXIT
trap 'echo; stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

start presence
start client
echo "demo: presence server (Debian's modules)  udp:127.0.0.1:$srv_port  log $work/presence.log"
echo "demo: Kamailio with $which  udp:127.0.0.1:$cli_port  log $work/client.log"
echo "demo:   loaded: $(grep -o '/[^ ]*/pua\.so$' /proc/"${pids[1]}"/maps | sort -u)"
echo

echo "demo: the phone REGISTERs sip:alice@127.0.0.1 with the pua Kamailio"
python3 - "$cli_port" "$phone_port" <<'PY'
import socket, sys, time, uuid
cli, me = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", me)); s.settimeout(1.0)
cid = uuid.uuid4().hex
msg = ("REGISTER sip:127.0.0.1:%d SIP/2.0\r\n"
       "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s;rport\r\n"
       "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=%s\r\nTo: <sip:alice@127.0.0.1>\r\n"
       "Call-ID: %s\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:%d>\r\n"
       "Expires: 300\r\nUser-Agent: pua-rs demo phone\r\nContent-Length: 0\r\n\r\n"
       % (cli, me, cid[:10], cid[10:18], cid, me))
for _ in range(5):
    s.sendto(msg.encode(), ("127.0.0.1", cli))
    try:
        data, _ = s.recvfrom(65535)
    except socket.timeout:
        continue
    print("  phone <- " + data.decode(errors="replace").split("\r\n")[0])
    sys.exit(0 if b" 200 " in data.split(b"\r\n")[0] else 1)
print("  phone: no answer to REGISTER", file=sys.stderr); sys.exit(1)
PY

echo
echo "demo: the PUBLISH pua sent, as the presence server saw it:"
presentity=""
for _ in $(seq 50); do   # up to 10 s
  presentity=$(sqlite3 -separator ' | ' "$work/presence.db" "select username||'@'||domain, event, etag, expires - strftime('%s','now') from presentity" 2>/dev/null || true)
  [ -n "$presentity" ] && break
  sleep 0.2
done
grep -h "PUBLISH sip:" "$work/presence.log" | sed 's/^.*<script>: /  /' || true
echo
echo "demo: the presentity on the presence server (user | event | etag | expires in s):"
if [ -z "$presentity" ]; then
  echo "demo: no presentity: the PUBLISH did not arrive; client log:" >&2
  grep -E 'ERROR|CRITICAL|WARN' "$work/client.log" | sed 's/^/  | /' >&2 || true
  exit 1
fi
echo "  $presentity"
echo "  body: $(sqlite3 "$work/presence.db" "select body from presentity limit 1" | tr -d '\n' | cut -c1-200)..."
echo
echo "\$ kamcmd -s unix:$work/client.ctl pua.cleanup"
kamcmd -s "unix:$work/client.ctl" pua.cleanup
if [ "$use_c" = 0 ]; then
  echo "\$ kamcmd -s unix:$work/client.ctl pua.stats"
  kamcmd -s "unix:$work/client.ctl" pua.stats
fi
echo
if grep -hE '(^|\s)(ERROR|CRITICAL|BUG|ALERT):' "$work/client.log" >/dev/null; then
  echo "demo: the pua Kamailio's log has errors:"; grep -hE '(^|\s)(ERROR|CRITICAL|BUG|ALERT):' "$work/client.log" | sed 's/^/  | /'
else
  echo "demo: no ERROR lines in the pua Kamailio's log"
fi

if [ "$stop_after" = 1 ]; then
  exit 0
fi
echo "demo: running; follow the logs with: tail -f $work/*.log ; press Ctrl-C to stop"
set +e
wait "${pids[@]}"
set -e
if [ "$stopped" != 1 ]; then
  echo "demo: a Kamailio exited by itself; last log lines:" >&2
  tail -n 20 "$work"/*.log | sed 's/^/  | /' >&2
  exit 1
fi
