#!/usr/bin/env bash
# The parts of the official postgres image's docker-entrypoint.sh that ExamPass relies on, for the stand-in:
#   - as root: own the data directory, then re-run as the user postgres;
#   - on the first start (no PG_VERSION in $PGDATA): initdb with POSTGRES_USER and POSTGRES_PASSWORD, password
#     logins (POSTGRES_HOST_AUTH_METHOD, default scram-sha-256) from any address, create POSTGRES_DB, then run
#     /docker-entrypoint-initdb.d/*.sh (executed if executable, else sourced), *.sql and *.sql.gz once, against
#     a temporary server that listens on the Unix socket only (so nothing outside sees a half-made database);
#   - then exec the server in the foreground.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

process_sql() {
    PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        log "ERROR: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    log "initialising $PGDATA for user $POSTGRES_USER (PostgreSQL $(postgres --version | awk '{print $3}'))"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags, as in the official image
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        --auth-local=trust --auth-host="$auth" -D "$PGDATA" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    printf '\n# written by the entrypoint: password logins from the container network\nhost all all all %s\n' \
        "$auth" >> "$PGDATA/pg_hba.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
    export PGPASSWORD="${POSTGRES_PASSWORD:-}"
    if [ "$POSTGRES_DB" != postgres ] \
        && [ "$(process_sql --dbname postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$POSTGRES_DB'")" != 1 ]; then
        process_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        log "created database $POSTGRES_DB"
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
            *.sql) log "running $f"; process_sql --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | process_sql --dbname "$POSTGRES_DB" ;;
            *"/*") ;;  # the folder is empty
            *) log "ignoring $f" ;;
        esac
    done
    unset PGPASSWORD
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    log "initialisation complete; starting the server"
fi

exec "$@"
