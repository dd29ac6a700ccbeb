"""Time from an Alertmanager webhook to the first operation starting in a deployed run.

Everything real on loopback: `deployments/prefect/up.sh` (Prefect server, the deployments, one
process worker), `uici serve` with its dispatcher, a crash-looping Docker container as the
target. Each sample posts one new alert and waits for the incident's first `operation.started`
event (written by the flow run inside the worker's subprocess), then for the run to finish so
samples do not overlap. Splits the time into: webhook -> run created (dispatcher), created ->
running (worker poll + subprocess start), running -> first operation (flow start, planning).

Runs once with the Prefect server on SQLite (the default) and once on PostgreSQL
(`UICI_PREFECT_DB=postgres`, when Debian's postgresql is installed: `make bench` installs it).
The worker poll interval is `PREFECT_WORKER_QUERY_SECONDS` (up.sh default 1 s); set it in the
environment to compare.
"""

from __future__ import annotations

import glob
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.evaluation.failures import FailureLab
from agent.service.auth import key_hash
from tests.api_support import KEYS, alert, notification
from tests.service_process import ServiceProcess, free_port, prefect_stack

SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "7"))
WAIT_SECONDS = 120


def first_event(db_path: Path, incident: str, type_: str) -> float | None:
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT MIN(at) FROM events WHERE incident_id = ? AND type = ?", (incident, type_)
        ).fetchone()
    return row[0]


def incident_of(db_path: Path, fingerprint: str) -> str | None:
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT incident_id FROM alerts WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
    return row[0] if row else None


def run_times(api: str, db_path: Path, incident: str) -> tuple[float, float]:
    """The flow run's creation and start times (Unix seconds) from the Prefect API."""
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT result FROM dispatch WHERE incident_id = ? AND kind = 'diagnose'", (incident,)
        )
        run_id = row.fetchone()[0]
    run = httpx.get(f"{api}/flow_runs/{run_id}").json()
    created = datetime.fromisoformat(run["created"]).timestamp()
    started = datetime.fromisoformat(run["start_time"]).timestamp()
    return created, started


def sample(service_url: str, api: str, db_path: Path, target: str) -> dict[str, float]:
    fingerprint = uuid.uuid4().hex[:16]
    body = notification(alert(target, fingerprint=fingerprint, uici_env="local-docker"))
    sent = time.time()
    response = httpx.post(
        f"{service_url}/webhooks/alertmanager",
        json=body,
        headers={"Authorization": f"Bearer {KEYS['webhook']}"},
        timeout=10,
    )
    response.raise_for_status()
    deadline = time.monotonic() + WAIT_SECONDS
    incident = incident_of(db_path, fingerprint)
    assert incident, "the webhook answered 2xx but stored no alert"
    first_op = None
    while time.monotonic() < deadline:
        first_op = first_op or first_event(db_path, incident, "operation.started")
        if first_op and first_event(db_path, incident, "incident.diagnosed"):
            break
        time.sleep(0.05)
    if first_op is None:
        raise RuntimeError(f"no operation started within {WAIT_SECONDS} s for {incident}")
    created, started = run_times(api, db_path, incident)
    return {
        "total": first_op - sent,
        "dispatch": created - sent,
        "pickup": started - created,
        "first_op": first_op - started,
    }


def measure(database: str, lab: FailureLab) -> None:
    state = Path(tempfile.mkdtemp(prefix="uici-bench-latency-"))
    state.chmod(0o755)  # the postgres user must reach its data directory below
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UICI_", "PREFECT_"))}
    if "PREFECT_WORKER_QUERY_SECONDS" in os.environ:
        env["PREFECT_WORKER_QUERY_SECONDS"] = os.environ["PREFECT_WORKER_QUERY_SECONDS"]
    env.update(
        UICI_STATE_DIR=str(state / "state"),
        UICI_PREFECT_PORT=str(port),
        UICI_STORAGE_URL=f"sqlite:///{state}/uici.db",
        UICI_LOG_LEVEL="WARNING",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
        UICI_PREFECT_DB=database,
    )
    service = ServiceProcess(env, state / "serve.log")
    try:
        target = lab.get("missing_env").target
        up = prefect_stack("up", env)
        if up.returncode != 0:
            raise RuntimeError(up.stdout + up.stderr)
        service.start()
        poll = env.get("PREFECT_WORKER_QUERY_SECONDS", "up.sh default")
        print(
            f"webhook -> first operation in a deployed run, Prefect on {database}: "
            f"{SAMPLES} samples after 1 warm-up, PREFECT_WORKER_QUERY_SECONDS={poll}"
        )
        api = env["PREFECT_API_URL"]
        sample(service.url, api, state / "uici.db", target)  # warm-up: first import, caches
        samples = [sample(service.url, api, state / "uici.db", target) for _ in range(SAMPLES)]
        totals = sorted(s["total"] for s in samples)
        p95 = totals[min(len(totals) - 1, round(0.95 * (len(totals) - 1)))]
        parts = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        print(
            f"  total: median {parts['total']:.2f} s, p95 {p95:.2f} s, max {totals[-1]:.2f} s "
            f"(goal p95 < 2 s)"
        )
        print(
            f"  medians: webhook -> run created {parts['dispatch'] * 1000:.0f} ms, "
            f"created -> running {parts['pickup']:.2f} s (worker poll + subprocess start), "
            f"running -> first operation {parts['first_op']:.2f} s"
        )
    finally:
        service.stop()
        prefect_stack("down", env)


def main() -> None:
    lab = FailureLab(docker.from_env(), prefix="uici-bench-latency")
    try:
        measure("sqlite", lab)
        if glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
            measure("postgres", lab)
        else:
            print(
                "  postgres: skipped, Debian's postgresql is not installed (make bench installs it)"
            )
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
