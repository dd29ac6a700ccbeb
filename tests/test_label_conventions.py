"""Label conventions (platform.yml `alerts:`) are read once and used alike by the webhook intake,
the incident flow and the CLI: a configuration that names targets by `pod` works everywhere."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent.cli.main import app
from agent.incidents.context import LabelConventions, UnmappedAlert, context_from_alert
from agent.incidents.investigation import run_context
from agent.service.app import create_app
from agent.service.intake import AlertMapper
from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.api_support import auth, key_env, notification

CUSTOM_ALERTS = """alerts:
  environment_labels: [deploy_env]
  rules:
    - {match: {cluster: "eu-.*"}, environment: test-docker}
  use_default_environment: false
  target_labels: [pod]
  namespace_label: namespace
  dependencies_label: needs
"""


@pytest.fixture
def pod_config_dir(test_config_dir: Path) -> Path:
    """The test configuration with other label conventions: targets by `pod`, the environment
    by `deploy_env` (or a rule on `cluster`), dependencies in `needs`, no default environment."""
    path = test_config_dir / "platform.yml"
    text = path.read_text()
    start = text.index("\nalerts:\n") + 1
    end = text.index("\nnotifications:\n", start) + 1  # the section after alerts: stays
    path.write_text(text[:start] + CUSTOM_ALERTS + text[end:])
    return test_config_dir


@pytest.fixture
def pod_config(pod_config_dir: Path, tmp_path: Path) -> UICIConfig:
    return load_config(pod_config_dir, environ=key_env(tmp_path))


@pytest.fixture
def client(pod_config_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    configs = ConfigCache(pod_config_dir, environ=key_env(tmp_path))
    with TestClient(create_app(configs, run_dispatcher=False)) as test_client:
        yield test_client


def pod_alert(**labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "PodCrashLooping", **labels},
        "annotations": {"summary": "crash looping"},
        "startsAt": "2026-12-01T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "pod0000000000001",
    }


def dispatched(tmp_path: Path, incident_id: str) -> dict[str, Any]:
    """The parameters the service will start the diagnose-incident flow with (its outbox)."""
    with sqlite3.connect(tmp_path / "uici.db") as db:
        row = db.execute(
            "SELECT payload FROM dispatch WHERE kind = 'diagnose' AND incident_id = ?",
            (incident_id,),
        ).fetchone()
    assert row is not None, f"no diagnose dispatch for {incident_id}"
    payload: dict[str, Any] = json.loads(row[0])
    return payload


def test_webhook_flow_and_context_agree_on_custom_conventions(
    client: TestClient, pod_config: UICIConfig, tmp_path: Path
) -> None:
    alert = pod_alert(pod="web-7d9f", deploy_env="test-docker", needs="db, cache")
    response = client.post(
        "/webhooks/alertmanager", json=notification(alert), headers=auth("webhook")
    )
    assert response.status_code == 202, response.text
    [disposition] = response.json()["alerts"]
    assert disposition["outcome"] == "new_incident", disposition
    incident_id = disposition["incident_id"]
    stored = client.get(f"/incidents/{incident_id}", headers=auth("reader")).json()
    assert (stored["environment"], stored["service"]) == ("test-docker", "web-7d9f")

    # The webhook's mapping, the shared function and the flow's context say the same.
    webhook = AlertMapper(pod_config).map(alert["labels"])
    assert not hasattr(webhook, "reason"), webhook
    direct = context_from_alert(alert, LabelConventions.from_config(pod_config))
    parameters = dispatched(tmp_path, incident_id)
    del parameters["request_id"]
    flow = run_context(pod_config, **parameters)  # what diagnose_incident runs first
    alert_only = run_context(pod_config, alert, None, None, None, "inc-x")
    for context in (direct, flow, alert_only):
        assert context.environment == webhook.environment == "test-docker"  # type: ignore[union-attr]
        assert context.service == webhook.target == "web-7d9f"  # type: ignore[union-attr]
        assert context.dependencies == webhook.dependencies == ["db", "cache"]  # type: ignore[union-attr]
    assert flow.incident_id == incident_id


def test_rules_pick_the_environment_and_a_missing_one_is_named(pod_config: UICIConfig) -> None:
    conventions = LabelConventions.from_config(pod_config)
    by_rule = conventions.map({"pod": "api-1", "cluster": "eu-west"})
    assert (by_rule.environment, by_rule.target) == ("test-docker", "api-1")
    with pytest.raises(UnmappedAlert, match=re.escape("['deploy_env']")):
        conventions.map({"pod": "api-1", "cluster": "us-east"})
    # A caller that already knows the environment (the dispatcher, `uici plan --env`) wins.
    given = context_from_alert({"labels": {"pod": "api-1"}}, conventions, environment="off-docker")
    assert given.environment == "off-docker"


def test_an_alert_without_the_target_labels_fails_naming_them(
    client: TestClient, pod_config: UICIConfig, pod_config_dir: Path, tmp_path: Path
) -> None:
    # `service` is a target label in the shipped conventions, but not in these.
    alert = pod_alert(service="web", deploy_env="test-docker")
    with pytest.raises(UnmappedAlert) as raised:
        context_from_alert(alert, LabelConventions.from_config(pod_config))
    assert "no target: none of the labels ['pod'] is set" in str(raised.value)
    assert "alerts.target_labels" in str(raised.value)
    with pytest.raises(UnmappedAlert, match=re.escape("['pod']")):
        run_context(pod_config, alert, None, None, None, None)
    # The webhook records it as unmapped with the same reason, and starts nothing.
    response = client.post(
        "/webhooks/alertmanager", json=notification(alert), headers=auth("webhook")
    )
    [disposition] = response.json()["alerts"]
    assert disposition["outcome"] == "unmapped"
    assert disposition["reason"] == raised.value.reason
    # `uici plan` says the same and exits 2.
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(alert))
    result = CliRunner().invoke(
        app,
        ["--config-dir", str(pod_config_dir), "plan", "--alert", str(path)],
        env=key_env(tmp_path),
    )
    assert result.exit_code == 2, result.output
    assert "none of the labels ['pod'] is set" in result.stderr


def test_the_cli_plans_a_pod_alert_with_the_custom_conventions(
    pod_config_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(pod_alert(pod="web-7d9f", deploy_env="test-docker", needs="db")))
    result = CliRunner().invoke(
        app,
        ["--config-dir", str(pod_config_dir), "plan", "--alert", str(path), "--json"],
        env=key_env(tmp_path),
    )
    assert result.exit_code == 0, result.output
    context = json.loads(result.stdout)["context"]
    assert (context["environment"], context["service"]) == ("test-docker", "web-7d9f")
    assert context["dependencies"] == ["db"]


def test_the_shipped_conventions_are_unchanged(tmp_path: Path) -> None:
    config = load_config(environ={"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/uici.db"})
    conventions = LabelConventions.from_config(config)
    # container first, then service, app, job; uici_env; uici_dependencies.
    both = conventions.map({"container": "web-1", "service": "web", "uici_dependencies": "db,"})
    assert (both.environment, both.target, both.dependencies) == ("local-docker", "web-1", ["db"])
    assert conventions.map({"job": "batch"}).target == "batch"
    # Kubernetes environments put the namespace in front of the name; Docker ones do not.
    k8s = conventions.map({"app": "api", "namespace": "shop", "uici_env": "staging-k8s"})
    assert k8s.target == "shop/api"
    assert conventions.map({"app": "api", "namespace": "shop"}).target == "api"
    refused = AlertMapper(config).map({"service": "web", "uici_env": "staging-k8s"})
    assert getattr(refused, "reason", "") == "environment 'staging-k8s' is disabled"


def test_an_alert_from_outside_cannot_claim_what_only_the_sweep_sets(
    client: TestClient, pod_config: UICIConfig, tmp_path: Path
) -> None:
    """The sweep's labels (where an incident comes from, the state it observed) are UICI's
    own: the webhook drops them, so an alert can neither pose as the sweep nor pick a runbook
    by a state nobody observed."""
    sweep = pod_config.agents.health_sweep
    alert = pod_alert(
        pod="web-1", deploy_env="test-docker",
        **{sweep.source_label: "sweep", sweep.observed_state_label: "exited"},
    )  # fmt: skip
    response = client.post(
        "/webhooks/alertmanager", json=notification(alert), headers=auth("webhook")
    )
    [disposition] = response.json()["alerts"]
    parameters = dispatched(tmp_path, disposition["incident_id"])
    labels = parameters["alert"]["labels"]
    assert sweep.source_label not in labels and sweep.observed_state_label not in labels
    assert labels["pod"] == "web-1"
    with sqlite3.connect(tmp_path / "uici.db") as db:
        [stored] = db.execute("SELECT labels FROM alerts").fetchall()
    assert sweep.observed_state_label not in json.loads(stored[0])
