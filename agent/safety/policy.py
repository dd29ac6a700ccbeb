"""Validation and the safety policy: what may run, what needs a person, what never runs.

Every proposed step, whoever proposed it, passes `SafetyPolicy.review` when it is planned and
`SafetyPolicy.authorize` immediately before it is executed, so no path around the planner can
skip the policy. Nothing an LLM writes changes the outcome: the decision depends only on the
registry, environments.yml, the runbook matched from the alert's labels, and recorded history.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from agent.incidents.models import Decision, IncidentContext, PlanStep, StepDecision
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import RiskLevel, Runbook
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandTranslator, TranslationError


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"storage.url {url!r}: only sqlite:/// URLs are supported")
    return Path(url.removeprefix("sqlite:///"))


class WriteHistory:
    """Durable record of executed write operations: the blast-radius budget per incident and
    the cool-down per target hold across alerts, processes and restarts."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS write_actions ("
                " incident_id TEXT NOT NULL, environment TEXT NOT NULL, target TEXT,"
                " operation TEXT NOT NULL, step_key TEXT NOT NULL, at REAL NOT NULL)"
            )
            db.execute(
                "CREATE INDEX IF NOT EXISTS write_actions_target"
                " ON write_actions (environment, target, at)"
            )

    @classmethod
    def from_config(cls, config: UICIConfig) -> WriteHistory:
        return cls(sqlite_path(config.platform.storage.url))

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def record(self, incident_id: str, step: PlanStep, at: float) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT INTO write_actions VALUES (?, ?, ?, ?, ?, ?)",
                (incident_id, step.environment, step.target, step.operation, step.key(), at),
            )

    def last_write(self, environment: str, target: str | None) -> float | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT MAX(at) FROM write_actions WHERE environment = ? AND target IS ?",
                (environment, target),
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def writes_in_incident(self, incident_id: str) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM write_actions WHERE incident_id = ?", (incident_id,)
            ).fetchone()
        return int(row[0])


class Approval(BaseModel):
    """A person's yes to one exact step, valid until it expires."""

    step_key: str
    approved_by: str
    expires_at: datetime


class SafetyPolicy:
    def __init__(
        self,
        config: UICIConfig,
        history: WriteHistory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.registry = OperationRegistry.from_config(config)
        self.translator = CommandTranslator.from_config(config)
        self.history = history
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
            decision = self._decide(step, context, runbook)
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
                self._reserved.setdefault(context.incident_id, set()).add(step.key())
            decisions.append(decision)
        return decisions

    # --- execution time -----------------------------------------------------------------

    def authorize(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
        approval: Approval | None = None,
    ) -> StepDecision:
        """The check immediately before execution: the same validation and policy again, and
        for a step that needs approval, a matching, unexpired approval."""
        decision = self._decide(step, context, runbook)
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

    def record_executed(self, context: IncidentContext, step: PlanStep) -> None:
        """Call after a write step ran: it counts against budget and cool-down from now on."""
        if self.registry.describe(step.operation).risk is not RiskLevel.READ:
            self.history.record(context.incident_id, step, self.clock())
            self._reserved.get(context.incident_id, set()).discard(step.key())

    # --- the rules ----------------------------------------------------------------------

    def _decide(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
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

        reserved = self._reserved.get(context.incident_id, set()) - {step.key()}
        writes = self.history.writes_in_incident(context.incident_id) + len(reserved)
        if writes >= policy.max_write_steps_per_incident:
            return result(
                "rejected",
                f"write budget used: {writes} of {policy.max_write_steps_per_incident} write steps "
                f"for this incident ({where}.max_write_steps_per_incident)",
            )
        last = self.history.last_write(step.environment, step.target)
        if last is not None and self.clock() - last < policy.cooldown_seconds:
            ago = self.clock() - last
            return result(
                "rejected",
                f"cool-down: {step.target} had a write operation {ago:.0f} s ago; "
                f"none again within "
                f"{policy.cooldown_seconds:g} s ({where}.cooldown_seconds)",
            )
        if risk not in policy.approval_required:
            return result("accepted", f"{risk.value}: runs without approval here")
        if (
            risk is RiskLevel.WRITE
            and policy.auto_approve
            and runbook is not None
            and step.operation in runbook.auto_approve
        ):
            return result("accepted", f"auto-approved by runbook {runbook.name}")
        return result("needs_approval", f"{risk.value}: needs a person's approval")

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
        if spec.target != "none" and step.target not in context.scope:
            reasons.append(
                f"target {step.target!r} is outside this incident's scope "
                f"({', '.join(context.scope)})"
            )
        return reasons


def _rejected(step: PlanStep, *reasons: str, risk: str | None = None) -> StepDecision:
    return StepDecision(
        step=step,
        decision="rejected",
        reasons=list(reasons),
        risk=risk,
        policy="rejected: " + "; ".join(reasons),
    )
