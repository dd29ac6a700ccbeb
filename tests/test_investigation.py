"""The investigation's state machine without Prefect: a failure ends `failed`, approvals end
with the run, an answer for another step approves nothing, and the final status rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.incidents.events import EventLog
from agent.incidents.investigation import ApprovalAnswer, Investigation
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep, StepDecision
from agent.incidents.report import ActionRecord
from agent.incidents.storage import IncidentStore
from agent.planning.planner import DiagnosticPlanner
from agent.safety.gate import ExecutionGate
from infrastructure.configuration.loader import load_config
from tests.conftest import SHIPPED_CONFIG


@pytest.fixture
def run(tmp_path: Path) -> Investigation:
    config = load_config(SHIPPED_CONFIG, environ={"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/u.db"})
    store = IncidentStore.from_config(config)
    planner = DiagnosticPlanner(config, store)
    context = IncidentContext(
        incident_id="inc-sm",
        alert=AlertInfo(labels={"alertname": "ServiceDown", "service": "api"}),
        environment="local-docker",
        service="api",
    )
    investigation = Investigation(
        config, store, planner, ExecutionGate(config, store, planner.policy), context, "flow"
    )
    investigation.open("run-1")
    return investigation


def restart() -> StepDecision:
    step = PlanStep(
        phase="resolution", operation="restart_service", environment="local-docker",
        target="api", proposed_by="runbook",
    )  # fmt: skip
    return StepDecision(step=step, decision="needs_approval", risk="write", command=["docker"])


def test_an_exception_leaves_the_incident_failed_with_what_was_done(run: Investigation) -> None:
    run.store.request_approval("inc-sm", restart().step, "docker restart api")
    data = run.fail(RuntimeError("the engine went away"))
    record = run.store.get("inc-sm")
    assert record is not None and record.status == "failed"
    assert record.report is not None and record.report["error"] == data["error"]
    assert "RuntimeError: the engine went away" in data["error"]
    assert any("failed: RuntimeError" in t["event"] for t in data["timeline"])
    events = [e.type for e in EventLog(run.store.path).since(0, incident_id="inc-sm")]
    assert "incident.failed" in events
    [approval] = run.store.approvals("inc-sm")
    assert approval.status == "cancelled", "no approval outlives its run"


def test_an_answer_for_another_step_approves_nothing(run: Investigation) -> None:
    decision = restart()
    run.store.request_approval("inc-sm", decision.step, "docker restart api")
    answer = ApprovalAnswer(approve=True, approver="alice", step_key="0123456789abcdef")
    assert run.answered(decision, answer) is None
    [action] = run.report.actions
    assert action.outcome == "not executed"
    assert action.detail == "rejected by alice (Prefect UI, unauthenticated)"
    for answer in (
        ApprovalAnswer(approve=True, approver="bob"),  # an answer that names no step
        ApprovalAnswer(approve=True, approver="alice", step_key=decision.step.key()),
    ):
        run.store.request_approval("inc-sm", decision.step, "docker restart api")
        approval = run.answered(decision, answer)
        if answer.step_key:
            assert approval is not None and approval != "again"
            assert approval.approved_by == "alice (Prefect UI, unauthenticated)"
        else:
            assert approval is None


def test_the_final_status(run: Investigation) -> None:
    run.report.healthy = True
    assert run.final_status() == "resolved"
    run.report.healthy = False
    assert run.final_status() == "diagnosed"
    failed = ActionRecord(
        step="restart_service api", decision="accepted", policy="", outcome="failed"
    )
    run.report.actions.append(failed)
    assert run.final_status() == "escalated", "a failed remediation on an unhealthy service"
    run.report.actions[-1] = ActionRecord(
        step="restart_service api", decision="rejected", policy="", outcome="not executed",
        detail="unknown outcome: ...", needs_person=True,
    )  # fmt: skip
    run.report.healthy = True
    assert run.final_status() == "escalated", "nothing more happens until a person looks"


def test_a_run_without_a_person_asks_nobody_and_sends_nothing(tmp_path: Path, lab: Any) -> None:
    """`uici diagnose` and `uici eval` (DirectRunner): a write that needs approval is reported
    as needing a person; no approval is requested, nothing is sent, the incident escalates."""
    import asyncio

    from agent.incidents.phases import DirectRunner

    container = lab.run("asks-nobody", ["sleep", "300"])
    config = load_config(SHIPPED_CONFIG, environ={"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/u.db"})
    store = IncidentStore.from_config(config)
    planner = DiagnosticPlanner(config, store)
    context = IncidentContext(
        incident_id="inc-nobody",
        alert=AlertInfo(labels={"alertname": "Manual", "service": container.name}),
        environment="local-docker",
        service=container.name,
    )
    run = Investigation(
        config, store, planner, ExecutionGate(config, store, planner.policy), context, "uici"
    )
    run.open(None)
    step = PlanStep(
        phase="resolution", operation="restart_service", environment="local-docker",
        target=container.name, proposed_by="llm",
    )  # fmt: skip
    decision = StepDecision(step=step, decision="needs_approval", risk="write", command=["docker"])
    container.reload()
    started = container.attrs["State"]["StartedAt"]
    asyncio.run(DirectRunner().write(run, decision))
    assert store.approvals("inc-nobody") == []
    [action] = run.report.actions
    assert action.outcome == "not executed" and action.needs_person, action
    assert "needs a person's approval" in action.detail
    assert store.writes(incident_id="inc-nobody") == []
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started
    assert run.final_status() == "escalated"


def test_the_diagnosis_reads_the_evidence_before_the_first_write(run: Investigation) -> None:
    """After a remediation the service looks fine; the diagnosis is of the failure."""
    from agent.incidents.models import Observation
    from agent.safety.gate import GateOutcome

    failing = Observation(id="obs-1", operation="get_status", target="api", success=True)
    run.report.observations.append(failing)
    step = restart().step
    outcome = GateOutcome(decision=restart(), outcome="executed")
    run.record_write(step, outcome)
    run.report.observations.append(
        Observation(id="obs-2", operation="get_status", target="api", success=True)
    )
    assert [o.id for o in run.diagnosis_evidence()] == ["obs-1"]
