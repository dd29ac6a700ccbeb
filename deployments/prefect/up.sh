#!/usr/bin/env bash
# Start, on 127.0.0.1: a Prefect server (SQLite under .uici/prefect), the work pool, the
# deployments of prefect.yaml, and one process worker. Idempotent; `down.sh` stops exactly
# what this started (the processes whose pids it wrote).
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
# React to new runs in ~2 s instead of Prefect's default 10 s poll.
export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-2}
export PREFECT_WORKER_PREFETCH_SECONDS=${PREFECT_WORKER_PREFETCH_SECONDS:-2}
# UICI's own loggers (request and incident ids) also reach the flow run logs in the UI.
export PREFECT_LOGGING_EXTRA_LOGGERS=${PREFECT_LOGGING_EXTRA_LOGGERS:-uici}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
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
