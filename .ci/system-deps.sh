#!/usr/bin/env bash
# Install and start the system services the test suite needs, from Debian's packages only:
#   - PostgreSQL (Dagster storage + MLflow backend store for tests/deploy/test_postgres.py), on loopback;
#   - redis-server (only the binary: tests/api/test_shared_limits.py starts its own on a free loopback port;
#     Debian's package also enables a service on 6379, which the tests never use);
#   - Chromium (headless browser driven by Playwright for tests/browser/, never a downloaded build);
#   - docker-compose 1.29 (validates docker-compose.yml; drives the stack in tests/deploy/test_stack.py);
#   - docker.io (the Docker engine, started here when it is not running) and mmdebstrap (builds the stand-in
#     base images of docker/standins/ where no image registry answers, as on CI).
# Idempotent: a second run installs nothing, restarts nothing that is up and only re-asserts the password.
# Prints each thing it did; exits non-zero on any failure so .ci/run stops before the tests lie about it.
#
# Settings (defaults are for a throw-away CI/dev machine, not for production):
#   EXAMPASS_PG_USER=exampass EXAMPASS_PG_PASSWORD=exampass EXAMPASS_PG_PORT=5432
#   EXAMPASS_PG_DAGSTER_DB=exampass_dagster EXAMPASS_PG_MLFLOW_DB=exampass_mlflow
set -euo pipefail

PG_USER="${EXAMPASS_PG_USER:-exampass}"
PG_PASSWORD="${EXAMPASS_PG_PASSWORD:-exampass}"
PG_PORT="${EXAMPASS_PG_PORT:-5432}"
PG_DAGSTER_DB="${EXAMPASS_PG_DAGSTER_DB:-exampass_dagster}"
PG_MLFLOW_DB="${EXAMPASS_PG_MLFLOW_DB:-exampass_mlflow}"

say() { printf '[system-deps] %s\n' "$*"; }
die() { printf '[system-deps] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or with sudo available) to install Debian packages"
    SUDO="sudo"
fi

# Identifiers are interpolated into SQL below: refuse anything that is not a plain identifier.
for ident in "$PG_USER" "$PG_DAGSTER_DB" "$PG_MLFLOW_DB"; do
    [[ "$ident" =~ ^[a-z_][a-z0-9_]*$ ]] || die "invalid PostgreSQL identifier '$ident' (use [a-z0-9_])"
done
[[ "$PG_PASSWORD" != *"'"* ]] || die "EXAMPASS_PG_PASSWORD must not contain a single quote"

# ---------------------------------------------------------------------------------------------- packages
# package -> the file that proves it is installed (cheaper and more honest than parsing dpkg output).
declare -A WANT=(
    [postgresql]=/usr/bin/pg_ctlcluster
    [chromium]=/usr/bin/chromium
    [docker-compose]=/usr/bin/docker-compose
    [docker.io]=/usr/sbin/dockerd
    [mmdebstrap]=/usr/bin/mmdebstrap
    [gpg]=/usr/bin/gpg
    [fonts-liberation]=/usr/share/fonts/truetype/liberation
    [redis-server]=/usr/bin/redis-server
)
missing=()
for pkg in "${!WANT[@]}"; do
    if [ -e "${WANT[$pkg]}" ] && dpkg -s "$pkg" >/dev/null 2>&1; then
        say "present: $pkg"
    else
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq
    say "apt-get install ${missing[*]}"
    # No recommends: nothing here needs them (mmdebstrap runs in root mode; gpg is listed for its keyrings).
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/tmp/exampass-apt-install.log 2>&1 || { tail -n 30 /tmp/exampass-apt-install.log >&2; die "apt-get install failed"; }
    say "installed: ${missing[*]}"
fi
for pkg in "${!WANT[@]}"; do
    [ -e "${WANT[$pkg]}" ] || die "$pkg is not installed (${WANT[$pkg]} missing)"
done
say "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown')"
say "docker-compose: $(/usr/bin/docker-compose version --short 2>/dev/null || echo 'version unknown')"

# ------------------------------------------------------------------------------------------------ docker
# The engine for tests/deploy/test_stack.py. A machine with systemd starts it as a service; a container or CI
# box without an init gets dockerd in the background, its log in /var/log/exampass-dockerd.log.
if docker info >/dev/null 2>&1; then
    say "docker engine already running ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
else
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        say "starting the docker service"
        $SUDO systemctl start docker || die "systemctl start docker failed (journalctl -u docker)"
    else
        say "starting dockerd (log: /var/log/exampass-dockerd.log)"
        $SUDO setsid dockerd >/var/log/exampass-dockerd.log 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 30 /var/log/exampass-dockerd.log >&2 || true; die "dockerd did not come up within 60 s"; }
    say "docker engine running ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
fi

# ---------------------------------------------------------------------------------------------- postgres
PG_VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
[ -n "$PG_VERSION" ] || die "no PostgreSQL server under /usr/lib/postgresql"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION main"; then
    say "creating cluster $PG_VERSION/main on port $PG_PORT"
    $SUDO pg_createcluster --port "$PG_PORT" "$PG_VERSION" main >/dev/null
fi
CLUSTER_PORT="$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $3}')"
[ "$CLUSTER_PORT" = "$PG_PORT" ] || die "cluster $PG_VERSION/main listens on $CLUSTER_PORT, not EXAMPASS_PG_PORT=$PG_PORT"
# Debian's default listen_addresses is 'localhost': loopback only, which is what we want. Say so explicitly in
# case a previous configuration widened it.
CONF="/etc/postgresql/$PG_VERSION/main/conf.d/exampass.conf"
if [ ! -f "$CONF" ]; then
    printf "# written by .ci/system-deps.sh: loopback only\nlisten_addresses = 'localhost'\n" | $SUDO tee "$CONF" >/dev/null
    say "wrote $CONF"
fi
if pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
    say "postgresql $PG_VERSION/main already running on 127.0.0.1:$PG_PORT"
else
    say "starting postgresql $PG_VERSION/main"
    $SUDO pg_ctlcluster "$PG_VERSION" main start || {
        $SUDO tail -n 30 "/var/log/postgresql/postgresql-$PG_VERSION-main.log" >&2 || true
        die "postgresql did not start"
    }
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "postgresql is not accepting connections on 127.0.0.1:$PG_PORT"

psql_admin() { $SUDO runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"; }

if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" = "1" ]; then
    say "role $PG_USER exists (password re-asserted)"
    psql_admin -c "ALTER ROLE $PG_USER WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
else
    # CREATEDB: tests create and drop a private database per run instead of sharing state between runs.
    psql_admin -c "CREATE ROLE $PG_USER WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
    say "created role $PG_USER"
fi
for db in "$PG_DAGSTER_DB" "$PG_MLFLOW_DB"; do
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" = "1" ]; then
        say "database $db exists"
    else
        psql_admin -c "CREATE DATABASE $db OWNER $PG_USER"
        say "created database $db (owner $PG_USER)"
    fi
done
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DAGSTER_DB" -tAc 'SELECT 1' \
    >/dev/null || die "cannot log in as $PG_USER over TCP on 127.0.0.1:$PG_PORT"
say "postgresql ready: postgresql://$PG_USER:***@127.0.0.1:$PG_PORT/{$PG_DAGSTER_DB,$PG_MLFLOW_DB}"
