#!/usr/bin/env bash
# pua-rs demo: run our pua.so in a real Kamailio 5.6.3 (Debian's), on SQLite,
# with pua_usrloc, usrloc and registrar, on 127.0.0.1 only.
#
#   bash demo/run.sh            start, show it working, run until Ctrl-C
#   bash demo/run.sh --stop     start, show it working, stop (for scripts)
#   bash demo/run.sh --c-pua    the same with Debian's C pua.so
#   make run ARGS=--stop        build pua.so first, then this
#
# Environment: PUA_SO (default <repo>/pua.so), DEMO_PORT (default 5060, or a
# free port if 5060 is taken).  Everything goes to demo/work/ (recreated):
# kamailio.cfg, kamailio.log, pua.db, ctl socket.
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
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$use_c" = 1 ]; then
  pua="$debian_mods/pua.so"; which="Debian's C pua.so"
else
  pua="${PUA_SO:-$repo/pua.so}"; which="our pua.so"
fi
if [ ! -f "$pua" ]; then
  echo "demo: $pua not found; build it with 'make build' (or use --c-pua)" >&2
  exit 1
fi
for tool in kamailio kamcmd sqlite3; do
  command -v "$tool" >/dev/null || { echo "demo: $tool not found; run 'bash kamailio-headers/install-deps.sh'" >&2; exit 1; }
done

work="$here/work"
port="${DEMO_PORT:-5060}"
port_busy() { # UDP or TCP port bound on 127.0.0.1 / any address?
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}
if port_busy "$port"; then
  if [ -n "${DEMO_PORT:-}" ]; then echo "demo: port $port is in use" >&2; exit 1; fi
  port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi

# A previous demo still running from demo/work? Stop it by its PID.
if [ -f "$work/kamailio.pid" ]; then
  old=$(cat "$work/kamailio.pid")
  if [ -n "$old" ] && [ "$(cat /proc/"$old"/comm 2>/dev/null)" = kamailio ] &&
     grep -qF "$work/kamailio.cfg" /proc/"$old"/cmdline 2>/dev/null; then
    echo "demo: stopping the previous demo Kamailio (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 50); do [ -d /proc/"$old" ] || break; sleep 0.2; done
    kill -KILL -- "-$old" 2>/dev/null || true
  fi
fi

rm -rf "$work"
mkdir -p "$work/mods"
# A copy, so that a rebuild does not change the file under the running server.
cp "$pua" "$work/mods/pua.so"
cat "$schemas/standard-create.sql" "$schemas/presence-create.sql" | sqlite3 "$work/pua.db"
sed -e "s|@MPATH@|\"$work/mods/:$debian_mods/\"|" \
    -e "s|@DB_URL@|\"sqlite:///$work/pua.db\"|" \
    -e "s|@CTL_SOCK@|\"unix:$work/kamailio.ctl\"|" \
    -e "s|@SIP_PORT@|$port|g" \
    "$here/kamailio.cfg" > "$work/kamailio.cfg"

log="$work/kamailio.log"
ctl=(kamcmd -s "unix:$work/kamailio.ctl")
# -DD: the process we start is Kamailio's main process (it forks its workers);
# setsid: its own process group, so that stopping it cannot touch anything else.
setsid kamailio -DD -E -f "$work/kamailio.cfg" -w "$work" -m 64 -M 8 \
  </dev/null >"$log" 2>&1 &
pid=$!
echo "$pid" > "$work/kamailio.pid"

stopped=0
stop_kamailio() {
  [ "$stopped" = 1 ] && return 0
  stopped=1
  if [ -d /proc/"$pid" ]; then
    echo "demo: stopping Kamailio (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d /proc/"$pid" ] && [ "$(cut -d' ' -f3 /proc/"$pid"/stat 2>/dev/null)" != Z ] || break; sleep 0.2; done
  fi
  # Whatever is left of its process group (workers) gets SIGKILL.
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$work/kamailio.pid"
}
trap 'stop_kamailio' EXIT
trap 'echo; stop_kamailio; exit 130' INT
trap 'stop_kamailio; exit 143' TERM

echo "demo: Kamailio 5.6.3 with $which"
echo "demo:   module:  $pua"
echo "demo:   SIP:     udp:127.0.0.1:$port"
echo "demo:   log:     $log"
echo "demo:   config:  $work/kamailio.cfg"
echo "demo:   db:      $work/pua.db"
echo "demo:   control: ${ctl[*]} <command>"

ready=0
for _ in $(seq 100); do   # up to 20 s
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  if "${ctl[@]}" core.psx >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "demo: Kamailio did not start; its log:" >&2
  sed 's/^/  | /' "$log" >&2
  exit 1
fi
if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != kamailio ]; then
  echo "demo: pid $pid is not Kamailio's main process" >&2
  exit 1
fi

echo
echo "\$ ${ctl[*]} core.version"
"${ctl[@]}" core.version
echo
echo "\$ ${ctl[*]} core.modules"
"${ctl[@]}" core.modules | sort | tr '\n' ' '; echo
echo
echo "loaded pua.so (from /proc/$pid/maps):"
grep -o '/[^ ]*/pua\.so$' /proc/"$pid"/maps | sort -u | sed 's/^/  /'
echo
echo "\$ ${ctl[*]} pua.cleanup"
if out=$("${ctl[@]}" pua.cleanup); then rc=0; else rc=$?; fi
[ -n "$out" ] && echo "$out"
case "$out" in error:*) echo "demo: pua.cleanup failed" >&2; exit 1 ;; esac
echo "(exit status $rc)"
[ "$rc" = 0 ] || { echo "demo: pua.cleanup failed" >&2; exit 1; }
echo
echo "processes (core.psx):"
"${ctl[@]}" core.psx | awk '/PID:/{p=$2} /DSC:/{sub(/^[ \t]*DSC: /,""); printf "  %-7s %s\n", p, $0}'
echo
if grep -E '(^|\s)(ERROR|CRITICAL|BUG|ALERT):' "$log" >/dev/null; then
  echo "demo: the log has errors:"; grep -E '(^|\s)(ERROR|CRITICAL|BUG|ALERT):' "$log" | sed 's/^/  | /'
else
  echo "demo: no ERROR lines in the log"
fi

if [ "$stop_after" = 1 ]; then
  stop_kamailio
  echo "demo: done"
  exit 0
fi

echo "demo: running (pid $pid); follow the log with: tail -f $log"
echo "demo: press Ctrl-C to stop"
set +e
wait "$pid"
rc=$?
set -e
if [ "$stopped" != 1 ]; then
  echo "demo: Kamailio exited by itself (status $rc); last log lines:" >&2
  tail -n 20 "$log" | sed 's/^/  | /' >&2
  exit 1
fi
