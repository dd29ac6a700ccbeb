"""The provisioned Grafana dashboard (deployments/grafana/) over UICI's own metrics.

Grafana cannot run here, so the dashboard is checked in two ways. Its structure: what Grafana
needs to load a provisioned file (schema version, a stable uid, the datasource variable used by
every panel and target, ids, positions, descriptions) and the provisioning files. And its
queries, for real: a real `uici serve` whose store was filled through the product's own code
(alerts posted to its webhook with its key; diagnoses, operations through the execution gate,
approvals, LLM usage and a circuit breaker opening recorded as the flows record them;
notifications delivered to a receiver that accepts some and refuses others), and a second
`uici serve` on the same store (an API replica), both scraped every second by Debian's real
Prometheus: what is read from the store must be counted once, not once per replica. Every panel query is run with Grafana's macros
substituted and must answer a non-empty result with a number in it (a histogram_quantile that
lost its `le` answers an empty success, and one over an idle histogram NaN). Every expression
of deployments/prometheus/uici-rules.yml must evaluate there too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from agent.evaluation.replay import ReplayExecutor
from agent.incidents.approvals import ApprovalDesk
from agent.incidents.events import EventLog
from agent.incidents.models import PlanStep
from agent.incidents.storage import Database, IncidentStore, insert_event, read_cursor
from agent.notifications.notifier import CURSOR
from agent.planning.llm import LLMClient, LLMFailure
from agent.safety.gate import ExecutionGate, GateOutcome, GateRequest
from agent.safety.policy import Approval
from agent.service.metrics import StoreCollector
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.configuration.models import (
    CircuitBreakerSettings,
    EnvironmentType,
    LLMProvider,
)
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    OperationError,
    OperationResult,
)
from tests.api_support import KEYS, alert, key_env, notification
from tests.conftest import REPO_ROOT, TEST_CONFIG
from tests.http_receiver import HttpReceiver, Reply
from tests.promstack import ENSURE_SCRIPT, PROMETHEUS_BIN, _Process, available, free_port
from tests.service_process import ServiceProcess

GRAFANA = REPO_ROOT / "deployments" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "uici.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "uici.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "uici.yaml"
UICI_RULES = REPO_ROOT / "deployments" / "prometheus" / "uici-rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UID = "uici-overview"  # links and bookmarks use it: never change it
ENV = "test-docker"
# What Grafana would put in; $__rate_interval is at least 4 scrape intervals (1 s here).
MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${environment}": ENV,
    "$environment": ENV,
}
SECRET = "dashboard-notify-secret-0123456789"
SLACK = "/slack/T0/B0/refused"  # answered 400: the notification fails for good
HOOK = "/webhook/uici"  # answered 200


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def data_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"a macro this test does not know: {expr}"
    return expr


# --- structure -----------------------------------------------------------------------------


def test_the_dashboard_is_made_for_file_provisioning() -> None:
    board = dashboard()
    assert board["uid"] == UID
    assert 39 <= board["schemaVersion"] <= 41
    # `id` is the database's; `__inputs` is only substituted by the import flow, never by
    # file provisioning (grafana/grafana#10786).
    assert "id" not in board and "__inputs" not in board
    assert board["title"] and board["time"]["from"].startswith("now-")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    environment = variables["environment"]
    assert environment["type"] == "query" and environment["datasource"] == DATASOURCE
    assert re.fullmatch(r"label_values\(uici_\w+, environment\)", environment["definition"])
    assert environment["query"]["query"] == environment["definition"]
    assert environment["includeAll"] and environment["allValue"] == ".*"
    assert "DS_" not in DASHBOARD.read_text()  # no export-for-sharing placeholders


def test_every_panel_uses_the_datasource_variable_and_says_what_it_shows() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    problems = []
    for panel in board["panels"]:
        title = panel.get("title", "?")
        grid = panel.get("gridPos", {})
        if set(grid) != {"x", "y", "w", "h"} or not (1 <= grid["w"] <= 24):
            problems.append(f"{title}: gridPos {grid}")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: wider than the 24 columns")
        if panel["type"] == "row":
            assert not panel.get("targets"), title
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{title}: datasource {panel.get('datasource')}")
        if not panel.get("description", "").strip():
            problems.append(f"{title}: no description")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no targets")
        refs = [t.get("refId") for t in targets]
        if None in refs or len(set(refs)) != len(refs):
            problems.append(f"{title}: refIds {refs}")
        for target in targets:
            if target.get("datasource") != DATASOURCE:
                problems.append(f"{title} {target.get('refId')}: datasource")
            if not str(target.get("expr", "")).strip():
                problems.append(f"{title} {target.get('refId')}: no expr")
    assert problems == []
    titles = [p["title"] for p in data_panels()]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    assert len(titles) >= 20


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_quantiles_keep_le_and_panels_use_the_environment_variable() -> None:
    exprs = [t["expr"] for p in data_panels() for t in p["targets"]]
    for expr in exprs:
        for match in re.finditer(r"histogram_quantile\([^,]+,\s*sum by \(([^)]*)\)", expr):
            assert "le" in [label.strip() for label in match.group(1).split(",")], expr
        assert "histogram_quantile" not in expr or "sum by (" in expr, expr
    assert sum('environment=~"$environment"' in e for e in exprs) >= 10


def test_the_provisioning_files_point_at_the_dashboard() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] and source["access"] == "proxy"
    assert source["url"].startswith("http")
    providers = yaml.safe_load(PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    # The README mounts deployments/grafana/dashboards exactly where the provider looks, and
    # the provisioning directories where Grafana reads them.
    readme = (GRAFANA / "README.md").read_text()
    assert f"deployments/grafana/dashboards:{path}" in readme
    assert "deployments/grafana/provisioning:/etc/grafana/provisioning" in readme
    assert DASHBOARD.parent.name == "dashboards" and DASHBOARD.suffix == ".json"


def test_an_empty_store_is_scraped_with_every_store_metric_at_zero(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path / "uici.db")
    found = store_samples(store.database)
    assert found["uici_incidents_opened_total"] == 0
    assert found["uici_dispatch_pending"] == 0
    assert found['uici_events_total{type="incident.failed"}'] == 0
    assert found["uici_llm_circuit_openings_total"] == 0
    assert found["uici_llm_circuit_last_opened_timestamp_seconds"] == 0
    # Series by environment, sink or operation appear once the store has one.
    assert not [name for name in found if "environment=" in name or "sink=" in name]


# --- the queries against a real Prometheus scraping a real `uici serve` -------------------------


@dataclass
class Stack:
    prometheus: str
    client: httpx.Client
    service: ServiceProcess
    replica: ServiceProcess  # a second `uici serve` on the same store, scraped too
    store: IncidentStore

    def query(self, expr: str, at: str | None = None) -> dict[str, Any]:
        data = {"query": expr} if at is None else {"query": expr, "time": at}
        response = self.client.post(f"{self.prometheus}/api/v1/query", data=data)
        body: dict[str, Any] = response.json()
        return body

    def value(self, expr: str) -> float:
        result = self.query(expr)["data"]["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def recorded(operation: str, target: str | None, seconds: float, ok: bool = True) -> dict[str, Any]:
    """One answer of the replayed executor (what a Docker engine answered once)."""
    error = None if ok else OperationError(kind=ErrorKind.PERMANENT, message="no such container")
    return OperationResult(
        operation=operation,
        environment=ENV,
        environment_type=EnvironmentType.DOCKER,
        target=target,
        success=ok,
        output="ok" if ok else "",
        error=error,
        duration_seconds=seconds,
        started_at=datetime.now(UTC),
    ).model_dump(mode="json")


# Each (operation, target) answers these in order (the last one again after that).
ANSWERS = [
    recorded("get_logs", "web", 0.04),
    recorded("get_logs", "web", 0.3),
    recorded("get_logs", "db", 0.02, ok=False),
    recorded("list_services", None, 0.015),
    recorded("restart_service", "web", 1.7),
    recorded("get_logs", "api", 0.06),
    recorded("get_logs", "api", 0.2),
]


class Flows:
    """What the diagnosis flows record, done with the product's own classes: the gate (over
    a replayed executor, so no engine is needed), the store, the event log, the approval desk
    and the LLM client."""

    def __init__(self, config: UICIConfig, store: IncidentStore) -> None:
        self.config = config
        self.store = store
        self.events = EventLog(store.path, store.redactor)

        def replay(name: str, spec: Any) -> EnvironmentExecutor:
            return ReplayExecutor(name, spec, ANSWERS)

        self.gate = ExecutionGate(config, store, executor_factory=replay)

    def run(
        self,
        incident_id: str,
        operation: str,
        target: str | None,
        by: str | None = None,
        **params: Any,
    ) -> GateOutcome:
        incident = self.store.get(incident_id)
        assert incident is not None
        step = PlanStep(
            phase="resolution" if operation == "restart_service" else "triage",
            operation=operation,
            environment=ENV,
            target=target,
            parameters=params,
            proposed_by="runbook",
        )
        approval = None
        if by is not None:
            expires = datetime.now(UTC) + timedelta(minutes=10)
            approval = Approval(step_key=step.key(), approved_by=by, expires_at=expires)
        request = GateRequest(
            step=step,
            context=incident.context,
            actor=by or "uici",
            entry="flow",
            approval=approval,
            intent_key=f"dash-{uuid.uuid4().hex}",
        )
        return self.gate.execute(request)

    def ask_approval(self, incident_id: str, target: str, expires_in: float, **params: Any) -> str:
        step = PlanStep(
            phase="resolution", operation="restart_service", environment=ENV, target=target,
            parameters=params, proposed_by="runbook",
        )  # fmt: skip
        self.store.request_approval(
            incident_id, step, f"docker restart {target}", time.time() + expires_in
        )
        self.store.set_status(incident_id, "awaiting_approval")
        self.events.emit(
            "approval.needed", incident_id, step=step.describe(), step_key=step.key(),
            operation=step.operation, target=target, environment=ENV, risk="write",
            expires_at=time.time() + expires_in,
        )  # fmt: skip
        return step.key()

    def llm_usage(self, incident_id: str, calls: int, prompt: int, completion: int) -> None:
        self.events.emit(
            "llm.call", incident_id, phase="triage", calls=calls, prompt_tokens=prompt,
            completion_tokens=completion, cost=round((prompt + 2 * completion) / 1e6, 8),
        )  # fmt: skip

    def diagnosed(self, incident_id: str, service: str) -> None:
        self.store.record_diagnosis(
            incident_id, ENV, service, "crash", f"sig-{service}", f"{service} crashed", [], True
        )
        self.store.save_report(incident_id, {"incident_id": incident_id}, "diagnosed")
        self.events.emit(
            "incident.diagnosed", incident_id, root_cause=f"{service} crashed", healthy=True,
            status="diagnosed",
        )  # fmt: skip

    def failed(self, incident_id: str) -> None:
        message = "RuntimeError: the executor went away"
        self.store.save_report(
            incident_id, {"incident_id": incident_id, "error": message}, "failed"
        )
        self.events.emit("incident.failed", incident_id, error=message)

    def circuit_opens(self) -> None:
        """A provider nobody answers, a breaker that opens at the first failure; the event
        is what agent/planning/planner.py records when it wires `on_circuit_open`."""
        settings = self.config.platform.llm.model_copy(
            update={
                "provider": LLMProvider.OPENAI,
                "model": "test-model",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "max_retries": 0,
                "timeout_seconds": 2,
                "circuit_breaker": CircuitBreakerSettings(failure_threshold=1, reset_seconds=60),
            }
        )

        def record(failures: int) -> None:
            data = json.dumps({"provider": "openai", "failures": failures})
            insert_event(self.store.database, time.time(), "llm.circuit_open", None, data)

        client = LLMClient(settings, on_circuit_open=record)
        with pytest.raises(LLMFailure) as failure:
            client.complete("system", "user", {"type": "object"}, "plan")
        assert failure.value.kind == "connection"
        assert client.breaker.state == "open"


def post_alerts(
    service: ServiceProcess, *alerts: dict[str, Any], key: str = KEYS["webhook"]
) -> httpx.Response:
    return httpx.post(
        f"{service.url}/webhooks/alertmanager",
        json=notification(*alerts),
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def new_incident(service: ServiceProcess, name: str, severity: str) -> str:
    response = post_alerts(service, alert(name, severity=severity))
    assert response.status_code == 202, response.text
    [incident] = response.json()["new_incidents"]
    return str(incident)


def samples(text: str) -> dict[str, float]:
    """A Prometheus text exposition as sample (name and labels) -> value."""
    lines = (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, _, value in lines if name}


def exposition(service: ServiceProcess) -> dict[str, float]:
    """The service's own /metrics."""
    return samples(httpx.get(f"{service.url}/metrics", timeout=10).text)


