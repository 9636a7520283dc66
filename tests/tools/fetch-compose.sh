#!/usr/bin/env bash
# Fetch Debian 13's Docker Compose v2 plugin (the one the deploy installs on trixie hosts) into
# .tools/docker-compose, without touching this machine's apt configuration. The unit tests use it
# to check that the rendered files parse as Compose itself parses them.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
dest="$top/.tools/docker-compose"
[ -x "$dest" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives"
      -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq
(cd "$work" && apt-get "${opts[@]}" download docker-compose >/dev/null)
dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
mkdir -p "$(dirname "$dest")"
install -m 755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$dest"
"$dest" version
