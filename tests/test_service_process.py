"""`uici serve` as a real process: killed and restarted in the middle of an alert storm, it
loses no alert and opens no incident twice."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from agent.service.auth import key_hash
from tests.api_support import KEYS, alert, notification
from tests.service_process import ServiceProcess

ALERTS = 1000
GROUP = 5


def service_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
    env.update(
        UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
        UICI_OPERATOR_KEY_SHA256=key_hash(KEYS["operator"]),
        UICI_STORAGE_URL=f"sqlite:///{tmp_path}/uici.db",
        UICI_LOG_LEVEL="WARNING",
    )
    return env


def test_a_killed_service_loses_no_alert_and_opens_no_incident_twice(tmp_path: Path) -> None:
    service = ServiceProcess(service_env(tmp_path), tmp_path / "serve.log", None, "--no-dispatch")
    service.start()
    alerts = [alert(f"svc-{i}", fingerprint=f"storm{i:011d}") for i in range(ALERTS)]
    groups = [notification(*alerts[i : i + GROUP]) for i in range(0, ALERTS, GROUP)]
    deliveries = groups * 2  # at least once: every notification comes twice
    random.Random(7).shuffle(deliveries)
    queue = list(enumerate(deliveries))
    lock = threading.Lock()
    outcome: dict[int, int] = {}
    retries = [0]

    def alertmanager() -> None:
        """Like Alertmanager: retry on connection errors and 5xx until a 2xx; 4xx is final."""
        with httpx.Client(timeout=5) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    index, body = queue.pop()
                while True:
                    try:
                        response = client.post(
                            f"{service.url}/webhooks/alertmanager",
                            json=body,
                            headers={"Authorization": f"Bearer {KEYS['webhook']}"},
                        )
                    except httpx.TransportError:
                        response = None
                    if response is not None and response.status_code < 500:
                        outcome[index] = response.status_code
                        break
                    with lock:
                        retries[0] += 1
                    time.sleep(0.05)

    senders = [threading.Thread(target=alertmanager) for _ in range(4)]
    for sender in senders:
        sender.start()
    for fraction in (0.25, 0.5):  # kill -9 twice during the storm, restart at once
        while len(outcome) < fraction * len(deliveries):
            time.sleep(0.005)
        service.kill()
        time.sleep(0.3)
        service.start()
    for sender in senders:
        sender.join(120)
    service.stop()

    assert retries[0] > 0, "the kills happened after the storm: nothing was tested"
    assert sorted(outcome) == list(range(len(deliveries)))
    assert set(outcome.values()) == {202}
    with sqlite3.connect(tmp_path / "uici.db") as db:
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == ALERTS
        assert db.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == ALERTS
        assert db.execute("SELECT COUNT(*) FROM dispatch").fetchone()[0] == ALERTS
        services = {r[0] for r in db.execute("SELECT service FROM incidents")}
        assert services == {f"svc-{i}" for i in range(ALERTS)}
        # Every delivery that was answered 2xx is on record, and each alert was seen twice.
        assert db.execute("SELECT MIN(deliveries) FROM alerts").fetchone()[0] >= 2


def test_without_a_key_401_and_a_read_key_cannot_write(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    env["UICI_READER_KEY_SHA256"] = key_hash(KEYS["reader"])
    service = ServiceProcess(env, tmp_path / "serve.log", None, "--no-dispatch").start()
    try:
        assert httpx.get(f"{service.url}/incidents").status_code == 401
        reader = {"Authorization": f"Bearer {KEYS['reader']}"}
        assert httpx.get(f"{service.url}/incidents", headers=reader).status_code == 200
        write = httpx.post(
            f"{service.url}/operations/restart_service/run", json={"target": "web"}, headers=reader
        )
        assert write.status_code == 403 and "operate" in write.json()["error"]
        webhook = {"Authorization": f"Bearer {KEYS['webhook']}"}
        assert httpx.get(f"{service.url}/incidents", headers=webhook).status_code == 403
    finally:
        service.stop()


def test_a_request_waiting_for_the_store_does_not_stall_the_others(tmp_path: Path) -> None:
    """A refused write is audited while another process holds the store's write lock: that
    request waits for the lock in a thread, and the event loop goes on answering /health."""
    env = service_env(tmp_path)
    env.update(
        UICI_READER_KEY_SHA256=key_hash(KEYS["reader"]), UICI_STORAGE_LOCK_TIMEOUT_SECONDS="20"
    )
    service = ServiceProcess(env, tmp_path / "serve.log", None, "--no-dispatch").start()
    reader = {"Authorization": f"Bearer {KEYS['reader']}"}
    answers: list[httpx.Response] = []
    holder = sqlite3.connect(tmp_path / "uici.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        refused = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{service.url}/operations/restart_service/run",
                    json={"target": "web"},
                    headers=reader,
                    timeout=30,
                )
            )
        )
        refused.start()
        time.sleep(0.5)  # the refused request now waits for the lock
        for _ in range(3):
            assert httpx.get(f"{service.url}/health", timeout=2).status_code == 200
            time.sleep(0.2)
        assert answers == [] and refused.is_alive()  # still waiting: the lock is held
        holder.execute("ROLLBACK")
        refused.join(30)
        assert [a.status_code for a in answers] == [403]
        with sqlite3.connect(tmp_path / "uici.db") as db:
            assert (
                db.execute(
                    "SELECT COUNT(*) FROM audit WHERE action = 'operation.restart_service'"
                ).fetchone()[0]
                == 1
            )
    finally:
        holder.close()
        service.stop()
