"""The diagnostic planner: runbook or LLM per configuration, always behind validation and policy.

Modes (agents.yml: diagnostic_agent.planner_mode):
  runbook  never an LLM.
  llm      the LLM only; a failure is reported in the phase plan, nothing is guessed.
  auto     the LLM when platform.yml configures one; on any failure (timeout, 429, 5xx,
           refusal, invalid JSON after one repair, an empty plan, an open circuit) that
           phase falls back to the runbook planner and the plan says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.incidents.events import EventLog
from agent.incidents.models import (
    Diagnosis,
    IncidentContext,
    Observation,
    Phase,
    PhasePlan,
    PlanStep,
    Usage,
)
from agent.incidents.storage import IncidentStore
from agent.planning.llm import CompletionClient, LLMClient, LLMFailure
from agent.planning.llm_planner import LLMPlanner, PlanCache
from agent.planning.observability import ObservabilitySteps
from agent.planning.runbook import RunbookPlanner
from agent.safety.policy import SafetyPolicy
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import LLMProvider

if TYPE_CHECKING:
    from sqlalchemy import URL

# The LLM client (with its circuit breaker) and the plan cache of this process, per LLM
# configuration and store: every run in the process shares them, so a provider that keeps
# failing stays skipped and an identical context hits the cache from one run to the next.
_SHARED_LLM: dict[tuple[str, URL], tuple[LLMClient, PlanCache]] = {}


def shared_llm(config: UICIConfig, store: IncidentStore) -> tuple[LLMClient, PlanCache]:
    key = (config.platform.llm.model_dump_json(), store.database.url)
    if key not in _SHARED_LLM:
        settings = config.platform.llm
        events = EventLog(store.database, store.redactor)

        def circuit_opened(failures: int) -> None:
            # The breaker lives in this process; the event lets /metrics and people see it.
            events.emit(
                "llm.circuit_open",
                None,
                provider=settings.provider.value,
                model=settings.model,
                failures=failures,
                reset_seconds=settings.circuit_breaker.reset_seconds,
            )

        _SHARED_LLM[key] = (
            LLMClient(settings, on_circuit_open=circuit_opened),
            PlanCache(settings.plan_cache_ttl_seconds),
        )
    return _SHARED_LLM[key]


class DiagnosticPlanner:
    def __init__(
        self,
        config: UICIConfig,
        store: IncidentStore,
        llm_client: CompletionClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.mode = config.agents.diagnostic_agent.planner_mode
        self.runbooks = RunbookPlanner(config.agents)
        self.observability = ObservabilitySteps(config)
        self.policy = SafetyPolicy(config, store, clock)
        self.usage: dict[str, Usage] = {}
        llm_configured = config.platform.llm.provider is not LLMProvider.NONE
        self.llm: LLMPlanner | None = None
        self.llm_unavailable = ""
        if self.mode != "runbook":
            if llm_client is not None:  # e.g. the evaluation's replayed exchanges
                cache = PlanCache(config.platform.llm.plan_cache_ttl_seconds)
                self.llm = LLMPlanner(config, llm_client, cache)
            elif llm_configured:
                client, cache = shared_llm(config, store)
                self.llm = LLMPlanner(config, llm_client or client, cache)
            else:
                self.llm_unavailable = "no LLM is configured (platform.yml: llm.provider is none)"

    def incident_usage(self, incident_id: str) -> Usage:
        return self.usage.setdefault(incident_id, Usage())

    def plan_phase(
        self,
        context: IncidentContext,
        phase: Phase,
        observations: Sequence[Observation],
        iteration: int = 0,
        already_planned_in_phase: int = 0,
    ) -> PhasePlan:
        runbook = self.runbooks.match(context)
        created = datetime.now(UTC)
        notes: list[str] = []
        # Evidence from Prometheus and Loki every plan gets first (a phase's first round).
        first: list[PlanStep] = []
        if iteration == 0:
            first, first_notes = self.observability.steps(context, phase, observations)
            notes.extend(first_notes)
        if self.llm is not None:
            try:
                outcome = self.llm.plan(context, phase, observations, iteration)
                if not outcome.steps and iteration == 0:
                    raise LLMFailure("empty_plan", f"the LLM proposed no steps for {phase}")
                self.incident_usage(context.incident_id).add(outcome.usage)
                decisions = self.policy.review(
                    self._with(first, outcome.steps, context, notes),
                    context,
                    runbook,
                    already_planned_in_phase,
                    observations,
                )
                return PhasePlan(
                    phase=phase,
                    planner="llm",
                    runbook=runbook.name,
                    iteration=iteration,
                    decisions=decisions,
                    notes=[*notes, *outcome.notes],
                    usage=outcome.usage,
                    cached=outcome.cached,
                    done=outcome.done,
                    created_at=created,
                )
            except LLMFailure as failure:
                if self.mode == "llm":
                    return PhasePlan(
                        phase=phase,
                        planner="llm",
                        runbook=runbook.name,
                        iteration=iteration,
                        notes=[
                            f"LLM planning failed ({failure}); planner_mode is llm, so no fallback"
                        ],
                        created_at=created,
                    )
                notes.append(f"LLM planning failed ({failure}); fell back to the runbook planner")
        elif self.mode == "llm":
            return PhasePlan(
                phase=phase,
                planner="llm",
                runbook=runbook.name,
                iteration=iteration,
                notes=[f"planner_mode is llm but {self.llm_unavailable}"],
                created_at=created,
            )
        if iteration > 0:
            # The runbook planner plans a phase once; later rounds are the LLM's.
            return PhasePlan(
                phase=phase,
                planner="runbook",
                runbook=runbook.name,
                iteration=iteration,
                notes=[*notes, "runbook phases are planned in one round"],
                created_at=created,
            )
        runbook, steps, runbook_notes = self.runbooks.plan(context, phase, observations)
        decisions = self.policy.review(
            self._with(first, steps, context, notes),
            context,
            runbook,
            already_planned_in_phase,
            observations,
        )
        return PhasePlan(
            phase=phase,
            planner="runbook",
            runbook=runbook.name,
            iteration=iteration,
            decisions=decisions,
            notes=[*notes, *runbook_notes],
            created_at=created,
        )

    def _with(
        self,
        first: Sequence[PlanStep],
        steps: Sequence[PlanStep],
        context: IncidentContext,
        notes: list[str],
    ) -> list[PlanStep]:
        """`first`, then the planner's steps (log steps read Loki where the logs live there),
        each exact step once; runbook steps needing a metric or log source the environment
        lacks are left out, with a note."""
        planned = [*first, *self.observability.substitute(steps, context)]
        unique: dict[str, PlanStep] = {}
        for step in planned:
            unique.setdefault(step.key(), step)
        kept, skipped = self.observability.runnable(
            [s for s in unique.values() if s.proposed_by == "runbook"], context
        )
        notes.extend(skipped)
        keep = {s.key() for s in kept}
        return [s for s in unique.values() if s.proposed_by != "runbook" or s.key() in keep]

    def diagnose(self, context: IncidentContext, observations: Sequence[Observation]) -> Diagnosis:
        if self.llm is not None:
            try:
                diagnosis, usage, _ = self.llm.diagnose(context, observations)
                self.incident_usage(context.incident_id).add(usage)
                return diagnosis
            except LLMFailure as failure:
                if self.mode == "llm":
                    return Diagnosis(
                        root_cause="The LLM diagnosis failed; no fallback in planner_mode llm.",
                        category="unknown",
                        confidence=0.0,
                        source="llm",
                        notes=[str(failure)],
                    )
                diagnosis = self.runbooks.diagnose(context, observations)
                return diagnosis.model_copy(
                    update={
                        "notes": [
                            f"LLM diagnosis failed ({failure}); runbook rules used",
                            *diagnosis.notes,
                        ]
                    }
                )
        return self.runbooks.diagnose(context, observations)
