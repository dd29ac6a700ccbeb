#!/usr/bin/env bash
# Bring the Compose stack up or down (`make stack`, `make stack-down`).
#
#   deployments/compose/stack.sh up        secrets (secrets.sh), `up -d`, wait for the API
#   deployments/compose/stack.sh down      stop and remove the containers (volumes are kept)
#   deployments/compose/stack.sh has-image exit 0 when the UICI image exists locally
#   deployments/compose/stack.sh compose ARGS...   any docker-compose command on this stack
#
# Uses `docker compose` (v2) when present, else `docker-compose` (Debian's 1.29).
# UICI_STACK_TIMEOUT (default 300) bounds the wait for the API to become ready.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

compose() {
    local env_file=.env
    [ -f "$env_file" ] || env_file=.env.example
    if docker compose version >/dev/null 2>&1; then
        docker compose -f docker-compose.yml --env-file "$env_file" "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose -f docker-compose.yml --env-file "$env_file" "$@"
    else
        echo "stack: neither 'docker compose' nor 'docker-compose' is installed" \
            "(Debian: apt-get install docker-compose)" >&2
        exit 1
    fi
}

image() {
    local file=.env
    [ -f "$file" ] || file=.env.example
    local name
    name=$(sed -n 's/^UICI_IMAGE=//p' "$file" | tail -n 1)
    echo "${UICI_IMAGE:-${name:-uici:0.1.0}}"
}

# Values still at their placeholder would start a stack nobody can use (or a guessable one).
check_env() {
    local problems=0
    if grep -q '=CHANGE_ME$' .env; then
        echo "stack: .env still has CHANGE_ME values: $(grep '=CHANGE_ME$' .env | cut -d= -f1 | tr '\n' ' ')" >&2
        problems=1
    fi
    for variable in UICI_WEBHOOK_KEY_SHA256 UICI_READER_KEY_SHA256; do
        if [ -z "$(sed -n "s/^$variable=//p" .env | tail -n 1)" ]; then
            echo "stack: $variable is empty in .env (run deployments/compose/secrets.sh)" >&2
            problems=1
        fi
    done
    [ -f secrets/uici-webhook-key ] || {
        echo "stack: secrets/uici-webhook-key is missing (run deployments/compose/secrets.sh)" >&2
        problems=1
    }
    return "$problems"
}

api_url() {
    local published
    published=$(compose port --index=1 uici-api 8080 2>/dev/null | tail -n 1) || true
    echo "http://${published:-127.0.0.1:8080}"
}

case "${1:-}" in
    has-image)
        docker image inspect "$(image)" >/dev/null 2>&1
        ;;
    up)
        if ! docker image inspect "$(image)" >/dev/null 2>&1; then
            echo "stack: the image $(image) is missing; build it first: make image" >&2
            exit 1
        fi
        ./secrets.sh
        check_env
        compose up -d --remove-orphans
        deadline=$((SECONDS + ${UICI_STACK_TIMEOUT:-300}))
        until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q uici-api | head -n 1)" 2>/dev/null)" = healthy ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "stack: uici-api is not ready after ${UICI_STACK_TIMEOUT:-300} s; see:" \
                    "deployments/compose/stack.sh compose logs uici-api" >&2
                compose ps >&2 || true
                exit 1
            fi
            sleep 3
        done
        bind=$(sed -n 's/^UICI_BIND_ADDRESS=//p' .env | tail -n 1)
        bind=${bind:-127.0.0.1}
        port() { sed -n "s/^$1=//p" .env | tail -n 1; }
        compose ps
        echo
        echo "stack: up. UICI API     $(api_url)  (docs: /docs)"
        echo "       Prefect UI      http://$bind:$(port PREFECT_PORT)"
        echo "       Grafana         http://$bind:$(port GRAFANA_PORT)  (admin; password: GRAFANA_ADMIN_PASSWORD in $here/.env)"
        echo "       Prometheus      http://$bind:$(port PROMETHEUS_PORT)"
        echo "       Alertmanager    http://$bind:$(port ALERTMANAGER_PORT)"
        echo "       Loki            http://$bind:$(port LOKI_PORT)"
        echo "       keys            $here/secrets/  · try it: make drill · stop: make stack-down"
        ;;
    down)
        compose down --remove-orphans
        ;;
    compose)
        shift
        compose "$@"
        ;;
    *)
        sed -n '2,10p' "$here/$(basename "$0")" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