def store_samples(source: Database) -> dict[str, float]:
    """What a collector that never scraped this store before reads from it."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(source))
    return samples(generate_latest(registry).decode())


def start_prometheus(workdir: Path, services: list[ServiceProcess]) -> tuple[_Process, str]:
    port = free_port()
    shutil.copy(UICI_RULES, workdir / "uici-rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["uici-rules.yml"],
        "scrape_configs": [
            {
                "job_name": "uici",
                "static_configs": [{"targets": [f"127.0.0.1:{s.port}" for s in services]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    process = _Process(
        "prometheus",
        [
            str(PROMETHEUS_BIN),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
        url,
    )
    return process, url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ensured = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if ensured.returncode != 0 or not available():
        pytest.fail(f"{ENSURE_SCRIPT} failed:\n{ensured.stdout}{ensured.stderr}", pytrace=False)
    tmp = tmp_path_factory.mktemp("dashboard")
    config_dir = tmp / "config"
    shutil.copytree(TEST_CONFIG, config_dir)
    with HttpReceiver(webhook_secret=SECRET) as receiver, pytest.MonkeyPatch.context() as mp:
        receiver.always(SLACK, Reply(400, b"invalid_token"))
        env = key_env(
            tmp,
            UICI_TEST_SLACK_URL=receiver.url + SLACK,
            UICI_TEST_NOTIFY_WEBHOOK_URL=receiver.url + HOOK,
            UICI_TEST_NOTIFY_WEBHOOK_SECRET=SECRET,
        )
        # This process records as the flows do: with this configuration (and its redaction).
        mp.setenv("UICI_CONFIG_DIR", str(config_dir))
        config = load_config(config_dir, environ=env)
        store = IncidentStore.from_config(config)
        served = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
        served.update(env, UICI_CONFIG_DIR=str(config_dir))
        flows = Flows(config, store)
        service = ServiceProcess(served, tmp / "serve.log", None, "--no-dispatch")
        replica = ServiceProcess(served, tmp / "serve-2.log", None, "--no-dispatch")
        prometheus: _Process | None = None
        client = httpx.Client(timeout=10, trust_env=False)
        try:
            service.start()
            replica.start()
            # The notifier's first round takes what is in the store as history (not news):
            # what follows must come after it to be notified.
            wait_for(
                "the notifier's first round",
                lambda: read_cursor(store.database, CURSOR) is not None,
            )
            # Round 1, before Prometheus starts: the history it finds on its first scrape.
            web = new_incident(service, "web", "critical")
            db = new_incident(service, "db", "warning")
            cache = new_incident(service, "cache", "warning")
            unmapped = post_alerts(service, alert("ghost", uici_env="nowhere"))
            assert unmapped.json()["alerts"][0]["outcome"] == "unmapped", unmapped.text
            assert post_alerts(service, alert("web"), key="wrong").status_code == 401
            bad = httpx.post(
                f"{service.url}/webhooks/alertmanager", content=b"{not json",
                headers={"Authorization": f"Bearer {KEYS['webhook']}", "Content-Type": "application/json"},
            )  # fmt: skip
            assert bad.status_code == 400

            store.set_status(web, "diagnosing")
            assert flows.run(web, "get_logs", "web", lines=50).outcome == "executed"
            assert flows.run(web, "list_services", None).outcome == "executed"
            flows.llm_usage(web, calls=2, prompt=1200, completion=300)
            refused = flows.run(web, "restart_service", "web", stop_timeout=1)
            assert refused.refused_by == "approval", refused.note
            key = flows.ask_approval(web, "web", 600, stop_timeout=1)
            vote = ApprovalDesk(store).answer(web, key, "operator", True, "api", "127.0.0.1")
            assert vote.decision == "approved"
            sent = flows.run(web, "restart_service", "web", by="operator", stop_timeout=1)
            assert sent.outcome == "executed", sent.note
            again = flows.run(web, "restart_service", "web", by="operator", stop_timeout=2)
            assert again.refused_by == "history", again.note
            flows.diagnosed(web, "web")

            store.set_status(db, "diagnosing")
            assert flows.run(db, "get_logs", "db").outcome == "failed"
            flows.failed(db)

            expired = flows.ask_approval(cache, "cache", -1, stop_timeout=1)
            assert store.decide_approval(cache, expired, "expired", "uici", "no answer")
            flows.ask_approval(cache, "cache", 600, stop_timeout=5)  # still waiting
            flows.circuit_opens()

            def delivered() -> bool:
                counts = exposition(service)
                failed = counts.get('uici_notifications{sink="slack",state="failed"}', 0)
                sent = counts.get('uici_notifications{sink="webhook",state="sent"}', 0)
                return failed > 0 and sent > 0

            wait_for("the notifications to be sent and refused", delivered)

            prometheus, url = start_prometheus(tmp, [service, replica])
            prometheus.start()
            prometheus.wait_ready(client, time.monotonic() + 30)
            result = Stack(url, client, service, replica, store)
            wait_for(
                "two scrapes of both replicas",
                lambda: (
                    len(result.query('count_over_time(up{job="uici"}[1m]) >= 2')["data"]["result"])
                    == 2
                ),
            )

            # Round 2, while Prometheus watches: rates and quantiles over the last minute.
            api = new_incident(service, "api", "critical")
            store.set_status(api, "diagnosing")
            assert flows.run(api, "get_logs", "api").outcome == "executed"
            assert flows.run(api, "get_logs", "api", lines=20).outcome == "executed"
            flows.llm_usage(api, calls=1, prompt=800, completion=100)
            flows.diagnosed(api, "api")
            wait_for(
                "a scrape after round 2",
                lambda: (
                    len(
                        result.query("uici_alert_to_diagnosis_seconds_count == 2")["data"]["result"]
                    )
                    == 2
                ),
            )
            time.sleep(1.5)  # and one more, so each rate sees the change between two samples
            yield result
        finally:
            client.close()
            if prometheus is not None:
                prometheus.stop()
            replica.stop()
            service.stop()
            flows.gate.close()


def test_every_panel_query_answers_data_from_a_real_prometheus(stack: Stack) -> None:
    failing = []
    for panel in data_panels():
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            body = stack.query(expr)
            where = f"{panel['title']} [{target['refId']}]"
            if body.get("status") != "success":
                failing.append(f"{where}: {body.get('error')} ({expr})")
                continue
            values = [float(r["value"][1]) for r in body["data"]["result"]]
            if not values:
                failing.append(f"{where}: empty result ({expr})")
            elif all(math.isnan(v) for v in values):
                failing.append(f"{where}: only NaN ({expr})")
    assert failing == [], "panels without data:\n" + "\n".join(failing)


def test_the_environment_variable_lists_the_environments(stack: Stack) -> None:
    [variable] = [v for v in dashboard()["templating"]["list"] if v["name"] == "environment"]
    metric = re.fullmatch(r"label_values\((\w+), environment\)", variable["definition"])
    assert metric is not None
    response = stack.client.get(
        f"{stack.prometheus}/api/v1/label/environment/values",
        params={"match[]": metric.group(1)},
    )
    assert response.json()["data"] == [ENV]


def test_every_uici_rule_evaluates_against_the_live_metrics(stack: Stack) -> None:
    rules = [r for g in yaml.safe_load(UICI_RULES.read_text())["groups"] for r in g["rules"]]
    errors = {}
    for rule in rules:
        body = stack.query(rule["expr"])
        if body.get("status") != "success":
            errors[rule["alert"]] = body.get("error")
    assert errors == {}

    # Prometheus itself loaded them and evaluates them without error.
    def evaluated() -> bool:
        groups = stack.client.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return len(loaded) == len(rules) and all(r["health"] == "ok" for r in loaded)

    wait_for("the rules to be evaluated", evaluated, timeout=10)


def test_the_service_added_up_what_a_fresh_count_of_the_store_finds(stack: Stack) -> None:
    """The service counts the event log and the audit trail from the rows new since its last
    scrape; after dozens of scrapes during the rounds it must agree with one full count."""
    fresh = store_samples(stack.store.database)
    assert len(fresh) > 100
    for service in (stack.service, stack.replica):  # each replica counts the whole store
        served = exposition(service)
        differ = {
            name: (served.get(name), value)
            for name, value in fresh.items()
            if "age_seconds" not in name and not math.isclose(served.get(name, -1), value)
        }
        assert differ == {}, service.url


def store_families() -> set[str]:
    """The metric families read from the store (the same on every replica)."""
    with tempfile.TemporaryDirectory() as tmp:
        collector = StoreCollector(IncidentStore(Path(tmp) / "uici.db").database)
        return {family.name for family in collector.collect()}


SELECTOR = re.compile(r"\b(uici_[a-z_]+)\b(\{[^}]*\})?")


def pinned(expr: str, instance: str, families: set[str]) -> str:
    """`expr` over one replica's store series only (the count a single replica gives)."""

    def pin(match: re.Match[str]) -> str:
        name, selector = match.group(1), match.group(2) or "{}"
        if re.sub(r"_(total|bucket|count|sum)$", "", name) not in families:
            return match.group(0)
        inner = selector[1:-1].strip()
        return f'{name}{{instance="{instance}"{", " + inner if inner else ""}}}'

    return SELECTOR.sub(pin, expr)


