"""The notification outbox end to end, against a real HTTP receiver on 127.0.0.1: events of the
store become one message per sink and incident event, delivered with retries and back-off,
a 4xx not retried and visible, a sink that is down delaying only its own messages, redacted,
and nothing lost when `uici serve` is killed with a message pending."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.incidents.events import EventLog
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from agent.incidents.storage import IncidentStore, insert_incident
from agent.notifications.notifier import Notifier
from agent.service.app import create_app
from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.api_support import KEYS, auth, key_env
from tests.http_receiver import HttpReceiver, Reply
from tests.service_process import ServiceProcess

SECRET = "notify-secret-0123456789abcdef"
SLACK = "/slack/T0SECRET/B0SECRET/tokenSECRET"
HOOK = "/webhook/uici"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver(webhook_secret=SECRET) as server:
        yield server


def sink_env(tmp_path: Path, receiver: HttpReceiver, **extra: str) -> dict[str, str]:
    return key_env(
        tmp_path,
        UICI_TEST_SLACK_URL=receiver.url + SLACK,
        UICI_TEST_NOTIFY_WEBHOOK_URL=receiver.url + HOOK,
        UICI_TEST_NOTIFY_WEBHOOK_SECRET=SECRET,
        **extra,
    )


def setup(test_config_dir: Path, env: dict[str, str]) -> tuple[UICIConfig, IncidentStore, Notifier]:
    config = load_config(test_config_dir, environ=env)
    store = IncidentStore.from_config(config)
    notifier = Notifier(lambda: config, store)
    notifier.enqueue()  # the first round on a store: history is not news
    return config, store, notifier


def incident(store: IncidentStore, incident_id: str, severity: str = "critical") -> None:
    context = IncidentContext(
        incident_id=incident_id,
        alert=AlertInfo(
            labels={"alertname": "ServiceDown", "service": "web", "severity": severity}
        ),
        environment="test-docker",
        service="web",
    )
    with store.transaction() as db:
        insert_incident(db, context)
    report = {
        "incident_id": incident_id,
        "diagnosis": {
            "root_cause": "web exited with code 137: the kernel OOM-killed it",
            "category": "oom_killed",
            "confidence": 0.9,
            "evidence": ["obs-1"],
            "facts": ["exit code 137"],
        },
        "observations": [
            {"id": "obs-1", "operation": "get_status", "target": "web", "success": True,
             "output": "state exited, exit 137, OOMKilled true"},
        ],
        "actions": [{"step": "restart_service web", "outcome": "executed", "detail": ""}],
        "healthy": True,
        "health_detail": "web is running",
    }  # fmt: skip
    store.save_report(incident_id, report, "resolved")


def round_trip(notifier: Notifier) -> None:
    async def once() -> None:
        await notifier.run_once()
        await notifier.drain()

    asyncio.run(once())


def outbox(store: IncidentStore) -> list[sqlite3.Row]:
    connection = sqlite3.connect(store.path)
    connection.row_factory = sqlite3.Row
    with connection:
        return connection.execute("SELECT * FROM notifications ORDER BY id").fetchall()


def test_each_event_is_one_message_per_sink_and_incident(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    _, store, notifier = setup(test_config_dir, sink_env(tmp_path, receiver))
    events = EventLog(store.path)
    incident(store, "inc-1")
    incident(store, "inc-info", severity="info")
    for _ in range(2):  # an event seen twice, a diagnosis reported twice: one message
        events.emit("incident.diagnosed", "inc-1", status="resolved", root_cause="oom")
    events.emit("incident.diagnosed", "inc-info", status="diagnosed")
    events.emit("operation.started", "inc-1", operation="get_logs")  # not a notification
    round_trip(notifier)
    round_trip(notifier)
    slack = receiver.wait_for(SLACK, 3)
    assert all(r.status == 200 for r in slack), [r.problems for r in slack]
    texts = [r.json()["text"] for r in slack]
    assert sum("Incident diagnosed" in t and "inc-1" in t for t in texts) == 1
    assert sum("Incident resolved" in t and "inc-1" in t for t in texts) == 1
    assert sum("inc-info" in t for t in texts) == 1
    assert "the kernel OOM-killed it" in json.dumps(slack[0].json())
    # The webhook sink wants critical and warning only, and every delivery is signed.
    hooks = receiver.wait_for(HOOK, 2)
    assert all(r.status == 200 for r in hooks), "the receiver verified each signature"
    assert {r.json()["event"] for r in hooks} == {"incident.diagnosed", "incident.resolved"}
    assert {r.json()["incident_id"] for r in hooks} == {"inc-1"}
    time.sleep(0.3)
    assert len(receiver.received(SLACK)) == 3 and len(receiver.received(HOOK)) == 2
    assert {r["state"] for r in outbox(store)} == {"sent"}


def test_approval_messages_carry_the_step_its_risk_command_expiry_and_answer_routes(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    env = sink_env(tmp_path, receiver, UICI_TEST_PUBLIC_URL="https://uici.example")
    _, store, notifier = setup(test_config_dir, env)
    incident(store, "inc-a")
    store.attach_flow_run("inc-a", "0b6f7c3e-1111-2222-3333-444455556666")
    step = PlanStep(
        phase="resolution", operation="restart_service", environment="test-docker",
        target="web", proposed_by="runbook",
    )  # fmt: skip
    expires = time.time() + 200  # inside approval_expiring_seconds (300): warned at once
    store.request_approval("inc-a", step, "docker restart --time 1 web", expires, 2)
    EventLog(store.path).emit("approval.needed", "inc-a", step_key=step.key(), risk="write")
    round_trip(notifier)
    round_trip(notifier)  # the expiring warning is an event of its own, queued next round
    round_trip(notifier)
    slack = receiver.wait_for(SLACK, 2)
    bodies = {r.json()["text"].split(":")[0]: r.json() for r in slack}
    needed = json.dumps(bodies["[UICI] Approval needed"])
    assert "docker restart --time 1 web" in needed and "risk write" in needed
    assert "https://uici.example/incidents/inc-a/approve" in needed
    assert "/incidents/inc-a/reject" in needed and step.key() in needed
    assert "approvals 0 of 2" in needed
    assert "/runs/flow-run/0b6f7c3e-1111-2222-3333-444455556666" in needed
    assert "[UICI] Approval expiring soon" in bodies
    time.sleep(0.3)
    round_trip(notifier)
    assert len(receiver.received(SLACK)) == 2, "one warning per request"


def test_a_sink_answering_4xx_is_not_retried_and_its_error_is_visible(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    receiver.always(SLACK, Reply(404, b"no_service"))
    env = sink_env(tmp_path, receiver)
    _, store, notifier = setup(test_config_dir, env)
    incident(store, "inc-4")
    EventLog(store.path).emit("incident.failed", "inc-4", error="RuntimeError: engine gone")
    for _ in range(3):
        round_trip(notifier)
    assert len(receiver.received(SLACK)) == 1, "a permanent error is not retried"
    [row] = [r for r in outbox(store) if r["sink"] == "slack"]
    assert row["state"] == "failed" and row["status_code"] == 404 and row["attempts"] == 1
    failed = [e for e in EventLog(store.path).since(0) if e.type == "notification.failed"]
    assert failed and failed[0].data["sink"] == "slack" and failed[0].data["status_code"] == 404
    assert SLACK not in json.dumps(failed[0].data), "a Slack URL is a secret"
    configs = ConfigCache(test_config_dir, environ=env)
    with TestClient(create_app(configs, run_dispatcher=False, run_notifier=False)) as client:
        deep = client.get("/health/deep", headers=auth("reader")).json()
        checks = {c["name"]: c for c in deep["checks"]}
        assert checks["notification:slack"]["ok"] is False
        assert "HTTP 404" in checks["notification:slack"]["detail"]
        assert checks["notification:webhook"]["ok"] is True
        metrics = client.get("/metrics").text
        assert 'uici_notifications{sink="slack",state="failed"} 1.0' in metrics


def test_failures_that_may_pass_are_retried_with_back_off_until_delivered(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    receiver.script(SLACK, Reply(503), Reply(429, headers={"Retry-After": "3"}))
    _, store, notifier = setup(test_config_dir, sink_env(tmp_path, receiver))
    incident(store, "inc-r")
    EventLog(store.path).emit("incident.diagnosed", "inc-r", status="diagnosed")

    def slack_row() -> sqlite3.Row:
        return next(r for r in outbox(store) if r["sink"] == "slack")

    round_trip(notifier)
    row = slack_row()
    assert row["state"] == "pending" and row["attempts"] == 1 and row["status_code"] == 503
    assert row["next_attempt_at"] - row["updated_at"] == pytest.approx(1)  # retry_backoff
    round_trip(notifier)
    assert len(receiver.received(SLACK)) == 1, "not before its time"
    time.sleep(1.1)
    round_trip(notifier)
    row = slack_row()
    assert row["attempts"] == 2 and row["status_code"] == 429
    # The back-off would be 2 s; the sink's Retry-After (3 s) is honoured.
    assert row["next_attempt_at"] - row["updated_at"] == pytest.approx(3)
    with sqlite3.connect(store.path) as db:  # time passes
        db.execute("UPDATE notifications SET next_attempt_at = 0 WHERE sink = 'slack'")
    round_trip(notifier)
    assert slack_row()["state"] == "sent" and slack_row()["attempts"] == 3
    assert [r.status for r in receiver.received(SLACK)] == [503, 429, 200]


def test_a_sink_that_keeps_failing_ends_failed_after_max_attempts(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    receiver.always(HOOK, Reply(500))
    _, store, notifier = setup(test_config_dir, sink_env(tmp_path, receiver))
    incident(store, "inc-m")
    EventLog(store.path).emit("incident.diagnosed", "inc-m", status="diagnosed")
    for _ in range(5):
        round_trip(notifier)
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE notifications SET next_attempt_at = 0 WHERE state = 'pending'")
    row = next(r for r in outbox(store) if r["sink"] == "webhook")
    assert row["state"] == "failed" and row["attempts"] == 3  # max_attempts in the test config
    assert len(receiver.received(HOOK)) == 3
    ids = {r.headers["x-uici-delivery"] for r in receiver.received(HOOK)}
    assert len(ids) == 1, "a retried delivery keeps its id"


def test_a_sink_that_is_down_delays_only_its_own_messages(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    receiver.always(SLACK, Reply(200, delay=4))  # hangs until near the 5 s timeout
    _, store, notifier = setup(test_config_dir, sink_env(tmp_path, receiver))
    incident(store, "inc-d")
    EventLog(store.path).emit("incident.diagnosed", "inc-d", status="escalated")

    async def scenario() -> float:
        started = time.monotonic()
        await notifier.run_once()
        while len(receiver.received(HOOK)) < 2:
            await asyncio.sleep(0.05)
            await notifier.run_once()  # a second round while Slack is still busy
            assert time.monotonic() - started < 3, "the webhook waited for Slack"
        took = time.monotonic() - started
        await notifier.drain()
        return took

    assert asyncio.run(scenario()) < 3
    assert {r.json()["event"] for r in receiver.received(HOOK)} == {
        "incident.diagnosed",
        "incident.escalated",
    }


def test_messages_are_redacted(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    _, store, notifier = setup(test_config_dir, sink_env(tmp_path, receiver))
    incident(store, "inc-s")
    record = store.get("inc-s")
    assert record is not None and record.report is not None
    report: dict[str, Any] = record.report
    report["diagnosis"]["root_cause"] = "login failed with password=SENTINEL-hunter2-xyz"
    # Written around save_report (a store from before redaction): the notifier redacts too.
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE incidents SET report = ? WHERE id = 'inc-s'", (json.dumps(report),))
    EventLog(store.path).emit("incident.diagnosed", "inc-s", status="diagnosed")
    round_trip(notifier)
    for request in receiver.wait_for(SLACK, 1) + receiver.wait_for(HOOK, 1):
        assert b"SENTINEL-hunter2" not in request.body
        assert b"[REDACTED]" in request.body


def test_nothing_is_lost_when_the_service_is_killed_with_a_message_pending(
    tmp_path: Path, receiver: HttpReceiver
) -> None:
    from tests.test_service_process import service_env

    env = service_env(tmp_path)
    env.update(
        UICI_SLACK_WEBHOOK_URL=receiver.url + SLACK,
        UICI_LOG_LEVEL="INFO",
    )
    receiver.always(SLACK, Reply(503))  # the sink is down
    service = ServiceProcess(env, tmp_path / "serve.log", None, "--no-dispatch")
    service.start()
    try:
        store = IncidentStore(tmp_path / "uici.db")
        deadline = time.monotonic() + 10
        while True:  # the service has taken the store's history as read
            with sqlite3.connect(store.path) as db:
                if db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0]:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        incident(store, "inc-k")
        step = PlanStep(
            phase="resolution", operation="restart_service", environment="local-docker",
            target="web", proposed_by="runbook",
        )  # fmt: skip
        store.request_approval("inc-k", step, "docker restart web", time.time() + 900)
        EventLog(store.path).emit("approval.needed", "inc-k", step_key=step.key(), risk="write")
        receiver.wait_for(SLACK, 1)
        service.kill()
    finally:
        service.stop()
    [row] = [r for r in outbox(store) if r["event"] == "approval.needed"]
    # Pending (killed right after the sink's 503, maybe before that attempt was recorded).
    assert row["state"] == "pending"
    receiver.always(SLACK, Reply(200))
    # Shipped back-off: 5 s after the first failure. Make it due now, as time would.
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE notifications SET next_attempt_at = 0")
    restarted = ServiceProcess(env, tmp_path / "serve.log", None, "--no-dispatch")
    restarted.start()
    try:
        deadline = time.monotonic() + 15
        while not any(r.status == 200 for r in receiver.received(SLACK)):
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.1)
        delivered = [r for r in receiver.received(SLACK) if r.status == 200]
        assert len(delivered) == 1 and "Approval needed" in delivered[0].json()["text"]
        health = httpx.get(
            f"{restarted.url}/health/deep",
            headers={"Authorization": f"Bearer {KEYS['operator']}"},
            timeout=10,
        ).json()
        assert any(c["name"] == "notification:slack" for c in health["checks"])
    finally:
        restarted.stop()


def test_two_services_on_one_store_send_each_message_once(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    receiver.always(SLACK, Reply(200, delay=0.3))  # slow enough for both to try at once
    config, store, first = setup(test_config_dir, sink_env(tmp_path, receiver))
    second = Notifier(lambda: config, store)
    for n in range(3):
        incident(store, f"inc-{n}")
        EventLog(store.path).emit("incident.diagnosed", f"inc-{n}", status="diagnosed")

    async def both() -> None:
        for _ in range(3):
            await asyncio.gather(first.run_once(), second.run_once())
            await asyncio.gather(first.drain(), second.drain())

    asyncio.run(both())
    texts = [r.json()["text"] for r in receiver.received(SLACK)]
    assert sorted(t.split("incident ")[1].split(" ")[0] for t in texts) == [
        "inc-0",
        "inc-1",
        "inc-2",
    ]


def test_a_sink_enabled_by_a_reload_gets_what_comes_after(
    test_config_dir: Path, tmp_path: Path, receiver: HttpReceiver
) -> None:
    off = load_config(test_config_dir, environ=key_env(tmp_path))
    on = load_config(test_config_dir, environ=sink_env(tmp_path, receiver))
    current = {"config": off}
    store = IncidentStore.from_config(off)
    notifier = Notifier(lambda: current["config"], store)
    notifier.enqueue()
    incident(store, "inc-before")
    EventLog(store.path).emit("incident.diagnosed", "inc-before", status="diagnosed")
    round_trip(notifier)  # no sink yet: nothing to send, and nothing saved up for later
    current["config"] = on
    incident(store, "inc-after")
    EventLog(store.path).emit("incident.diagnosed", "inc-after", status="diagnosed")
    round_trip(notifier)
    texts = [r.json()["text"] for r in receiver.wait_for(SLACK, 1)]
    assert len(texts) == 1 and "inc-after" in texts[0]
