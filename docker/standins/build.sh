#!/usr/bin/env bash
# Stand-in base images for a machine whose Docker engine reaches no image registry.
#
# docker/Dockerfile starts FROM python:3.11-slim-bookworm and docker-compose.yml runs postgres:16-bookworm (and,
# from phase 2 on, redis:7-bookworm and nginx:bookworm). Without a registry none of them can be pulled, so this
# script builds each one from Debian's own packages (mmdebstrap -> docker import -> a small Dockerfile layer for
# ENV/ENTRYPOINT/CMD) and tags it with the very name the stack uses. A name that is already present, or that
# `docker pull` can fetch, is left alone: machines with a registry keep the official images.
#
# The root file systems are cached as tarballs (EXAMPASS_STANDIN_CACHE, default ~/.cache/exampass/standins), keyed
# by a hash of each recipe, so a second run on the same machine needs no Debian mirror and takes seconds.
#
# Usage: docker/standins/build.sh [--force] [python|postgres|redis|nginx ...]   (default: all four)
#   --force  rebuild the stand-in even if an image of that name exists (never replaces an official image
#            unless it was asked for by name)
# Settings: EXAMPASS_DEBIAN_MIRROR (default http://deb.debian.org/debian), EXAMPASS_DEBIAN_SECURITY
#           (default http://deb.debian.org/debian-security), EXAMPASS_STANDIN_CACHE, DOCKER (client to use).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE=bookworm
MIRROR="${EXAMPASS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${EXAMPASS_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
CACHE="${EXAMPASS_STANDIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/exampass/standins}"
DOCKER="${DOCKER:-docker}"
# Bumped when a recipe changes in a way the hash of this script would not show (it never has to be, in practice:
# the key below already hashes this file and the image's folder).
RECIPE_EPOCH=1

say() { printf '[standins] %s\n' "$*"; }
die() { printf '[standins] ERROR: %s\n' "$*" >&2; exit 1; }

# name -> the tag the stack uses.
declare -A TAG=(
    [python]="python:3.11-slim-bookworm"
    [postgres]="postgres:16-bookworm"
    [redis]="redis:7-bookworm"
    [nginx]="nginx:bookworm"
)
# name -> the Debian packages its root file system holds on top of Essential + apt (no Recommends).
declare -A PACKAGES=(
    [python]="python3.11 python3-pip python3-venv ca-certificates netbase tzdata"
    [postgres]="postgresql-15 postgresql-client-15 ca-certificates tzdata"
    [redis]="redis-server redis-tools tzdata"
    [nginx]="nginx gettext-base curl ca-certificates tzdata"
)

# Run inside the new root file system by mmdebstrap, after the packages are installed ($1 is its path).
customize_python() {
    cat <<'HOOK'
set -e
root="$1"
# The official image's Python lives in /usr/local; ours is Debian's 3.11, linked where the Dockerfile expects it.
for name in python3 python python3.11; do ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
printf '#!/bin/sh\nexec /usr/local/bin/python3 -m pip "$@"\n' > "$root/usr/local/bin/pip"
chmod 0755 "$root/usr/local/bin/pip"; ln -sf pip "$root/usr/local/bin/pip3"
# The official image lets pip install system-wide (into /usr/local); Debian marks its Python externally managed.
rm -f "$root/usr/lib/python3.11/EXTERNALLY-MANAGED"
HOOK
}
customize_postgres() {
    cat <<'HOOK'
set -e
root="$1"
# No cluster of Debian's own (pg_createcluster ran in postinst): the entrypoint initialises $PGDATA itself.
rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
# As in the official image: initdb copies this sample, so every new cluster listens beyond the container.
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root/usr/share/postgresql/15/postgresql.conf.sample"
grep -q "^listen_addresses = '\*'" "$root/usr/share/postgresql/15/postgresql.conf.sample"
mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql" "$root/docker-entrypoint-initdb.d"
chroot "$root" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
chmod 3777 "$root/var/run/postgresql"
HOOK
}
customize_redis() {
    cat <<'HOOK'
set -e
root="$1"
mkdir -p "$root/data"
chroot "$root" chown redis:redis /data
HOOK
}
customize_nginx() {
    cat <<'HOOK'
set -e
root="$1"
# The official image's layout: its own nginx.conf including conf.d/*.conf, no Debian sites-enabled, a user
# `nginx`, logs to the container's stdout/stderr.
rm -f "$root/etc/nginx/sites-enabled/default"
chroot "$root" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nginx
mkdir -p "$root/etc/nginx/conf.d" "$root/docker-entrypoint.d" "$root/var/cache/nginx"
ln -sf /dev/stdout "$root/var/log/nginx/access.log"
ln -sf /dev/stderr "$root/var/log/nginx/error.log"
HOOK
}

