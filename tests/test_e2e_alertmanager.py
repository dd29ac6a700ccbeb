"""End to end, every part real: a Prometheus rule fires (with a 6 KiB annotation), Alertmanager
delivers the webhook to `uici serve`, the service opens an incident and starts the
diagnose-incident deployment, a Prefect worker runs it against a real crash-looping Docker
container, and the report names the cause and shows what the alert saw: its own expression,
taken from the generatorURL and evaluated on that Prometheus over the last hour."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from agent.evaluation.failures import FailureLab
from agent.incidents.report import IncidentReport, render_markdown
from agent.service.auth import key_hash
from tests.api_support import KEYS
from tests.promstack import ENSURE_SCRIPT, PromStack
from tests.service_process import ServiceProcess, free_port, prefect_stack
from tests.store_backend import store_url_for


@pytest.fixture(scope="module")
def prometheus_installed() -> None:
    done = subprocess.run(
        [str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"cannot install Prometheus/Alertmanager: {done.stdout}{done.stderr}")


def test_a_prometheus_alert_becomes_a_diagnosed_incident(
    prometheus_installed: None, lab: FailureLab, tmp_path: Path
) -> None:
    target = lab.get("missing_env").target
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UICI_", "PREFECT_"))}
    env.update(
        UICI_STATE_DIR=str(tmp_path / "state"),
        UICI_PREFECT_PORT=str(port),
        UICI_STORAGE_URL=store_url_for(tmp_path),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
        UICI_READER_KEY_SHA256=key_hash(KEYS["reader"]),
    )
    service = ServiceProcess(env, tmp_path / "serve.log")
    rule = {
        "alert": "ContainerCrashLooping",
        "expr": "vector(1) > 0",
        "for": "0s",
        "labels": {"severity": "critical", "service": target, "uici_env": "local-docker"},
        # 6 KiB: over api.webhook.max_value_chars, which used to make the whole
        # notification a 422 that Alertmanager never retries.
        "annotations": {
            "summary": f"{target} keeps restarting",
            "description": ("The runbook says: " + "check the logs. " * 384).strip(),
        },
    }
    stack = PromStack(
        tmp_path / "prom",
        f"{service.url}/webhooks/alertmanager",
        bearer=KEYS["webhook"],
        rules=[rule],
    )
    # The worker's flows read metrics from the Prometheus whose rule fired.
    env["UICI_PROMETHEUS_URL"] = stack.prometheus_url
    try:
        up = prefect_stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        service.start()
        with stack:
            reader = {"Authorization": f"Bearer {KEYS['reader']}"}
            deadline = time.monotonic() + 240
            incident: dict[str, object] = {}
            while time.monotonic() < deadline:
                listed = httpx.get(f"{service.url}/incidents", headers=reader).json()
                if listed and listed[0]["status"] in ("diagnosed", "resolved", "failed"):
                    incident = listed[0]
                    break
                time.sleep(1)
            assert incident, f"no diagnosed incident in time: {listed}\n{stack.logs()}"
        detail = httpx.get(f"{service.url}/incidents/{incident['id']}", headers=reader).json()
        assert detail["service"] == target and detail["environment"] == "local-docker"
        assert detail["alerts"][0]["labels"]["alertname"] == "ContainerCrashLooping"
        description = detail["context"]["alert"]["annotations"]["description"]
        assert len(description) == 4096
        assert description.endswith("[cut by UICI: 6161 characters]")
        report = detail["report"]
        assert report["diagnosis"]["rules_matched"][:1] == ["missing-configuration"], report
        # Triage evaluated the alert's own expression on the Prometheus that fired it.
        [seen] = [o for o in report["observations"] if o["operation"] == "check_alert_expression"]
        assert seen["phase"] == "triage" and seen["success"], seen
        assert seen["data"]["expression"] == "vector(1) > 0"
        assert seen["data"]["source"] == "generator_url"
        assert seen["data"]["threshold"] == {"operator": ">", "value": 0.0}
        assert seen["data"]["breaching"] is True and seen["data"]["breach_started_at"]
        assert seen["data"]["peak"] == 1.0
        rendered = render_markdown(IncidentReport.model_validate(report))
        assert "## What the alert saw" in rendered and "- breaching since " in rendered
        assert "- peak 1 against \\> 0.0 (+1)" in rendered, rendered
        events = [e["event"] for e in detail["timeline"]]
        assert events[0] == "incident.created" and "dispatch.started" in events
        assert "operation.finished" in events and events[-1] == "incident.diagnosed"
        # The flow run's uici logs carry the webhook's request id.
        request_id = detail["context"]["alert"]["fingerprint"] and next(
            e["data"]["request_id"] for e in detail["timeline"] if e["event"] == "incident.created"
        )
        assert request_id
        metrics = httpx.get(f"{service.url}/metrics").text
        assert 'uici_alerts_received_total{status="firing"}' in metrics
    finally:
        service.stop()
        prefect_stack("down", env)
