"""Running a diagnosis through the four phases, independent of Prefect.

`Investigation.run` plans each phase, executes the accepted steps through `execute_step`
(which authorizes every step again immediately before it runs), feeds the observations to the
next round and phase, and ends with a diagnosis. Steps that need approval are recorded as
pending and not run here; the orchestration layer pauses for them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agent.incidents.models import (
    PHASES,
    AlertInfo,
    Diagnosis,
    IncidentContext,
    Observation,
    PhasePlan,
    PlanStep,
    StepDecision,
    Usage,
)
from agent.planning.planner import DiagnosticPlanner
from agent.safety.policy import Approval, SafetyPolicy
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import Runbook
from infrastructure.executors.base import EnvironmentExecutor, OperationResult
from infrastructure.executors.factory import create_executor
from infrastructure.translator import CommandTranslator

# Alert labels that name the service, in order of preference.
SERVICE_LABELS = ("service", "container", "app", "job")


def context_from_alert(
    alert: dict[str, Any],
    default_environment: str,
    incident_id: str | None = None,
    dependencies: Sequence[str] = (),
) -> IncidentContext:
    """An incident context from one Alertmanager alert (or a webhook body's first alert)."""
    if "alerts" in alert and isinstance(alert["alerts"], list):
        if not alert["alerts"]:
            raise ValueError("the webhook body has no alerts")
        alert = alert["alerts"][0]
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    annotations = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
    service = next((labels[name] for name in SERVICE_LABELS if labels.get(name)), None)
    if service is None:
        raise ValueError(f"the alert names no service (labels: {', '.join(SERVICE_LABELS)})")
    declared = labels.get("uici_dependencies", "")
    return IncidentContext(
        incident_id=incident_id or f"inc-{uuid.uuid4().hex[:10]}",
        alert=AlertInfo(
            labels=labels,
            annotations=annotations,
            status=str(alert.get("status", "firing")),
            fingerprint=alert.get("fingerprint"),
            starts_at=alert.get("startsAt"),
        ),
        environment=labels.get("uici_env") or default_environment,
        service=service,
        dependencies=list(dependencies) or [d for d in declared.split(",") if d],
    )


def load_observations(path: Path) -> list[Observation]:
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of observations")
    observations = []
    for index, item in enumerate(data):
        try:
            observations.append(Observation.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{path}: observation [{index}]: {problems}") from exc
    return observations


def observation_from_result(
    observation_id: str, step: PlanStep, result: OperationResult
) -> Observation:
    return Observation(
        id=observation_id,
        phase=step.phase,
        operation=step.operation,
        environment=step.environment,
        target=step.target,
        success=result.success,
        output=result.output,
        data=result.data,
        error=None
        if result.error is None
        else f"{result.error.kind.value}: {result.error.message}",
    )


class StepRunner:
    """Executes a step only after `SafetyPolicy.authorize` accepts it, right before the call."""

    def __init__(self, config: UICIConfig, policy: SafetyPolicy) -> None:
        self.config = config
        self.policy = policy
        self.translator = CommandTranslator.from_config(config)
        self._executors: dict[str, EnvironmentExecutor] = {}

    def executor(self, environment: str) -> EnvironmentExecutor:
        if environment not in self._executors:
            self._executors[environment] = create_executor(
                environment, self.config.environments.environments[environment]
            )
        return self._executors[environment]

    def run(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
        approval: Approval | None = None,
        intent: str | None = None,
    ) -> tuple[StepDecision, OperationResult | None]:
        """`intent`: the remediation intent ("<key>@<time>") a write is made under; executors
        that can make a write idempotent use it (a Kubernetes restart writes it as its
        restartedAt annotation)."""
        decision = self.policy.authorize(step, context, runbook, approval)
        if decision.decision != "accepted":
            return decision, None
        call = self.policy.registry.validate(
            step.operation, step.environment, step.parameters, step.target
        )
        spec = self.translator.translate(call, {"intent": intent} if intent else None)
        result = self.executor(step.environment).execute(spec)
        if result.success:
            self.policy.record_executed(context, step)
        return decision, result

    def close(self) -> None:
        for executor in self._executors.values():
            executor.close()


class InvestigationRecord(BaseModel):
    context: IncidentContext
    plans: list[PhasePlan] = Field(default_factory=list)
    observations: list[Observation] = Field(default_factory=list)
    pending_approval: list[StepDecision] = Field(default_factory=list)
    diagnosis: Diagnosis | None = None
    usage: Usage = Field(default_factory=Usage)


class Investigation:
    def __init__(self, config: UICIConfig, planner: DiagnosticPlanner, runner: StepRunner) -> None:
        self.config = config
        self.planner = planner
        self.runner = runner

    def run(
        self,
        context: IncidentContext,
        on_plan: Callable[[PhasePlan], None] | None = None,
    ) -> InvestigationRecord:
        record = InvestigationRecord(context=context)
        runbook = self.planner.runbooks.match(context)
        rounds = self.config.agents.diagnostic_agent.max_llm_iterations_per_phase
        for phase in PHASES:
            planned = 0
            for iteration in range(rounds):
                plan = self.planner.plan_phase(
                    context, phase, record.observations, iteration, planned
                )
                record.plans.append(plan)
                if on_plan is not None:
                    on_plan(plan)
                planned += len(plan.decisions)
                record.pending_approval.extend(plan.needs_approval)
                for step in plan.accepted:
                    decision, result = self.runner.run(step, context, runbook)
                    if result is None:
                        if decision.decision == "needs_approval":
                            record.pending_approval.append(decision)
                        continue
                    observation_id = f"obs-{len(record.observations) + 1}"
                    record.observations.append(
                        observation_from_result(observation_id, step, result)
                    )
                if plan.done or plan.planner == "runbook":
                    break
        record.diagnosis = self.planner.diagnose(context, record.observations)
        record.usage = self.planner.incident_usage(context.incident_id)
        return record
