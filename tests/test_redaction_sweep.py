"""The sentinel-secret sweep: secrets planted where production secrets come from (a real Docker
container's log, an alert's annotations and labels) go through a real diagnosis (the webhook of
the real app, the diagnose-incident flow on a real Prefect server), and then every output UICI
has is searched for them: the stored incident row and report, the alert, event and audit rows,
the flow's return value, the Prefect artifacts, logs, run states and run parameters, the captured
log records, and the API's answers. One sentinel in one exit fails the test, naming the exit.

The run also records, the way product code does, raw text that no executor redacted (a log
line with an output in it, a run-logger message, an operation result recorded by the journal),
so that each exit's own redaction is exercised, not only the redaction upstream of it.

Notifications are swept too (`notification_outputs`: every sink pointed at a real receiver); their
messages join the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client

from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.journal import Journal
from agent.incidents.storage import IncidentStore
from agent.service.app import create_app
from agent.service.auth import key_hash
from flows.diagnose import diagnose_incident
from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.models import EnvironmentType
from infrastructure.executors.base import ErrorKind, OperationError, OperationResult
from tests.api_support import KEYS, notification
from tests.conftest import SHIPPED_CONFIG
from tests.http_receiver import HttpReceiver

TAG = uuid.uuid4().hex[:8].upper()

# What must never leave UICI. Each is a substring of one secret.
SENTINELS = {
    "password assignment": f"pw-{TAG}-sentinel",
    "bearer token": f"tok{TAG}bearer",
    "AWS access key id": f"AKIA{TAG}SENTINEL",
    "PEM private key": f"PEMWHOLE{TAG}",
    "tail-cut PEM key": f"PEMTAIL{TAG}",
    "annotation password": f"annot-{TAG}-pw",
    "annotation token": f"annot{TAG}token",
    "label URL credentials": f"url{TAG}cred",
}

TAIL_LINES = 200  # the service-down runbook's get_logs (agents.yml)
TAIL_KEY_LINES = 30  # the first key's body; the tail cuts it in the middle


def log_script() -> tuple[str, list[str]]:
    """A service that logs a key whose BEGIN `docker logs --tail 200` cuts away, a whole key,
    an AWS key id, a bearer token and a password, then exits 1. Returns the script and the
    lines it prints."""
    tail_key = [f"MIIEpAIBAAKCAQ{TAG}PEMTAIL{TAG}{i:02d}" + "Q" * 30 for i in range(TAIL_KEY_LINES)]
    whole_key = [f"MIIEvQIBADANBg{TAG}PEMWHOLE{TAG}{i:02d}" + "Z" * 30 for i in range(4)]
    after = [
        "INFO loading the TLS key",
        "-----BEGIN PRIVATE KEY-----",
        *whole_key,
        "-----END PRIVATE KEY-----",
        f"INFO uploads with AWS key {SENTINELS['AWS access key id']} to s3://receipts",
        f"WARN upstream call failed: Authorization: Bearer {SENTINELS['bearer token']}",
        f"ERROR db login failed: password={SENTINELS['password assignment']}",
        "FATAL cannot start: database authentication failed",
    ]
    # Cut in the middle of the first key: half its body, its END, the filler and `after`.
    filler = TAIL_LINES - (TAIL_KEY_LINES // 2) - 1 - len(after)
    before = ["INFO starting payments 2.1.0", "-----BEGIN RSA PRIVATE KEY-----", *tail_key]
    middle = ["-----END RSA PRIVATE KEY-----"]
    lines = [*before, *middle, *(f"INFO heartbeat {i}" for i in range(filler)), *after]

    def printf(block: list[str]) -> str:
        return "printf '%s\\n' " + " ".join(f"'{line}'" for line in block)

    script = "; ".join(
        [
            printf(before + middle),
            f'i=0; while [ $i -lt {filler} ]; do echo "INFO heartbeat $i"; i=$((i+1)); done',
            printf(after),
            "exit 1",
        ]
    )
    return script, lines


def leaky_alert(service: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": "PaymentsCrashed",
            "service": service,
            "severity": "critical",
            "uici_env": "local-docker",
            # A probe target with credentials in it, as blackbox exporter labels carry them.
            "instance": f"https://probe:{SENTINELS['label URL credentials']}@payments.internal/health",
        },
        "annotations": {
            "summary": f"{service} keeps crashing",
            "description": (
                f"rotate the db login (password={SENTINELS['annotation password']}) and the"
                f" api token {SENTINELS['annotation token']}"
            ),
        },
        "startsAt": "2026-12-01T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": f"sweep{TAG.lower()}",
    }


# --- capturing what the run logs ---------------------------------------------------------------


class Capture(logging.Handler):
    """Every record that reaches it, formatted (message and traceback) and as its fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record) + " " + str(record.__dict__))


@contextlib.contextmanager
def captured_logs(*logger_names: str) -> Iterator[Capture]:
    """A Capture on the root logger and on loggers that may not propagate to it."""
    capture = Capture()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logger_names)]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)


# --- the exits ---------------------------------------------------------------------------------


NOTIFY_SECRET = "sweep-notify-secret-0123456789"


