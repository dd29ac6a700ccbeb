#!/usr/bin/env bash
# Stop exactly what up.sh started: the processes whose pids it wrote under .uici/.
set -uo pipefail
cd "$(dirname "$0")/../.."
state=${UICI_STATE_DIR:-.uici}
for name in prefect-worker prefect-server; do
    pidfile="$state/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"  # background jobs ignore SIGINT; SIGTERM stops them
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "down: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
done
# The PostgreSQL cluster of UICI_PREFECT_DB=postgres, if up.sh started one.
if [ -f "$state/postgres.bin" ] && [ -f "$state/postgres/PG_VERSION" ]; then
    as=()
    [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$(cat "$state/postgres.bin")/pg_ctl" -D "$state/postgres" -m fast -w stop \
        >/dev/null 2>&1 && echo "down: stopped PostgreSQL"
fi
