"""Approvals with identity, without Prefect: the recorded decision is the one that counts, the
requester never approves its own write, the two-person rule, the Prefect UI's form per
configuration, expiry, and every answer in the audit trail with who, how and from where."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.incidents.approvals import ApprovalDesk, ApprovalRefused
from agent.incidents.investigation import ApprovalAnswer, Investigation
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep, StepDecision
from agent.incidents.storage import IncidentStore
from agent.planning.planner import DiagnosticPlanner
from agent.safety.gate import ExecutionGate
from infrastructure.configuration.loader import load_config
from tests.conftest import SHIPPED_CONFIG
from tests.store_backend import StoreRow, StoreSQL, store_url_for


def make_run(tmp_path: Path, requested_by: str | None = None, **edits: str) -> Investigation:
    """An investigation on the shipped configuration, with text edits to its files."""
    config_dir = tmp_path / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for source in SHIPPED_CONFIG.glob("*.yml"):
        text = source.read_text()
        for old, new in edits.items():
            text = text.replace(old, new)
        (config_dir / source.name).write_text(text)
    config = load_config(config_dir, environ={"UICI_STORAGE_URL": store_url_for(tmp_path, "u.db")})
    store = IncidentStore.from_config(config)
    planner = DiagnosticPlanner(config, store)
    context = IncidentContext(
        incident_id="inc-1",
        alert=AlertInfo(labels={"alertname": "ServiceDown", "service": "api"}),
        environment="local-docker",
        service="api",
        requested_by=requested_by,
    )
    run = Investigation(
        config, store, planner, ExecutionGate(config, store, planner.policy), context, "flow"
    )
    run.open("run-1")
    return run


def restart() -> StepDecision:
    step = PlanStep(
        phase="resolution", operation="restart_service", environment="local-docker",
        target="api", proposed_by="runbook",
    )  # fmt: skip
    return StepDecision(step=step, decision="needs_approval", risk="write", command=["docker"])


def ask(run: Investigation, decision: StepDecision) -> None:
    """The request next_for_write records (its target resolution needs a real engine: the
    flow tests cover that path)."""
    step = decision.step
    run.store.request_approval(
        "inc-1", step, "docker restart api", time.time() + run.approval_timeout(step),
        run.required_approvers(step), run.context.requested_by,
    )  # fmt: skip


def audit(run: Investigation) -> list[StoreRow]:
    with StoreSQL(run.store.database) as db:
        return db.execute("SELECT * FROM audit ORDER BY id").fetchall()


TWO_PERSON = {"  required_approvers: 1\n": "  required_approvers: 2\n"}
UI_DISABLED = {"${UICI_PREFECT_UI_APPROVALS:-allowed}": "disabled"}


def test_an_api_approval_names_the_key_and_is_what_the_run_acts_on(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    decision = restart()
    ask(run, decision)
    [request] = run.store.approvals("inc-1", "pending")
    assert request.expires_at is not None and request.expires_at > time.time() + 800
    result = ApprovalDesk(run.store).answer(
        "inc-1", None, "operator", True, "api", "10.1.2.3", "looks right", "req-9"
    )
    assert result.decision == "approved" and result.approvers == ["operator"]
    # The form's answer wakes the run; what it says (any name, even "reject") changes nothing.
    approval = run.answered(decision, ApprovalAnswer(approve=False, approver="mallory"))
    assert approval is not None and approval != "again" and approval.approved_by == "operator"
    [row] = [r for r in audit(run) if r["action"] == "approval.approve"]
    assert row["actor"] == "operator" and row["result"] == "approved" and row["at"] > 0
    where = json.loads(row["parameters"])
    assert where["via"] == "api" and where["address"] == "10.1.2.3"
    assert where["step_key"] == decision.step.key() and row["request_id"] == "req-9"


def test_the_requester_cannot_approve_its_own_write_but_may_withdraw_it(tmp_path: Path) -> None:
    run = make_run(tmp_path, requested_by="operator")
    ask(run, restart())
    desk = ApprovalDesk(run.store)
    with pytest.raises(ApprovalRefused) as refused:
        desk.answer("inc-1", None, "operator", True, "api", "10.0.0.1")
    assert refused.value.status == 403 and "cannot approve" in str(refused.value)
    assert run.store.approvals("inc-1", "pending"), "a refused answer decides nothing"
    assert any(r["result"].startswith("refused") for r in audit(run))
    assert desk.answer("inc-1", None, "operator", False, "api", None).decision == "rejected"
    # The incident the service stored says who asked, even when a request row does not.
    later = restart().step.model_copy(update={"target": "web"})
    run.store.request_approval("inc-1", later, "docker restart web", time.time() + 60)
    with pytest.raises(ApprovalRefused):
        desk.answer("inc-1", later.key(), "operator", True, "api", None)


def test_two_people_must_approve_where_the_environment_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, **TWO_PERSON)
    decision = restart()
    ask(run, decision)
    desk = ApprovalDesk(run.store)
    first = desk.answer("inc-1", None, "alice", True, "api", "10.0.0.1")
    assert first.decision == "pending" and first.required == 2
    with pytest.raises(ApprovalRefused) as again:
        desk.answer("inc-1", None, "alice", True, "api", "10.0.0.1")
    assert again.value.status == 409, "one person is one approval, however often they send it"
    # A Prefect UI answer is no second person.
    assert run.answered(decision, ApprovalAnswer(approve=True, step_key=decision.step.key())) == (
        "again"
    )
    assert run.store.approvals("inc-1", "pending")
    second = desk.answer("inc-1", None, "bob", True, "api", "10.0.0.2")
    assert second.decision == "approved" and second.approvers == ["alice", "bob"]
    approval = run.answered(decision, None)  # even when its pause had ended first
    assert approval is not None and approval != "again"
    assert approval.approved_by == "alice, bob"


def test_a_rejection_decides_at_once(tmp_path: Path) -> None:
    run = make_run(tmp_path, **TWO_PERSON)
    decision = restart()
    ask(run, decision)
    desk = ApprovalDesk(run.store)
    desk.answer("inc-1", None, "alice", True, "api", None)
    assert desk.answer("inc-1", None, "bob", False, "api", None, "not now").decision == "rejected"
    assert run.answered(decision, None) is None
    assert run.report.actions[-1].detail == "rejected by bob"


def test_prefect_ui_answers_count_only_where_allowed_and_say_who_is_unverified(
    tmp_path: Path,
) -> None:
    allowed = make_run(tmp_path / "allowed")
    decision = restart()
    ask(allowed, decision)
    form = ApprovalAnswer(approve=True, approver="alice", step_key=decision.step.key())
    approval = allowed.answered(decision, form)
    assert approval is not None and approval != "again"
    assert approval.approved_by == "alice (Prefect UI, unauthenticated)"
    [request] = allowed.store.approvals("inc-1")
    assert request.via == "prefect-ui" and request.status == "approved"

    disabled = make_run(tmp_path / "disabled", **UI_DISABLED)
    ask(disabled, decision)
    assert disabled.answered(decision, form) == "again"
    assert disabled.store.approvals("inc-1", "pending"), "the form approved nothing"
    ignored = [r for r in audit(disabled) if r["action"] == "approval.ignored"]
    assert ignored and "disabled" in ignored[0]["result"]
    assert 0 < disabled.approval_wait(decision.step) <= 900
    # No answer in time: expired, not executed.
    assert disabled.answered(decision, None) is None
    assert disabled.store.approvals("inc-1")[0].status == "expired"


def test_an_expired_request_takes_no_answer_and_undo_reopens(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    decision = restart()
    run.store.request_approval("inc-1", decision.step, "docker restart api", time.time() - 1)
    desk = ApprovalDesk(run.store)
    with pytest.raises(ApprovalRefused) as expired:
        desk.answer("inc-1", None, "alice", True, "api", None)
    assert expired.value.status == 409 and "expired" in str(expired.value)
    run.store.request_approval("inc-1", decision.step, "docker restart api", time.time() + 60)
    result = desk.answer("inc-1", None, "alice", True, "api", None)
    assert result.decision == "approved"
    assert desk.undo(result, "the run is not paused yet") is True  # could not be woken up
    [request] = run.store.approvals("inc-1")
    assert request.status == "pending" and run.store.votes("inc-1", request.step_key) == []
    assert desk.answer("inc-1", None, "alice", True, "api", None).decision == "approved"


def test_a_decision_the_run_acted_on_is_not_undone(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    decision = restart()
    ask(run, decision)
    desk = ApprovalDesk(run.store)
    result = desk.answer("inc-1", None, "alice", True, "api", None)
    # The run's pause ended just then and it read the recorded approval: it acts on it.
    approval = run.answered(decision, None)
    assert approval is not None and approval != "again"
    assert desk.undo(result, "the run was no longer paused") is False
    [request] = run.store.approvals("inc-1")
    assert request.status == "approved" and request.acted_at is not None


def test_operation_requests_nobody_answers_expire_and_stuck_ones_are_escalated(
    tmp_path: Path,
) -> None:
    from agent.incidents.operation_requests import OperationRequests

    run = make_run(tmp_path)
    requests = OperationRequests(run.config, run.store)
    step = restart().step
    opened = requests.open(step, "docker restart api", "operator", "k1", None, "req-1")
    assert opened.incident_id == "op-k1" and opened.status == "pending"
    assert requests.open(step, "docker restart api", "operator", "k1", None, "req-1") == opened
    assert requests.expire_due(time.time()) == []
    assert requests.expire_due(opened.expires_at + 1) == ["op-k1"]
    record = run.store.get("op-k1")
    assert record is not None and record.status == "diagnosed"
    assert record.report is not None
    assert record.report["operation_request"]["outcome"] == "expired"
    assert run.store.approvals("op-k1")[0].status == "expired"
    # Approved, then the service stopped before the write finished: escalated, not stuck.
    other = step.model_copy(update={"target": "web"})
    second = requests.open(other, "docker restart web", "operator", "k2", None, None)
    ApprovalDesk(run.store).answer(second.incident_id, None, "admin", True, "api", None)
    requests.expire_due(time.time() + 10)
    stuck = run.store.get("op-k2")
    assert stuck is not None and stuck.status == "awaiting_approval", "still within its time"
    requests.expire_due(time.time() + 3600)
    stuck = run.store.get("op-k2")
    assert stuck is not None and stuck.status == "escalated"
    assert stuck.report is not None and "uici writes list" in json.dumps(stuck.report)


def test_a_form_answer_never_counts_on_an_incident_someone_requested(tmp_path: Path) -> None:
    run = make_run(tmp_path, requested_by="operator")
    decision = restart()
    ask(run, decision)
    form = ApprovalAnswer(approve=True, approver="not-operator", step_key=decision.step.key())
    assert run.answered(decision, form) == "again"
    assert run.store.approvals("inc-1", "pending")


def test_a_form_rejection_counts_for_nothing_where_form_answers_are_disabled(
    tmp_path: Path,
) -> None:
    run = make_run(tmp_path, **UI_DISABLED)
    decision = restart()
    ask(run, decision)
    pressed = ApprovalAnswer(approve=False, step_key=decision.step.key())  # the form's default
    assert run.answered(decision, pressed) == "again"
    assert run.store.approvals("inc-1", "pending")


def test_the_services_wake_up_after_a_taken_back_answer_is_no_form_answer(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    decision = restart()
    ask(run, decision)
    desk = ApprovalDesk(run.store)
    result = desk.answer("inc-1", None, "admin", True, "api", None)
    assert desk.undo(result, "read timeout") is True  # the service thought the wake-up failed
    [request] = run.store.approvals("inc-1")
    # ... but the run did wake up, with the service's input: it waits on, approving nothing.
    woken = ApprovalAnswer(
        approve=True, approver="admin", step_key=decision.step.key(), token=request.nonce or ""
    )
    assert run.answered(decision, woken) == "again"
    assert run.store.approvals("inc-1", "pending")


def test_an_operation_request_leaves_a_flows_approval_alone_and_a_retry_reopens_nothing(
    tmp_path: Path,
) -> None:
    from agent.incidents.operation_requests import OperationRequests

    run = make_run(tmp_path)
    decision = restart()
    ask(run, decision)  # the flow waits for "restart api" in inc-1
    requests = OperationRequests(run.config, run.store)
    opened = requests.open(decision.step, "docker restart api", "operator", "k9", run.context, None)
    assert opened.incident_id == "op-k9"
    [flows] = run.store.approvals("inc-1")
    assert flows.runner == "flow" and flows.status == "pending" and flows.requested_by is None
    stored = run.store.get("op-k9")
    assert stored is not None and stored.context.parent_incident == "inc-1"
    ApprovalDesk(run.store).answer("op-k9", None, "admin", False, "api", None)
    again = requests.open(decision.step, "docker restart api", "operator", "k9", run.context, None)
    assert again.status == "rejected", "a client's retry finds the decided request"
