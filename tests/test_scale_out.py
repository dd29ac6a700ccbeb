"""Scale-out, every part real: a Prefect server on PostgreSQL (deployments/prefect/up.sh,
UICI_PREFECT_DB=postgres), UICI's store on another PostgreSQL database, two `uici serve`
processes (both dispatching) on that store, three Prefect process workers on the pool, and
OOM-killed Docker containers whose runbook (service-down) restarts them without a person
(the shipped configuration: local-docker auto-approves, the runbook lists restart_service).
An alert storm with duplicates goes to both API processes at once; while a restart is in
progress, the worker running it is SIGKILLed together with the flow-run processes it started,
as when its machine dies.

Then: every distinct alert is one incident and one flow run; a target is restarted at most
once (the store's `writes` and the engine's own start events agree); every incident ends
in a final state: diagnosed, resolved, escalated or failed. An incident of a killed run is
left `diagnosing` with its flow run `Running` (nothing in Prefect OSS notices a dead worker),
so the reconciler (flows/reconcile.py, which every health sweep runs) escalates it once the
run budget is over, resolving its write by observing the container (done if the restart
took effect, failed if it was never sent, unknown if it cannot tell): escalated is visible,
not lost. The test hands the reconciler a clock one run budget ahead instead of waiting the
budget (about 35 minutes) out. And each API process's `WS /ws/events` delivered every event
of the store exactly once, in id order, with none missing."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from websockets.sync.client import connect

from agent.evaluation.failures import RUN_LABEL, FailureLab, wait_for
from agent.service.auth import key_hash
from tests.api_support import KEYS, alert, notification
from tests.postgres import PostgresCluster
from tests.service_process import REPO_ROOT, ServiceProcess, free_port, prefect_stack

# Distinct alerts, one OOM-killed container each: more than a worker's limit (4), so that
# the runs cannot all be on the worker that is killed.
ALERTS = 5
COPIES = 3  # each alert is delivered this often, spread over both API processes
# Final incident states: nothing more happens to them without a person or a new alert.
FINAL = {"diagnosed", "resolved", "escalated", "failed"}
# What Prefect still says of a run whose process is gone.
ALIVE_IN_PREFECT = {"RUNNING", "PENDING"}
# pytest's timeout for this test, and the part of it the test's own waits may use (the rest
# is for stopping everything it started).
TIMEOUT = 900
BUDGET = TIMEOUT - 90

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


# --- processes and containers ----------------------------------------------------------


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _status(pid: int, field: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def parent(pid: int) -> int | None:
    found = _status(pid, "PPid")
    return int(found) if found else None


def flow_run_processes(api: str) -> dict[str, int]:
    """The live process of each flow run of the Prefect server at `api` (Prefect's engine,
    whose environment names its run; the workspace supervisor execs into it)."""
    found: dict[str, int] = {}
    for pid in _pids():
        environment = _environ(pid)
        run_id = environment.get("PREFECT__FLOW_RUN_ID")
        alive = not _status(pid, "State").startswith(("Z", "X"))
        if run_id and environment.get("PREFECT_API_URL") == api and alive:
            found[run_id] = pid
    return found


class EngineEvents:
    """The engine's events about this run's containers, followed live from before the storm.
    (Not read back later with `since`: dockerd keeps only its last 256 events, which a busy
    engine overwrites in minutes.)"""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        self.stream = client.events(
            filters={"type": "container", "label": f"{RUN_LABEL}={run_id}"}, decode=True
        )
        self.seen: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):  # ends when the stream is closed
            for event in self.stream:
                name = (event.get("Actor") or {}).get("Attributes", {}).get("name", "")
                self.seen.append((name, event.get("Action") or event.get("status") or ""))

    def count(self, name: str, action: str) -> int:
        return sum(1 for seen in self.seen if seen == (name, action))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()
        self.thread.join(10)


def exited(container: Any) -> bool:
    container.reload()
    return bool(container.status == "exited")


def kill_worker_and_its_runs(worker: int, run: int) -> list[int]:
    """SIGKILL a worker and every flow-run process it started (each runs in a session of its
    own, so a signal to the worker's group misses them). The run and the worker are frozen
    (SIGSTOP) first, at once: from then on neither acts, as if killed there, while the
    worker's other runs are looked up. Returns the runs' pids."""
    for pid in (run, worker):
        os.kill(pid, signal.SIGSTOP)
    children = [pid for pid in _pids() if parent(pid) == worker]
    groups = set()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(child))
    own = os.getpgrp()
    try:
        group = os.getpgid(worker)
    except ProcessLookupError:
        group = own
    if group != own:
        os.killpg(group, signal.SIGKILL)
    else:  # up.sh's worker is in this process's group: the worker alone
        os.kill(worker, signal.SIGKILL)
    for child_group in groups - {own}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child_group, signal.SIGKILL)
    return children


# --- the store and Prefect ----------------------------------------------------------------


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
        return db.execute(sql, args).fetchall()


def prefect_post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def run_states(api: str, run_ids: list[str]) -> dict[str, str]:
    if not run_ids:
        return {}
    runs = prefect_post(
        api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}, "limit": 200}
    )
    return {r["id"]: (r.get("state_type") or "") for r in runs}


# --- the event streams --------------------------------------------------------------------


class EventStream:
    """One client of an API process's WS /ws/events, collecting event ids in a thread."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.replace("http://", "ws://") + "/ws/events"
        self.ids: list[int] = []
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EventStream:
        self.thread.start()
        if not self.connected.wait(30) or self.error is not None:
            raise RuntimeError(f"no WebSocket connection to {self.url}: {self.error!r}")
        return self

    def _run(self) -> None:
        try:
            headers = {"Authorization": f"Bearer {KEYS['reader']}"}
            with connect(self.url, additional_headers=headers, open_timeout=30) as ws:
                self.connected.set()
                while not self.stop.is_set():
                    try:
                        message = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    self.ids.append(int(json.loads(message)["id"]))
        except BaseException as exc:
            self.error = exc
            self.connected.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


# --- everything the test starts -----------------------------------------------------------


class Stack:
    """up.sh's server (on its own PostgreSQL) and worker, two more workers, two `uici serve`
    on the store, and an event stream from each; `close()` stops all of it, whatever failed."""

    def __init__(self, store: str, workdir: Path) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.store = store
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("UICI_", "PREFECT_"))}
        self.env.update(
            UICI_STATE_DIR=str(self.state),
            UICI_PREFECT_PORT=str(port),
            UICI_PREFECT_DB="postgres",
            UICI_PREFECT_PG_PORT=str(free_port()),
            UICI_STORAGE_URL=store,
            PREFECT_API_URL=self.api,
            UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
            UICI_READER_KEY_SHA256=key_hash(KEYS["reader"]),
            # A busy machine must not make the server give up on its database (default 5 s).
            PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT="30",
        )
        self.apis = [ServiceProcess(self.env, workdir / f"serve-{i}.log") for i in (1, 2)]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.streams: list[EventStream] = []
        self.worker_pids: set[int] = set()

    def start(self, meanwhile: Callable[[], None]) -> None:
        """up.sh in a thread while the API processes (they need only the store; their
        dispatchers retry until Prefect answers) and `meanwhile` start, then the workers."""
        done: list[subprocess.CompletedProcess[str]] = []
        up = threading.Thread(target=lambda: done.append(prefect_stack("up", self.env)))
        up.start()
        try:
            for service in self.apis:
                service.start(timeout=90)
            self.streams = [EventStream(service.url).start() for service in self.apis]
            meanwhile()
        finally:
            up.join(330)
        assert done and done[0].returncode == 0, done and done[0].stdout + done[0].stderr
        # The health sweep's cron would sweep the whole engine (other tests' containers too).
        sweep = httpx.get(f"{self.api}/deployments/name/health-sweep/health-sweep", timeout=30)
        sweep.raise_for_status()
        prefect_post(self.api, f"/deployments/{sweep.json()['id']}/pause_deployment", {})
        first = int((self.state / "prefect-worker.pid").read_text())
        # Two more workers, with exactly the environment up.sh gave its own.
        environment = _environ(first)
        assert environment.get("PREFECT_API_URL") == self.api, "the worker's environment?"
        for i in (2, 3):
            with (self.workdir / f"worker-{i}.log").open("ab") as log:
                self.workers.append(
                    subprocess.Popen(
                        [str(REPO_ROOT / ".venv/bin/prefect"), "worker", "start",
                         "--pool", "uici-process", "--limit", "4", "--name", f"scale-out-{i}"],
                        env=environment, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )  # fmt: skip
        self.worker_pids = {first, *(w.pid for w in self.workers)}

    def workers_online(self) -> int:
        workers = prefect_post(self.api, "/work_pools/uici-process/workers/filter", {"limit": 50})
        return sum(w.get("status") == "ONLINE" for w in workers)

    def story(self) -> str:
        """What the store and the logs say, for a failure's message."""
        incidents = query(self.store, "SELECT id, status, service, flow_run_id FROM incidents")
        writes = query(self.store, "SELECT incident_id, target, state, outcome FROM writes")
        events = query(self.store, "SELECT type, COUNT(*) AS n FROM events GROUP BY type")
        logs = "".join(
            f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}"
            for log in [*sorted(self.workdir.glob("*.log")), *sorted(self.state.glob("*.log"))]
        )
        return f"\nincidents: {incidents}\nwrites: {writes}\nevents: {events}{logs}"

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for process in self.workers:  # teardown: no grace needed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for service in self.apis:
            with contextlib.suppress(Exception):
                service.stop()
        # Flow-run processes outlive a killed worker (they run in sessions of their own).
        for pid in flow_run_processes(self.api).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        down = prefect_stack("down", self.env)  # never raises here: it would hide the failure
        if down.returncode != 0:
            print(f"down.sh failed: {down.stdout}{down.stderr}")


