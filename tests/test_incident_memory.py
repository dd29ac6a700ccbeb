"""Incident memory and dependency discovery.

Memory: three investigations of the same OOM-killed container (real engine, real executor,
the shipped runbooks) in one store. The first two restart it (the service-down runbook
auto-approves that in local-docker); the third would repeat a remediation that did not hold,
so it is refused and escalated, and its report lists the two earlier incidents.

Discovery: a host the service's log names in its connection errors is looked up (read) as a
dependency, and never written.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.models import AlertInfo, IncidentContext, Observation, Phase, PlanStep
from agent.incidents.phases import investigate
from agent.incidents.report import IncidentReport
from agent.incidents.storage import IncidentStore
from agent.planning.planner import DiagnosticPlanner
from agent.safety.policy import ESCALATE
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.conftest import SHIPPED_CONFIG

SHIPPED_VALIDATION = "validation: {settle_seconds: 5, checks: 3, interval_seconds: 2}"


@pytest.fixture
def storage_env(tmp_path: Path) -> dict[str, str]:
    return {"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/uici.db", "COLUMNS": "200"}


@pytest.fixture
def fast_config_dir(shipped_config_dir: Path) -> Path:
    """The shipped configuration with a short settle window after a remediation: one check
    after 1 s (the restarted container is OOM-killed again within a fraction of it), not
    three over 9 s."""
    path = shipped_config_dir / "agents.yml"
    text = path.read_text(encoding="utf-8")
    assert SHIPPED_VALIDATION in text
    path.write_text(
        text.replace(
            SHIPPED_VALIDATION, "validation: {settle_seconds: 1, checks: 1, interval_seconds: 0}"
        ),
        encoding="utf-8",
    )
    return shipped_config_dir


# --- memory: the third remediation of the same cause is escalated ------------------------------


def oom_killed_container(lab: FailureLab, suffix: str) -> str:
    """A fresh container (a new id, so no write history of its own) OOM-killed under 16 MiB."""
    name = lab.name(suffix)
    for old in lab.client.containers.list(all=True, filters={"name": f"^/{name}$"}):
        old.remove(force=True)
    container = lab.run(
        suffix,
        ["sh", "-c", 'echo "INFO loading the whole dataset into memory"; tail /dev/zero'],
        mem_limit="16m",
        memswap_limit="16m",
    )

    def oom_killed() -> bool:
        container.reload()
        state = container.attrs["State"]
        return bool(state["Status"] == "exited" and state["OOMKilled"])

    wait_for(oom_killed, 30, f"{name} to be OOM-killed")
    return name


def started_at(lab: FailureLab, name: str) -> str:
    container = lab.client.containers.get(name)
    return str(container.attrs["State"]["StartedAt"])


def run_incident(config: UICIConfig, store: IncidentStore, service: str, incident: str) -> Any:
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "ContainerExited",
            "service": service,
            "uici_env": "local-docker",
            "severity": "critical",
        },
        "annotations": {"summary": f"{service} exited with code 137"},
    }
    report, _ = asyncio.run(investigate(config, store, alert, incident))
    return report


def test_a_third_remediation_of_the_same_cause_is_escalated(
    lab: FailureLab, fast_config_dir: Path, storage_env: dict[str, str]
) -> None:
    config = load_config(fast_config_dir, environ=storage_env)
    store = IncidentStore.from_config(config)
    suffix = f"mem-{uuid.uuid4().hex[:6]}"
    ids = ["inc-oom-1", "inc-oom-2", "inc-oom-3"]
    try:
        reports: list[IncidentReport] = []
        for incident in ids[:2]:
            service = oom_killed_container(lab, suffix)
            before = started_at(lab, service)
            report = run_incident(config, store, service, incident)
            assert report.diagnosis is not None
            assert report.diagnosis.category == "oom_killed", report.diagnosis
            [action] = report.actions
            assert action.step.startswith(f"restart_service {service} on local-docker"), action
            assert action.outcome in ("executed", "recovered"), action
            assert action.policy.startswith("auto-approved by runbook service-down"), action
            # The restart really reached the engine: the container was started again.
            assert started_at(lab, service) != before
            reports.append(report)
        assert reports[0].similar_incidents == []
        assert [s["incident_id"] for s in reports[1].similar_incidents] == ["inc-oom-1"]

        service = oom_killed_container(lab, suffix)
        before = started_at(lab, service)
        third = run_incident(config, store, service, ids[2])
        assert third.diagnosis is not None and third.diagnosis.category == "oom_killed"
        [refused] = third.actions
        assert refused.step.startswith(f"restart_service {service}")
        assert refused.outcome == "not executed"
        assert refused.needs_person is True
        assert refused.detail.startswith(
            f"{ESCALATE}: oom_killed on {service} was already remediated in 2 incidents within"
        ), refused.detail
        assert "inc-oom-1" in refused.detail and "inc-oom-2" in refused.detail
        assert started_at(lab, service) == before  # nothing was sent
        record = store.get(ids[2])
        assert record is not None and record.status == "escalated"
        similar = {s["incident_id"]: s for s in third.similar_incidents}
        assert set(similar) == {"inc-oom-1", "inc-oom-2"}
        for past in similar.values():
            assert past["failure_class"] == "oom_killed"
            assert past["same_signature"] is True, [r.diagnosis for r in (*reports, third)]
            assert [r.split()[0] for r in past["remediations"]] == ["restart_service"]
        # The escalated incident remediated nothing: the first two stay the ones that did.
        for earlier in ids[:2]:
            assert store.get(earlier) is not None
    finally:
        for container in lab.client.containers.list(
            all=True, filters={"name": f"^/{lab.name(suffix)}$"}
        ):
            container.remove(force=True)

    runner = CliRunner()
    listed = runner.invoke(
        app,
        ["--config-dir", str(fast_config_dir), "incidents", "similar", ids[2], "--json"],
        env=storage_env,
    )
    assert listed.exit_code == 0, listed.stdout + listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["incident_id"] for r in rows} == {"inc-oom-1", "inc-oom-2"}
    assert all(r["remediations"] for r in rows)
    table = runner.invoke(
        app, ["--config-dir", str(fast_config_dir), "incidents", "similar", ids[2]], env=storage_env
    )
    assert table.exit_code == 0, table.stderr
    assert f"oom_killed on {service} (local-docker)" in table.stdout
    assert "inc-oom-1 *" in table.stdout and "inc-oom-2 *" in table.stdout
    assert "restart_service" in table.stdout
    unknown = runner.invoke(
        app,
        ["--config-dir", str(fast_config_dir), "incidents", "similar", "inc-nope"],
        env=storage_env,
    )
    assert unknown.exit_code == 2 and "no incident 'inc-nope'" in unknown.stderr


# --- discovery: read a dependency the log names, never write it ----------------------------------

PSYCOPG2 = (
    "2024-05-01 12:00:0{n},123 ERROR orders.sync: sync failed: connection to server at"
    ' "orders-db" (10.1.2.3), port 5432 failed: Connection refused'
)
GO_DIAL = "2024/05/01 12:00:0{n} orders: sync failed: dial tcp orders-db:5432: connect: connection refused"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(PSYCOPG2, id="psycopg2"),
        pytest.param(GO_DIAL, id="go-dial"),
    ],
)
def test_a_host_named_in_connection_errors_is_read_never_written(
    line: str, storage_env: dict[str, str]
) -> None:
    config = load_config(SHIPPED_CONFIG, environ=storage_env)
    planner = DiagnosticPlanner(config, IncidentStore.from_config(config))
    assert planner.llm is None  # the runbook planner
    context = IncidentContext(
        incident_id="inc-discovery",
        alert=AlertInfo(labels={"alertname": "ServiceDown", "service": "orders-api"}),
        environment="local-docker",
        service="orders-api",
    )
    assert context.dependencies == []  # none declared
    lines = ["INFO orders-api 2.3.0 starting", line.format(n=1), line.format(n=2)]
    observations = [
        Observation(
            id="obs-1",
            phase="triage",
            operation="get_status",
            environment="local-docker",
            target="orders-api",
            success=True,
            data=[{"state": "running", "up_seconds": 600, "restart_count": 0}],
        ),
        Observation(
            id="obs-2",
            phase="triage",
            operation="get_logs",
            environment="local-docker",
            target="orders-api",
            success=True,
            output="\n".join(lines),
            data=[{"lines": lines}],
        ),
    ]
    plan = planner.plan_phase(context, "isolation", observations)
    assert plan.planner == "runbook" and plan.runbook == "service-down"
    decided = {(d.step.operation, d.step.target): d for d in plan.decisions}
    assert ("get_status", "orders-db") in decided, list(decided)
    assert decided[("get_status", "orders-db")].decision == "accepted"
    assert context.discovered == ["orders-db"]
    assert "orders-db" in context.read_scope and "orders-db" not in context.scope
    assert any("the log names orders-db" in note for note in plan.notes), plan.notes

    runbook = planner.runbooks.match(context)

    def step(operation: str, phase: Phase) -> PlanStep:
        return PlanStep(
            phase=phase,
            operation=operation,
            environment="local-docker",
            target="orders-db",
            proposed_by="llm",
        )

    read, logs, write = planner.policy.review(
        [
            step("get_status", "root_cause"),
            step("get_logs", "root_cause"),
            step("start_service", "resolution"),
        ],
        context,
        runbook,
        observations=observations,
    )
    assert read.decision == "accepted", read
    # Its state, not its logs: what a discovered service logs is not this incident's to read.
    assert logs.decision == "rejected", logs
    assert write.decision == "rejected", write
    assert "a dependency discovered in the log may only have its state read" in write.reasons[0]

    # Declared by the alert, the same host may be written (with a person's approval).
    declared = context.model_copy(update={"dependencies": ["orders-db"], "discovered": []})
    [approved] = planner.policy.review(
        [step("start_service", "resolution")], declared, runbook, observations=observations
    )
    assert approved.decision == "needs_approval", approved