def same(a: float, b: float) -> bool:
    """Equal, up to the drift of two replicas scraped a moment apart (not a factor of two)."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0.3)


def test_two_replicas_count_the_store_once_in_every_panel_and_rule(stack: Stack) -> None:
    """Both replicas report the same store-derived series: every panel and rule over them
    answers what a single replica's series give, not twice as much."""
    families = store_families()
    instance = f"127.0.0.1:{stack.service.port}"
    expressions = [
        (f"panel {p['title']} [{t['refId']}]", substitute(t["expr"]))
        for p in data_panels()
        for t in p["targets"]
    ] + [
        (f"rule {r['alert']}", r["expr"])
        for g in yaml.safe_load(UICI_RULES.read_text())["groups"]
        for r in g["rules"]
    ]
    at = str(time.time())
    checked, wrong = 0, []
    for where, expr in expressions:
        single = pinned(expr, instance, families)
        if single == expr or "age_seconds" in expr or "timestamp" in expr:
            continue  # no store series; or an age, which moves between two scrapes
        both, one = (
            {
                json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                for r in stack.query(e, at)["data"]["result"]
            }
            for e in (expr, single)
        )
        checked += 1
        if both.keys() != one.keys() or not all(same(both[k], one[k]) for k in both):
            wrong.append(f"{where}: {both} with two replicas, {one} with one ({expr})")
    assert checked >= 20 and wrong == [], "\n".join(wrong)


