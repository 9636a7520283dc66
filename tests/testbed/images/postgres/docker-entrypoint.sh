#!/usr/bin/env bash
# Entrypoint with the official postgres image's contract (see the Dockerfile), written for
# Debian's packages. Initialises $PGDATA on first start only, then execs the server as `postgres`.
set -Eeuo pipefail

# file_env VAR [DEFAULT]: VAR or the contents of the file named by VAR_FILE (not both).
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}"
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		echo >&2 "error: both $var and $fileVar are set (but are exclusive)"
		exit 1
	fi
	local val="$def"
	if [ "${!var:-}" ]; then
		val="${!var}"
	elif [ "${!fileVar:-}" ]; then
		val="$(< "${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA"
	chown -R postgres:postgres "$PGDATA"
	chmod 700 "$PGDATA"
	mkdir -p /var/run/postgresql
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = 'postgres' ]; then
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
			cat >&2 <<-'EOM'
				Error: Database is uninitialized and superuser password is not specified.
				       You must specify POSTGRES_PASSWORD to a non-empty value for the
				       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
			EOM
			exit 1
		fi
		pwfile="$(mktemp)"
		trap 'rm -f "$pwfile"' EXIT
		printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
		# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list, as in the official image
		initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
			--auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" $POSTGRES_INITDB_ARGS
		rm -f "$pwfile"
		printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
		printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

		# A socket-only server for the database and the init scripts.
		PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
		export PGUSER="$POSTGRES_USER" PGDATABASE=postgres PGHOST=/var/run/postgresql
		if [ "$POSTGRES_DB" != 'postgres' ]; then
			psql -v ON_ERROR_STOP=1 --no-psqlrc --set db="$POSTGRES_DB" <<-'EOSQL'
				CREATE DATABASE :"db" ;
			EOSQL
		fi
		export PGDATABASE="$POSTGRES_DB"
		for f in /docker-entrypoint-initdb.d/*; do
			case "$f" in
				*.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
				*.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -f "$f" ;;
				*.sql.gz) echo "running $f"; gunzip -c "$f" | psql -v ON_ERROR_STOP=1 --no-psqlrc ;;
				*) if [ -e "$f" ]; then echo "ignoring $f"; fi ;;
			esac
		done
		unset PGUSER PGDATABASE PGHOST
		pg_ctl -D "$PGDATA" -m fast -w stop
		echo 'PostgreSQL init process complete; ready for start up.'
	fi
fi

exec "$@"