def notification_outputs(receiver: HttpReceiver, incident_id: str) -> dict[str, str]:
    """Every message the notification sinks sent about the incident (Slack, the signed
    webhook, apprise's json://), as the receiver on 127.0.0.1 got them, by exit name."""
    deadline = time.monotonic() + 30
    while True:  # the service's notifier delivers within a poll or two
        got = {p: receiver.received(p) for p in ("/slack", "/webhook", "/apprise")}
        if all(any(incident_id.encode() in r.body for r in rs) for rs in got.values()):
            break
        assert time.monotonic() < deadline, {p: len(r) for p, r in got.items()}
        time.sleep(0.2)
    assert all(r.status == 200 for rs in got.values() for r in rs)
    return {
        f"notifications ({path[1:]})": "\n".join(r.body.decode() for r in requests)
        for path, requests in got.items()
    }


def store_rows(path: Path, incident_id: str) -> dict[str, str]:
    """The raw rows UICI keeps and shows: the incident (context and report), its alerts, and
    every event and audit row."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row

        def rows(query: str, *args: Any) -> str:
            return json.dumps([dict(r) for r in db.execute(query, args).fetchall()])

        return {
            "stored incident row": rows("SELECT * FROM incidents WHERE id = ?", incident_id),
            "stored alert rows": rows("SELECT * FROM alerts WHERE incident_id = ?", incident_id),
            "event rows": rows("SELECT * FROM events"),
            "audit rows": rows("SELECT * FROM audit"),
        }


async def prefect_outputs() -> dict[str, str]:
    """Everything the Prefect server holds that UICI wrote: artifacts, logs, flow runs (names,
    states and parameters: the dispatcher starts a run with the alert) and task runs."""

    async def every(read: Any) -> list[Any]:
        found: list[Any] = []
        while True:
            page = await read(limit=200, offset=len(found))
            found.extend(page)
            if len(page) < 200:
                return found

    async with get_client() as client:
        artifacts = await every(client.read_artifacts)
        logs = await every(client.read_logs)
        flow_runs = await every(client.read_flow_runs)
        task_runs = await every(client.read_task_runs)
    return {
        "Prefect artifacts": json.dumps(
            [[a.key, a.type, a.description, a.data] for a in artifacts], default=str
        ),
        "Prefect logs": json.dumps([log.message for log in logs]),
        "Prefect flow runs (names, states, parameters)": json.dumps(
            [[r.name, r.state and r.state.message, r.parameters] for r in flow_runs], default=str
        ),
        "Prefect task runs (names and states)": json.dumps(
            [[r.name, r.state and r.state.message] for r in task_runs], default=str
        ),
    }


# --- the probes: raw text through each exit, the way product code hands it over ------------------

RUN_LOGGER_PROBE: dict[str, str] = {}


@flow(name="redaction-log-probe")
async def run_logger_probe() -> None:
    """A run logger message carrying an output (the text is not a parameter: parameters are
    Prefect's to keep)."""
    get_run_logger().warning("probe: the step printed %s", RUN_LOGGER_PROBE["text"])


def probe_exits(store_path: Path, incident_id: str, raw: str) -> None:
    logging.getLogger("uici.sweep").warning("probe: the command printed %s", raw)
    try:
        raise RuntimeError(f"probe: the command failed with {raw}")
    except RuntimeError:
        logging.getLogger("uici.sweep").exception("probe: a failure")
    RUN_LOGGER_PROBE["text"] = raw
    asyncio.run(run_logger_probe())
    # An operation result no executor redacted (a recording, a result the gate made), recorded
    # as the gate records every operation: an event and an audit row.
    unredacted = OperationResult(
        operation="get_logs", environment="local-docker",
        environment_type=EnvironmentType.DOCKER, target="payments", success=False, output=raw,
        error=OperationError(kind=ErrorKind.PERMANENT, message=raw),
        duration_seconds=0.1, started_at=datetime.now(UTC), command=["docker", "logs", raw],
    )  # fmt: skip
    journal = Journal(store_path)
    journal.finished(unredacted, "sweep-probe", {"output": raw}, incident_id=incident_id)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Sweep:
    incident_id: str
    raw_log: str
    tail: str
    report: dict[str, Any]
    parameters: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)