# --- the test -----------------------------------------------------------------------------


def test_two_apis_three_workers_an_alert_storm_and_a_killed_worker(
    postgres: PostgresCluster, docker_client: docker.DockerClient
) -> None:
    began = time.monotonic()

    def left(cap: float) -> float:
        return max(1.0, min(cap, began + BUDGET - time.monotonic()))

    def mark(what: str) -> None:
        print(f"\n[{time.monotonic() - began:5.0f} s] {what}", end="")

    lab = FailureLab(docker_client)
    # The postgres user must reach up.sh's cluster under it (pytest's tmp_path is root-only).
    workdir = Path(tempfile.mkdtemp(prefix="uici-scale-out-"))
    workdir.chmod(0o755)
    store = postgres.database()
    stack = Stack(store, workdir)
    engine: EngineEvents | None = None
    try:
        names = [lab.name(f"storm-{chr(ord('a') + i)}") for i in range(ALERTS)]
        started_at: dict[str, str] = {}

        def targets() -> None:
            """The targets: containers the kernel OOM-killed, still down."""
            for name in names:
                lab.run(
                    name.removeprefix(f"{lab.prefix}-"),
                    ["sh", "-c", "echo INFO loading the whole dataset; tail /dev/zero"],
                    mem_limit="16m",
                    memswap_limit="16m",
                )
            for name in names:
                container = lab.client.containers.get(name)
                wait_for(functools.partial(exited, container), 60, f"{name} to be OOM-killed")
                started_at[name] = container.attrs["State"]["StartedAt"]

        stack.start(targets)
        mark(f"Prefect (server, 3 workers), two `uici serve`, {ALERTS} OOM-killed containers")
        api = stack.api
        assert query(store, "SELECT COUNT(*) AS n FROM events")[0]["n"] == 0
        engine = EngineEvents(lab.client, lab.run_id)
        wait_for(lambda: stack.workers_online() == 3, left(90), "three workers online")
        mark("3 workers online")

        # The storm: every alert COPIES times, over both APIs, all at once.
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        alerts = [
            alert(name, fingerprint=f"so{lab.run_id}{i:04d}", starts_at=now, uici_env="local-docker")
            for i, name in enumerate(names)
        ]  # fmt: skip
        deliveries = [
            (stack.apis[(i + copy) % 2].url, notification(a))
            for i, a in enumerate(alerts)
            for copy in range(COPIES)
        ]
        random.Random(16).shuffle(deliveries)
        answers: list[tuple[int, dict[str, Any]]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(deliveries))

        def deliver(url: str, body: dict[str, Any]) -> None:
            with httpx.Client(timeout=60) as client:
                barrier.wait(60)
                response = client.post(
                    f"{url}/webhooks/alertmanager",
                    json=body,
                    headers={"Authorization": f"Bearer {KEYS['webhook']}"},
                )
            with lock:
                answers.append((response.status_code, response.json()))

        senders = [threading.Thread(target=deliver, args=d) for d in deliveries]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(90)
        assert [status for status, _ in answers] == [202] * len(deliveries), answers
        outcomes = [a for _, body in answers for a in body["alerts"]]
        new = sorted(a["fingerprint"] for a in outcomes if a["outcome"] == "new_incident")
        assert new == sorted(a["fingerprint"] for a in alerts), outcomes
        assert sum(a["outcome"] == "repeat" for a in outcomes) == ALERTS * (COPIES - 1)
        mark(f"{len(deliveries)} deliveries answered 202, {ALERTS} new incidents")

        # A restart in progress (its intent recorded, not finished): kill the worker running
        # it, with every flow run that worker started.
        pending: dict[str, Any] = {}
        run_pid: int | None = None
        processes: dict[str, int] = {}
        scanned = 0.0
        deadline = time.monotonic() + left(300)
        with psycopg.connect(store, autocommit=True, row_factory=dict_row) as db:
            while run_pid is None:
                assert time.monotonic() < deadline, f"no remediation in progress: {stack.story()}"
                if time.monotonic() - scanned > 1:  # so that the kill needs no scan
                    processes, scanned = flow_run_processes(api), time.monotonic()
                found = db.execute(
                    "SELECT w.key, w.incident_id, w.target, i.flow_run_id FROM writes w"
                    " JOIN incidents i ON i.id = w.incident_id WHERE w.state = 'pending'"
                ).fetchall()
                if found:
                    pending = found[0]
                    run_pid = processes.get(pending["flow_run_id"])
                    if run_pid is None:
                        run_pid = flow_run_processes(api).get(pending["flow_run_id"])
                else:
                    time.sleep(0.005)
        worker = parent(run_pid)
        assert worker in stack.worker_pids, f"{run_pid} is a child of {worker}, not a worker"
        killed = kill_worker_and_its_runs(worker, run_pid)
        [at_kill] = query(store, "SELECT state FROM writes WHERE key = %s", pending["key"])
        mark(
            f"killed worker {worker} and its runs {killed} while write {pending['key']} on"
            f" {pending['target']} was {at_kill['state']}"
        )

        # Wait until every incident is final or its run is dead (Prefect says running or
        # pending, and no process runs it, for 5 s in a row).
        dead_since: dict[str, float] = {}
        deadline = time.monotonic() + left(300)
        while True:
            incidents = query(store, "SELECT id, status, flow_run_id FROM incidents")
            unfinished = [i for i in incidents if i["status"] not in FINAL]
            live = flow_run_processes(api)
            states = run_states(api, sorted({i["flow_run_id"] for i in unfinished}))
            for incident in unfinished:
                run = incident["flow_run_id"]
                if run not in live and states.get(run) in ALIVE_IN_PREFECT:
                    dead_since.setdefault(incident["id"], time.monotonic())
                else:
                    dead_since.pop(incident["id"], None)
            dead = {
                i["id"]
                for i in unfinished
                if time.monotonic() - dead_since.get(i["id"], time.monotonic()) > 5
            }
            if len(dead) == len(unfinished):
                break
            assert time.monotonic() < deadline, f"not final: {states} {stack.story()}"
            time.sleep(0.5)
        assert pending["incident_id"] in dead, "the killed run finished after all"
        mark(f"every run ended; dead: {sorted(dead)}")

        # The reconciler, as the next health sweep runs it, one run budget later.
        reconcile = subprocess.run(
            [sys.executable, "-c",
             "import asyncio, json, time\n"
             "from flows.reconcile import reconcile_incidents, run_budget_seconds\n"
             "from infrastructure.configuration.loader import load_config\n"
             "config = load_config()\n"
             "later = time.time() + run_budget_seconds(config) + 60\n"
             "print(json.dumps(asyncio.run(reconcile_incidents(config, now=later))))"],
            env={**stack.env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=left(180), check=False,
        )  # fmt: skip
        assert reconcile.returncode == 0, reconcile.stderr[-3000:]
        findings = json.loads(reconcile.stdout.strip().splitlines()[-1])
        assert {f["incident"] for f in findings} == dead, findings
        mark(f"reconciled: {findings}")

        # Every event reached both streams: wait for the last one, then for quiet.
        last = query(store, "SELECT COALESCE(MAX(id), 0) AS id FROM events")[0]["id"]
        wait_for(
            lambda: all((s.ids and s.ids[-1] >= last) or s.error for s in stack.streams),
            left(60),
            "the streams to deliver the last event",
        )
        time.sleep(2)
        for stream in stack.streams:
            stream.close()

        # One incident, one dispatch and one flow run per distinct alert.
        rows = query(store, "SELECT fingerprint, incident_id, deliveries FROM alerts")
        assert sorted(r["fingerprint"] for r in rows) == sorted(a["fingerprint"] for a in alerts)
        assert all(r["deliveries"] == COPIES for r in rows), rows
        incidents = query(store, "SELECT id, status, service, flow_run_id FROM incidents")
        assert sorted(i["id"] for i in incidents) == sorted(r["incident_id"] for r in rows)
        assert sorted(i["service"] for i in incidents) == sorted(names)
        dispatch = query(store, "SELECT incident_id, state FROM dispatch WHERE kind = 'diagnose'")
        assert sorted(d["incident_id"] for d in dispatch) == sorted(i["id"] for i in incidents)
        assert {d["state"] for d in dispatch} == {"done"}, dispatch
        deployment = httpx.get(f"{api}/deployments/name/diagnose-incident/diagnose-incident")
        runs = prefect_post(
            api, "/flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment.json()["id"]]}}, "limit": 200},
        )  # fmt: skip
        assert sorted(r["id"] for r in runs) == sorted(i["flow_run_id"] for i in incidents)

        # Nothing lost: every incident is final; those of the killed runs were escalated.
        status = {i["id"]: i["status"] for i in incidents}
        assert set(status.values()) <= FINAL, status
        assert all(status[i] == "escalated" for i in dead), status

        # At most once: per incident and target one write sent at most, none left pending, and
        # the engine restarted each container exactly as often as a restart took effect.
        writes = query(store, "SELECT incident_id, target, operation, state FROM writes")
        assert not [w for w in writes if w["state"] == "pending"], writes
        sent: dict[tuple[str, str], int] = {}
        for w in writes:
            if w["state"] in ("done", "unknown"):
                key = (w["incident_id"], w["target"])
                sent[key] = sent.get(key, 0) + 1
        assert all(n == 1 for n in sent.values()), writes
        time.sleep(1)  # let the engine's last events arrive
        incident_of = {i["service"]: i["id"] for i in incidents}
        engine.close()
        for name in names:
            # No restart policy: only a remediation starts a target again.
            restarts = engine.count(name, "start")
            mine = [w for w in writes if w["target"] == name]
            done = sum(w["state"] == "done" for w in mine)
            unknown = sum(w["state"] == "unknown" for w in mine)
            assert done <= restarts <= done + unknown <= 1, (name, restarts, mine)
            now_started = lab.client.containers.get(name).attrs["State"]["StartedAt"]
            assert (now_started != started_at[name]) == (restarts == 1), (name, restarts)
            if incident_of[name] not in dead:  # a run nobody killed restarted its container
                assert [(w["operation"], w["state"]) for w in mine] == [("restart_service", "done")]
        [killed_write] = query(store, "SELECT state FROM writes WHERE key = %s", pending["key"])
        mark(f"the killed run's write ended {killed_write['state']}; incidents: {status}")

        # Each API's stream: every event of the store once, in order, none missing.
        ids = [e["id"] for e in query(store, "SELECT id FROM events ORDER BY id")]
        types = {e["type"] for e in query(store, "SELECT DISTINCT type FROM events")}
        assert {"incident.created", "dispatch.started", "operation.started",
                "incident.escalated"} <= types, types  # fmt: skip
        for stream in stack.streams:
            assert stream.error is None, stream.error
            assert stream.ids == ids, (len(stream.ids), len(ids))
        mark(f"{len(ids)} events, each once and in order on both streams")
    finally:
        if engine is not None:
            engine.close()
        try:
            stack.close()
        finally:
            lab.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
            mark("everything stopped and removed\n")
