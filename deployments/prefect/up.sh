#!/usr/bin/env bash
# Start, on 127.0.0.1: a Prefect server (SQLite under .uici/prefect), the work pool, the
# deployments of prefect.yaml, and one process worker. Idempotent; `down.sh` stops exactly
# what this started (the processes whose pids it wrote).
#
# UICI_PREFECT_DB=postgres puts the server's database in a PostgreSQL cluster of its own
# (Debian's `postgresql` package, data under .uici/postgres, loopback only, port
# UICI_PREFECT_PG_PORT): SQLite answers concurrent writes with "database is locked", which
# Prefect's client waits out with a 2 s back-off, so use Postgres once incidents overlap.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
state=${UICI_STATE_DIR:-$root/.uici}
mkdir -p "$state/prefect"
bin="$root/.venv/bin"
port=${UICI_PREFECT_PORT:-4200}

export PREFECT_HOME="$state/prefect"
export PREFECT_API_URL="http://127.0.0.1:$port/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export UICI_PROJECT_DIR="$root"
# React to new runs within ~1 s instead of Prefect's default 10 s poll.
export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-1}
export PREFECT_WORKER_PREFETCH_SECONDS=${PREFECT_WORKER_PREFETCH_SECONDS:-1}
# UICI's own loggers (request and incident ids) also reach the flow run logs in the UI.
export PREFECT_LOGGING_EXTRA_LOGGERS=${PREFECT_LOGGING_EXTRA_LOGGERS:-uici}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_postgres() {
    local pgbin pgport=${UICI_PREFECT_PG_PORT:-54329} data="$state/postgres" as=()
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$pgbin" ]; then
        echo "up: UICI_PREFECT_DB=postgres needs Debian's postgresql (apt-get install postgresql)" >&2
        exit 1
    fi
    # PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
    [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres "$data"
        if ! "${as[@]}" test -w "$data"; then
            echo "up: the postgres user cannot write $data; make its parent directories" \
                "searchable (chmod o+x) or set UICI_STATE_DIR elsewhere" >&2
            exit 1
        fi
        "${as[@]}" "$pgbin/initdb" -D "$data" -A trust -U prefect >"$state/postgres-init.log" 2>&1 \
            || { cat "$state/postgres-init.log" >&2; exit 1; }
    fi
    if ! "${as[@]}" "$pgbin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "up: starting PostgreSQL on 127.0.0.1:$pgport (log: $state/postgres.log)"
        touch "$state/postgres.log"
        [ "$(id -u)" -eq 0 ] && chown postgres "$state/postgres.log"
        "${as[@]}" "$pgbin/pg_ctl" -D "$data" -l "$state/postgres.log" -w start \
            -o "-h 127.0.0.1 -p $pgport -k $data" >/dev/null \
            || { cat "$state/postgres.log" >&2; exit 1; }
    fi
    "${as[@]}" "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U prefect -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'prefect'" | grep -q 1 \
        || "${as[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U prefect prefect
    echo "$pgbin" >"$state/postgres.bin"
    export PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect@127.0.0.1:$pgport/prefect"
}

case "${UICI_PREFECT_DB:-sqlite}" in
    sqlite) ;;
    postgres) start_postgres ;;
    *) echo "up: UICI_PREFECT_DB must be sqlite or postgres, not '$UICI_PREFECT_DB'" >&2; exit 1 ;;
esac
# The server's health endpoint, asked with the venv's Python (no other HTTP client needed).
healthy() {
    "$bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$PREFECT_API_URL/health" >/dev/null 2>&1
}

if ! alive "$state/prefect-server.pid"; then
    if healthy; then
        echo "up: something else already answers on 127.0.0.1:$port; set UICI_PREFECT_PORT" >&2
        exit 1
    fi
    echo "up: starting the Prefect server on 127.0.0.1:$port (log: $state/prefect-server.log)"
    nohup "$bin/prefect" server start --host 127.0.0.1 --port "$port" \
        >"$state/prefect-server.log" 2>&1 &
    echo $! >"$state/prefect-server.pid"
fi
for _ in $(seq 1 90); do
    healthy && break
    sleep 1
done
healthy || { echo "up: the server did not answer; see $state/prefect-server.log" >&2; exit 1; }

"$bin/prefect" work-pool inspect uici-process >/dev/null 2>&1 \
    || "$bin/prefect" work-pool create uici-process --type process >/dev/null
"$bin/prefect" --no-prompt deploy --all >"$state/prefect-deploy.log" 2>&1 \
    || { cat "$state/prefect-deploy.log" >&2; exit 1; }

if ! alive "$state/prefect-worker.pid"; then
    echo "up: starting a worker for pool uici-process (log: $state/prefect-worker.log)"
    nohup "$bin/prefect" worker start --pool uici-process --limit 4 \
        >"$state/prefect-worker.log" 2>&1 &
    echo $! >"$state/prefect-worker.pid"
fi
echo "up: Prefect UI at http://127.0.0.1:$port  (API $PREFECT_API_URL); stop with: make down"