def api_outputs(client: TestClient, incident_id: str) -> dict[str, str]:
    reader = {"Authorization": f"Bearer {KEYS['reader']}"}
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    answers = {
        "API GET /incidents/{id}": client.get(f"/incidents/{incident_id}", headers=reader),
        "API GET /incidents": client.get("/incidents", headers=reader),
        "API GET /events": client.get("/events?limit=1000", headers=reader),
        "API GET /audit": client.get("/audit?limit=1000", headers=admin),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
    return {name: answer.text for name, answer in answers.items()}


@pytest.fixture(scope="module")
def sweep(
    lab: FailureLab, prefect_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sweep]:
    store_path = tmp_path_factory.mktemp("sweep") / "uici.db"
    with (
        pytest.MonkeyPatch.context() as env,
        captured_logs("prefect", "uici") as capture,
        contextlib.ExitStack() as stack,
    ):
        env.delenv("UICI_CONFIG_DIR", raising=False)  # the shipped configuration
        env.setenv("UICI_STORAGE_URL", f"sqlite:///{store_path}")
        script, lines = log_script()
        lab.run(f"leaky-{TAG.lower()}", ["sh", "-c", script])
        container = lab.container(f"leaky-{TAG.lower()}")
        wait_for(lambda: (container.reload() or container.status) == "exited", 30, "it to exit")
        raw_log = container.logs().decode()
        tail = container.logs(tail=TAIL_LINES).decode()
        assert raw_log.splitlines() == lines

        receiver = stack.enter_context(HttpReceiver(webhook_secret=NOTIFY_SECRET))
        keys = {
            "UICI_WEBHOOK_KEY_SHA256": key_hash(KEYS["webhook"]),
            "UICI_READER_KEY_SHA256": key_hash(KEYS["reader"]),
            "UICI_ADMIN_KEY_SHA256": key_hash(KEYS["admin"]),
            # Every sink on, pointed at the receiver: what they send is an exit too.
            "UICI_SLACK_WEBHOOK_URL": receiver.url + "/slack",
            "UICI_NOTIFY_WEBHOOK_URL": receiver.url + "/webhook",
            "UICI_NOTIFY_WEBHOOK_SECRET": NOTIFY_SECRET,
            "UICI_APPRISE_URLS": "json://" + receiver.url.removeprefix("http://") + "/apprise",
        }
        configs = ConfigCache(SHIPPED_CONFIG, environ={**os.environ, **keys})
        with TestClient(create_app(configs, run_dispatcher=False)) as client:
            alert = leaky_alert(container.name)
            # Grouped by instance: the group key carries the label, as Alertmanager's does.
            body = notification(
                alert, groupKey=f'{{}}:{{instance="{alert["labels"]["instance"]}"}}'
            )
            accepted = client.post(
                "/webhooks/alertmanager",
                json=body,
                headers={"Authorization": f"Bearer {KEYS['webhook']}"},
            )
            assert accepted.status_code == 202, accepted.text
            [incident_id] = accepted.json()["new_incidents"]
            # What the dispatcher would start the flow run with.
            [queued] = IncidentStore(store_path).claim_dispatch(
                time.time() + 3600, 10, time.time() + 7200
            )
            parameters = json.loads(queued["payload"])
            report = asyncio.run(diagnose_incident(**parameters))
            probe_exits(store_path, incident_id, raw_log)
            outputs = {
                "flow return value": json.dumps(report),
                **notification_outputs(receiver, incident_id),
                **store_rows(store_path, incident_id),
                **api_outputs(client, incident_id),
            }
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        outputs.update(asyncio.run(prefect_outputs()))
        outputs["captured log records"] = "\n".join(capture.texts)
    yield Sweep(incident_id, raw_log, tail, report, parameters, outputs)


# --- the tests -----------------------------------------------------------------------------------


def test_the_secrets_really_went_in(sweep: Sweep) -> None:
    """The sweep means something only if UICI read the secrets: the log holds every one, the
    tail starts inside the first key, and the run read that tail."""
    for name, sentinel in SENTINELS.items():
        if not name.startswith(("annotation", "label")):
            assert sentinel in sweep.raw_log, name
    assert "BEGIN RSA PRIVATE KEY" not in sweep.tail and SENTINELS["tail-cut PEM key"] in sweep.tail
    assert sweep.parameters["alert"]["annotations"]["description"]
    logs = [
        o for o in sweep.report["observations"] if o["operation"] == "get_logs" and o["success"]
    ]
    assert logs, "the run read the service's log"
    assert logs[0]["output"].startswith("[REDACTED PRIVATE KEY]\nINFO heartbeat 0"), logs[0][
        "output"
    ][:300]
    assert "[REDACTED]" in logs[0]["output"]


def test_no_secret_leaves_uici_through_any_exit(sweep: Sweep) -> None:
    expected = {
        "flow return value",
        "stored incident row",
        "stored alert rows",
        "event rows",
        "audit rows",
        "API GET /incidents/{id}",
        "API GET /incidents",
        "API GET /events",
        "API GET /audit",
        "Prefect artifacts",
        "Prefect logs",
        "Prefect flow runs (names, states, parameters)",
        "Prefect task runs (names and states)",
        "captured log records",
    }
    assert expected <= set(sweep.outputs)
    # Each exit holds what the run and the probes put there, so finding nothing means something.
    outputs = sweep.outputs
    assert sweep.incident_id in outputs["stored incident row"]
    assert "probe: the command printed" in outputs["captured log records"]
    assert "probe: the step printed" in outputs["Prefect logs"]
    assert "sweep-probe" in outputs["audit rows"] and "operation.finished" in outputs["event rows"]
    assert f"incident-{sweep.incident_id}" in outputs["Prefect artifacts"]
    leaks = [
        f"{exit_name}: {secret} ({sentinel})"
        for exit_name, text in sorted(outputs.items())
        for secret, sentinel in SENTINELS.items()
        if sentinel in text
    ]
    assert not leaks, "secrets left UICI:\n" + "\n".join(leaks)
