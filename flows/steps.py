"""The steps of an incident run: the read steps of a phase in one environment as a subflow (one
task run per operation), and one write, paused for a person's approval when it needs one. Both
go through the execution gate."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput

from agent.incidents.investigation import ApprovalAnswer, Investigation
from agent.incidents.models import Diagnosis, Observation, Phase, PhasePlan, PlanStep
from infrastructure.executors.base import OperationResult
from tasks.operations import (
    RetryableOperationError,
    StepNotAuthorized,
    read_step_options,
    run_read_step,
    run_write_step,
)


class ApprovalInput(RunInput):
    """The form shown in the Prefect UI (flow run page, Resume) for a write that needs a person."""

    approve: bool
    approver: str = "prefect-ui"
    reason: str = ""
    step_key: str = ""  # filled in with the step asked about; an answer for another is a no
    # Left empty by a person in the form; the service and the CLI send the request's secret
    # when they wake the run for an answer they recorded (the answer that counts).
    token: str = ""


@flow(name="environment-steps", flow_run_name="{phase} · {environment}")
async def run_environment_steps(
    phase: Phase, environment: str, steps: list[PlanStep], run: Investigation
) -> list[tuple[PlanStep, OperationResult]]:
    """The read steps of one phase in one environment, concurrently, one task each."""

    async def one(step: PlanStep) -> tuple[PlanStep, OperationResult]:
        spec = run.planner.policy.registry.describe(step.operation)
        options = read_step_options(spec)
        state = await run_read_step.with_options(**options)(  # type: ignore[misc]
            phase, environment, step.operation, step.target or "-", run.request(step), run.gate,
            return_state=True,
        )  # fmt: skip
        outcome = await state.aresult(raise_on_failure=False)
        if isinstance(outcome, OperationResult):
            return step, outcome
        if isinstance(outcome, RetryableOperationError):
            return step, outcome.result  # retried as configured, still failing: reported
        if isinstance(outcome, StepNotAuthorized):
            raise outcome
        raise RuntimeError(f"{step.describe()} ended in state {state.type}: {outcome}")

    return list(await asyncio.gather(*(one(step) for step in steps)))


async def remediate(decision: Any, run: Investigation) -> None:
    """One write: skip, or ask a person (pause), then send it through the gate."""
    step = decision.step
    next_, ask = run.next_for_write(decision)
    if next_ == "skip":
        return
    approval = None
    if ask is not None:
        get_run_logger().warning("approval needed for %s: %s", step.describe(), ask.command)
        # An answer that does not count (a Prefect UI form where those are not allowed) means
        # waiting on for the rest of the time; each wait needs a pause key of its own.
        for attempt in itertools.count():
            wait = run.approval_wait(step) if attempt else ask.timeout_seconds
            answer = None
            if wait > 0:
                try:
                    answer = await apause_flow_run(
                        wait_for_input=ApprovalInput.with_initial_data(
                            description=ask.description, approve=False, step_key=step.key()
                        ),
                        timeout=max(1, int(wait)),
                        poll_interval=run.config.platform.prefect.approval_poll_seconds,
                        key=ask.key if not attempt else f"{ask.key}-{attempt}",
                    )
                except FlowPauseTimeout:
                    answer = None
            answered = run.answered(
                decision, None if answer is None else ApprovalAnswer(**answer.model_dump())
            )
            if answered != "again":
                break
        if answered is None or answered == "again":
            return
        approval = answered
    outcome = await run_write_step(
        step.phase, step.environment, step.operation, step.target or "-",
        run.request(step, approval), run.gate,
    )  # fmt: skip
    run.record_write(step, outcome)


async def run_reads(phase: Phase, steps: list[PlanStep], run: Investigation) -> None:
    """Read steps, one subflow per environment, each result an observation."""
    for environment in sorted({s.environment for s in steps}):
        mine = [s for s in steps if s.environment == environment]
        for step, result in await run_environment_steps(phase, environment, mine, run):
            run.observe(step, result)


class PrefectRunner:
    """The phase steps as Prefect sees them: planning and diagnosis as tasks, reads as a
    subflow per environment with a task per operation, writes paused for approval."""

    def __init__(self, progress_artifact: Any = None) -> None:
        self.progress_artifact = progress_artifact

    async def plan(self, run: Investigation, phase: Phase, iteration: int, planned: int) -> Any:
        return plan_phase(phase, iteration, run, run.report.observations, planned)

    async def reads(self, run: Investigation, phase: Phase, steps: list[PlanStep]) -> None:
        await run_reads(phase, steps, run)

    async def write(self, run: Investigation, decision: Any) -> None:
        await remediate(decision, run)

    async def status_check(self, run: Investigation, step: PlanStep) -> Any:
        [(_, result)] = await run_environment_steps("resolution", step.environment, [step], run)
        return run.observe(step, result)

    async def diagnose(self, run: Investigation) -> Any:
        # A sync task called from an async flow runs inline and returns its value.
        return diagnose(run, run.diagnosis_evidence())

    async def progress(self, run: Investigation, fraction: float) -> None:
        if self.progress_artifact is not None:
            await aupdate_progress_artifact(self.progress_artifact, progress=100.0 * fraction)


@task(cache_policy=NO_CACHE, task_run_name="plan · {phase} · round {iteration}")
def plan_phase(
    phase: Phase, iteration: int, run: Investigation, observations: list[Observation], planned: int
) -> PhasePlan:
    return run.planner.plan_phase(run.context, phase, observations, iteration, planned)


@task(cache_policy=NO_CACHE, task_run_name="diagnose")
def diagnose(run: Investigation, observations: list[Observation]) -> Diagnosis:
    return run.planner.diagnose(run.context, observations)
