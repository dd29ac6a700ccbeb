"""The PromStack helper against Debian's real Prometheus and Alertmanager.

A Prometheus rule fires, Alertmanager delivers the webhook with the configured credentials to a
small recording receiver on 127.0.0.1; and alerts fed straight to Alertmanager arrive, then
resolve. tests/infra/ensure_packages.sh installs the binaries first (Debian, root).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.promstack import ENSURE_SCRIPT, PromStack, available

DELIVERY_TIMEOUT = 30.0
NOT_ENDED = "0001-01-01T00:00:00Z"  # Go's zero time: how Alertmanager writes "still firing"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]


class WebhookReceiver:
    """A stdlib HTTP server on 127.0.0.1 that records every POST and answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                delivery = Delivery(
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=json.loads(raw or b"{}"),
                )
                with receiver._changed:
                    receiver.deliveries.append(delivery)
                    receiver._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/alertmanager"

    def wait_for(self, match: Callable[[Delivery], bool], timeout: float) -> Delivery | None:
        """The first recorded delivery that matches, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for delivery in self.deliveries:
                    if match(delivery):
                        return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus_installed() -> None:
    result = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0 or not available():
        pytest.fail(
            f"{ENSURE_SCRIPT} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as webhook:
        yield webhook


def firing(alertname: str) -> Callable[[Delivery], bool]:
    def match(delivery: Delivery) -> bool:
        return delivery.body.get("status") == "firing" and any(
            alert["labels"].get("alertname") == alertname for alert in delivery.body["alerts"]
        )

    return match


def resolved(alertname: str) -> Callable[[Delivery], bool]:
    def match(delivery: Delivery) -> bool:
        return delivery.body.get("status") == "resolved" and any(
            alert["labels"].get("alertname") == alertname and alert["status"] == "resolved"
            for alert in delivery.body["alerts"]
        )

    return match


def no_delivery(stack: PromStack, receiver: WebhookReceiver, what: str) -> str:
    return (
        f"no {what} webhook within {DELIVERY_TIMEOUT} s; received {receiver.deliveries!r}\n"
        f"prometheus alerts: {stack.prometheus_alerts()!r}\n"
        f"alertmanager alerts: {stack.alerts()!r}\n{stack.logs()}"
    )


def test_rule_fires_and_webhook_arrives_with_bearer_token(
    prometheus_installed: None, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    token = "tok-SENTINEL-3b8c1f"
    rule = {
        "alert": "ContainerDown",
        "expr": "vector(1) > 0",
        "for": "0s",
        "labels": {"severity": "critical", "container": "web-1"},
        "annotations": {"summary": "container web-1 is down"},
    }
    with PromStack(tmp_path / "stack", receiver.url, bearer=token, rules=[rule]) as stack:
        delivery = receiver.wait_for(firing("ContainerDown"), DELIVERY_TIMEOUT)
        assert delivery is not None, no_delivery(stack, receiver, "firing")

    assert delivery.path == "/alertmanager"
    assert delivery.headers["authorization"] == f"Bearer {token}"
    assert delivery.headers["content-type"] == "application/json"
    body = delivery.body
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "webhook"
    assert body["groupLabels"] == {"alertname": "ContainerDown"}
    assert body["commonLabels"]["severity"] == "critical"
    [alert] = body["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "ContainerDown",
        "severity": "critical",
        "container": "web-1",
    }
    assert alert["annotations"] == {"summary": "container web-1 is down"}
    assert alert["endsAt"] == NOT_ENDED
    assert alert["fingerprint"]
    assert alert["generatorURL"].startswith(stack.prometheus_url)


def test_posted_alert_arrives_with_basic_auth_then_resolves(
    prometheus_installed: None, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    labels = {"alertname": "DiskFull", "severity": "warning", "host": "db-1"}
    with PromStack(tmp_path / "stack", receiver.url, basic=("uici", "s3cret:pw")) as stack:
        stack.post_alerts([{"labels": labels, "annotations": {"summary": "disk is full"}}])
        assert [alert["labels"] for alert in stack.alerts()] == [labels]

        delivery = receiver.wait_for(firing("DiskFull"), DELIVERY_TIMEOUT)
        assert delivery is not None, no_delivery(stack, receiver, "firing")
        expected = "Basic " + base64.b64encode(b"uici:s3cret:pw").decode()
        assert delivery.headers["authorization"] == expected
        [alert] = delivery.body["alerts"]
        assert alert["labels"] == labels
        assert alert["endsAt"] == NOT_ENDED

        ended = datetime.now(UTC) - timedelta(seconds=1)
        stack.post_alerts([{"labels": labels, "endsAt": ended.isoformat()}])
        delivery = receiver.wait_for(resolved("DiskFull"), DELIVERY_TIMEOUT)
        assert delivery is not None, no_delivery(stack, receiver, "resolved")
        assert delivery.headers["authorization"] == expected
        [alert] = delivery.body["alerts"]
        assert alert["status"] == "resolved"
        assert alert["endsAt"] != NOT_ENDED
