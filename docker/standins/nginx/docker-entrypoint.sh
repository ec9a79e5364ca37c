#!/bin/sh
# The official image's entrypoint in brief: before nginx starts, render /etc/nginx/templates/*.template into
# /etc/nginx/conf.d/ with envsubst (only variables that are set are substituted, so nginx's own $variables
# survive), then run /docker-entrypoint.d/*.sh.
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    templates=/etc/nginx/templates
    if [ -d "$templates" ]; then
        defined="$(printf '${%s} ' $(env | cut -d= -f1))"
        for template in "$templates"/*.template; do
            [ -f "$template" ] || continue
            out="/etc/nginx/conf.d/$(basename "$template" .template)"
            envsubst "$defined" < "$template" > "$out"
            echo "$0: rendered $template -> $out"
        done
    fi
    for script in /docker-entrypoint.d/*.sh; do
        if [ -x "$script" ]; then "$script"; fi
    done
fi
exec "$@"