recipe_key() {
    local name="$1"
    {
        printf '%s\n' "$RECIPE_EPOCH" "$SUITE" "$MIRROR" "${PACKAGES[$name]}"
        "customize_$name"
    } | sha256sum | cut -c1-16
}

rootfs() {
    # Prints the path of the cached root file system tarball for $1, building it first when missing.
    local name="$1" key tarball hook
    key="$(recipe_key "$name")"
    tarball="$CACHE/$name-$SUITE-$key.tar"
    if [ -s "$tarball" ]; then
        say "$name: cached root file system $(basename "$tarball")" >&2
    else
        command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
        [ "$(id -u)" -eq 0 ] || die "building a root file system needs root (mmdebstrap --mode=root)"
        mkdir -p "$CACHE"
        hook="$(mktemp)"
        "customize_$name" > "$hook"
        say "$name: mmdebstrap $SUITE + ${PACKAGES[$name]} (about 30 s)" >&2
        local started=$SECONDS
        # Docs, man pages and translations are dropped as the official slim images drop them.
        if ! mmdebstrap --quiet --variant=apt --mode=root --format=tar \
            --include="${PACKAGES[$name]// /,}" \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook="sh $hook \"\$1\"" \
            "$SUITE" "$tarball.part" \
            "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
            >&2; then
            rm -f "$hook" "$tarball.part"
            die "$name: mmdebstrap failed (is $MIRROR reachable? set EXAMPASS_DEBIAN_MIRROR)"
        fi
        rm -f "$hook"
        mv "$tarball.part" "$tarball"
        # Older recipes of the same image are dead weight.
        find "$CACHE" -maxdepth 1 -name "$name-$SUITE-*.tar" ! -name "$(basename "$tarball")" -delete
        say "$name: root file system built in $((SECONDS - started)) s ($(du -h "$tarball" | cut -f1))" >&2
    fi
    printf '%s\n' "$tarball"
}

build_one() {
    local name="$1" force="$2" tag="${TAG[$1]}" key base tarball started=$SECONDS
    if [ "$force" != 1 ]; then
        if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
            say "$name: $tag is present$(standin_note "$tag"), nothing to do"
            return 0
        fi
        if timeout 120 "$DOCKER" pull -q "$tag" >/dev/null 2>&1; then
            say "$name: pulled the official $tag"
            return 0
        fi
        say "$name: $tag cannot be pulled (no registry): building a stand-in from Debian packages"
    fi
    key="$(recipe_key "$name")"
    tarball="$(rootfs "$name")"
    base="exampass-standin-rootfs:$name-$key"
    if ! "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
        say "$name: docker import -> $base"
        "$DOCKER" import "$tarball" "$base" >/dev/null
    fi
    say "$name: docker build -> $tag"
    local log
    log="$(mktemp)"
    if ! "$DOCKER" build --build-arg "BASE=$base" --label "org.exampass.standin.recipe=$key" \
        -t "$tag" "$HERE/$name" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "$name: docker build of the stand-in layer failed"
    fi
    rm -f "$log"
    say "$name: $tag ready in $((SECONDS - started)) s ($("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

standin_note() {
    if [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "org.exampass.standin"}}' "$1" 2>/dev/null)" = true ]; then
        printf ' (an ExamPass stand-in)'
    fi
}

main() {
    local force=0 names=()
    if [ "${1:-}" = --tag-of ]; then
        printf '%s\n' "${TAG[${2:-}]:?--tag-of NAME: one of ${!TAG[*]}}"
        return 0
    fi
    for arg in "$@"; do
        case "$arg" in
            --force) force=1 ;;
            -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
            *) [ -n "${TAG[$arg]:-}" ] || die "unknown image '$arg' (one of: ${!TAG[*]})"; names+=("$arg") ;;
        esac
    done
    [ "${#names[@]}" -gt 0 ] || names=(python postgres redis nginx)
    "$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers ('$DOCKER info' failed): start dockerd"
    local started=$SECONDS
    for name in "${names[@]}"; do
        build_one "$name" "$force"
    done
    say "done in $((SECONDS - started)) s"
}

main "$@"; exit
