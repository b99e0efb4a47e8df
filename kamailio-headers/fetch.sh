#!/usr/bin/env bash
# Fetches the Kamailio source that matches the installed Debian kamailio
# package into kamailio-headers/src (git-ignored). build.rs runs this when the
# tree is missing. Nothing of Kamailio's source is ever committed.
#
# Needs root on Debian bookworm (adds a deb-src entry for bookworm once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/src"
ver=$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null || true)
if [ -z "$ver" ]; then
  echo "fetch.sh: the kamailio package is not installed (run kamailio-headers/install-deps.sh)" >&2
  exit 1
fi
upstream=${ver%%-*}
if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$ver" ]; then
  exit 0
fi
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  cat > /etc/apt/sources.list.d/pua-rs-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get source --download-only -q "kamailio=$ver" >/dev/null )
tarball=$(ls "$work"/kamailio_"$upstream".orig.tar.* | head -n1)
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
tar -xf "$tarball" -C "$dest.tmp" --strip-components=1
# The -D set of the Debian build: configure the tree the way debian/rules
# does (`make cfg` with dpkg-buildflags' options), then ask make how it would
# compile the C pua module and keep its -D and -I options, one per line.
# These are derived, never typed in: another Kamailio version gives its own.
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
extra="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS) -DVERSION_NODATE"
( cd "$dest.tmp" && make cfg prefix=/usr cfg_target=/etc/kamailio/ \
    CC_EXTRA_OPTS="$extra" >"$work/cfg.log" 2>&1 ) || { cat "$work/cfg.log" >&2; exit 1; }
( cd "$dest.tmp/src/modules/pua" && make -n >"$work/make-n.txt" 2>/dev/null ) || true
grep -m1 -E '(^|; )gcc .* -c pua\.c' "$work/make-n.txt" > "$work/cc.txt" \
  || { echo "fetch.sh: could not read the C pua module's compile line" >&2; exit 1; }
python3 - "$work/cc.txt" > "$dest.tmp/.pua-cflags" <<'PY'
import shlex, sys
line = open(sys.argv[1]).read()
line = line[line.index("gcc "):]
for tok in shlex.split(line):
    if tok.startswith("-D") or (tok.startswith("-I") and tok != "-I"):
        print(tok)
PY
grep -q -- '-DDBG_SR_MEMORY' "$dest.tmp/.pua-cflags" || { echo "fetch.sh: no -D set found" >&2; exit 1; }
echo "$ver" > "$dest.tmp/.version"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "fetch.sh: Kamailio $ver source and its -D set in $dest"
