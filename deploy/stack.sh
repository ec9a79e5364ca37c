#!/usr/bin/env bash
# The ExamPass Compose stack in one command: `make stack-up`, `make stack-down`, `make stack-backup`,
# `make stack-restore ARCHIVE=...` call this script (docs/deployment.md).
#
#   deploy/stack.sh up        engine up (started if installed but stopped), base images (stand-ins from Debian
#                             packages where no registry answers), .env with fresh secrets if there is none,
#                             the image built from uv.lock, every service started; then waits for every health
#                             check, the one-shots, and the first champion (the API's /ready)
#   deploy/stack.sh down [--volumes]   stop and remove the containers; the volumes stay unless --volumes
#   deploy/stack.sh status    the services and their health
#   deploy/stack.sh wait      wait for every health check and the API's /ready (e.g. after `compose restart`)
#   deploy/stack.sh compose ARGS...   docker compose / docker-compose on this project and env file
#   deploy/stack.sh backup [ARCHIVE]   a consistent backup of every piece of state (see below)
#   deploy/stack.sh restore ARCHIVE [--force]   that backup into a stack with no state, then `up`
#
# Settings (environment): COMPOSE_PROJECT_NAME (else the env file's, else `exampass`), EXAMPASS_ENV_FILE (the
# Compose env file, default .env), EXAMPASS_STACK_TIMEOUT_S (how long `up` waits, default 2400),
# EXAMPASS_BUILD_CA (a PEM file the image build should trust, besides /usr/local/share/ca-certificates/*.crt;
# `none` for no extra CA), EXAMPASS_NO_BUILD=1 (use the image as it is), and every variable of .env.example,
# which beats the env file (so a test can move the ports).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${EXAMPASS_ENV_FILE:-$REPO/.env}"
TIMEOUT_S="${EXAMPASS_STACK_TIMEOUT_S:-2400}"
# The images the stack runs that are not built here: docker/standins/build.sh names them the same way.
BASE_IMAGES=(python postgres)

say() { printf '[stack %s] %s\n' "$(date -u +%T)" "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%d s' "$((SECONDS - ${1:-0}))"; }
# What the waits count from, for their messages.
SINCE="stack-up began"

# ------------------------------------------------------------------------------------------------- engine
ensure_engine() {
    command -v docker >/dev/null 2>&1 \
        || die "no Docker client: install Docker (Debian/Ubuntu: apt-get install docker.io docker-compose)"
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 \
        || die "no Docker engine answers and dockerd is not installed: install docker.io (apt-get install docker.io)"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        say "the Docker engine is installed but not running: systemctl start docker"
        systemctl start docker || die "systemctl start docker failed (journalctl -u docker)"
    elif [ "$(id -u)" -eq 0 ]; then
        say "the Docker engine is installed but not running: starting dockerd (log: /var/log/exampass-dockerd.log)"
        setsid dockerd >/var/log/exampass-dockerd.log 2>&1 </dev/null &
    else
        die "the Docker engine is not running: start it (sudo systemctl start docker, or sudo dockerd)"
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { say "Docker engine up"; return 0; }
        sleep 1
    done
    die "dockerd did not answer within 60 s (see /var/log/exampass-dockerd.log)"
}

COMPOSE=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither the Compose plugin (docker compose) nor docker-compose is installed (apt-get install docker-compose)"
    fi
}

