"""The safety policy: what may run, what needs a person, what never runs. Its rules live here
and nowhere else.

Every proposed step, whoever proposed it, passes `SafetyPolicy.review` when it is planned; every
operation from every entry point passes `ExecutionGate` (agent/safety/gate.py), which applies
`decide` and, for a write, `write_refusal` on the resolved targets and the write history
immediately before it is sent. Nothing an LLM writes changes the outcome: the decision depends
only on the registry, environments.yml, the runbook matched from the alert's labels, and
recorded history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from agent.incidents.models import (
    Decision,
    IncidentContext,
    Observation,
    PlanStep,
    StepDecision,
)
from agent.incidents.storage import IncidentStore, WriteFacts, WriteRecord
from agent.planning.conditions import evaluate
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import RiskLevel, Runbook
from infrastructure.executors.base import ResolvedTarget
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandTranslator, TranslationError


class Approval(BaseModel):
    """A person's yes to one exact step, valid until it expires."""

    step_key: str
    approved_by: str
    expires_at: datetime


class SafetyPolicy:
    def __init__(
        self,
        config: UICIConfig,
        store: IncidentStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.registry = OperationRegistry.from_config(config)
        self.translator = CommandTranslator.from_config(config)
        self.store = store
        self.clock = clock
        # Write steps accepted or awaiting approval but not executed yet, per incident: they
        # hold their share of the write budget so that later phases cannot exceed it.
        self._reserved: dict[str, set[str]] = {}

    # --- planning time ------------------------------------------------------------------

    def review(
        self,
        steps: Sequence[PlanStep],
        context: IncidentContext,
        runbook: Runbook | None,
        already_planned_in_phase: int = 0,
        observations: Sequence[Observation] = (),
    ) -> list[StepDecision]:
        """A decision for every proposed step; rejected steps carry their reasons."""
        decisions: list[StepDecision] = []
        seen: set[str] = set()
        per_phase: dict[str, int] = {}
        limit = self.config.agents.diagnostic_agent.max_steps_per_phase
        for step in steps:
            phase_limit = limit[step.phase]
            if step.key() in seen:
                decisions.append(_rejected(step, "the same step is already in this plan"))
                continue
            seen.add(step.key())
            per_phase[step.phase] = per_phase.get(step.phase, 0) + 1
            if already_planned_in_phase + per_phase[step.phase] > phase_limit:
                decisions.append(
                    _rejected(
                        step,
                        f"step limit: at most {phase_limit} steps in phase {step.phase} "
                        "(agents.yml: diagnostic_agent.max_steps_per_phase)",
                    )
                )
                continue
            decision = self._decide(step, context, runbook, observations)
            reserved = self._reserved.get(context.incident_id, set())
            if decision.decision != "rejected" and decision.risk != RiskLevel.READ.value:
                if step.key() in reserved:
                    decisions.append(
                        _rejected(
                            step,
                            "this write step is already planned in this incident "
                            "(awaiting execution or approval)",
                            risk=decision.risk,
                        )
                    )
                    continue
                # The budget as far as planning can know it: writes sent in this incident
                # and those planned before this one. The rest is checked on execution.
                history = WriteFacts(
                    incident_writes=self.store.writes_in_incident(context.incident_id),
                    last_write=None,
                    writes_in_window=0,
                    in_progress=[],
                    unresolved=[],
                )
                refusal = self.write_refusal(step, context, [], history)
                if refusal is not None:
                    decisions.append(_rejected(step, refusal, risk=decision.risk))
                    continue
                self._reserved.setdefault(context.incident_id, set()).add(step.key())
            decisions.append(decision)
        return decisions

    # --- execution time -----------------------------------------------------------------

    def decide(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
        approval: Approval | None = None,
        observations: Sequence[Observation] = (),
    ) -> StepDecision:
        """The check immediately before execution: the same validation and policy again, and
        for a step that needs approval, a matching, unexpired approval. The write history is
        checked by `write_refusal` once the targets are resolved."""
        decision = self._decide(step, context, runbook, observations)
        if decision.decision != "needs_approval":
            return decision
        if approval is None:
            return decision
        if approval.step_key != step.key():
            return _rejected(
                step,
                "the approval is for a different step (operation, target or parameters changed)",
                risk=decision.risk,
            )
        if approval.expires_at <= datetime.fromtimestamp(self.clock(), tz=UTC):
            return _rejected(
                step,
                f"the approval expired at {approval.expires_at.isoformat()}",
                risk=decision.risk,
            )
        return decision.model_copy(
            update={"decision": "accepted", "policy": f"approved by {approval.approved_by}"}
        )

    def approval_expiry(self, step: PlanStep) -> datetime:
        policy = self.config.environments.environments[step.environment].policy
        return datetime.fromtimestamp(self.clock(), tz=UTC) + timedelta(
            seconds=policy.approval_timeout_seconds
        )

    def release(self, context: IncidentContext, step: PlanStep) -> None:
        """A planned write that will not run (rejected by a person, approval expired) gives its
        share of the budget back."""
        self._reserved.get(context.incident_id, set()).discard(step.key())

    def settle(self, context: IncidentContext, step: PlanStep) -> None:
        """A planned write was sent (or refused at execution): the write history counts it
        from now on, so its planning-time reservation ends."""
        self._reserved.get(context.incident_id, set()).discard(step.key())

    def blast_radius_refusal(self, step: PlanStep, targets: Sequence[ResolvedTarget]) -> str | None:
        policy = self.config.environments.environments[step.environment].policy
        if len(targets) <= policy.max_targets_per_write:
            return None
        names = ", ".join(f"{t.name} ({t.identity})" for t in targets)
        return (
            f"blast radius: {step.target} resolves to {len(targets)} targets ({names}); at most "
            f"{policy.max_targets_per_write} per write (environments.{step.environment}.policy"
            ".max_targets_per_write): name one of them"
        )

    def write_refusal(
        self,
        step: PlanStep,
        context: IncidentContext | None,
        targets: Sequence[ResolvedTarget],
        facts: WriteFacts,
    ) -> str | None:
        """Why a write on these resolved targets must not be sent now, given the write history
        (None: it may). Blast radius, per-incident budget, cool-down, writes per target in the
        window, an unknown outcome on a target. Run inside the transaction that records it."""
        environment = step.environment
        policy = self.config.environments.environments[environment].policy
        where = f"environments.{environment}.policy"
        radius = self.blast_radius_refusal(step, targets)
        if radius is not None:
            return radius
        if facts.unresolved:
            earlier = facts.unresolved[0]
            return (
                f"{UNKNOWN_OUTCOME}: {earlier.step.describe()} (write {earlier.key}, "
                f"{_when(earlier.recorded_at)}) may or may not have taken effect on "
                f"{_names(earlier)}; nothing more is sent there until it is observed: check the "
                f"target, then `uici writes resolve {earlier.key} done|failed`"
            )
        if context is not None:
            budget = policy.max_write_steps_per_incident
            reserved = self._reserved.get(context.incident_id, set()) - {step.key()}
            used = facts.incident_writes + len(reserved)
            if used >= budget:
                return (
                    f"write budget used: {used} of {budget} write steps for incident "
                    f"{context.incident_id} ({where}.max_write_steps_per_incident)"
                )
        last = facts.last_write
        now = self.clock()
        if last is not None and now - last.recorded_at < policy.cooldown_seconds:
            return (
                f"cool-down: {_names(last)} had {last.step.operation} "
                f"{now - last.recorded_at:.0f} s ago (write {last.key}, by {last.actor}); "
                "no write there again until "
                f"{_when(last.recorded_at + policy.cooldown_seconds)} ({where}.cooldown_seconds)"
            )
        if facts.writes_in_window >= policy.max_writes_per_target:
            return (
                f"{ESCALATE}: {facts.writes_in_window} writes on {_names(last)} within "
                f"{policy.write_window_seconds:g} s, at most {policy.max_writes_per_target} "
                f"({where}.max_writes_per_target): acting again would be a loop"
            )
        return None

    # --- the rules ----------------------------------------------------------------------

    def _decide(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
        observations: Sequence[Observation] = (),
    ) -> StepDecision:
        reasons = self.validate(step, context)
        if reasons:
            return _rejected(step, *reasons)
        call = self.registry.validate(
            step.operation, step.environment, step.parameters, step.target
        )
        try:
            command = self.translator.translate(call).command
        except TranslationError as exc:
            return _rejected(step, str(exc), risk=call.risk.value)
        risk = call.risk
        environment = self.config.environments.environments[step.environment]
        policy = environment.policy
        where = f"environments.{step.environment}.policy"

        def result(decision: Decision, text: str) -> StepDecision:
            return StepDecision(
                step=step,
                decision=decision,
                reasons=[] if decision != "rejected" else [text],
                risk=risk.value,
                policy=text,
                command=command,
            )

        if risk not in policy.allowed_risks:
            return result(
                "rejected", f"{risk.value} operations are not allowed here ({where}.allowed_risks)"
            )
        if risk is RiskLevel.READ:
            return result("accepted", "read: runs")

        if step.target is not None and is_selector(step.target):
            return result(
                "needs_approval",
                f"{risk.value} on a label selector ({step.target}): always needs a person",
            )
        if risk not in policy.approval_required:
            return result("accepted", f"{risk.value}: runs without approval here")
        if risk is RiskLevel.WRITE and policy.auto_approve and runbook is not None:
            bound = self._runbook_step(step, context, runbook, observations)
            if bound is not None:
                return result("accepted", f"auto-approved by runbook {runbook.name}: {bound}")
        return result("needs_approval", f"{risk.value}: needs a person's approval")

    def _runbook_step(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook,
        observations: Sequence[Observation],
    ) -> str | None:
        """The runbook step that makes this write auto-approved, in words, or None. Bound to
        the step, not to the operation's name: the same phase and operation, the alerted
        service as its target (a dependency is named by the alert's labels, so a write on one
        always needs a person), the same parameters, and its `when` holding on what was
        observed. So an LLM's write is auto-approved only where the runbook's would be."""
        if step.operation not in runbook.auto_approve or step.target != context.service:
            return None
        spec = self.registry.describe(step.operation)
        defaults = {name: p.default for name, p in spec.parameters.items()}
        for index, candidate in enumerate(runbook.phases.get(step.phase, [])):
            if candidate.operation != step.operation or candidate.target != "service":
                continue
            wanted = {**defaults, **candidate.params}
            if {**defaults, **step.parameters} != wanted:
                continue
            where = f"{step.phase} step {index + 1}"
            if candidate.when is None:
                return f"{where} ({step.operation}, no condition)"
            holds, evidence = evaluate(
                candidate.when,
                observations,
                context,
                self.config.agents.log_matching.max_line_chars,
                self.config.agents.log_matching.log_operations,
            )
            if holds:
                return f"{where} ({step.operation}), its condition holds on {', '.join(evidence)}"
        return None

    def validate(self, step: PlanStep, context: IncidentContext) -> list[str]:
        """Registry validation plus scope: the incident's environment, service and dependencies."""
        reasons: list[str] = []
        if step.environment != context.environment:
            reasons.append(
                f"environment {step.environment!r} is outside this incident ({context.environment})"
            )
        try:
            call = self.registry.validate(
                step.operation, step.environment, step.parameters, step.target
            )
        except CallValidationError as exc:
            reasons.extend(str(p) for p in exc.problems)
            return reasons
        spec = self.registry.describe(call.operation)
        # A dependency discovered in the log may have its state read (dependency_discovery.
        # read_operations); anything else needs the declared scope.
        discovered_ok = (
            spec.risk is RiskLevel.READ
            and call.operation in self.config.agents.dependency_discovery.read_operations
        )
        scope = context.read_scope if discovered_ok else context.scope
        if spec.target != "none" and step.target not in scope:
            reasons.append(
                f"target {step.target!r} is outside this incident's scope "
                f"({', '.join(scope)})"
                + (
                    "; a dependency discovered in the log may only have its state read"
                    " (dependency_discovery.read_operations), never be written"
                    if step.target in context.discovered
                    else ""
                )
            )
        return reasons


# The words a refusal starts with when the write history says UICI must stop acting on a
# target: the incident is escalated to a person.
ESCALATE = "escalate to a person"
UNKNOWN_OUTCOME = "unknown outcome"
# Refusals after which nothing more happens on the target until a person looks.
NEEDS_PERSON = (ESCALATE, UNKNOWN_OUTCOME)


def is_selector(target: str) -> bool:
    """`app=web`: a label selector, whose matches can change between a look and a write."""
    return "=" in target


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(write: WriteRecord | None) -> str:
    if write is None:
        return "the target"
    return ", ".join(t.name for t in write.targets) or write.step.target or "the target"


def _rejected(step: PlanStep, *reasons: str, risk: str | None = None) -> StepDecision:
    return StepDecision(
        step=step,
        decision="rejected",
        reasons=list(reasons),
        risk=risk,
        policy="rejected: " + "; ".join(reasons),
    )
