"""Remediation at most once: an intent is recorded before a write call and its outcome after.

A retried, resumed or re-run flow that meets a pending intent observes the target instead of
calling again (for a Docker restart: did the containers start after the intent was recorded?).
Prefect's result cache alone cannot give this: its record is written after the call, so a
crash between the call and the record would repeat the restart.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from agent.incidents.context import StepRunner
from agent.incidents.models import Decision, IncidentContext, PlanStep, StepDecision
from agent.incidents.storage import IncidentStore
from agent.safety.policy import Approval
from infrastructure.configuration.models import Runbook
from infrastructure.executors.base import OperationResult, intent_value

BOUNDARIES = ("before_intent", "after_intent", "after_call", "after_outcome")


def intent_key(context: IncidentContext, step: PlanStep) -> str:
    """Alert fingerprint, startsAt, operation, target and parameters identify one remediation."""
    identity = [
        context.alert.fingerprint or context.incident_id,
        context.alert.starts_at,
        step.environment,
        step.operation,
        step.target,
        step.parameters,
    ]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


class RemediationOutcome(BaseModel):
    key: str
    decision: StepDecision
    result: OperationResult | None = None
    executed: bool  # this call ran the operation
    recovered: bool = False  # a pending intent was resolved by observing the target
    note: str = ""

    @property
    def succeeded(self) -> bool:
        if self.result is not None:
            return self.result.success
        return self.recovered


class Remediator:
    def __init__(
        self,
        store: IncidentStore,
        runner: StepRunner,
        clock: Callable[[], float] = time.time,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.clock = clock
        # Called at each boundary (BOUNDARIES); crash tests use it to kill the process there.
        self.checkpoint = checkpoint or (lambda boundary: None)

    def run(
        self,
        step: PlanStep,
        context: IncidentContext,
        runbook: Runbook | None,
        approval: Approval | None = None,
    ) -> RemediationOutcome:
        key = intent_key(context, step)
        self.checkpoint("before_intent")
        existing = self.store.intent(key)
        if existing is not None and existing.state == "done":
            return self._done_already(key, step, existing.outcome or {})
        if existing is not None and existing.state == "pending":
            observed = self.runner.executor(step.environment).effect_observed(
                step.operation,
                step.target or "",
                existing.recorded_at,
                intent_value(key, existing.recorded_at),
            )
            if observed:
                outcome = {"observed": True, "note": "took effect before a crash; not repeated"}
                self.store.finish_intent(key, "done", outcome)
                self.runner.policy.record_executed(context, step)
                return RemediationOutcome(
                    key=key,
                    decision=self._decision(step, "recovered: observed on the target"),
                    executed=False,
                    recovered=True,
                    note="a pending intent was resolved by observing the target",
                )
            if observed is None:
                note = (
                    f"cannot observe whether {step.describe()} took effect; not repeating it "
                    "blindly: a person must check"
                )
                self.store.finish_intent(key, "failed", {"observed": None, "note": note})
                return RemediationOutcome(
                    key=key,
                    decision=self._decision(step, note, "rejected"),
                    executed=False,
                    note=note,
                )
            # Not observed: the crash came before the call. Carry on with the same intent.
            recorded_at = existing.recorded_at
        else:
            recorded_at = self.clock()
            self.store.begin_intent(key, context.incident_id, step, recorded_at)
        self.checkpoint("after_intent")
        intent = intent_value(key, recorded_at)
        decision, result = self.runner.run(step, context, runbook, approval, intent)
        self.checkpoint("after_call")
        if result is None:
            self.store.finish_intent(key, "failed", {"decision": decision.model_dump(mode="json")})
            return RemediationOutcome(
                key=key, decision=decision, executed=False, note=decision.policy
            )
        self.store.finish_intent(
            key, "done" if result.success else "failed", result.model_dump(mode="json")
        )
        self.checkpoint("after_outcome")
        return RemediationOutcome(key=key, decision=decision, result=result, executed=True)

    def _done_already(
        self, key: str, step: PlanStep, outcome: dict[str, Any]
    ) -> RemediationOutcome:
        return RemediationOutcome(
            key=key,
            decision=self._decision(step, "already done for this alert"),
            executed=False,
            recovered=bool(outcome.get("observed")),
            result=OperationResult.model_validate(outcome) if "operation" in outcome else None,
            note="the intent is already done; not repeated",
        )

    @staticmethod
    def _decision(step: PlanStep, text: str, decision: Decision = "accepted") -> StepDecision:
        return StepDecision(step=step, decision=decision, policy=text)