# ---------------------------------------------------------------------------------------------- settings
env_file_value() {
    # The value of $1 in the env file (last assignment wins, as in Compose), or nothing.
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

project_name() {
    local name="${COMPOSE_PROJECT_NAME:-$(env_file_value COMPOSE_PROJECT_NAME)}"
    printf '%s' "${name:-exampass}"
}

random_secret() {
    # 24 random bytes as hex: safe inside a Postgres URL, long enough for MLflow's 12-character minimum.
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

ensure_env_file() {
    if [ -f "$ENV_FILE" ]; then
        grep -Eq '^[A-Z0-9_]+=.*change-me' "$ENV_FILE" \
            && die "$ENV_FILE still holds a change-me placeholder: put a real secret there (or delete the file to have one generated)"
        return 0
    fi
    say "no $ENV_FILE: writing one with fresh random secrets (owner-only; keep it, it unlocks the volumes' data)"
    mkdir -p "$(dirname "$ENV_FILE")"
    local tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    (
        umask 077
        printf '# Written by deploy/stack.sh on %s from .env.example, with fresh secrets.\n' "$(date -u +%F)"
        printf '# The Compose project these commands manage (`docker compose ps` in this folder sees it too).\n'
        printf 'COMPOSE_PROJECT_NAME=%s\n\n' "$(project_name)"
        while IFS= read -r line; do
            if [[ "$line" =~ ^([A-Z0-9_]+)=.*change-me ]]; then
                printf '%s=%s\n' "${BASH_REMATCH[1]}" "$(random_secret)"
            else
                printf '%s\n' "$line"
            fi
        done <"$REPO/.env.example"
    ) >"$tmp"
    chmod 600 "$tmp"
    mv "$tmp" "$ENV_FILE"
}

ensure_data_dir() {
    # As `make run` finds it: data/StudentsPerformance.csv, else ../shared/data/; without either, the pipeline
    # trains on a synthetic sample and says so.
    [ -n "${EXAMPASS_DATA_DIR:-$(env_file_value EXAMPASS_DATA_DIR)}" ] && return 0
    if [ ! -f "$REPO/data/StudentsPerformance.csv" ] && [ -f "$REPO/../shared/data/StudentsPerformance.csv" ]; then
        EXAMPASS_DATA_DIR="$(cd "$REPO/../shared/data" && pwd)"
        export EXAMPASS_DATA_DIR
    fi
    mkdir -p "$REPO/data"
}

# ------------------------------------------------------------------------------------------------- subnet
# The proxy needs a fixed address (the replicas trust X-Forwarded-For from it alone), so the project's network
# needs a declared subnet. A fixed one collides: with the host's own network (a cloud VPC's 172.31.0.0/16, say)
# and with a second project on the same engine (a restore beside the original). So: the operator's
# EXAMPASS_SUBNET if set; else the subnet the project's network already has (an `up` never recreates it); else
# the first /24 of 10.213.0.0/16, from a point the project name picks, that overlaps no host route or address
# and no other Docker network.
ip_to_int() { local IFS=.; set -- $1; printf '%d' "$(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))"; }
int_to_ip() { printf '%d.%d.%d.%d' "$(( $1 >> 24 & 255 ))" "$(( $1 >> 16 & 255 ))" "$(( $1 >> 8 & 255 ))" "$(( $1 & 255 ))"; }
# "first last" address (as integers) of a CIDR block.
cidr_span() {
    local base="${1%/*}" len="${1#*/}" start
    [ "$len" != "$1" ] || len=32
    start=$(( $(ip_to_int "$base") & ~((1 << (32 - len)) - 1) & 0xFFFFFFFF ))
    printf '%d %d' "$start" "$(( start + (1 << (32 - len)) - 1 ))"
}
subnets_in_use() {
    if command -v ip >/dev/null 2>&1; then
        ip -4 -o addr show 2>/dev/null | awk '{print $4}'
        ip -4 route show table all 2>/dev/null | awk '$1 ~ /^[0-9]+\./ {print $1}'
    fi
    docker network ls -q 2>/dev/null | xargs -r docker network inspect \
        -f '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' 2>/dev/null | grep -E '^[0-9]+\.' || true
}
free_subnet() {
    local used=() span first last cand start end u_start u_end clash i
    mapfile -t used < <(subnets_in_use | sort -u)
    first=$(( $(printf '%s' "$(project_name)" | cksum | cut -d' ' -f1) % 256 ))
    for i in $(seq 0 255); do
        cand="10.213.$(( (first + i) % 256 )).0/24"
        read -r start end <<<"$(cidr_span "$cand")"
        clash=0
        for span in "${used[@]}"; do
            read -r u_start u_end <<<"$(cidr_span "$span")"
            if [ "$start" -le "$u_end" ] && [ "$u_start" -le "$end" ]; then clash=1; break; fi
        done
        [ "$clash" -eq 1 ] || { printf '%s' "$cand"; return 0; }
    done
    die "no free /24 in 10.213.0.0/16 for the project's network: set EXAMPASS_SUBNET (a /24 no other network uses)"
}
ensure_subnet() {
    [ -z "${EXAMPASS_SUBNET:-}" ] || [ -z "${EXAMPASS_SUBNET_DYNAMIC:-}" ] || [ -z "${EXAMPASS_PROXY_IP:-}" ] \
        || return 0
    local subnet="${EXAMPASS_SUBNET:-$(env_file_value EXAMPASS_SUBNET)}" base
    if [ -z "$subnet" ]; then
        subnet="$(docker network inspect -f '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' \
            "$(project_name | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9_-')_default" 2>/dev/null | head -n 1 || true)"
    fi
    [ -n "$subnet" ] || subnet="$(free_subnet)"
    [ "${subnet#*/}" = 24 ] || die "EXAMPASS_SUBNET=$subnet: the stack needs a /24 (the proxy at .10, Docker's range from .128)"
    base="$(int_to_ip "$(cidr_span "$subnet" | cut -d' ' -f1)")"
    export EXAMPASS_SUBNET="$subnet"
    export EXAMPASS_SUBNET_DYNAMIC="${base%.*}.128/25"
    export EXAMPASS_PROXY_IP="${base%.*}.10"
}

compose() { ensure_subnet; "${COMPOSE[@]}" --project-directory "$REPO" --env-file "$ENV_FILE" -f "$REPO/docker-compose.yml" -p "$(project_name)" "$@"; }

# ------------------------------------------------------------------------------------------------- images
ensure_base_images() {
    local missing=()
    for name in "${BASE_IMAGES[@]}"; do
        local tag
        tag="$(bash "$REPO/docker/standins/build.sh" --tag-of "$name")"
        docker image inspect "$tag" >/dev/null 2>&1 || missing+=("$name")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "base images missing (${missing[*]}): pulling them, or building stand-ins from Debian packages"
        bash "$REPO/docker/standins/build.sh" "${missing[@]}"
    fi
}

stage_build_ca() {
    # The build stages trust docker/build-ca/*.crt; only they do, so the shipped image carries no CA.
    local dir="$REPO/docker/build-ca" n=0
    find "$dir" -maxdepth 1 -name '*.crt' -delete
    [ "${EXAMPASS_BUILD_CA:-}" = none ] && return 0
    local sources=()
    if [ -d /usr/local/share/ca-certificates ]; then
        while IFS= read -r -d '' crt; do sources+=("$crt"); done \
            < <(find /usr/local/share/ca-certificates -name '*.crt' -type f -print0)
    fi
    if [ -n "${EXAMPASS_BUILD_CA:-}" ]; then
        [ -f "$EXAMPASS_BUILD_CA" ] || die "EXAMPASS_BUILD_CA=$EXAMPASS_BUILD_CA is not a file"
        sources+=("$EXAMPASS_BUILD_CA")
    fi
    for crt in "${sources[@]}"; do
        n=$((n + 1))
        cp "$crt" "$dir/extra-$n-$(basename "$crt" .crt | tr -c 'A-Za-z0-9_.-' _).crt"
    done
    [ "$n" -eq 0 ] || say "the image build trusts $n extra CA certificate(s) from this machine (build stages only)"
}

build_image() {
    if [ "${EXAMPASS_NO_BUILD:-}" = 1 ]; then
        say "EXAMPASS_NO_BUILD=1: using the image as it is"
        return 0
    fi
    stage_build_ca
    local started=$SECONDS log
    log="$(mktemp /tmp/exampass-build.XXXXXX.log)"
    say "building the image from uv.lock (log: $log)"
    if ! compose build mlflow >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "the image build failed (full log: $log)"
    fi
    say "image $(compose config 2>/dev/null | sed -n 's/^ *image: \(exampass:.*\)/\1/p' | head -n 1) built in $(elapsed $started)"
}

# -------------------------------------------------------------------------------------------------- state
# -a: Compose v2 lists only running containers without it, and the one-shots have exited by design.
containers() { compose ps -a -q 2>/dev/null; }

# One line per container: service status health restart-policy exit-code.
service_states() {
    local ids
    ids="$(containers)"
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086 # one argument per container id
    docker inspect -f '{{index .Config.Labels "com.docker.compose.oneoff"}} {{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.HostConfig.RestartPolicy.Name}} {{.State.ExitCode}}' $ids \
        | awk 'tolower($1) != "true" {print $2, $3, $4, $5, $6}' | sort
}

published_port() {
    # The host port behind a service's container port (so moved ports, e.g. in tests, just work).
    local id
    id="$(compose ps -q "$1")"
    [ -n "$id" ] || return 1
    docker port "$id" "$2" | head -n 1 | sed 's/.*://'
}

http_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1" 2>/dev/null || true
}

wait_healthy() {
    # Every service of the file has a container; long-running ones are healthy (or running, without a check),
    # one-shots exited 0. A one-shot that failed ends the wait at once with its log.
    local started="$1" deadline=$((SECONDS + TIMEOUT_S)) want last="" states services_up=""
    want="$(compose config --services | sort | tr '\n' ' ')"
    while :; do
        states="$(service_states)"
        local ok=1 seen="" summary=""
        while read -r svc status health restart code; do
            [ -n "$svc" ] || continue
            seen+="$svc "
            if [ "$restart" = no ]; then
                if [ "$status" = exited ] && [ "$code" != 0 ]; then
                    compose logs --tail 40 "$svc" >&2 || true
                    die "one-shot $svc exited with code $code (log above)"
                fi
                [ "$status" = exited ] || { ok=0; summary+="$svc:$status "; }
            elif [ "$health" = healthy ] || { [ "$health" = none ] && [ "$status" = running ]; }; then
                :
            else
                ok=0
                summary+="$svc:$status/$health "
            fi
        done <<<"$states"
        for svc in $want; do
            [[ " $seen " == *" $svc "* ]] || { ok=0; summary+="$svc:missing "; }
        done
        if [ -z "$services_up" ] && [ -n "$states" ] && [[ "$summary" != *"/"* && "$summary" != *missing* ]]; then
            # Every long-running service is healthy; only one-shots (the first training) are still going.
            services_up=1
            say "every long-running service is healthy, $(elapsed "$started") after $SINCE"
        fi
        if [ "$ok" = 1 ]; then
            say "every service is healthy and every one-shot done, $(elapsed "$started") after $SINCE"
            return 0
        fi
        if [ "$summary" != "$last" ]; then
            say "waiting ($(elapsed "$started")): $summary"
            last="$summary"
        fi
        [ "$SECONDS" -lt "$deadline" ] || { compose ps >&2 || true; die "not healthy within ${TIMEOUT_S} s: $summary"; }
        sleep 3
    done
}

wait_ready() {
    local started="$1" deadline=$((SECONDS + TIMEOUT_S)) port code
    # Through the proxy, the one published port: ready there means nginx reaches a replica with the champion.
    port="$(published_port proxy 8000)" || die "the proxy service publishes no port"
    while :; do
        code="$(http_status "http://127.0.0.1:$port/ready")"
        if [ "$code" = 200 ]; then
            say "the API is ready (champion loaded) at http://127.0.0.1:$port, $(elapsed "$started") after $SINCE"
            return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "the API at 127.0.0.1:$port did not become ready (last /ready: $code)"
        sleep 2
    done
}

show_urls() {
    local api dagster mlflow
    api="$(published_port proxy 8000 || echo '?')"
    dagster="$(published_port dagster-webserver 3000 || echo '?')"
    mlflow="$(published_port mlflow 5000 || echo '?')"
    say "API + page: http://127.0.0.1:$api/   Dagster UI: http://127.0.0.1:$dagster   MLflow: http://127.0.0.1:$mlflow (admin / MLFLOW_ADMIN_PASSWORD in $ENV_FILE)"
}

# ----------------------------------------------------------------------------------------------- commands
cmd_up() {
    local started=$SECONDS
    ensure_engine
    find_compose
    say "project $(project_name), env file $ENV_FILE, $("${COMPOSE[@]}" version --short 2>/dev/null || echo compose)"
    ensure_env_file
    ensure_data_dir
    ensure_base_images
    build_image
    say "starting the services"
    compose up -d --no-build --remove-orphans 2>&1 | sed 's/^/  /'
    wait_healthy "$started"
    wait_ready "$started"
    show_urls
}

cmd_down() {
    ensure_engine
    find_compose
    local args=()
    if [ "${1:-}" = --volumes ]; then
        args+=(--volumes)
        say "removing project $(project_name) with its volumes (all state)"
    else
        say "removing project $(project_name)'s containers; the volumes stay"
    fi
    [ -f "$ENV_FILE" ] || ENV_FILE="$REPO/.env.example"
    compose down --remove-orphans "${args[@]}" 2>&1 | sed 's/^/  /'
}

cmd_status() {
    ensure_engine
    find_compose
    [ -f "$ENV_FILE" ] || ENV_FILE="$REPO/.env.example"
    service_states | awk '{printf "  %-18s %-8s %-9s restart=%s exit=%s\n", $1, $2, $3, $4, $5}'
}

# Backup and restore: the stateful volumes of the stack (Postgres goes through pg_dump instead: a consistent
# snapshot that also restores into a newer server).
VOLUMES=(warehouse reports prediction-logs dagster-storage mlflow-artifacts mlflow-auth api-keys)
volume_name() { printf '%s_%s' "$(project_name)" "$1"; }

pg_env() { compose exec -T postgres sh -c "$1"; }

WORKDIR=""
make_workdir() {
    # Under /var/tmp (disk, not a RAM /tmp): the copy can be as large as the volumes. Removed on any exit.
    WORKDIR="$(mktemp -d "${TMPDIR:-/var/tmp}/exampass-stack.XXXXXX")"
    trap 'rm -rf "$WORKDIR"' EXIT
}

backup_volumes_tar() {
    # Every named volume, read-only, as one tar on stdout (ownership and modes kept; run as root to read 0700).
    local args=() v
    for v in "${VOLUMES[@]}"; do args+=(-v "$(volume_name "$v"):/backup/$v:ro"); done
    docker run --rm --user 0 --entrypoint tar "${args[@]}" "$(image_ref)" -C /backup -cf - .
}

image_ref() { compose config 2>/dev/null | sed -n 's/^ *image: \(exampass:.*\)/\1/p' | head -n 1; }

cmd_backup() {
    ensure_engine
    find_compose
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE: is this the stack you mean (EXAMPASS_ENV_FILE, COMPOSE_PROJECT_NAME)?"
    local stamp archive started=$SECONDS
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    archive="${1:-$REPO/backups/exampass-$(project_name)-$stamp.tar.gz}"
    [ -n "$(compose ps -q postgres)" ] || die "project $(project_name) has no postgres container: nothing to back up"
    mkdir -p "$(dirname "$archive")"
    make_workdir
    local work="$WORKDIR"
    mkdir -p "$work/exampass-backup/postgres"

    # Consistency: nothing may write while the copy is taken. The daemon (schedules, sensor, run queue) stops
    # first, so no new run starts; a run already executing is waited for; then the code location stops (runs
    # execute there, and only runs write the DuckDB file, the reports and the run logs). pg_dump reads each
    # database in one snapshot. The API, which appends prediction logs and records key use, is frozen (docker
    # pause: its requests wait, none fail) only for the second it takes to copy the volumes. MLflow stays up:
    # with no run going nothing writes it (its user store changes only when `mlflow-users` runs, at `up`).
    say "backup of project $(project_name): stopping dagster-daemon (no new runs)"
    compose stop dagster-daemon >/dev/null 2>&1
    wait_no_running_runs
    say "stopping dagster-code (runs execute there)"
    compose stop dagster-code >/dev/null 2>&1
    local api_ids failed=0 paused_at
    api_ids="$(compose ps -q api api-2 | tr '\n' ' ')"
    {
        say "pg_dump dagster and mlflow"
        pg_env 'pg_dump -U "$POSTGRES_USER" -Fc "$POSTGRES_DB"' >"$work/exampass-backup/postgres/dagster.dump" \
            && pg_env 'pg_dump -U "$POSTGRES_USER" -Fc "$MLFLOW_POSTGRES_DB"' >"$work/exampass-backup/postgres/mlflow.dump" \
            && say "pausing api and api-2; copying the volumes: ${VOLUMES[*]}" \
            && paused_at=$SECONDS \
            && { [ -z "${api_ids// /}" ] || docker pause $api_ids >/dev/null; } \
            && backup_volumes_tar >"$work/exampass-backup/volumes.tar"
    } || failed=1
    # shellcheck disable=SC2086 # one argument per container id
    [ -z "${api_ids// /}" ] || docker unpause $api_ids >/dev/null 2>&1 || true
    [ -z "${paused_at:-}" ] || say "api and api-2 resumed after $(elapsed "$paused_at") paused; starting dagster-code and dagster-daemon"
    compose start dagster-code dagster-daemon >/dev/null 2>&1 || failed=1
    [ "$failed" = 0 ] || die "backup failed (the stack was resumed; check it with deploy/stack.sh status)"

    cp "$ENV_FILE" "$work/exampass-backup/env"
    {
        printf 'format=1\ncreated=%s\nproject=%s\nimage=%s\n' "$stamp" "$(project_name)" \
            "$(docker image inspect -f '{{.Id}}' "$(image_ref)" 2>/dev/null || echo unknown)"
        printf 'postgres_server=%s\n' "$(pg_env 'postgres --version' | awk '{print $3}')"
        printf 'volumes=%s\n' "${VOLUMES[*]}"
        (cd "$work/exampass-backup" && sha256sum postgres/*.dump volumes.tar env)
    } >"$work/exampass-backup/MANIFEST"
    (umask 077 && tar -C "$work" -czf "$archive.part" exampass-backup)
    mv "$archive.part" "$archive"
    say "backup written: $archive ($(du -h "$archive" | cut -f1), $(elapsed "$started")); it holds the secrets of $ENV_FILE: keep it private"
}

wait_no_running_runs() {
    # Runs execute in dagster-code; stopping it mid-run would fail the run. Ask the webserver until none is busy.
    local port deadline=$((SECONDS + TIMEOUT_S)) answer
    port="$(published_port dagster-webserver 3000)" || return 0
    while :; do
        answer="$(curl -s --max-time 10 -H 'Content-Type: application/json' \
            -d '{"query":"{ runsOrError(filter: {statuses: [STARTING, STARTED, CANCELING]}) { ... on Runs { results { runId } } } }"}' \
            "http://127.0.0.1:$port/graphql" || true)"
        if [[ "$answer" == *'"results": []'* || "$answer" == *'"results":[]'* ]]; then
            return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "a Dagster run is still executing after ${TIMEOUT_S} s; the backup stops here"
        say "a Dagster run is executing: waiting for it to finish before the copy"
        sleep 5
    done
}

cmd_restore() {
    local archive="" force=0
    for arg in "$@"; do
        case "$arg" in
            --force) force=1 ;;
            *) archive="$arg" ;;
        esac
    done
    [ -n "$archive" ] && [ -f "$archive" ] || die "usage: deploy/stack.sh restore ARCHIVE [--force] (no such file: '$archive')"
    ensure_engine
    find_compose
    local work started=$SECONDS
    make_workdir
    work="$WORKDIR"
    say "unpacking $archive"
    tar -C "$work" -xzf "$archive"
    local b="$work/exampass-backup"
    [ -f "$b/MANIFEST" ] || die "$archive is not an ExamPass backup (no MANIFEST)"
    (cd "$b" && sed -n '/  /p' MANIFEST | sha256sum --quiet -c -) || die "$archive is damaged: a checksum does not match"

    # The secrets travel with the data: the MLflow user store and the Postgres password belong together.
    if [ -f "$ENV_FILE" ]; then
        local key
        for key in POSTGRES_PASSWORD MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD MLFLOW_API_PASSWORD; do
            [ "$(env_file_value "$key")" = "$(sed -n "s/^$key=//p" "$b/env" | tail -n 1)" ] \
                || die "$ENV_FILE has another $key than the backup: restore with no $ENV_FILE (the backup's is used) or the backup's own"
        done
    else
        say "no $ENV_FILE: using the backup's (same secrets as the stack it came from)"
        (umask 077 && grep -v '^COMPOSE_PROJECT_NAME=' "$b/env" >"$ENV_FILE")
        chmod 600 "$ENV_FILE"
    fi

    local existing=() v
    for v in "${VOLUMES[@]}" postgres-data; do
        docker volume inspect "$(volume_name "$v")" >/dev/null 2>&1 && existing+=("$(volume_name "$v")")
    done
    if [ "${#existing[@]}" -gt 0 ]; then
        [ "$force" = 1 ] || die "project $(project_name) already has state (${existing[*]}): restore into a fresh project, or pass --force to delete it first"
        say "--force: removing project $(project_name) and its volumes"
        compose down --volumes --remove-orphans >/dev/null 2>&1
    fi

    ensure_data_dir
    ensure_base_images
    build_image
    say "creating the volumes and filling them from the backup"
    # Created here with Compose's labels (so Compose adopts them as its own), not by `up --no-start`, which
    # in docker-compose 1.29 waits for the one-shots a service depends on, and they cannot run yet.
    for v in "${VOLUMES[@]}"; do
        docker volume create --label "com.docker.compose.project=$(project_name)" \
            --label "com.docker.compose.volume=$v" "$(volume_name "$v")" >/dev/null
    done
    local args=()
    for v in "${VOLUMES[@]}"; do args+=(-v "$(volume_name "$v"):/restore/$v"); done
    docker run --rm -i --user 0 --entrypoint tar "${args[@]}" "$(image_ref)" -C /restore -xpf - <"$b/volumes.tar"

    say "starting postgres alone and loading both databases"
    compose up -d --no-build postgres >/dev/null 2>&1
    local deadline=$((SECONDS + 300))
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q postgres)")" = healthy ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "postgres did not become healthy"
        sleep 2
    done
    pg_env 'pg_restore -U "$POSTGRES_USER" -d "$POSTGRES_DB" --no-owner --exit-on-error' <"$b/postgres/dagster.dump"
    pg_env 'pg_restore -U "$POSTGRES_USER" -d "$MLFLOW_POSTGRES_DB" --no-owner --exit-on-error' <"$b/postgres/mlflow.dump"
    say "state restored in $(elapsed "$started"); bringing up the rest"
    EXAMPASS_NO_BUILD=1 cmd_up
    say "restore of $(basename "$archive") complete in $(elapsed "$started")"
}

main() {
    local cmd="${1:-}"
    [ $# -eq 0 ] || shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        backup) cmd_backup "$@" ;;
        wait)
            ensure_engine; find_compose; SINCE="the wait began"
            local started=$SECONDS; wait_healthy "$started"; wait_ready "$started" ;;
        compose) ensure_engine; find_compose; compose "$@" ;;
        restore) cmd_restore "$@" ;;
        *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = help ] || exit 2 ;;
    esac
}

# On one line with main: bash reads a script as it runs, so an edit made meanwhile cannot run half a line.
main "$@"; exit
