#!/usr/bin/env bash
# Installs, as root on Debian bookworm, everything the build and the tests need:
# Debian's Kamailio 5.6.3 with the pua consumers and SQLite, the presence server
# modules, PostgreSQL, SIPp, libclang for bindgen, libxml2 headers and dpkg-dev for
# `apt-get source`. Idempotent: packages already present are skipped by apt.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# postgresql + kamailio-postgres-modules: the db_mode 2 cfg-tests run a
# private PostgreSQL server per test (cfg-tests/pgsql.py: initdb in the
# test's work dir, its own port on 127.0.0.1); the Debian cluster the
# package may create and start is not used.
pkgs=(kamailio kamailio-presence-modules kamailio-sqlite-modules
      kamailio-xml-modules kamailio-extra-modules kamailio-xmpp-modules
      kamailio-utils-modules kamailio-postgres-modules postgresql
      sqlite3 libclang-dev clang libxml2-dev
      dpkg-dev pkg-config procps python3 make)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian may start its packaged kamailio service on install; our tests run
# their own instances on free ports, so only that service is stopped (never
# other Kamailio processes on the machine).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kamailio 2>/dev/null; then
  systemctl stop kamailio || true
elif [ -x /etc/init.d/kamailio ] && [ -f /run/kamailio/kamailio.pid ]; then
  /etc/init.d/kamailio stop || true
fi
