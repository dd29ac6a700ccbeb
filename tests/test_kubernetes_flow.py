"""The four-phase flow and the health sweep on a Kubernetes environment, exactly as on Docker:
a real Prefect server, the official client over HTTP to the API double."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.incidents.storage import IncidentStore
from flows.diagnose import diagnose_incident
from flows.sweep import health_sweep
from tests import k8s_scenarios as scenarios
from tests.k8s_double import KubeDouble
from tests.test_kubernetes_executor import ENV, FATAL, k8s_config_dir


@pytest.fixture
def k8s_flow_env(
    flow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, KubeDouble]]:
    with KubeDouble() as double:
        config = k8s_config_dir(tmp_path / "config", double.kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setenv("UICI_CONFIG_DIR", str(config))
        yield flow_env, double


def test_a_crash_looping_deployment_is_diagnosed_from_its_previous_log(
    k8s_flow_env: tuple[Path, KubeDouble],
) -> None:
    flow_env, double = k8s_flow_env
    scenarios.crash_looping_deployment(double, "api")
    alert = {
        "status": "firing",
        "labels": {"alertname": "KubePodCrashLooping", "service": "api", "uici_env": ENV},
        "annotations": {"summary": "api is crash looping"},
    }
    report = asyncio.run(diagnose_incident(alert=alert))
    diagnosis = report["diagnosis"]
    assert diagnosis["rules_matched"][0] == "missing-configuration", diagnosis
    # The evidence is the get_logs observation, and the line comes from the previous instance.
    evidence = [o for o in report["observations"] if o["id"] in diagnosis["evidence"]]
    assert evidence[0]["operation"] == "get_logs"
    assert {o["operation"] for o in evidence} <= {"get_logs", "get_status"}, evidence
    assert f"[previous] | {FATAL}" in evidence[0]["output"]
    observed = {o["operation"] for o in report["observations"]}
    assert {"get_status", "get_logs", "get_events", "describe"} <= observed
    stored = IncidentStore(flow_env / "uici.db").get(report["incident_id"])
    assert stored is not None and stored.environment == ENV


def test_the_sweep_finds_the_broken_workloads_and_diagnoses_them(
    k8s_flow_env: tuple[Path, KubeDouble],
) -> None:
    flow_env, double = k8s_flow_env
    scenarios.crash_looping_deployment(double, "api")
    scenarios.image_pull_failure_deployment(double, "puller")
    scenarios.healthy_statefulset(double, "db")
    summary = asyncio.run(health_sweep(environments=[ENV]))
    unhealthy = {u["service"]: u["reason"] for u in summary["unhealthy"]}
    assert unhealthy.get("api") == "state CrashLoopBackOff", summary
    assert unhealthy.get("puller") == "state ImagePullBackOff", summary
    assert "db" not in unhealthy
    store = IncidentStore(flow_env / "uici.db")
    causes = {
        record.service: (record.report or {}).get("diagnosis", {}).get("rules_matched", [])
        for record in store.incidents()
    }
    assert causes["api"][:1] == ["missing-configuration"]
    assert causes["puller"][:1] == ["image-pull-failure"]
