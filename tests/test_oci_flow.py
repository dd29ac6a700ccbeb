"""The four-phase flow on an Oracle Cloud environment: a real Prefect server, the real `oci`
SDK signing its requests to the OCI double. The report names the failing instance's cause."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.incidents.storage import IncidentStore
from flows.diagnose import diagnose_incident
from tests import oci_scenarios as scenarios
from tests.oci_double import OciDouble
from tests.test_oci_executor import ENV, FATAL, oci_config_dir


def test_a_failing_container_instance_is_diagnosed(
    flow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OciDouble() as double:
        failing = scenarios.failing_instance(double, "payments")
        config = oci_config_dir(
            tmp_path / "config", double, double.write_credentials(tmp_path / "oci")
        )
        monkeypatch.setenv("UICI_CONFIG_DIR", str(config))
        alert = {
            "status": "firing",
            "labels": {"alertname": "ContainerInstanceFailed", "service": "payments",
                       "uici_env": ENV},
            "annotations": {"summary": "payments keeps failing"},
        }  # fmt: skip
        report = asyncio.run(diagnose_incident(alert=alert))
        assert all(r.signature_ok for r in double.requests)
    diagnosis = report["diagnosis"]
    assert diagnosis["rules_matched"][0] == "missing-configuration", diagnosis
    evidence = [o for o in report["observations"] if o["id"] in diagnosis["evidence"]]
    assert evidence and FATAL in evidence[0]["output"]
    observed = {o["operation"] for o in report["observations"]}
    assert {"get_status", "get_logs", "describe"} <= observed
    assert scenarios.SECRET_VALUE not in str(report)
    stored = IncidentStore(flow_env / "uici.db").get(report["incident_id"])
    assert stored is not None and stored.environment == ENV
    assert failing.container in str(report["observations"])
