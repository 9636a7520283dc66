#!/usr/bin/env bash
# A running Docker engine and debootstrap on this machine (and curl, which the demo's closing commands
# use), for `make demo` and `.ci/run`: installed from the distribution's packages when missing
# (Debian/Ubuntu, as root), and the engine started when it does not answer (by systemd where it runs,
# else by hand as `dockerd &`, e.g. in a container without systemd). Says what it does.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "needs ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}), then run this again" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "the Docker engine does not answer: start it (sudo systemctl start docker) or add yourself to the docker group" >&2
    exit 1
  fi
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    echo "==> starting the Docker engine (systemctl start docker)"
    systemctl start docker
  else
    echo "==> starting the Docker engine (dockerd in the background, log: /tmp/litellm-deploy-dockerd.log)"
    nohup dockerd >/tmp/litellm-deploy-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'Docker engine {{.ServerVersion}} answers'
