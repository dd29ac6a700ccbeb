"""Metrics and logs in the four-phase flow, every part real but Loki (a double over HTTP):

- a container whose logging driver keeps no readable log (as with Docker's Loki driver)
  crash-loops on a missing setting; `docker logs` cannot show why, Loki kept the lines, and
  the flow finds the cause there;
- the health sweep fits a real Prometheus's history of each running container's memory and
  opens a `predicted` incident, marked as a forecast with its horizon, for the one heading for
  its limit (and none for the flat one), whose diagnosis names the steady climb.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.types import LogConfig

from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.report import IncidentReport, render_markdown
from agent.incidents.storage import IncidentStore
from flows.diagnose import diagnose_incident
from tests.loki_double import LokiDouble
from tests.prometheus_data import LocalPrometheus, available

MISSING = (
    'echo "INFO starting payments 2.1.0"; '
    'echo "FATAL: required environment variable STRIPE_API_BASE is not set" >&2; exit 1'
)


@pytest.fixture
def loki() -> Iterator[LokiDouble]:
    with LokiDouble() as double:
        yield double


def test_a_container_whose_log_is_not_readable_is_diagnosed_from_loki(
    lab: FailureLab, flow_env: Path, loki: LokiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UICI_LOKI_URL", loki.url)
    container = lab.run(
        f"payments-{uuid.uuid4().hex[:6]}",
        ["sh", "-c", MISSING],
        restart_policy={"Name": "always"},
        log_config=LogConfig(type=LogConfig.types.NONE),
    )
    wait_for(lambda: (container.reload() or container.attrs["RestartCount"]) >= 2, 30, "restarts")
    # What Docker's Loki logging driver would have shipped, one pair of lines per start.
    now = time.time_ns()
    loki.push(
        {"container": container.name, "host": "vm-1"},
        [
            (now - (10 - i) * 1_000_000_000, line)
            for i in range(0, 6, 2)
            for line in (
                "INFO starting payments 2.1.0",
                "FATAL: required environment variable STRIPE_API_BASE is not set",
            )
        ],
    )
    alert = {
        "status": "firing",
        "labels": {"alertname": "ContainerRestarting", "service": container.name},
        "annotations": {"summary": f"{container.name} keeps restarting"},
    }
    report = asyncio.run(diagnose_incident(alert=alert))
    by_operation = {o["operation"]: o for o in report["observations"]}
    logs = by_operation["get_logs"]
    assert not logs["success"] and "does not support reading" in logs["error"], logs
    loki_read = by_operation["query_logs"]
    assert loki_read["success"] and loki_read["phase"] == "isolation", loki_read
    assert loki_read["data"]["query"] == f'{{container="{container.name}"}}'
    assert report["diagnosis"]["rules_matched"][0] == "missing-configuration", report["diagnosis"]
    assert "STRIPE_API_BASE" in report["diagnosis"]["root_cause"]
    assert loki_read["id"] in report["diagnosis"]["evidence"]
    # The read went to Loki over the incident's window, with an explicit direction and limit.
    [request] = [r for r in loki.requests if r.path.endswith("/query_range")]
    assert request.params["direction"] == "backward" and request.params["limit"] == "2000"
    container.remove(force=True)


class _Memory:
    """Two hours of cAdvisor-style memory series for two containers (OpenMetrics, for
    promtool): `leaking` climbs steadily toward its 512 MiB limit, `steady` stays flat."""

    limit = 512 * 2**20

    def __init__(self, leaking: str, steady: str, end: int) -> None:
        self.leaking, self.steady, self.end = leaking, steady, end

    def write_openmetrics(self, path: Path) -> None:
        start, step = self.end - 7200, 15
        rows_usage: list[str] = []
        rows_limit: list[str] = []
        for at in range(start, self.end + 1, step):
            climbed = 100 * 2**20 + (at - start) * 50_000  # reaches ~443 MiB at the end
            rows_usage.append(
                f'container_memory_working_set_bytes{{name="{self.leaking}"}} {climbed} {at}'
            )
            rows_usage.append(
                f'container_memory_working_set_bytes{{name="{self.steady}"}} {300 * 2**20} {at}'
            )
            for name in (self.leaking, self.steady):
                rows_limit.append(
                    f'container_spec_memory_limit_bytes{{name="{name}"}} {self.limit} {at}'
                )
        path.write_text(
            "# TYPE container_memory_working_set_bytes gauge\n"
            + "\n".join(rows_usage)
            + "\n# TYPE container_spec_memory_limit_bytes gauge\n"
            + "\n".join(rows_limit)
            + "\n# EOF\n"
        )


def test_the_sweep_warns_before_a_leak_reaches_the_limit(
    lab: FailureLab, flow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = available()
    if reason:
        pytest.skip(reason)
    from flows.sweep import health_sweep

    marker = uuid.uuid4().hex[:8]
    labels = {"uici.test.forecast": marker}
    leaking = lab.run(f"cache-{marker}", ["sleep", "600"], labels=labels)
    steady = lab.run(f"queue-{marker}", ["sleep", "600"], labels=labels)
    history = _Memory(leaking.name, steady.name, int(time.time()) - 30)
    with LocalPrometheus(tmp_path / "prom", history, [], None) as prometheus:  # type: ignore[arg-type]
        monkeypatch.setenv("UICI_PROMETHEUS_URL", prometheus.url)
        result = asyncio.run(health_sweep(selector=f"uici.test.forecast={marker}"))
    try:
        [found] = result["unhealthy"]
        assert found["service"] == leaking.name and found["observed_state"] == "predicted"
        forecast = found["forecast"]
        assert forecast["resource"] == "memory" and forecast["horizon"] == "4h"
        # 443 MiB of 512 rising 50 kB/s: the limit in about 24 minutes.
        assert 15 * 60 < forecast["seconds_to_capacity"] < 35 * 60, forecast
        [incident_id] = result["incidents_started"]
        stored = IncidentStore(flow_env / "uici.db").get(incident_id)
        assert stored is not None and stored.report is not None
        alert = stored.context.alert
        assert alert.labels["alertname"] == "ResourceExhaustionForecast"
        assert alert.labels["uici_observed_state"] == "predicted"
        assert alert.labels["uici_forecast_resource"] == "memory"
        assert alert.annotations["forecast_horizon"] == "4h"
        assert alert.annotations["summary"].startswith("FORECAST ")
        diagnosis = stored.report["diagnosis"]
        assert diagnosis["rules_matched"][:1] == ["memory-growing-to-limit"], (
            diagnosis,
            [
                (o["operation"], o["success"], o["error"], o["output"][:300])
                for o in stored.report["observations"]
            ],
            stored.report["plans"],
        )
        assert diagnosis["category"] == "memory_leak"
        # The report says first that nothing has failed yet.
        rendered = render_markdown(IncidentReport.model_validate(stored.report))
        assert rendered.splitlines()[2].startswith("- FORECAST, not a failure: FORECAST")
        assert "(horizon 4h)" in rendered.splitlines()[2]
    finally:
        leaking.remove(force=True)
        steady.remove(force=True)


def test_a_prometheus_that_does_not_answer_never_fails_the_sweep(
    lab: FailureLab, flow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep import health_sweep
    from tests.promstack import free_port

    monkeypatch.setenv("UICI_PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    marker = uuid.uuid4().hex[:8]
    labels = {"uici.test.forecast": marker}
    crashed = lab.run(f"crash-{marker}", ["sh", "-c", "exit 3"], labels=labels)
    running = [lab.run(f"up{i}-{marker}", ["sleep", "600"], labels=labels) for i in range(6)]
    wait_for(lambda: (crashed.reload() or crashed.status) == "exited", 20, "the exit")
    try:
        result = asyncio.run(
            health_sweep(selector=f"uici.test.forecast={marker}", start_diagnoses=False)
        )
        assert [u["service"] for u in result["unhealthy"]] == [crashed.name]
        # 6 services x 2 resources were to be forecast; after the first unanswered one the
        # environment was not asked again (at most the reads already under way ran).
        store = IncidentStore(flow_env / "uici.db")
        from agent.incidents.events import EventLog

        tried = [
            e
            for e in EventLog(store.path).since(0)
            if e.type == "operation.finished" and e.data.get("operation") == "get_resource_trend"
        ]
        # (each attempt of a read is recorded; count the services asked about)
        asked = {e.data.get("target") for e in tried}
        limit = load_config_parallel()
        assert 1 <= len(asked) <= limit < len(running), asked
    finally:
        for container in (crashed, *running):
            container.remove(force=True)


def load_config_parallel() -> int:
    from infrastructure.configuration.loader import load_config

    return load_config().agents.health_sweep.max_parallel
