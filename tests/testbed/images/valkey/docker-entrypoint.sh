#!/bin/sh
# The official valkey image's entrypoint contract, for Debian's packages: options or a config file
# alone are given to valkey-server; the server runs as `valkey` and owns /data.
set -e
case "$1" in
	-* | *.conf) set -- valkey-server "$@" ;;
esac
if [ "$1" = 'valkey-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user valkey -exec chown valkey '{}' +
	exec setpriv --reuid=valkey --regid=valkey --clear-groups "$0" "$@"
fi
umask 0077
exec "$@"