def test_the_metrics_count_what_the_flows_recorded(stack: Stack) -> None:
    """Counted once per store, with two replicas scraped (as the dashboard counts)."""

    def store(selector: str) -> float:
        return stack.value(f"sum(max without (instance, pod) ({selector}))")

    assert store('uici_incidents{status="failed"}') == 1
    assert store('uici_incidents{status="awaiting_approval"}') == 1  # cache
    assert store("uici_alert_to_diagnosis_seconds_count") == 2  # web, then api
    assert store('uici_operations_total{outcome="success"}') == 5
    assert store('uici_operations_total{outcome="permanent"}') == 1
    assert store('uici_gate_writes_total{environment="test-docker", outcome="success"}') == 1
    assert store('uici_gate_refusals_total{reason="approval", risk="write"}') == 1
    assert store('uici_gate_refusals_total{reason="history", risk="write"}') == 1
    assert store('uici_writes{environment="test-docker", state="done"}') == 1
    assert store('uici_approvals{status="expired"}') == 1
    assert store('uici_approvals{status="approved"}') == 1
    assert store("uici_approvals_pending") == 1
    assert 0 < store("uici_approvals_oldest_pending_age_seconds") < 120
    assert store("uici_dispatch_pending") == 4  # --no-dispatch: nothing is started
    assert store("uici_llm_calls_total") == 3
    assert store('uici_llm_tokens_total{kind="prompt"}') == 2000
    assert store("uici_llm_circuit_openings_total") == 1
    assert time.time() - store("uici_llm_circuit_last_opened_timestamp_seconds") < 120
    assert store('uici_events_total{type="alert.unmapped"}') == 1
    assert store('uici_notifications{sink="slack", state="failed"}') >= 1
    assert stack.value('uici_http_requests_total{route="/webhooks/alertmanager", code="401"}') == 1
