"""The four phases of an investigation, in order, independent of how each step is run.

`run_phases` is the loop: plan a phase (one round for the runbook planner, up to the configured
rounds for an LLM), run its reads before its writes and its reads after, then validate a
remediation once the service settled, then diagnose. How a plan, a read, a write or a pause is
run is the `PhaseRunner`'s business: flows/diagnose.py runs them as Prefect tasks and subflows
with pauses for approvals; `DirectRunner` calls the execution gate in this process, which is
what `uici diagnose` and `uici eval` use. The decisions (planner, policy, gate, approvals,
report) are the same objects on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from agent.incidents.context import LabelConventions, context_from_alert
from agent.incidents.investigation import Investigation
from agent.incidents.models import (
    PHASES,
    Diagnosis,
    Observation,
    Phase,
    PhasePlan,
    PlanStep,
    StepDecision,
)
from agent.incidents.report import IncidentReport
from agent.incidents.storage import IncidentStore
from agent.planning.llm import CompletionClient
from agent.planning.planner import DiagnosticPlanner
from agent.safety.gate import ExecutionGate
from infrastructure.configuration.loader import UICIConfig
from infrastructure.executors.base import EnvironmentExecutor, OperationResult
from infrastructure.executors.factory import create_executor

ExecutorFactory = Callable[[str, Any], EnvironmentExecutor]


class PhaseRunner(Protocol):
    async def plan(
        self, run: Investigation, phase: Phase, iteration: int, planned: int
    ) -> PhasePlan: ...

    async def reads(self, run: Investigation, phase: Phase, steps: list[PlanStep]) -> None: ...

    async def write(self, run: Investigation, decision: StepDecision) -> None: ...

    async def status_check(self, run: Investigation, step: PlanStep) -> Observation: ...

    async def diagnose(self, run: Investigation) -> Diagnosis: ...

    async def progress(self, run: Investigation, fraction: float) -> None: ...


async def run_phases(run: Investigation, runner: PhaseRunner) -> None:
    rounds = run.config.agents.diagnostic_agent.max_llm_iterations_per_phase
    for index, phase in enumerate(PHASES):
        planned = 0
        run.events.emit("phase.started", run.context.incident_id, phase=phase)
        for iteration in range(rounds):
            usage = run.usage_so_far()
            plan = await runner.plan(run, phase, iteration, planned)
            run.usage_event(phase, usage)
            planned += len(plan.decisions)
            before, writes, after = run.record_plan(plan)
            await runner.reads(run, phase, before)
            for decision in writes:
                await runner.write(run, decision)
            await runner.reads(run, phase, after)
            if plan.done or plan.planner == "runbook":
                break
        await runner.progress(run, (index + 1) / len(PHASES))
    await validate(run, runner)
    run.report.diagnosis = await runner.diagnose(run)


async def validate(run: Investigation, runner: PhaseRunner) -> None:
    """After a remediation: let the service settle, then check it as agents.yml says."""
    step = run.validation_step()
    if step is None:
        return
    settings = run.config.agents.diagnostic_agent.validation
    await asyncio.sleep(settings.settle_seconds)
    checks = []
    for index in range(settings.checks):
        if index:
            await asyncio.sleep(settings.interval_seconds)
        checks.append(await runner.status_check(run, step))
    run.validated(checks)


class DirectRunner:
    """Runs every step through the execution gate in this process, without Prefect. A write
    that needs a person is not executed (there is nobody to ask): the report says so. With
    `writes=False` no write is sent at all, whatever the policy would allow."""

    def __init__(self, writes: bool = True) -> None:
        self.writes = writes

    async def plan(
        self, run: Investigation, phase: Phase, iteration: int, planned: int
    ) -> PhasePlan:
        return await asyncio.to_thread(
            run.planner.plan_phase, run.context, phase, run.report.observations, iteration, planned
        )

    async def reads(self, run: Investigation, phase: Phase, steps: list[PlanStep]) -> None:
        results = await asyncio.gather(*(self._read(run, step) for step in steps))
        for step, result in zip(steps, results, strict=True):
            run.observe(step, result)

    async def _read(self, run: Investigation, step: PlanStep) -> OperationResult:
        """One read through the gate, retried as operations.yml says for retryable errors
        (as the flow's task does); a read the gate refuses ends the run, as in a flow."""
        retry = run.planner.policy.registry.describe(step.operation).retry
        for attempt in range(retry.attempts):
            outcome = await asyncio.to_thread(run.gate.execute, run.request(step))
            if outcome.result is None:
                raise PermissionError(f"{step.describe()} refused: {outcome.note}")
            if not outcome.result.retryable or attempt == retry.attempts - 1:
                return outcome.result
            await asyncio.sleep(retry.delay_seconds * retry.backoff_factor**attempt)
        raise AssertionError("unreachable: the loop returns on its last attempt")

    async def write(self, run: Investigation, decision: StepDecision) -> None:
        if not self.writes:
            run.not_executed(decision, "this run sends no writes (read-only)")
            return
        next_, _ = run.next_for_write(decision, can_ask=False)
        if next_ != "run":
            return
        outcome = await asyncio.to_thread(run.gate.execute, run.request(decision.step))
        run.record_write(decision.step, outcome)

    async def status_check(self, run: Investigation, step: PlanStep) -> Observation:
        return run.observe(step, await self._read(run, step))

    async def diagnose(self, run: Investigation) -> Diagnosis:
        return run.planner.diagnose(run.context, run.diagnosis_evidence())

    async def progress(self, run: Investigation, fraction: float) -> None:
        return None


async def investigate(
    config: UICIConfig,
    store: IncidentStore,
    alert: dict[str, Any],
    incident_id: str,
    executor_factory: ExecutorFactory = create_executor,
    writes: bool = True,
    llm_client: CompletionClient | None = None,
) -> tuple[IncidentReport, DiagnosticPlanner]:
    """One investigation of `alert` without Prefect, as `uici diagnose` runs it."""
    planner = DiagnosticPlanner(config, store, llm_client=llm_client)
    gate = ExecutionGate(config, store, planner.policy, executor_factory=executor_factory)
    try:
        context = context_from_alert(alert, LabelConventions.from_config(config), incident_id)
        run = Investigation(config, store, planner, gate, context, actor="uici")
        run.open(None)
        try:
            await run_phases(run, DirectRunner(writes))
            run.finish()
        except BaseException as exc:
            run.fail(exc)
            raise
        return run.report, planner
    finally:
        gate.close()
