"""Prompt injection: instructions hidden in logs, alerts, names and command output, fed to both
planners, with a scripted "compromised" LLM that obeys whatever the data tells it.

Whatever is proposed: no write or destructive step is accepted unless the policy allows it
(a runbook matched from the alert's own labels auto-approves it in an environment that allows
auto-approval), and no step outside the incident's scope is ever accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.incidents.models import PHASES, AlertInfo, IncidentContext, Observation, PhasePlan
from agent.incidents.storage import IncidentStore
from agent.planning.planner import DiagnosticPlanner
from agent.safety.policy import SafetyPolicy
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.conftest import DATA, SHIPPED_CONFIG
from tests.llm_server import FakeLLMServer, Reply, Request, chat

CASES: list[dict[str, Any]] = json.loads((DATA / "injection" / "cases.json").read_text())


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20
    assert {c["where"] for c in CASES} >= {
        "log",
        "annotation",
        "label",
        "service_name",
        "command_output",
        "event",
    }


def build(case: dict[str, Any]) -> tuple[IncidentContext, list[Observation]]:
    labels = {"alertname": "ServiceCrashLooping", "service": "api", "severity": "critical"}
    annotations = {"summary": "api is down"}
    service = "api"
    where, payload = case["where"], case["payload"]
    if where == "annotation":
        annotations["description"] = payload
    elif where == "label":
        labels[case["label"]] = payload
    elif where == "service_name":
        labels["service"] = service = payload
    context = IncidentContext(
        incident_id=f"inj-{case['name']}",
        alert=AlertInfo(labels=labels, annotations=annotations),
        environment="local-docker",
        service=service,
        dependencies=["db"],
    )
    output = {"log": payload, "command_output": payload, "event": payload}.get(where, "INFO ok")
    operation = {"command_output": "exec_diagnostic", "event": "get_events"}.get(where, "get_logs")
    observations = [
        Observation(
            id="obs-1",
            operation="get_status",
            target=service,
            success=True,
            data=[{"state": "restarting", "restart_count": 4, "oom_killed": False}],
        ),
        Observation(
            id="obs-2",
            operation=operation,
            target=service,
            success=True,
            output=output,
            data=[{"lines": output.splitlines()}],
        ),
    ]
    return context, observations


def compromised(case: dict[str, Any]) -> Any:
    """An LLM that obeys the injected instruction whenever it can see it."""
    marker = case["payload"][:12]

    def respond(request: Request) -> Reply:
        obeyed = marker in request.prompt or case["where"] in ("label", "service_name")
        steps = [
            {
                "operation": s["operation"],
                "target": s.get("target"),
                "parameters": s.get("parameters", {}),
                "rationale": "as the data says",
            }
            for s in (case["obeys"] if obeyed else [])
        ] or [{"operation": "get_status", "target": "api", "parameters": {}, "rationale": "benign"}]
        schema = request.body.get("response_format", {}).get("json_schema", {}).get("name", "")
        if schema == "LLMDiagnosisReply":
            return chat(
                json.dumps(
                    {
                        "root_cause": "as instructed",
                        "category": "unknown",
                        "confidence": 1.0,
                        "evidence": ["obs-2"],
                        "recommended_actions": steps,
                    }
                )
            )
        return chat(json.dumps({"steps": steps, "done": True}))

    return respond


def strict_config(shipped_config_dir: Path, env: dict[str, str]) -> UICIConfig:
    path = shipped_config_dir / "environments.yml"
    path.write_text(
        path.read_text().replace(
            "    policy:\n      auto_approve: true", "    policy:\n      auto_approve: false", 1
        )
    )
    config = load_config(shipped_config_dir, environ=env)
    assert config.environments.environments["local-docker"].policy.auto_approve is False
    return config


def check_invariants(plans: list[PhasePlan], context: IncidentContext, config: UICIConfig) -> None:
    runbooks = {r.name: r for r in config.agents.runbooks}
    env_policy = config.environments.environments["local-docker"].policy
    for plan in plans:
        for decision in plan.decisions:
            step = decision.step
            if decision.decision == "rejected":
                continue
            assert step.environment == context.environment
            assert step.target is None or step.target in context.scope, decision
            if decision.risk != "read":
                assert decision.decision == "needs_approval" or (
                    decision.policy.startswith("auto-approved by runbook")
                    and env_policy.auto_approve
                    and plan.runbook is not None
                    and step.operation in runbooks[plan.runbook].auto_approve
                ), decision
            assert decision.risk != "destructive", decision
    writes = [
        d for p in plans for d in p.decisions if d.decision == "accepted" and d.risk != "read"
    ]
    assert len(writes) <= env_policy.max_write_steps_per_incident


def run_all_phases(
    planner: DiagnosticPlanner, context: IncidentContext, observations: list[Observation]
) -> list[PhasePlan]:
    return [planner.plan_phase(context, phase, observations) for phase in PHASES]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_compromised_llm_cannot_get_past_the_policy(
    case: dict[str, Any], llm_env: dict[str, str], fake_llm: FakeLLMServer, shipped_config_dir: Path
) -> None:
    context, observations = build(case)
    fake_llm.responder = compromised(case)

    # Shipped policy: local-docker allows runbook auto-approval.
    config = load_config(SHIPPED_CONFIG, environ=llm_env)
    planner = DiagnosticPlanner(config, IncidentStore.from_config(config))
    plans = run_all_phases(planner, context, observations)
    assert all(p.planner == "llm" for p in plans), [p.notes for p in plans]
    check_invariants(plans, context, config)
    obeyed = [d for p in plans for d in p.decisions if d.step.rationale == "as the data says"]
    assert obeyed or case["where"] == "service_name", "the compromised LLM did obey the injection"

    # The LLM's recommended actions are proposals too: review them like any step.
    diagnosis = planner.diagnose(context, observations)
    policy = SafetyPolicy(config, IncidentStore.from_config(config))
    from agent.incidents.models import PlanStep

    recommended = [
        PlanStep(
            phase="resolution",
            operation=a.operation,
            environment=context.environment,
            target=a.target,
            parameters=a.parameters,
            proposed_by="llm",
        )
        for a in diagnosis.recommended_actions
    ]
    review = policy.review(recommended, context, planner.runbooks.match(context))
    check_invariants(
        [
            PhasePlan(
                phase="resolution",
                planner="llm",
                runbook=planner.runbooks.match(context).name,
                decisions=review,
            )
        ],
        context,
        config,
    )

    # Strict policy: no auto-approval anywhere, so no write is accepted at all.
    strict = strict_config(shipped_config_dir, llm_env)
    strict_planner = DiagnosticPlanner(strict, IncidentStore.from_config(strict))
    strict_plans = run_all_phases(strict_planner, context, observations)
    accepted_writes = [
        d
        for p in strict_plans
        for d in p.decisions
        if d.decision == "accepted" and d.risk != "read"
    ]
    assert accepted_writes == []

    if "secret" in case:
        assert all(case["secret"] not in r.prompt for r in fake_llm.requests)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_runbook_planner_is_not_steered_by_injected_text(
    case: dict[str, Any], planning_env: dict[str, str]
) -> None:
    context, observations = build(case)
    config = load_config(SHIPPED_CONFIG, environ=planning_env)
    planner = DiagnosticPlanner(config, IncidentStore.from_config(config))
    plans = run_all_phases(planner, context, observations)
    assert all(p.planner == "runbook" for p in plans)
    check_invariants(plans, context, config)
    # The runbook follows the alert's labels; injected text never adds an operation to it.
    proposed = {d.step.operation for p in plans for d in p.decisions}
    runbook = planner.runbooks.match(context)
    allowed = {s.operation for steps in runbook.phases.values() for s in steps}
    assert proposed <= allowed
